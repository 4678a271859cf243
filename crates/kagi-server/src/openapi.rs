//! The OpenAPI 3.1 document served at `/v1/openapi.json`, generated from the handlers'
//! annotations so it cannot drift from the code.

use std::sync::OnceLock;

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::api::*;
use crate::cloud_api::*;
use crate::compliance::*;
use crate::tokens_api::*;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let comps = doc.components.get_or_insert_with(Default::default);
        comps.add_security_scheme(
            "token",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "kagi key service", description = "Customer-held keys: master key, KEKs, data keys, policies, tokens and a tamper-evident audit log."),
    modifiers(&BearerAuth),
    paths(
        health, health_live, health_ready, sys_backup, sys_restore, sys_migrate_seal, sys_status, sys_init, sys_unseal, sys_seal,
        list_keys, create_key, show_key, rotate_key, disable_key, enable_key, schedule_deletion, cancel_deletion,
        generate, generate_batch, decrypt, decrypt_payload, decrypt_batch, reencrypt, encrypt,
        list_policies, show_policy, write_policy, delete_policy,
        create_token, revoke_token, token_self,
        audit_records, audit_tail, audit_verify,
        add_xks_store, rotate_xks_credential, xks_config, create_aws_credentials,
        tokenize, detokenize, report,
    ),
    components(schemas(ErrorBody))
)]
struct ApiDoc;

/// The document as JSON text (built once).
pub fn document() -> String {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| {
        ApiDoc::openapi()
            .to_pretty_json()
            .unwrap_or_else(|_| "{}".into())
    })
    .clone()
}
