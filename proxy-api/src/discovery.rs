//! Client-side mechanics of the Discovery stream, shared by the proxy, the fuzz targets and the
//! tests. No domain logic: resources are opaque here apart from their names and kinds.
//!
//! [`apply_response`] applies one [`DiscoveryResponse`] to the resources a proxy holds,
//! atomically; [`ClientState`] wraps it with the version bookkeeping and builds the `Ack`/`Nack`
//! to send back.
//!
//! The server side has one implementation, the operator's (`weft_operator::discovery`): it
//! computes resource and config versions when it compiles a snapshot and writes responses
//! straight in protobuf wire format. `operator/tests/wire_contract.rs` checks those bytes
//! against the generated types of this crate and against [`apply_response`].

use std::collections::BTreeMap;

use crate::names::{NameError, ResourceName};
use crate::v1::{
    discovery_request, resource, Ack, DiscoveryRequest, DiscoveryResponse, Nack, Resource,
    Subscribe,
};

/// The resources a proxy holds, by name.
pub type ResourceMap = BTreeMap<String, Resource>;

/// Why a [`DiscoveryResponse`] was rejected. The proxy reports it in a `Nack` and keeps its
/// previous resources.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    /// The response has no nonce, so it cannot be acknowledged.
    #[error("response has an empty nonce")]
    EmptyNonce,
    /// A resource has an empty name.
    #[error("resource with an empty name")]
    EmptyName,
    /// A resource name has a known prefix but is malformed.
    #[error(transparent)]
    InvalidName(NameError),
    /// The same name appears twice among `resources`, `removed` and `unchanged`.
    #[error("resource {0:?} is listed more than once")]
    Duplicate(String),
    /// A resource of a known name carries no kind.
    #[error("resource {0:?} has no kind")]
    MissingKind(String),
    /// A resource's kind does not match its name.
    #[error("resource {name:?} carries {found} but its name calls for {expected}")]
    KindMismatch {
        /// The resource name.
        name: String,
        /// The kind the name calls for.
        expected: &'static str,
        /// The kind the resource carries.
        found: &'static str,
    },
    /// A full-state response lists as unchanged a resource that the proxy does not hold.
    #[error("resource {0:?} is listed as unchanged but is not held")]
    UnchangedNotHeld(String),
    /// `removed` is set in a full-state response.
    #[error("a full-state response must not list removed resources")]
    RemovedInFullState,
    /// `unchanged` is set in an incremental response.
    #[error("an incremental response must not list unchanged resources")]
    UnchangedInIncremental,
}

impl ApplyError {
    /// The resource names the error is about, for `Nack.resource_names`.
    pub fn resource_names(&self) -> Vec<String> {
        match self {
            Self::Duplicate(n)
            | Self::MissingKind(n)
            | Self::UnchangedNotHeld(n)
            | Self::KindMismatch { name: n, .. } => vec![n.clone()],
            Self::InvalidName(NameError::Malformed(n, _) | NameError::UnknownKind(n)) => {
                vec![n.clone()]
            }
            Self::EmptyNonce
            | Self::EmptyName
            | Self::RemovedInFullState
            | Self::UnchangedInIncremental => Vec::new(),
        }
    }
}

/// The name of a resource kind, for messages.
pub fn kind_name(kind: &resource::Kind) -> &'static str {
    match kind {
        resource::Kind::Inbound(_) => "inbound",
        resource::Kind::Outbound(_) => "outbound",
        resource::Kind::Endpoints(_) => "endpoints",
        resource::Kind::Ip(_) => "ip",
    }
}

fn check_resource(res: &Resource) -> Result<(), ApplyError> {
    if res.name.is_empty() {
        return Err(ApplyError::EmptyName);
    }
    if res.name.starts_with(crate::names::IP_PREFIX) {
        if crate::names::parse_ip_name(&res.name).is_none() {
            return Err(ApplyError::InvalidName(NameError::Malformed(
                res.name.clone(),
                "expected ip:<address> in canonical form",
            )));
        }
        let kind = res
            .kind
            .as_ref()
            .ok_or_else(|| ApplyError::MissingKind(res.name.clone()))?;
        let found = kind_name(kind);
        if found != "ip" {
            return Err(ApplyError::KindMismatch {
                name: res.name.clone(),
                expected: "ip",
                found,
            });
        }
        return Ok(());
    }
    let expected = match ResourceName::parse(&res.name) {
        Ok(ResourceName::Inbound) => "inbound",
        Ok(ResourceName::Outbound { .. }) => "outbound",
        Ok(ResourceName::Endpoints { .. }) => "endpoints",
        // A kind added by a newer operator: kept, and ignored by the proxy's conversion.
        Err(NameError::UnknownKind(_)) => return Ok(()),
        Err(e @ NameError::Malformed(..)) => return Err(ApplyError::InvalidName(e)),
    };
    let kind = res
        .kind
        .as_ref()
        .ok_or_else(|| ApplyError::MissingKind(res.name.clone()))?;
    let found = kind_name(kind);
    if found != expected {
        return Err(ApplyError::KindMismatch {
            name: res.name.clone(),
            expected,
            found,
        });
    }
    Ok(())
}

