//! Harness for weft's end-to-end tests.
#![forbid(unsafe_code)]
