//! kagi's zero-trust perimeter (SDP): what the controller decides. Pure — no I/O, no clock.
//!
//! - [`policy`]: identities, groups, services, allow/deny rules (deny wins, default deny),
//!   recurring time windows with a time zone, just-in-time grants and device-posture
//!   requirements; [`policy::PerimeterPolicy::decide`] answers "would X reach Y at time T with
//!   posture P, and by which rule" (`kagi policy test`).
//! - [`control`]: the controller's wire messages (enrollment tokens, enroll, sync, renew).
//! - [`tunnel`]: the request and answer lines of a `kagi connect` tunnel through a gateway.
#![forbid(unsafe_code)]

pub mod control;
pub mod policy;
pub mod tunnel;
