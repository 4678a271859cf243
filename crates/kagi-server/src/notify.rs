//! Customer notification: each key use a policy's `notify` rule matches is POSTed, signed,
//! to the customer's webhook. Delivery runs beside the key service: a dead or slow receiver
//! never delays or fails a key operation; it only costs retries, and every delivery's result
//! (delivered, or given up with the last error) is on the audit log.
//!
//! Wire format (`docs/notifications.md`): `POST URL` with `Content-Type: application/json`,
//! `X-Kagi-Notification: <id>` and `X-Kagi-Signature: sha256=<hex HMAC-SHA-256(secret, body)>`;
//! the body is the audit record of the use plus `notification_id` and `rules`.

use std::time::Duration;

use kagi_audit::{AuditEvent, AuditLog, Outcome};
use kagi_crypto::SecretBytes;
use tokio::sync::mpsc;

/// Notices waiting for delivery at most; beyond that a notice is dropped and that is audited.
const QUEUE: usize = 10_000;
/// Deliveries in flight at once.
const PARALLEL: usize = 16;
/// One attempt's time limit.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where and how to notify.
#[derive(Clone)]
pub struct NotifyConfig {
    /// The webhook (http or https).
    pub url: String,
    /// HMAC key for `X-Kagi-Signature`.
    pub secret: SecretBytes,
    /// Attempts per notice (at least 1).
    pub max_attempts: u32,
    /// Wait before the second attempt; doubled for each one after.
    pub backoff: Duration,
}

impl std::fmt::Debug for NotifyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NotifyConfig")
            .field("url", &self.url)
            .field("max_attempts", &self.max_attempts)
            .field("backoff", &self.backoff)
            .finish_non_exhaustive()
    }
}

impl NotifyConfig {
    /// Checks the settings; the secret comes from environment variable `secret_env`.
    pub fn new(
        url: &str,
        secret_env: &str,
        max_attempts: Option<u32>,
        backoff: Option<&str>,
    ) -> Result<Self, String> {
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            return Err(format!(
                "[notify] url {url:?} is not an http:// or https:// URL"
            ));
        }
        let secret = std::env::var(secret_env).map_err(|_| {
            format!("[notify] secret_env: environment variable {secret_env} is not set")
        })?;
        if secret.len() < 16 {
            return Err(format!(
                "[notify] the secret in {secret_env} is shorter than 16 characters"
            ));
        }
        let backoff = match backoff {
            Some(b) => match b.strip_suffix("ms").map(str::parse::<u64>) {
                Some(Ok(ms)) if ms > 0 => Duration::from_millis(ms),
                Some(_) => {
                    return Err(format!("[notify] backoff {b:?} is not a positive duration"))
                }
                None => Duration::from_secs(
                    kagi_keys::duration::parse_seconds(b)
                        .map_err(|e| format!("[notify] backoff: {e}"))?,
                ),
            },
            None => Duration::from_secs(1),
        };
        Ok(Self {
            url: url.to_string(),
            secret: SecretBytes::new(secret.into_bytes()),
            max_attempts: max_attempts.unwrap_or(5).clamp(1, 20),
            backoff,
        })
    }
}

/// One notice: the event and the rules that asked for it.
#[derive(Debug)]
struct Notice {
    id: String,
    rules: Vec<String>,
    event: AuditEvent,
}

/// The sending side, held by the key service.
#[derive(Debug, Clone)]
pub struct Notifier {
    tx: mpsc::Sender<Notice>,
    audit: AuditLog,
    node: String,
}

/// `sha256=<hex>` of `body` under `secret`: what a receiver recomputes.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    format!(
        "sha256={}",
        hex::encode(kagi_crypto::hmac_sha256(secret, body))
    )
}

impl Notifier {
    /// Starts the delivery task.
    pub fn start(cfg: NotifyConfig, audit: AuditLog, node: String) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(deliver_all(cfg, rx, audit.clone(), node.clone()));
        Self { tx, audit, node }
    }

    /// Queues a notice for `event`; never waits.
    pub fn notify(&self, rules: Vec<String>, event: AuditEvent) {
        let n = Notice {
            id: hex::encode(kagi_crypto::random_array::<12>()),
            rules,
            event,
        };
        if let Err(mpsc::error::TrySendError::Full(n) | mpsc::error::TrySendError::Closed(n)) =
            self.tx.try_send(n)
        {
            let audit = self.audit.clone();
            let node = self.node.clone();
            tokio::spawn(async move {
                record(
                    &audit,
                    &node,
                    &n,
                    Outcome::Error,
                    "dropped: the notification queue is full".into(),
                )
                .await;
            });
        }
    }
}

async fn deliver_all(
    cfg: NotifyConfig,
    mut rx: mpsc::Receiver<Notice>,
    audit: AuditLog,
    node: String,
) {
    let client = match reqwest::Client::builder().timeout(ATTEMPT_TIMEOUT).build() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the notification HTTP client; notifications are off");
            return;
        }
    };
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(PARALLEL));
    while let Some(n) = rx.recv().await {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (cfg, client, audit, node) = (cfg.clone(), client.clone(), audit.clone(), node.clone());
        tokio::spawn(async move {
            let _permit = permit;
            deliver(&cfg, &client, &audit, &node, n).await;
        });
    }
}

async fn deliver(
    cfg: &NotifyConfig,
    client: &reqwest::Client,
    audit: &AuditLog,
    node: &str,
    n: Notice,
) {
    let mut body = serde_json::to_value(&n.event).unwrap_or_default();
    body["notification_id"] = serde_json::json!(n.id);
    body["rules"] = serde_json::json!(n.rules);
    let bytes = body.to_string().into_bytes();
    let sig = signature(cfg.secret.expose(), &bytes);
    let attempts = cfg.max_attempts.max(1);
    let mut wait = cfg.backoff;
    let mut last = String::new();
    for attempt in 1..=attempts {
        let r = client
            .post(&cfg.url)
            .header("content-type", "application/json")
            .header("x-kagi-notification", &n.id)
            .header("x-kagi-signature", &sig)
            .body(bytes.clone())
            .send()
            .await;
        match r {
            Ok(resp) if resp.status().is_success() => {
                let why = format!(
                    "notification {} delivered to {} (attempt {attempt})",
                    n.id, cfg.url
                );
                record(audit, node, &n, Outcome::Success, why).await;
                return;
            }
            Ok(resp) => last = format!("the receiver answered HTTP {}", resp.status().as_u16()),
            Err(e) => last = format!("{e}"),
        }
        if attempt < attempts {
            tokio::time::sleep(wait).await;
            wait = wait.saturating_mul(2);
        }
    }
    let why = format!(
        "notification {} not delivered to {} after {attempts} attempts: {last}",
        n.id, cfg.url
    );
    tracing::warn!("{why}");
    record(audit, node, &n, Outcome::Error, why).await;
}

async fn record(audit: &AuditLog, node: &str, n: &Notice, outcome: Outcome, reason: String) {
    let ev = AuditEvent {
        time: AuditEvent::now_string(),
        node: node.to_string(),
        principal: "system".into(),
        source: None,
        operation: "notify.delivery".into(),
        key: n.event.key.clone(),
        key_version: n.event.key_version,
        context: Default::default(),
        justification: n.event.justification.clone(),
        request_id: n.event.request_id.clone(),
        outcome,
        reason: Some(format!("{reason} ({})", n.rules.join(", "))),
    };
    if let Err(e) = audit.record(ev).await {
        tracing::error!(error = %e, "cannot record a notification delivery on the audit log");
    }
}
