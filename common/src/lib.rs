//! Small pieces that the operator, the core, the proxy and the CLI share, each with one home:
//!
//! - [`spiffe`]: weft's SPIFFE identities (`spiffe://<trust domain>/ns/<namespace>/sa/<sa>`),
//!   parsed and formatted in one place so that identities are values, not strings;
//! - [`backoff`]: the one jittered exponential backoff used by every reconnect loop;
//! - [`duration`]: the one parser of human durations (`500ms`, `2s`, `1.5m`, `1h`).
//!
//! No async runtime, no I/O: everything here is a pure function or value.
#![forbid(unsafe_code)]

pub mod backoff;
pub mod duration;
pub mod spiffe;

pub use backoff::Backoff;
pub use spiffe::{InvalidSpiffeId, SpiffeId};
