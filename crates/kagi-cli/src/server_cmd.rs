//! `kagi server`: wires storage, audit, seal and the HTTP front-end together.

use std::path::PathBuf;
use std::sync::Arc;

use kagi_server::seal_pkcs11::Pkcs11MasterKey;
use kagi_server::service::{KeyService, ServiceOptions};
use kagi_server::ServerConfig;
use kagi_store::postgres::{PgAuditStore, PgKeyStore};
use kagi_store::sqlite::{SqliteAuditStore, SqliteKeyStore};
use kagi_store::{AuditStore, KeyStore};

use crate::output::Fail;

#[derive(clap::Args, Debug)]
pub struct ServerArgs {
    /// Development mode: embedded storage, auto-unsealed, plain HTTP on loopback. Never for real keys.
    #[arg(long, conflicts_with = "config")]
    dev: bool,
    /// Production configuration file (TOML).
    #[arg(long, required_unless_present = "dev")]
    config: Option<PathBuf>,
    /// Listen address (dev; default 127.0.0.1:7300).
    #[arg(long, requires = "dev")]
    listen: Option<std::net::SocketAddr>,
    /// Data directory (dev; default a fresh temporary directory).
    #[arg(long = "data-dir", requires = "dev")]
    data_dir: Option<PathBuf>,
    /// Directory for the audit database (dev; default the data directory).
    #[arg(long = "audit-dir", requires = "dev")]
    audit_dir: Option<PathBuf>,
    /// Benchmarking only: do not fsync audit commits (records are still written and chained).
    #[arg(long = "bench-audit-no-fsync", requires = "dev", hide = true)]
    audit_no_fsync: bool,
    /// Dev server on PostgreSQL (keys and audit) instead of SQLite; several dev nodes may
    /// share one database and one --data-dir (which then holds only the dev master key).
    #[arg(long = "storage-url", requires = "dev", value_name = "postgres://...")]
    storage_url: Option<String>,
    /// Node name in audit records (default: the host name).
    #[arg(long, requires = "dev")]
    node: Option<String>,
    /// Customer notification webhook (dev; the HMAC secret is read from KAGI_NOTIFY_SECRET).
    #[arg(long = "notify-url", requires = "dev", value_name = "URL")]
    notify_url: Option<String>,
    /// Delivery attempts per notification (dev; default 5).
    #[arg(long = "notify-attempts", requires = "notify_url")]
    notify_attempts: Option<u32>,
    /// Wait before the second attempt, doubled after each (dev; default 1s; e.g. 200ms).
    #[arg(long = "notify-backoff", requires = "notify_url")]
    notify_backoff: Option<String>,
    /// Forward the audit log as syslog to tcp://HOST:PORT (dev).
    #[arg(
        long = "forward-to",
        requires = "dev",
        requires = "forward_cursor",
        value_name = "URL"
    )]
    forward_to: Option<String>,
    /// The forwarding cursor file (dev).
    #[arg(long = "forward-cursor", requires = "forward_to", value_name = "FILE")]
    forward_cursor: Option<PathBuf>,
    /// For --forward-to tls://: the receiver's CA (dev).
    #[arg(long = "forward-ca-cert", requires = "forward_to", value_name = "FILE")]
    forward_ca_cert: Option<PathBuf>,
    /// The console's Perimeter page: the controller's state (SQLite file or postgres:// URL) (dev).
    #[arg(long = "console-perimeter-state", value_name = "STATE")]
    console_perimeter_state: Option<String>,
    /// A perimeter audit chain (SQLite) for the Perimeter page; repeat for several (dev).
    #[arg(
        long = "console-perimeter-audit",
        value_name = "FILE",
        requires = "console_perimeter_state"
    )]
    console_perimeter_audit: Vec<PathBuf>,
}

pub fn host_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "kagi".into())
}

fn fail<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> Fail + '_ {
    move |e| Fail(format!("{what}: {e}"))
}

pub async fn run(a: ServerArgs) -> Result<(), Fail> {
    crate::output::init_logging();
    if a.dev {
        run_dev(a).await
    } else {
        let path = a
            .config
            .ok_or_else(|| Fail("--config FILE or --dev is required".into()))?;
        run_config(ServerConfig::load(&path).map_err(Fail)?).await
    }
}

/// Where a server keeps keys and audit records.
enum Backend<'a> {
    Sqlite {
        key_db: &'a std::path::Path,
        audit_db: &'a std::path::Path,
        durable_audit: bool,
    },
    Postgres {
        url: &'a str,
    },
}

