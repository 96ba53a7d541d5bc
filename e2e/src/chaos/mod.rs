//! The pieces of the failure-scenario benchmark (`e2e/bench/chaos.sh`, issue #16) that are worth
//! testing: a minimal HTTP/1.1 framing shared by its backend and load generator ([`http1`]), and
//! the figures computed from a run's per-request record ([`report`]: percentiles, goodput, time
//! until at least 99.9 % of requests succeed again, requests lost).
//!
//! The binaries are `chaos_backend` (an HTTP app whose faults are switched on a control port:
//! refuse connections, hang, answer a status, add latency, a capacity limit) and `chaos_load` (an
//! open-loop load generator at a fixed rate that records every request's start, status and
//! latency).

pub mod http1;
pub mod report;
