//! kagi's key service. [`service::KeyService`] is the one core every protocol front-end
//! calls (the native `/v1` HTTP API in [`api`], the AWS XKS proxy API and the AWS-KMS-compatible JSON API); it enforces sealing, authentication,
//! policy and the audit rule "no record, no operation".
#![forbid(unsafe_code)]

pub mod api;
mod aws_http;
pub mod backup;
mod cloud_api;
pub mod compliance;
pub mod config;
pub mod console;
mod error;
pub mod forward;
mod kms_api;
mod listener;
mod metrics;
pub mod notify;
mod openapi;
pub mod seal;
pub mod seal_pkcs11;
pub mod service;
mod tokens;
mod tokens_api;
mod xks_api;

pub use config::ServerConfig;
pub use error::ServiceError;
pub use listener::{mtls_acceptor, serve, subject_cn, subject_cn_and_serial, tls_acceptor};
pub use tokio_rustls::TlsAcceptor;