async fn open_stores(b: Backend<'_>) -> Result<(Arc<dyn KeyStore>, kagi_audit::AuditLog), Fail> {
    let (store, astore): (Arc<dyn KeyStore>, Arc<dyn AuditStore>) = match b {
        Backend::Sqlite {
            key_db,
            audit_db,
            durable_audit,
        } => (
            Arc::new(SqliteKeyStore::open(key_db).map_err(fail("cannot open the key store"))?),
            Arc::new(
                SqliteAuditStore::open_with_durability(audit_db, durable_audit)
                    .map_err(fail("cannot open the audit store"))?,
            ),
        ),
        Backend::Postgres { url } => (
            Arc::new(
                PgKeyStore::connect(url)
                    .await
                    .map_err(fail("cannot open the key store on PostgreSQL"))?,
            ),
            Arc::new(
                PgAuditStore::connect(url)
                    .await
                    .map_err(fail("cannot open the audit store on PostgreSQL"))?,
            ),
        ),
    };
    let audit = kagi_audit::AuditLog::start(astore).map_err(fail("cannot start the audit log"))?;
    Ok((store, audit))
}

async fn run_dev(a: ServerArgs) -> Result<(), Fail> {
    let (dir, _keep) = match a.data_dir {
        Some(d) => (d, None),
        None => {
            let t = tempfile::Builder::new()
                .prefix("kagi-dev-")
                .tempdir()
                .map_err(fail("cannot make a data directory"))?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    std::fs::create_dir_all(&dir).map_err(fail("cannot create the data directory"))?;
    let audit_dir = a.audit_dir.unwrap_or_else(|| dir.clone());
    std::fs::create_dir_all(&audit_dir).map_err(fail("cannot create the audit directory"))?;
    let (key_db, audit_db) = (dir.join("kagi.db"), audit_dir.join("audit.db"));
    let backend = match &a.storage_url {
        Some(url) => Backend::Postgres { url },
        None => Backend::Sqlite {
            key_db: &key_db,
            audit_db: &audit_db,
            durable_audit: !a.audit_no_fsync,
        },
    };
    let (store, audit) = open_stores(backend).await?;
    let opts = ServiceOptions {
        node: a.node.clone().unwrap_or_else(host_name),
        dev: true,
        allow_immediate_deletion: true,
        cert_principals: Default::default(),
        hsm: None,
        notify: a
            .notify_url
            .as_deref()
            .map(|u| {
                kagi_server::notify::NotifyConfig::new(
                    u,
                    "KAGI_NOTIFY_SECRET",
                    a.notify_attempts,
                    a.notify_backoff.as_deref(),
                )
            })
            .transpose()
            .map_err(Fail)?,
    };
    let forward = match (&a.forward_to, &a.forward_cursor) {
        (Some(to), Some(cursor)) => {
            let cfg = kagi_server::config::ForwardFileConfig {
                to: to.clone(),
                cursor: cursor.clone(),
                format: None,
                ca_cert: a.forward_ca_cert.clone(),
            };
            vec![cfg.resolve(&opts.node).map_err(Fail)?]
        }
        _ => Vec::new(),
    };
    let audit_store = audit.store().clone();
    let svc = KeyService::open(store, audit, opts)
        .await
        .map_err(|e| Fail(e.to_string()))?;
    let root = svc.start_dev(&dir).await.map_err(|e| Fail(e.to_string()))?;
    for f in forward {
        kagi_server::forward::spawn(f, audit_store.clone());
    }
    let listen = a.listen.unwrap_or_else(|| ([127, 0, 0, 1], 7300).into());
    if !listen.ip().is_loopback() {
        return Err(Fail(format!(
            "--dev serves plain HTTP and only on loopback; {listen} is not a loopback address"
        )));
    }
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(fail(&format!("cannot listen on {listen}")))?;
    let addr = listener.local_addr()?;
    eprintln!(
        "kagi dev server: NOT FOR REAL KEYS. The master key is stored in clear in {}",
        dir.display()
    );
    println!("export KAGI_ADDR=http://{addr}");
    println!("export KAGI_TOKEN={root}");
    use std::io::Write;
    std::io::stdout().flush()?;
    let console = kagi_server::config::ConsoleFileConfig {
        perimeter_state: a.console_perimeter_state.clone(),
        perimeter_state_env: None,
        perimeter_audit: a.console_perimeter_audit.clone(),
    }
    .resolve()
    .map_err(Fail)?;
    serve(
        svc,
        listener,
        None,
        std::time::Duration::from_secs(1),
        console,
    )
    .await
}

async fn run_config(cfg: ServerConfig) -> Result<(), Fail> {
    // The HSM first: if it does not answer, nothing is opened or written.
    let hsm = match cfg.seal.kind.as_str() {
        "pkcs11" => {
            let p = cfg.seal.pkcs11().map_err(Fail)?;
            let k = tokio::task::spawn_blocking(move || Pkcs11MasterKey::open(&p))
                .await
                .map_err(|e| Fail(format!("HSM: {e}")))?
                .map_err(|e| Fail(format!("cannot start: {e}")))?;
            let k: Arc<dyn kagi_server::seal::MasterKey> = Arc::new(k);
            Some(k)
        }
        _ => None,
    };
    let url;
    let (key_db, audit_db);
    let backend = if cfg.storage.backend == "postgres" {
        url = cfg.storage.postgres_url().map_err(Fail)?;
        Backend::Postgres { url: &url }
    } else {
        key_db = cfg
            .storage
            .path
            .clone()
            .ok_or_else(|| Fail("[storage] path is required".into()))?;
        if let Some(p) = key_db.parent() {
            if !p.as_os_str().is_empty() {
                std::fs::create_dir_all(p).map_err(fail("cannot create the storage directory"))?;
            }
        }
        audit_db = cfg
            .audit
            .path
            .clone()
            .unwrap_or_else(|| key_db.with_file_name("audit.db"));
        Backend::Sqlite {
            key_db: &key_db,
            audit_db: &audit_db,
            durable_audit: true,
        }
    };
    let console = cfg.console.resolve().map_err(Fail)?;
    let (store, audit) = open_stores(backend).await?;
    let opts = ServiceOptions {
        node: cfg.node.clone().unwrap_or_else(host_name),
        dev: false,
        allow_immediate_deletion: cfg.allow_immediate_deletion,
        cert_principals: cfg.auth.certificates.clone(),
        hsm,
        notify: cfg
            .notify
            .as_ref()
            .map(|n| n.resolve())
            .transpose()
            .map_err(Fail)?,
    };
    let forward = cfg
        .forward
        .iter()
        .map(|f| f.resolve(&opts.node))
        .collect::<Result<Vec<_>, _>>()
        .map_err(Fail)?;
    let audit_store = audit.store().clone();
    let svc = KeyService::open(store, audit, opts)
        .await
        .map_err(|e| Fail(e.to_string()))?;
    for f in forward {
        kagi_server::forward::spawn(f, audit_store.clone());
    }
    svc.auto_unseal()
        .await
        .map_err(|e| Fail(format!("cannot start: {e}")))?;
    let tls = cfg
        .tls
        .as_ref()
        .map(kagi_server::tls_acceptor)
        .transpose()
        .map_err(Fail)?;
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(fail(&format!("cannot listen on {}", cfg.listen)))?;
    let st = svc.status().map_err(|e| Fail(e.to_string()))?;
    tracing::info!(listen = %cfg.listen, tls = tls.is_some(), initialized = st.initialized, sealed = st.sealed, "kagi key service started");
    serve(
        svc,
        listener,
        tls,
        std::time::Duration::from_secs(5),
        console,
    )
    .await
}

async fn serve(
    svc: Arc<KeyService>,
    listener: tokio::net::TcpListener,
    tls: Option<kagi_server::TlsAcceptor>,
    maintenance_every: std::time::Duration,
    console: kagi_server::console::ConsoleOptions,
) -> Result<(), Fail> {
    // Automatic rotation and the end of deletion windows.
    let maint = svc.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(maintenance_every);
        loop {
            tick.tick().await;
            if let Err(e) = maint.maintain().await {
                tracing::warn!(error = %e, "key maintenance failed");
            }
        }
    });
    let router = kagi_server::api::router_with(svc, console);
    tokio::select! {
        r = kagi_server::serve(listener, router, tls) => r.map_err(fail("server stopped")),
        _ = shutdown_signal() => { tracing::info!("shutting down"); Ok(()) }
    }
}

/// SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

/// Accepts TCP connections on `listener` until SIGINT/SIGTERM and hands each to `on_conn`, with
/// TCP_NODELAY (the perimeter's one-line requests and answers must not wait on delayed ACKs).
/// Accept errors (EMFILE and friends) back off instead of spinning.
pub async fn accept_until_shutdown(
    listener: &tokio::net::TcpListener,
    mut on_conn: impl FnMut(tokio::net::TcpStream, std::net::SocketAddr),
) {
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        on_conn(tcp, peer);
    }
}
