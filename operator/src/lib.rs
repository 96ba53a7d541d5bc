//! weft-operator: the control plane library.
#![forbid(unsafe_code)]
pub mod identity;
pub mod inject;
pub mod runtime;
pub mod status;
pub mod model;
pub mod admin;
pub mod discovery;
pub mod webhook;
pub mod compile;
pub mod source;
pub mod leader;
pub mod validate;
