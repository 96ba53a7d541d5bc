//! A test double of the server side of Discovery, for the client-side tests of this crate: it
//! builds responses from snapshots of one proxy's resources. It is not a second implementation of
//! the protocol's server side (the operator's, in `weft_operator::discovery`, is the one that
//! runs, and `operator/tests/wire_contract.rs` checks its bytes against this crate's types);
//! versions here are test-local content hashes, which a client only ever compares.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};

use prost::Message;
use weft_proxy_api::v1::{resource, DiscoveryResponse, Resource};
use weft_proxy_api::ResourceMap;

fn hash(bytes: &[u8]) -> String {
    // Deterministic within one build (fixed keys), which is all these tests need.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    format!("{:016x}", h.finish())
}

/// A resource named `name` with `kind`, versioned by a hash of its content.
pub fn versioned_resource(name: impl Into<String>, kind: resource::Kind) -> Resource {
    let version = hash(
        &Resource {
            kind: Some(kind.clone()),
            ..Default::default()
        }
        .encode_to_vec(),
    );
    Resource {
        name: name.into(),
        version,
        kind: Some(kind),
    }
}

/// A version of a whole config, from the names and versions of its resources.
pub fn config_version(resources: &ResourceMap) -> String {
    let mut bytes = Vec::new();
    for (name, res) in resources {
        for s in [name, &res.version] {
            bytes.extend_from_slice(&(s.len() as u64).to_le_bytes());
            bytes.extend_from_slice(s.as_bytes());
        }
    }
    hash(&bytes)
}

/// The first response of a stream: every resource of `current`, except those the proxy reported
/// in `known` with their current version, which are listed in `unchanged` instead.
pub fn full_state_response(
    current: &ResourceMap,
    known: &BTreeMap<String, String>,
    nonce: impl Into<String>,
) -> DiscoveryResponse {
    let mut resources = Vec::new();
    let mut unchanged = Vec::new();
    for (name, res) in current {
        if !res.version.is_empty() && known.get(name) == Some(&res.version) {
            unchanged.push(name.clone());
        } else {
            resources.push(res.clone());
        }
    }
    DiscoveryResponse {
        nonce: nonce.into(),
        version: config_version(current),
        full_state: true,
        resources,
        removed: Vec::new(),
        unchanged,
        ..Default::default()
    }
}

/// The incremental response that takes a proxy from `previous` to `current`, or `None` when
/// nothing changed.
pub fn incremental_response(
    previous: &ResourceMap,
    current: &ResourceMap,
    nonce: impl Into<String>,
) -> Option<DiscoveryResponse> {
    let resources: Vec<Resource> = current
        .iter()
        .filter(|(name, res)| previous.get(*name) != Some(*res))
        .map(|(_, res)| res.clone())
        .collect();
    let removed: Vec<String> = previous
        .keys()
        .filter(|name| !current.contains_key(*name))
        .cloned()
        .collect();
    if resources.is_empty() && removed.is_empty() {
        return None;
    }
    Some(DiscoveryResponse {
        nonce: nonce.into(),
        version: config_version(current),
        full_state: false,
        resources,
        removed,
        unchanged: Vec::new(),
        ..Default::default()
    })
}
