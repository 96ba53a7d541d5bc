//! Small pieces that the operator, the core, the proxy and the CLI share, each with one home:
//!
//! - [`spiffe`]: weft's SPIFFE identities (`spiffe://<trust domain>/ns/<namespace>/sa/<sa>`),
//!   parsed and formatted in one place so that identities are values, not strings;
//! - [`backoff`]: the one jittered exponential backoff used by every reconnect loop;
//! - [`duration`]: the one parser of human durations (`500ms`, `2s`, `1.5m`, `1h`);
//! - [`reliability`]: the defaults of timeouts, retries, failure accrual and load shedding;
//! - [`names`]: the resource names of the Discovery protocol (`inbound`, `outbound:…`, `endpoints:…`),
//!   used by the core that compiles them and by `weft-proxy-api` (re-exported there);
//! - `tls` (feature `tls`): the SPIFFE ID of a certificate and the rustls verifiers that check a
//!   chain against the trust anchors in force, then the peer's identity (the proxy's mesh TLS and
//!   both sides of the control-plane TLS);
//! - `ca` (feature `ca`): generation of the mesh CA (trust anchor and issuer) and of issuer
//!   directories (the CLI, the operator and tests).
//!
//! No async runtime, no I/O: everything here is a pure function or value, except the writing of
//! an issuer directory with `std::fs` behind the `ca` feature and `memory::trim` (which asks
//! glibc to return free pages; its one `unsafe` call carries its proof).
#![deny(unsafe_code)]

pub mod backoff;
#[cfg(feature = "ca")]
pub mod ca;
pub mod duration;
pub mod memory;
pub mod names;
pub mod promtext;
pub mod reliability;
pub mod spiffe;
#[cfg(feature = "tls")]
pub mod tls;

pub use backoff::Backoff;
pub use spiffe::{InvalidSpiffeId, SpiffeId};