/// Applies `resp` to `state`, atomically: on error `state` is left as it was.
///
/// A full-state response replaces everything with `resp.resources`, keeping the held resources
/// named in `resp.unchanged`. An incremental response adds or replaces `resp.resources` by name
/// and drops `resp.removed` (names not held are ignored).
pub fn apply_response(
    state: &mut BTreeMap<String, Resource>,
    resp: &DiscoveryResponse,
) -> Result<(), ApplyError> {
    if resp.nonce.is_empty() {
        return Err(ApplyError::EmptyNonce);
    }
    let mut seen = std::collections::BTreeSet::new();
    for res in &resp.resources {
        check_resource(res)?;
        if !seen.insert(res.name.as_str()) {
            return Err(ApplyError::Duplicate(res.name.clone()));
        }
    }
    for name in resp.removed.iter().chain(&resp.unchanged) {
        if !seen.insert(name.as_str()) {
            return Err(ApplyError::Duplicate(name.clone()));
        }
    }

    if resp.full_state {
        if !resp.removed.is_empty() {
            return Err(ApplyError::RemovedInFullState);
        }
        let mut next = ResourceMap::new();
        for name in &resp.unchanged {
            let held = state
                .get(name)
                .ok_or_else(|| ApplyError::UnchangedNotHeld(name.clone()))?;
            next.insert(name.clone(), held.clone());
        }
        for res in &resp.resources {
            next.insert(res.name.clone(), res.clone());
        }
        *state = next;
    } else {
        if !resp.unchanged.is_empty() {
            return Err(ApplyError::UnchangedInIncremental);
        }
        // Everything is validated above, so the in-place update cannot fail half-way.
        for name in &resp.removed {
            state.remove(name);
        }
        for res in &resp.resources {
            state.insert(res.name.clone(), res.clone());
        }
    }
    Ok(())
}

/// `Subscribe.known_versions` for what `state` holds.
pub fn known_versions(state: &ResourceMap) -> BTreeMap<String, String> {
    state
        .iter()
        .map(|(name, res)| (name.clone(), res.version.clone()))
        .collect()
}

impl DiscoveryRequest {
    /// A `Subscribe` request (the first message of every stream).
    pub fn subscribe(subscribe: Subscribe) -> Self {
        Self {
            request: Some(discovery_request::Request::Subscribe(subscribe)),
        }
    }

    /// The `Ack` for a response the proxy applied.
    pub fn ack(resp: &DiscoveryResponse) -> Self {
        Self {
            request: Some(discovery_request::Request::Ack(Ack {
                nonce: resp.nonce.clone(),
                version: resp.version.clone(),
            })),
        }
    }

    /// The `Nack` for a response the proxy rejected, keeping `kept_version`.
    pub fn nack(
        resp: &DiscoveryResponse,
        kept_version: &str,
        error: impl std::fmt::Display,
        resource_names: Vec<String>,
    ) -> Self {
        Self {
            request: Some(discovery_request::Request::Nack(Nack {
                nonce: resp.nonce.clone(),
                kept_version: kept_version.to_owned(),
                error: error.to_string(),
                resource_names,
            })),
        }
    }
}

/// Reference client-side state: the resources a proxy holds and the version of the last applied
/// response.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClientState {
    resources: ResourceMap,
    version: String,
}

impl ClientState {
    /// Empty state (a proxy that never heard from the control plane).
    pub fn new() -> Self {
        Self::default()
    }

    /// The resources held.
    pub fn resources(&self) -> &ResourceMap {
        &self.resources
    }

    /// The version of the last applied response; empty if none.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// `Subscribe.known_versions` for a (re)connect.
    pub fn known_versions(&self) -> BTreeMap<String, String> {
        known_versions(&self.resources)
    }

