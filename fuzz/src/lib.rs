//! Fuzz targets for weft's untrusted-input paths, and a small driver that runs them on the
//! stable toolchain (see `docs/fuzzing.md`).
//!
//! Every target is a plain `fn(&[u8])` ([`targets`]): it never panics on any input unless it
//! found a bug (a panic in weft, or a broken invariant, asserted by the target). The same
//! functions can be driven by libFuzzer (`cargo fuzz`, nightly) later; here [`driver`] runs them:
//! a seed corpus plus mutation (byte-level, and structure-aware for YAML and protobuf), with a
//! cheap feedback signal ([`Features`]: the outcomes an input reached, e.g. "error kind X",
//! "condition Accepted=False/InvalidMatch") instead of code coverage, which needs nightly.
#![forbid(unsafe_code)]

pub mod driver;
pub mod mutate;
pub mod seeds;
pub mod targets;

/// Who an `Authorization` admits, across the version skew of the proxy API: the one place in
/// the fuzz crate that touches the deprecated untyped `Authorization.sources`.
///
/// An operator sets the typed `clients` choice and mirrors it into `sources`; a proxy reads
/// `sources` only when `clients` is unset (an operator one minor version older).
pub mod clients {
    use weft_proxy_api::v1::{authorization::Clients, Authorization, KubeletProbes, MeshClients};

    /// What the deprecated `sources` says for a typed choice (`*` admits any client).
    pub fn untyped(clients: &Clients) -> Vec<String> {
        match clients {
            Clients::Mesh(m) => m.identities.clone(),
            Clients::Probes(KubeletProbes {}) => vec!["*".to_owned()],
        }
    }

    /// Sets the typed choice and its deprecated mirror, as an operator does.
    #[allow(deprecated)]
    pub fn set(a: &mut Authorization, clients: Clients) {
        a.sources = untyped(&clients);
        a.clients = Some(clients);
    }

    /// Sets only the deprecated form, as an operator one minor version older does.
    #[allow(deprecated)]
    pub fn set_untyped(a: &mut Authorization, sources: Vec<String>) {
        a.clients = None;
        a.sources = sources;
    }

    /// Adds a mesh identity to whichever form the authorization carries.
    pub fn push_identity(a: &mut Authorization, identity: String) {
        match a.clients.clone() {
            Some(Clients::Mesh(mut m)) => {
                m.identities.push(identity);
                set(a, Clients::Mesh(m));
            }
            Some(Clients::Probes(_)) => set(
                a,
                Clients::Mesh(MeshClients {
                    identities: vec![identity],
                }),
            ),
            None => {
                let mut sources = admitted(a);
                sources.push(identity);
                set_untyped(a, sources);
            }
        }
    }

    /// Who the authorization admits, as a proxy reads it: the typed choice, or the deprecated
    /// `sources` when it is unset.
    #[allow(deprecated)]
    pub fn admitted(a: &Authorization) -> Vec<String> {
        match &a.clients {
            Some(c) => untyped(c),
            None => a.sources.clone(),
        }
    }
}

use std::hash::{DefaultHasher, Hash, Hasher};

/// The observable outcomes an input reached. The driver keeps an input in its in-memory corpus
/// when it reaches an outcome no earlier input reached (a stand-in for coverage feedback).
#[derive(Debug, Default)]
pub struct Features {
    hits: Vec<u64>,
}

impl Features {
    /// Records an outcome.
    pub fn hit(&mut self, what: impl Hash) {
        let mut h = DefaultHasher::new();
        what.hash(&mut h);
        self.hits.push(h.finish());
    }

    /// Records an outcome with a small number bucketed (0, 1, 2, 3-4, 5-8, ...).
    pub fn hit_n(&mut self, what: &str, n: usize) {
        let bucket = usize::BITS - n.leading_zeros();
        self.hit((what, bucket));
    }

    pub fn hashes(&self) -> &[u64] {
        &self.hits
    }
}

/// A message with digits and quoted values dropped (a bounded set of outcomes).
pub fn message_shape(m: &str) -> String {
    let mut out = String::new();
    let mut quoted = false;
    for c in m.chars() {
        match c {
            '"' | '`' => quoted = !quoted,
            _ if quoted || c.is_ascii_digit() => {}
            _ => out.push(c),
        }
        if out.len() >= 48 {
            break;
        }
    }
    out
}

/// How the driver mutates a target's inputs (every kind also gets the byte-level mutations).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputKind {
    /// Arbitrary bytes.
    Bytes,
    /// YAML/JSON text: also mutated as a document tree.
    Yaml,
    /// A protobuf `DiscoveryResponse`: also mutated as a message.
    DiscoveryResponse,
}

/// A fuzz target.
pub struct Target {
    pub name: &'static str,
    pub about: &'static str,
    /// The target with feedback; the plain `fn(&[u8])` is in [`targets`].
    pub run: fn(&[u8], &mut Features),
    pub kind: InputKind,
    /// Longest input the driver generates.
    pub max_len: usize,
    /// Tokens the byte mutator inserts.
    pub dictionary: &'static [&'static str],
}

/// Every target, in the order `weft-fuzz all` runs them.
pub const TARGETS: &[Target] = &[
    Target {
        name: "smi",
        about: "one YAML/JSON document of any SMI kind and version: parse to the hub, render every version, convert back (lossless)",
        run: targets::smi::run,
        kind: InputKind::Yaml,
        max_len: 4096,
        dictionary: targets::smi::DICTIONARY,
    },
    Target {
        name: "compile",
        about: "a multi-document manifest file: load into the model, compile every proxy, check invariants and that each proxy accepts its config",
        run: targets::compile::run,
        kind: InputKind::Yaml,
        max_len: 16384,
        dictionary: targets::smi::DICTIONARY,
    },
    Target {
        name: "proxy_config",
        about: "a protobuf DiscoveryResponse: apply it as the proxy does and convert to the proxy's Config (invalid resources are rejected, never panic)",
        run: targets::proxy_config::run,
        kind: InputKind::DiscoveryResponse,
        max_len: 8192,
        dictionary: targets::proxy_config::DICTIONARY,
    },
    Target {
        name: "transport_header",
        about: "TransportHeader::read on fuzzed bytes in fuzzed chunks",
        run: targets::transport::header,
        kind: InputKind::Bytes,
        max_len: 64,
        dictionary: targets::transport::DICTIONARY,
    },
    Target {
        name: "detect",
        about: "protocol detection on fuzzed bytes in fuzzed chunks: same answer however the bytes are chunked, every byte replayed",
        run: targets::transport::detect,
        kind: InputKind::Bytes,
        max_len: 256,
        dictionary: targets::transport::DICTIONARY,
    },
];

/// The target called `name`.
pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}
