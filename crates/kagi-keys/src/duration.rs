//! Durations as operators write them: `90s`, `30m`, `12h`, `30d`, `2w`.

use crate::KeyModelError;

/// Parses a duration into seconds. Zero is refused: a zero rotation period or TTL is a typo.
pub fn parse_seconds(s: &str) -> Result<u64, KeyModelError> {
    let err = || KeyModelError::InvalidDuration(s.to_string());
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).ok_or_else(err)?;
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| err())?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 604_800,
        _ => return Err(err()),
    };
    let secs = n.checked_mul(mult).ok_or_else(err)?;
    if secs == 0 {
        return Err(err());
    }
    Ok(secs)
}

/// Formats seconds the way [`parse_seconds`] reads them, in the largest exact unit.
pub fn format_seconds(secs: u64) -> String {
    for (unit, m) in [("w", 604_800), ("d", 86_400), ("h", 3600), ("m", 60)] {
        if secs >= m && secs.is_multiple_of(m) {
            return format!("{}{unit}", secs / m);
        }
    }
    format!("{secs}s")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse_seconds("90s").unwrap(), 90);
        assert_eq!(parse_seconds("30d").unwrap(), 2_592_000);
        assert_eq!(parse_seconds("1w").unwrap(), 604_800);
        for bad in ["", "d", "10", "10y", "-1d", "0s", "99999999999999999999d"] {
            assert!(parse_seconds(bad).is_err(), "{bad}");
        }
        assert_eq!(format_seconds(2_592_000), "30d");
        assert_eq!(format_seconds(61), "61s");
    }
}