    /// Applies `resp` if it is valid and returns the `Ack` to send; otherwise keeps the current
    /// state and returns the `Nack` with the reason.
    pub fn handle(
        &mut self,
        resp: &DiscoveryResponse,
    ) -> (DiscoveryRequest, Result<(), Rejection>) {
        self.handle_validated(resp, |_| Ok(()))
    }

    /// Like [`ClientState::handle`], but the new resources must also pass `validate` (e.g. the
    /// proxy's conversion into its own config) before they replace the current ones.
    pub fn handle_validated(
        &mut self,
        resp: &DiscoveryResponse,
        validate: impl FnOnce(&ResourceMap) -> Result<(), Rejection>,
    ) -> (DiscoveryRequest, Result<(), Rejection>) {
        let mut next = self.resources.clone();
        let checked = apply_response(&mut next, resp)
            .map_err(Rejection::from)
            .and_then(|()| validate(&next));
        match checked {
            Ok(()) => {
                self.resources = next;
                self.version = resp.version.clone();
                (DiscoveryRequest::ack(resp), Ok(()))
            }
            Err(rejection) => (
                DiscoveryRequest::nack(
                    resp,
                    &self.version,
                    &rejection.error,
                    rejection.resource_names.clone(),
                ),
                Err(rejection),
            ),
        }
    }
}

/// Why a proxy rejected a response: the content of its `Nack`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// Human-readable reason.
    pub error: String,
    /// Names of the invalid resources, when known.
    pub resource_names: Vec<String>,
}

impl From<ApplyError> for Rejection {
    fn from(e: ApplyError) -> Self {
        Self {
            resource_names: e.resource_names(),
            error: e.to_string(),
        }
    }
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::{endpoints_name, outbound_name, INBOUND};
    use crate::v1::{Endpoint, EndpointSet, InboundPolicy};
    use prost::Message;
    use std::hash::{Hash, Hasher};

    /// A resource versioned by a content hash (what the operator's versions are, by another
    /// hash: the client only compares them).
    fn versioned_resource(name: impl Into<String>, kind: resource::Kind) -> Resource {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        Resource {
            name: String::new(),
            version: String::new(),
            kind: Some(kind.clone()),
        }
        .encode_to_vec()
        .hash(&mut h);
        Resource {
            name: name.into(),
            version: format!("{:016x}", h.finish()),
            kind: Some(kind),
        }
    }

    fn endpoints(svc: &str, last_octet: u8) -> Resource {
        versioned_resource(
            endpoints_name(svc, "demo", 80),
            resource::Kind::Endpoints(EndpointSet {
                endpoints: vec![Endpoint {
                    ip: vec![10, 0, 0, last_octet],
                    port: 8080,
                    ..Default::default()
                }],
            }),
        )
    }

    fn inbound() -> Resource {
        versioned_resource(
            INBOUND,
            resource::Kind::Inbound(InboundPolicy {
                identity: "spiffe://cluster.local/ns/demo/sa/web".into(),
                ..Default::default()
            }),
        )
    }

    fn map(resources: impl IntoIterator<Item = Resource>) -> ResourceMap {
        resources.into_iter().map(|r| (r.name.clone(), r)).collect()
    }

    #[test]
    fn full_state_replaces_everything_but_unchanged() {
        let mut state = map([inbound(), endpoints("a", 1), endpoints("b", 1)]);
        let current = map([inbound(), endpoints("a", 2), endpoints("c", 1)]);
        // What a server sends to a proxy that reported `known_versions(&state)`.
        assert_eq!(known_versions(&state)[INBOUND], current[INBOUND].version);
        let resp = DiscoveryResponse {
            nonce: "n1".into(),
            version: "v1".into(),
            full_state: true,
            resources: vec![endpoints("a", 2), endpoints("c", 1)],
            unchanged: vec![INBOUND.to_owned()],
            ..Default::default()
        };
        apply_response(&mut state, &resp).unwrap();
        assert_eq!(state, current);
    }

