//! `kagi enroll --controller ADDR --token TOKEN`: redeem a one-time token. Makes a TLS key and
//! an SPA key on this host (neither leaves it), knocks on the controller with the token's
//! one-time SPA key, verifies the controller against the CA pin in the token, and writes the
//! issued certificate, the CA, both keys and a profile (where the controller and gateways
//! are) to the identity directory. `--renew` asks for a fresh certificate for the same key
//! with the enrolled identity instead.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kagi_sdp::control::{
    ControlAnswer, ControlRequest, EnrollToken, Enrolled, ALPN, SPA_CONTROLLER,
};

use crate::control_client::{self as cc, IdentityDir, Profile, Trust};
use crate::output::Fail;

#[derive(clap::Args, Debug)]
pub struct EnrollArgs {
    /// The controller's TLS address, HOST:PORT.
    #[arg(long, required_unless_present = "renew")]
    controller: Option<String>,
    /// The one-time token from `kagi controller token` (env KAGI_ENROLL_TOKEN).
    #[arg(
        long,
        env = "KAGI_ENROLL_TOKEN",
        hide_env_values = true,
        required_unless_present = "renew"
    )]
    token: Option<String>,
    /// Where to keep the identity (env KAGI_IDENTITY_DIR; default ~/.config/kagi/identity).
    #[arg(long, env = "KAGI_IDENTITY_DIR")]
    dir: Option<PathBuf>,
    /// The controller's SPA UDP port.
    #[arg(long = "spa-port", default_value_t = 62201)]
    spa_port: u16,
    /// Renew the certificate of the identity already in the directory.
    #[arg(long)]
    renew: bool,
}

/// How long a request may take (the first SYN may be dropped while the knock is applied).
const LIMIT: Duration = Duration::from_secs(15);

pub async fn run(a: EnrollArgs) -> Result<(), Fail> {
    let dir = a.dir.clone().unwrap_or_else(cc::default_identity_dir);
    if a.renew {
        let mut id = IdentityDir::load(&dir)?;
        id.renew(&dir).await?;
        return report(&id.profile, &dir);
    }
    let (Some(controller), Some(token)) = (a.controller.clone(), a.token.as_deref()) else {
        return Err(Fail("give --controller and --token".into()));
    };
    let token = EnrollToken::parse(token).map_err(|e| Fail(e.to_string()))?;
    cc::server_name(&controller)?;
    let tls_key = rcgen::KeyPair::generate().map_err(|e| Fail(e.to_string()))?;
    let spa = kagi_crypto::hpke::HpkeKeyPair::generate();
    if token.controller_spa != [0u8; 32] {
        let one_time = kagi_crypto::hpke::HpkeKeyPair::from_private(&token.spa_private[..])
            .map_err(|e| Fail(e.to_string()))?;
        crate::spa_cmd::send_native_knock(
            &one_time,
            &hex::encode(token.controller_spa),
            &cc::host_of(&controller)?,
            a.spa_port,
            vec![SPA_CONTROLLER.to_string()],
            0,
            None,
        )?;
    }
    let req = ControlRequest::Enroll {
        token: hex::encode(&token.secret[..]),
        tls_public_key: hex::encode(tls_key.public_key_raw()),
        spa_public_key: hex::encode(spa.public()),
    };
    let cfg = Arc::new(cc::tls_config(&Trust::Pin(token.ca_pin), None, ALPN)?);
    let ControlAnswer::Enrolled(e) = cc::request(&controller, cfg, &req, LIMIT).await? else {
        return Err(Fail(
            "the controller answered something other than a certificate".into(),
        ));
    };
    let profile = Profile {
        identity: e.identity.clone(),
        controller,
        controller_spa_key: e.controller_spa_key.clone(),
        controller_spa_port: a.spa_port,
        expires_at: e.expires_at.clone(),
        gateways: e.gateways.clone(),
    };
    write_identity(&dir, &e, &profile, &tls_key, &spa)?;
    report(&profile, &dir)
}

fn report(p: &Profile, dir: &std::path::Path) -> Result<(), Fail> {
    println!(
        "{}",
        serde_json::json!({
            "identity": p.identity,
            "expires_at": p.expires_at,
            "dir": dir.display().to_string(),
            "gateways": p.gateways.iter().map(|g| &g.name).collect::<Vec<_>>(),
        })
    );
    Ok(())
}

/// Writes the identity into `DIR.new`, then swaps it in for `DIR`: a crash leaves either the
/// old identity or the new one whole, never a key beside a certificate it does not fit.
fn write_identity(
    dir: &std::path::Path,
    e: &Enrolled,
    profile: &Profile,
    tls_key: &rcgen::KeyPair,
    spa: &kagi_crypto::hpke::HpkeKeyPair,
) -> Result<(), Fail> {
    let sibling = |suffix: &str| {
        let mut name = dir.file_name().unwrap_or_default().to_os_string();
        name.push(suffix);
        dir.with_file_name(name)
    };
    let (staged, old) = (sibling(".new"), sibling(".old"));
    let _ = std::fs::remove_dir_all(&staged);
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&staged)
            .map_err(|e| Fail(format!("cannot create {}: {e}", staged.display())))?;
    }
    let key_pem = zeroize::Zeroizing::new(tls_key.serialize_pem());
    let spa_hex = zeroize::Zeroizing::new(hex::encode(spa.private_bytes().expose()));
    cc::write_file(&staged, "key.pem", key_pem.as_bytes(), true)?;
    cc::write_file(&staged, "spa.key", spa_hex.as_bytes(), true)?;
    cc::write_file(&staged, "ca.pem", e.ca.as_bytes(), false)?;
    cc::write_file(&staged, "cert.pem", e.certificate.as_bytes(), false)?;
    cc::write_file(
        &staged,
        "profile.json",
        serde_json::to_string_pretty(profile)
            .map_err(|e| Fail(e.to_string()))?
            .as_bytes(),
        false,
    )?;
    let _ = std::fs::remove_dir_all(&old);
    if dir.exists() {
        std::fs::rename(dir, &old)
            .map_err(|e| Fail(format!("cannot move {} aside: {e}", dir.display())))?;
    }
    std::fs::rename(&staged, dir)
        .map_err(|e| Fail(format!("cannot put {} in place: {e}", dir.display())))?;
    let _ = std::fs::remove_dir_all(&old);
    Ok(())
}
