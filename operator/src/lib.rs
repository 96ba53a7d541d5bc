//! weft-operator: the control plane library.
#![forbid(unsafe_code)]
pub mod admin;
pub mod compile;
pub mod discovery;
pub mod identity;
pub mod inject;
pub mod leader;
pub mod model;
pub mod runtime;
pub mod shutdown;
pub mod source;
pub mod status;
pub mod validate;
pub mod webhook;
