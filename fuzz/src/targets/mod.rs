//! The fuzz targets. Each `pub fn <name>(data: &[u8])` is the plain entry point (what
//! libFuzzer's `fuzz_target!` would call); `run` in each module is the same with feedback for
//! the driver. A target panics only when it found a bug: a panic inside weft, or a broken
//! invariant (asserted with a message that says which).

pub mod compile;
pub mod proxy_config;
pub mod smi;
pub mod transport;

use crate::Features;

/// Manifest parsing and conversion, every SMI version.
pub fn smi(data: &[u8]) {
    smi::run(data, &mut Features::default());
}

/// Manifests → model → compiled config of every proxy → the proxy's own config.
pub fn compile(data: &[u8]) {
    compile::run(data, &mut Features::default());
}

/// A protobuf `DiscoveryResponse` → the proxy's config.
pub fn proxy_config(data: &[u8]) {
    proxy_config::run(data, &mut Features::default());
}

/// `TransportHeader::read`.
pub fn transport_header(data: &[u8]) {
    transport::header(data, &mut Features::default());
}

/// Protocol detection.
pub fn detect(data: &[u8]) {
    transport::detect(data, &mut Features::default());
}
