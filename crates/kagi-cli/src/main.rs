//! `kagi`: one binary for the key service, its operators and its clients.
//! Argument parsing and output only; everything else lives in the library crates.
#![forbid(unsafe_code)]

mod admin;
mod audit_cmd;
mod cloud_cmd;
mod compliance_cmd;
mod connect_cmd;
mod control_client;
mod controller;
mod datakey;
mod enroll_cmd;
mod envelope_cmd;
mod gateway;
mod keys;
mod output;
mod perimeter_audit;
mod server_cmd;
mod spa_cmd;
mod spad;
mod tokenize_cmd;

use clap::{Parser, Subcommand};

use output::Fail;

// glibc malloc under two busy runtime threads spent ~17% of server CPU in allocation and
// consolidation (perf, scripts/bench generate @64); mimalloc's per-thread heaps avoid it.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Where the client connects: flags override `KAGI_ADDR`, `KAGI_TOKEN`, `KAGI_CACERT`.
#[derive(clap::Args, Debug, Clone)]
pub struct Conn {
    /// Key service address (env KAGI_ADDR).
    #[arg(long, global = true, env = "KAGI_ADDR", default_value = kagi_client::DEFAULT_ADDR, hide_env_values = true)]
    addr: String,
    /// Token (env KAGI_TOKEN).
    #[arg(long, global = true, env = "KAGI_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// CA certificate for https:// addresses (env KAGI_CACERT).
    #[arg(
        long = "ca-cert",
        global = true,
        env = "KAGI_CACERT",
        hide_env_values = true
    )]
    ca_cert: Option<std::path::PathBuf>,
}

impl Conn {
    fn client(&self) -> Result<kagi_client::Client, Fail> {
        let mut cfg = kagi_client::ClientConfig::from_env();
        cfg.addr = self.addr.clone();
        cfg.token = self.token.clone().filter(|t| !t.is_empty());
        cfg.ca_cert = self.ca_cert.clone();
        Ok(kagi_client::Client::new(cfg)?)
    }
}

#[derive(Parser, Debug)]
#[command(
    name = "kagi",
    version,
    about = "Customer-held keys behind a zero-trust door"
)]
struct Cli {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the key service.
    Server(server_cmd::ServerArgs),
    /// Show whether the key service is initialized and sealed.
    Status(output::Out),
    /// Initialize, unseal and seal the key service.
    #[command(subcommand)]
    Operator(admin::OperatorCmd),
    /// Manage keys (KEKs).
    #[command(subcommand)]
    Key(keys::KeyCmd),
    /// Generate, decrypt and re-encrypt data keys.
    #[command(subcommand)]
    Datakey(datakey::DatakeyCmd),
    /// Manage policies.
    #[command(subcommand)]
    Policy(admin::PolicyCmd),
    /// Create and revoke tokens.
    #[command(subcommand)]
    Token(admin::TokenCmd),
    /// Read, export and verify the audit log.
    #[command(subcommand)]
    Audit(audit_cmd::AuditCmd),
    /// Envelope-encrypt a file or pipe under a key (the data key is wiped after use).
    Encrypt(envelope_cmd::EncryptArgs),
    /// Decrypt an envelope file (output appears only if the whole file authenticates).
    Decrypt(envelope_cmd::DecryptArgs),
    /// Single Packet Authorization client tools (fwknop-compatible).
    #[command(subcommand)]
    Spa(spa_cmd::SpaCmd),
    /// The SPA daemon: opens ports on nftables for valid knocks, answers nothing.
    Spad(spad::SpadArgs),
    /// Perimeter gateway: mutual TLS in, the perimeter policy, a splice to the service.
    Gateway(gateway::GatewayArgs),
    /// Reach a service through a perimeter gateway on a local port.
    Connect(connect_cmd::ConnectArgs),
    /// Perimeter controller: identities, internal CA, enrollment, policy for gateways.
    Controller(controller::ControllerArgs),
    /// Enroll this host with a perimeter controller using a one-time token.
    Enroll(enroll_cmd::EnrollArgs),
    /// AWS KMS external key stores (XKS proxy): logical key stores and their credentials.
    #[command(subcommand)]
    Xks(cloud_cmd::XksCmd),
    /// The AWS-KMS-compatible API: SigV4 credentials mapped to kagi policies.
    #[command(subcommand)]
    Aws(cloud_cmd::AwsCmd),
    /// Format-preserving tokens (FF1) for values, one per line in input order.
    Tokenize(tokenize_cmd::TokenizeArgs),
    /// The values behind format-preserving tokens.
    Detokenize(tokenize_cmd::DetokenizeArgs),
    /// CAIQ-style answers to key-management control questions, from live state.
    #[command(subcommand)]
    Compliance(compliance_cmd::ComplianceCmd),
}

fn main() {
    let cli = Cli::parse();
    output::raise_open_files_limit();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => output::die(&format!("cannot start the async runtime: {e}")),
    };
    let r = rt.block_on(async move {
        match cli.cmd {
            Cmd::Server(a) => server_cmd::run(a).await,
            Cmd::Status(o) => admin::status(&cli.conn, &o).await,
            Cmd::Operator(c) => admin::operator(&cli.conn, c).await,
            Cmd::Key(c) => keys::run(&cli.conn, c).await,
            Cmd::Datakey(c) => datakey::run(&cli.conn, c).await,
            Cmd::Policy(c) => admin::policy(&cli.conn, c).await,
            Cmd::Token(c) => admin::token(&cli.conn, c).await,
            Cmd::Audit(c) => audit_cmd::run(&cli.conn, c).await,
            Cmd::Encrypt(a) => envelope_cmd::encrypt(&cli.conn, a).await,
            Cmd::Decrypt(a) => envelope_cmd::decrypt(&cli.conn, a).await,
            Cmd::Spa(c) => spa_cmd::run(c),
            Cmd::Spad(a) => spad::run(a).await,
            Cmd::Gateway(a) => gateway::run(a).await,
            Cmd::Connect(a) => connect_cmd::run(a).await,
            Cmd::Controller(a) => controller::run(a).await,
            Cmd::Enroll(a) => enroll_cmd::run(a).await,
            Cmd::Xks(c) => cloud_cmd::xks(&cli.conn, c).await,
            Cmd::Aws(c) => cloud_cmd::aws(&cli.conn, c).await,
            Cmd::Tokenize(a) => tokenize_cmd::tokenize(&cli.conn, a).await,
            Cmd::Detokenize(a) => tokenize_cmd::detokenize(&cli.conn, a).await,
            Cmd::Compliance(c) => compliance_cmd::run(&cli.conn, c).await,
        }
    });
    if let Err(f) = r {
        output::die(&f.0);
    }
}