    #[test]
    fn incremental_adds_replaces_and_removes() {
        let previous = map([inbound(), endpoints("a", 1), endpoints("b", 1)]);
        let current = map([inbound(), endpoints("a", 2), endpoints("c", 1)]);
        let resp = DiscoveryResponse {
            nonce: "n2".into(),
            version: "v2".into(),
            resources: vec![endpoints("a", 2), endpoints("c", 1)],
            removed: vec![endpoints_name("b", "demo", 80)],
            ..Default::default()
        };
        let mut state = previous.clone();
        apply_response(&mut state, &resp).unwrap();
        assert_eq!(state, current);
        // Removing what is not held is not an error.
        let again = DiscoveryResponse {
            nonce: "n3".into(),
            removed: vec![endpoints_name("b", "demo", 80)],
            ..Default::default()
        };
        apply_response(&mut state, &again).unwrap();
        assert_eq!(state, current);
    }

    #[test]
    fn invalid_responses_leave_state_untouched() {
        let held = map([inbound(), endpoints("a", 1)]);
        let mut bad_kind = endpoints("x", 1);
        bad_kind.name = outbound_name("x", "demo");
        let mut no_kind = inbound();
        no_kind.kind = None;
        let base = DiscoveryResponse {
            nonce: "n".into(),
            ..Default::default()
        };
        let cases = [
            (
                DiscoveryResponse {
                    nonce: String::new(),
                    ..base.clone()
                },
                ApplyError::EmptyNonce,
            ),
            (
                DiscoveryResponse {
                    resources: vec![endpoints("c", 1), endpoints("b", 1)],
                    removed: vec![endpoints_name("a", "demo", 80)],
                    full_state: true,
                    ..base.clone()
                },
                ApplyError::RemovedInFullState,
            ),
            (
                DiscoveryResponse {
                    resources: vec![endpoints("c", 1), endpoints("c", 2)],
                    ..base.clone()
                },
                ApplyError::Duplicate(endpoints_name("c", "demo", 80)),
            ),
            (
                DiscoveryResponse {
                    full_state: true,
                    unchanged: vec![endpoints_name("z", "demo", 80)],
                    ..base.clone()
                },
                ApplyError::UnchangedNotHeld(endpoints_name("z", "demo", 80)),
            ),
            (
                DiscoveryResponse {
                    unchanged: vec![INBOUND.into()],
                    ..base.clone()
                },
                ApplyError::UnchangedInIncremental,
            ),
            (
                DiscoveryResponse {
                    resources: vec![bad_kind],
                    ..base.clone()
                },
                ApplyError::KindMismatch {
                    name: outbound_name("x", "demo"),
                    expected: "outbound",
                    found: "endpoints",
                },
            ),
            (
                DiscoveryResponse {
                    resources: vec![no_kind],
                    ..base.clone()
                },
                ApplyError::MissingKind(INBOUND.into()),
            ),
        ];
        for (resp, expected) in cases {
            let mut state = held.clone();
            assert_eq!(apply_response(&mut state, &resp), Err(expected));
            assert_eq!(state, held);
        }
    }

    #[test]
    fn unknown_kinds_are_kept_for_forward_compatibility() {
        let mut state = ResourceMap::new();
        let future = Resource {
            name: "ratelimit:api.demo".into(),
            version: "1".into(),
            kind: None,
        };
        let resp = DiscoveryResponse {
            nonce: "n".into(),
            resources: vec![future],
            ..Default::default()
        };
        apply_response(&mut state, &resp).unwrap();
        assert!(state.contains_key("ratelimit:api.demo"));
    }

    #[test]
    fn client_state_acks_and_nacks() {
        let mut client = ClientState::new();
        let current = map([inbound()]);
        let resp = DiscoveryResponse {
            nonce: "1".into(),
            version: "v1".into(),
            full_state: true,
            resources: current.values().cloned().collect(),
            ..Default::default()
        };
        let (req, outcome) = client.handle(&resp);
        assert_eq!(outcome, Ok(()));
        assert_eq!(req, DiscoveryRequest::ack(&resp));
        assert_eq!(client.version(), resp.version);

        let bad = DiscoveryResponse {
            nonce: "2".into(),
            version: "v2".into(),
            resources: vec![endpoints("a", 1)],
            ..Default::default()
        };
        let (req, outcome) = client.handle_validated(&bad, |_| {
            Err(Rejection {
                error: "no".into(),
                resource_names: vec![endpoints_name("a", "demo", 80)],
            })
        });
        assert!(outcome.is_err());
        let Some(discovery_request::Request::Nack(nack)) = req.request else {
            panic!("expected a nack, got {req:?}");
        };
        assert_eq!(nack.kept_version, resp.version);
        assert_eq!(nack.error, "no");
        assert_eq!(client.resources(), &current);
    }
}
