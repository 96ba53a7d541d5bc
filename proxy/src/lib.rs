//! weft-proxy: the sidecar library.
#![forbid(unsafe_code)]
