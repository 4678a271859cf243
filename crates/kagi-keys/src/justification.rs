//! Key-access justification codes: Google's Key Access Justifications vocabulary, read as
//! generic "who is asking and why" codes.

use serde::{Deserialize, Serialize};

use crate::KeyModelError;

/// Why a caller asks to use a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[allow(missing_docs)]
pub enum Justification {
    CustomerInitiatedSupport,
    GoogleInitiatedService,
    ThirdPartyDataRequest,
    GoogleInitiatedReview,
    CustomerInitiatedAccess,
    GoogleInitiatedSystemOperation,
    ReasonNotExpected,
    GoogleResponseToProductionAlert,
    CustomerAuthorizedWorkflowServicing,
    ReasonUnspecified,
}

impl Justification {
    /// Every code, in the order of PRODUCT.md.
    pub const ALL: [Justification; 10] = [
        Self::CustomerInitiatedSupport,
        Self::GoogleInitiatedService,
        Self::ThirdPartyDataRequest,
        Self::GoogleInitiatedReview,
        Self::CustomerInitiatedAccess,
        Self::GoogleInitiatedSystemOperation,
        Self::ReasonNotExpected,
        Self::GoogleResponseToProductionAlert,
        Self::CustomerAuthorizedWorkflowServicing,
        Self::ReasonUnspecified,
    ];

    /// The wire name, e.g. `THIRD_PARTY_DATA_REQUEST`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CustomerInitiatedSupport => "CUSTOMER_INITIATED_SUPPORT",
            Self::GoogleInitiatedService => "GOOGLE_INITIATED_SERVICE",
            Self::ThirdPartyDataRequest => "THIRD_PARTY_DATA_REQUEST",
            Self::GoogleInitiatedReview => "GOOGLE_INITIATED_REVIEW",
            Self::CustomerInitiatedAccess => "CUSTOMER_INITIATED_ACCESS",
            Self::GoogleInitiatedSystemOperation => "GOOGLE_INITIATED_SYSTEM_OPERATION",
            Self::ReasonNotExpected => "REASON_NOT_EXPECTED",
            Self::GoogleResponseToProductionAlert => "GOOGLE_RESPONSE_TO_PRODUCTION_ALERT",
            Self::CustomerAuthorizedWorkflowServicing => "CUSTOMER_AUTHORIZED_WORKFLOW_SERVICING",
            Self::ReasonUnspecified => "REASON_UNSPECIFIED",
        }
    }
}

impl std::str::FromStr for Justification {
    type Err = KeyModelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|j| j.as_str() == s)
            .ok_or_else(|| KeyModelError::UnknownJustification(s.to_string()))
    }
}

impl std::fmt::Display for Justification {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_serde_and_fromstr() {
        for j in Justification::ALL {
            let json = format!("\"{}\"", j.as_str());
            let back: Justification = serde_json_like(&json);
            assert_eq!(back, j);
            assert_eq!(j.as_str().parse::<Justification>().unwrap(), j);
        }
        assert!("SUBPOENA".parse::<Justification>().is_err());
    }

    fn serde_json_like(s: &str) -> Justification {
        // toml has no bare string documents; wrap it in a table to go through serde.
        #[derive(Deserialize)]
        struct W {
            j: Justification,
        }
        toml::from_str::<W>(&format!("j = {s}")).unwrap().j
    }
}
