//! The one rule for invalid references, as typed values.
//!
//! The compiler builds what is in force (routes, matches, backends) and the status conditions
//! from the same values computed here, so the two cannot disagree:
//!
//! * [`match_problems`]: why an HTTP match cannot be compiled. A match with any problem is left
//!   out everywhere (TrafficSplit matches and TrafficTarget rules), so it routes and allows
//!   nothing; the HTTPRouteGroup says so (`Accepted=False`, `InvalidMatch`).
//! * [`SplitPlan`]/[`SplitIssue`]: what a TrafficSplit puts in force and every issue found on
//!   the way (computed by [`crate::analysis::split_plan`], the split's analysis against the
//!   model). A backend that cannot be resolved keeps its weight and fails (the proxy answers 503
//!   with [`SplitIssue::message`]); a split whose matches all fail to resolve applies to no
//!   request; a split with no weight fails the requests it matches.
//! * [`precedence`]: which of two splits on one root wins, and why ([`Precedence`]).

use std::cmp::Ordering;

use weft_smi::hub;

use super::types::*;
use crate::model::{Model, ObjectRef};
use crate::reason::Reason;

// ---------------------------------------------------------------------------------------------
// HTTP matches.

/// Why one HTTP match cannot be compiled.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum MatchProblem {
    /// The path regex does not compile (on its own, or as the proxy compiles it).
    InvalidPathRegex { regex: String, error: String },
    /// The header name is not an HTTP token.
    InvalidHeaderName { header: String },
    /// A header value regex does not compile (on its own, or as the proxy compiles it).
    InvalidHeaderRegex {
        header: String,
        regex: String,
        error: String,
    },
    /// Not one of the methods SMI allows ([`weft_smi::specs::METHODS`], any case).
    UnknownMethod { method: String },
}

impl MatchProblem {
    /// The validator's (admission's) reason for this problem.
    pub fn reason(&self) -> Reason {
        match self {
            MatchProblem::InvalidPathRegex { .. } | MatchProblem::InvalidHeaderRegex { .. } => {
                Reason::InvalidRegex
            }
            MatchProblem::InvalidHeaderName { .. } => Reason::InvalidHeaderName,
            MatchProblem::UnknownMethod { .. } => Reason::UnknownMethod,
        }
    }
}

impl std::fmt::Display for MatchProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MatchProblem::InvalidPathRegex { regex, error } => {
                write!(f, "invalid pathRegex {regex:?}: {error}")
            }
            MatchProblem::InvalidHeaderName { header } => {
                write!(f, "{header:?} is not a valid header name")
            }
            MatchProblem::InvalidHeaderRegex {
                header,
                regex,
                error,
            } => write!(f, "header {header:?}: invalid regex {regex:?}: {error}"),
            MatchProblem::UnknownMethod { method } => write!(f, "unknown method {method:?}"),
        }
    }
}

/// At most this many regexes are remembered by [`regex_error`] (then it starts over).
const REGEX_MEMO_LIMIT: usize = 4096;

/// Why `pattern` does not compile, memoized: the same few route regexes are checked for every
/// pod a TrafficTarget restricts and every split using them, and compiling a regex costs far
/// more than the rest of a match conversion.
fn compile_error(pattern: &str) -> Option<String> {
    type Memo = std::collections::HashMap<String, Option<String>>;
    static MEMO: std::sync::LazyLock<std::sync::Mutex<Memo>> =
        std::sync::LazyLock::new(Default::default);
    let mut memo = MEMO.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(e) = memo.get(pattern) {
        return e.clone();
    }
    let e = regex::Regex::new(pattern).err().map(|e| e.to_string());
    if memo.len() >= REGEX_MEMO_LIMIT {
        memo.clear();
    }
    memo.insert(pattern.to_string(), e.clone());
    e
}

/// Why a user regex cannot be used: it must compile on its own (so that it cannot close the
/// group the proxy wraps it in: `a)|(.*` would otherwise become `^(?:a)|(.*)$`, which matches
/// anything) and in the proxy's anchored form `prefix + re + suffix`.
pub(crate) fn regex_error(re: &str, prefix: &str, suffix: &str) -> Option<String> {
    compile_error(re).or_else(|| compile_error(&format!("{prefix}{re}{suffix}")))
}

/// Every reason `m` cannot be compiled; empty when it can.
pub fn match_problems(m: &hub::HttpMatch) -> Vec<MatchProblem> {
    let mut out = Vec::new();
    if let Some(p) = &m.path_regex {
        if let Some(error) = regex_error(p, "^(?:", ")") {
            out.push(MatchProblem::InvalidPathRegex {
                regex: p.clone(),
                error,
            });
        }
    }
    for method in &m.methods {
        let upper = method.to_ascii_uppercase();
        if !weft_smi::specs::METHODS.contains(&upper.as_str()) {
            out.push(MatchProblem::UnknownMethod {
                method: method.clone(),
            });
        }
    }
    for (name, value) in &m.headers {
        if http::HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()).is_err() {
            out.push(MatchProblem::InvalidHeaderName {
                header: name.clone(),
            });
        }
        if let Some(error) = regex_error(value, "^(?:", ")$") {
            out.push(MatchProblem::InvalidHeaderRegex {
                header: name.clone(),
                regex: value.clone(),
                error,
            });
        }
    }
    out
}

/// Converts an SMI match, or `None` when it has a problem (it is then left out: it matches
/// nothing, and the HTTPRouteGroup's status says why).
pub fn convert_match(m: &hub::HttpMatch) -> Option<HttpMatch> {
    analyze_match(m).ok()
}

/// The one decision about an SMI match: its compiled form, or every reason it cannot be
/// compiled (then it is left out everywhere; never widened).
pub fn analyze_match(m: &hub::HttpMatch) -> Result<HttpMatch, Vec<MatchProblem>> {
    let problems = match_problems(m);
    if !problems.is_empty() {
        return Err(problems);
    }
    let mut headers: Vec<HeaderMatch> = m
        .headers
        .iter()
        .map(|(k, v)| HeaderMatch {
            name: k.to_ascii_lowercase(),
            value_regex: v.clone(),
        })
        .collect();
    headers.sort();
    Ok(HttpMatch {
        name: m.name.clone(),
        path_regex: m.path_regex.clone().unwrap_or_default(),
        methods: compiled_methods(&m.methods),
        headers,
        ..Default::default()
    })
}

/// The methods a compiled match allows: upper case, sorted, deduplicated; SMI's `*` means any
/// method, which the compiled form says with an empty list (no magic string on the wire).
/// Only call on methods [`match_problems`] accepted: an unknown method leaves the whole match
/// out, it never widens it.
fn compiled_methods(methods: &[String]) -> Vec<String> {
    if methods.iter().any(|x| x == "*") {
        return Vec::new();
    }
    let mut methods: Vec<String> = methods.iter().map(|x| x.to_ascii_uppercase()).collect();
    methods.sort();
    methods.dedup();
    methods
}

/// A status condition as the compiler writes it (no transition time: the status writer keeps
/// the previous one while the status does not change). Used by SMI and Gateway API statuses.
pub(crate) fn condition(
    type_: &str,
    ok: bool,
    reason: Reason,
    message: String,
    generation: Option<i64>,
) -> hub::Condition {
    hub::Condition {
        type_: type_.to_string(),
        status: if ok { "True" } else { "False" }.to_string(),
        reason: reason.to_string(),
        message,
        observed_generation: generation,
        last_transition_time: None,
    }
}

#[cfg(test)]
mod match_tests {
    use super::*;

    fn hub_match(methods: &[&str]) -> hub::HttpMatch {
        hub::HttpMatch {
            name: "m".into(),
            path_regex: None,
            methods: methods.iter().map(|s| s.to_string()).collect(),
            headers: Default::default(),
        }
    }

    /// Regression (#14): a match with a method SMI does not define is left out (it matches
    /// nothing), as the HTTPRouteGroup's status says; it is never compiled, and never widened
    /// to "any method".
    #[test]
    fn unknown_method_leaves_the_match_out() {
        for methods in [&["FETCH"][..], &["GET", "FETCH"], &["fetch", "*"]] {
            let m = hub_match(methods);
            assert!(convert_match(&m).is_none(), "{methods:?}");
            assert!(match_problems(&m)
                .iter()
                .any(|p| matches!(p, MatchProblem::UnknownMethod { method } if method.eq_ignore_ascii_case("fetch"))));
        }
    }

    #[test]
    fn any_method_is_an_empty_list_and_methods_are_normalised() {
        let any = convert_match(&hub_match(&["get", "*"])).unwrap();
        assert!(any.methods.is_empty());
        let none_listed = convert_match(&hub_match(&[])).unwrap();
        assert!(none_listed.methods.is_empty());
        let some = convert_match(&hub_match(&["post", "GET", "get"])).unwrap();
        assert_eq!(some.methods, vec!["GET".to_string(), "POST".to_string()]);
    }
}

// ---------------------------------------------------------------------------------------------
// TrafficTarget identities.

/// The only identity kind SMI access control names that weft enforces.
pub const IDENTITY_KIND: &str = "ServiceAccount";

/// Who may be a TrafficTarget source or destination: a ServiceAccount. Another kind admits no
/// one (the validator rejects it; status says it is ignored).
pub fn is_identity(r: &hub::IdentityRef) -> bool {
    r.kind == IDENTITY_KIND
}

/// The identity a source of `t` admits, or `None` when it admits no one ([`is_identity`]).
/// A source without a namespace is in the TrafficTarget's namespace.
pub fn source_identity(
    t: &hub::TrafficTarget,
    s: &hub::IdentityRef,
    trust_domain: &str,
) -> Option<SpiffeId> {
    if !is_identity(s) {
        return None;
    }
    let ns = if s.namespace.is_empty() {
        &t.meta.namespace
    } else {
        &s.namespace
    };
    Some(spiffe(trust_domain, ns, &s.name))
}

/// Whether these TrafficTargets (all naming one destination) restrict `port` of it: a
/// destination without a port is restricted on every port, listed or not; one with a port
/// only on that port.
pub fn restricts_port<'a>(
    targets: impl IntoIterator<Item = &'a hub::TrafficTarget>,
    port: u16,
) -> bool {
    targets
        .into_iter()
        .any(|t| t.destination.port.is_none_or(|p| p == port))
}

/// Whether these TrafficTargets restrict every port of their destination (the pod's default
/// becomes deny).
pub fn restricts_every_port<'a>(targets: impl IntoIterator<Item = &'a hub::TrafficTarget>) -> bool {
    targets.into_iter().any(|t| t.destination.port.is_none())
}

// ---------------------------------------------------------------------------------------------
// Precedence of splits on one root.

/// A parsed creationTimestamp (seconds, nanoseconds), or `None` when absent or unparsable.
fn created(meta: &hub::Meta) -> Option<(i64, u32)> {
    let t = chrono::DateTime::parse_from_rfc3339(meta.creation_timestamp.as_deref()?).ok()?;
    Some((t.timestamp(), t.timestamp_subsec_nanos()))
}

/// Orders splits for "oldest wins": by creationTimestamp (absent or unparsable counts as
/// newest), then by name. `Less` means `a` wins. The compiler and the validator both use it.
pub fn split_order(a: &hub::Meta, b: &hub::Meta) -> Ordering {
    let key = |m: &hub::Meta| (created(m).is_none(), created(m), m.name.clone());
    key(a).cmp(&key(b))
}

/// Why one split takes precedence over another on the same root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Precedence {
    /// The winner was created earlier.
    Older { winner: String, loser: String },
    /// Only the winner has a (valid) creationTimestamp; a missing one counts as newest.
    OnlyWinnerHasTimestamp { winner: String },
    /// Same creationTimestamp: the name that sorts first wins.
    SameTimestampName { timestamp: String },
    /// Neither has a (valid) creationTimestamp: the name that sorts first wins.
    NoTimestampsName,
}

impl std::fmt::Display for Precedence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Precedence::Older { winner, loser } => write!(
                f,
                "it is older (created {winner}; this split was created {loser})"
            ),
            Precedence::OnlyWinnerHasTimestamp { winner } => write!(
                f,
                "it has a creationTimestamp ({winner}) and this split has none (a missing \
                 timestamp counts as newest)"
            ),
            Precedence::SameTimestampName { timestamp } => write!(
                f,
                "both were created at {timestamp}, and its name sorts first"
            ),
            Precedence::NoTimestampsName => write!(
                f,
                "neither has a creationTimestamp, and its name sorts first"
            ),
        }
    }
}

/// Why `winner` takes precedence over `loser` (call with `split_order(winner, loser)` = Less).
pub fn precedence(winner: &hub::Meta, loser: &hub::Meta) -> Precedence {
    let ts = |m: &hub::Meta| m.creation_timestamp.clone().unwrap_or_default();
    match (created(winner), created(loser)) {
        (Some(w), Some(l)) if w != l => Precedence::Older {
            winner: ts(winner),
            loser: ts(loser),
        },
        (Some(_), Some(_)) => Precedence::SameTimestampName {
            timestamp: ts(winner),
        },
        (Some(_), None) => Precedence::OnlyWinnerHasTimestamp { winner: ts(winner) },
        (None, _) => Precedence::NoTimestampsName,
    }
}

// ---------------------------------------------------------------------------------------------
// TrafficSplits.

/// Which condition an issue makes not True.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Affects {
    /// `Accepted=False`: the split is not in force as written.
    Accepted,
    /// `ResolvedRefs=False`: a reference does not resolve.
    ResolvedRefs,
    /// Both.
    Both,
}

/// A problem with a TrafficSplit, with what it does to traffic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SplitIssue {
    /// The root service does not exist: nothing is in force (clients cannot address it).
    RootNotFound { root: ObjectRef },
    /// `backends` is empty: requests the split matches fail (503).
    NoBackends,
    /// Every backend has weight 0: requests the split matches fail (503).
    NoWeight,
    /// A backend service does not exist: it keeps its weight and its share fails (503).
    BackendNotFound { backend: ObjectRef },
    /// A backend lacks root ports: on those ports it keeps its weight and its share fails.
    BackendPortMismatch { backend: ObjectRef, ports: Vec<u16> },
    /// A `matches` entry of a kind other than HTTPRouteGroup: it matches nothing.
    UnsupportedMatchKind { kind: String, name: String },
    /// A `matches` entry names a missing HTTPRouteGroup: it matches nothing.
    RouteGroupNotFound { group: ObjectRef },
    /// A referenced HTTPRouteGroup has no matches: it matches nothing.
    EmptyRouteGroup { group: ObjectRef },
    /// A match of a referenced group cannot be compiled: it matches nothing.
    InvalidMatch {
        group: ObjectRef,
        name: String,
        problems: Vec<MatchProblem>,
    },
}

impl SplitIssue {
    /// The condition reason ([`Reason::as_str`] is its string).
    pub fn reason(&self) -> Reason {
        match self {
            SplitIssue::RootNotFound { .. } => Reason::ServiceNotFound,
            SplitIssue::NoBackends => Reason::NoBackends,
            SplitIssue::NoWeight => Reason::NoWeight,
            SplitIssue::BackendNotFound { .. } => Reason::BackendNotFound,
            SplitIssue::BackendPortMismatch { .. } => Reason::BackendPortMismatch,
            SplitIssue::UnsupportedMatchKind { .. } => Reason::InvalidKind,
            SplitIssue::RouteGroupNotFound { .. } => Reason::RouteNotFound,
            SplitIssue::EmptyRouteGroup { .. } => Reason::NoMatches,
            SplitIssue::InvalidMatch { .. } => Reason::InvalidMatch,
        }
    }

    /// Which condition it makes not True.
    pub fn affects(&self) -> Affects {
        match self {
            SplitIssue::RootNotFound { .. }
            | SplitIssue::UnsupportedMatchKind { .. }
            | SplitIssue::RouteGroupNotFound { .. } => Affects::Both,
            SplitIssue::NoBackends
            | SplitIssue::NoWeight
            | SplitIssue::EmptyRouteGroup { .. }
            | SplitIssue::InvalidMatch { .. } => Affects::Accepted,
            SplitIssue::BackendNotFound { .. } | SplitIssue::BackendPortMismatch { .. } => {
                Affects::ResolvedRefs
            }
        }
    }

    pub fn affects_accepted(&self) -> bool {
        matches!(self.affects(), Affects::Accepted | Affects::Both)
    }

    pub fn affects_refs(&self) -> bool {
        matches!(self.affects(), Affects::ResolvedRefs | Affects::Both)
    }

    /// A sentence for conditions, Events and logs: the problem and what traffic does.
    pub fn message(&self, split: &ObjectRef) -> String {
        match self {
            SplitIssue::RootNotFound { root } => format!(
                "root service {root} not found: the split is not in force (there is nothing to \
                 route until the service exists)"
            ),
            SplitIssue::NoBackends => {
                format!("split {split} has no backends: requests it matches fail with 503")
            }
            SplitIssue::NoWeight => format!(
                "every backend of split {split} has weight 0: requests it matches fail with 503 \
                 (they are not sent to the root service)"
            ),
            SplitIssue::BackendNotFound { backend } => format!(
                "backend service {backend} not found: backend {} of split {split} does not \
                 exist; it keeps its weight and requests for it fail with 503",
                backend.name
            ),
            SplitIssue::BackendPortMismatch { backend, ports } => format!(
                "backend {backend} has no port {} of the root service: on that port backend {} \
                 of split {split} keeps its weight and requests for it fail with 503",
                join(ports),
                backend.name
            ),
            SplitIssue::UnsupportedMatchKind { kind, name } => format!(
                "match {kind} {name}: only HTTPRouteGroup is supported; it matches no request"
            ),
            SplitIssue::RouteGroupNotFound { group } => {
                format!("HTTPRouteGroup {group} not found: it matches no request")
            }
            SplitIssue::EmptyRouteGroup { group } => {
                format!("HTTPRouteGroup {group} has no matches: it matches no request")
            }
            SplitIssue::InvalidMatch {
                group,
                name,
                problems,
            } => format!(
                "HTTPRouteGroup {group} match {name:?} cannot be compiled ({}): it matches no \
                 request",
                problems
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        }
    }

    /// What the proxy answers (503) for requests routed to an unresolvable backend.
    fn backend_failure(&self, split: &ObjectRef, port: u16) -> Option<String> {
        match self {
            SplitIssue::BackendNotFound { backend } => Some(format!(
                "backend {} of split {split} does not exist",
                backend.name
            )),
            SplitIssue::BackendPortMismatch { backend, .. } => Some(format!(
                "backend {} of split {split} has no port {port}",
                backend.name
            )),
            _ => None,
        }
    }
}

fn join(ports: &[u16]) -> String {
    ports
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// What one TrafficSplit puts in force, and why not more.
#[derive(Clone, Debug)]
pub struct SplitPlan<'a> {
    pub split: &'a hub::TrafficSplit,
    /// `<namespace>/<name>` of the split.
    pub key: ObjectRef,
    /// The requests the split applies to: `Some(vec![])` = every request; `None` = no request
    /// (it names matches and none of them can be used).
    pub matches: Option<Vec<HttpMatch>>,
    pub issues: Vec<SplitIssue>,
}

impl SplitPlan<'_> {
    /// Whether the split changes routing at all (a route is emitted).
    pub fn routes_anything(&self) -> bool {
        self.matches.is_some()
            && !self
                .issues
                .iter()
                .any(|i| matches!(i, SplitIssue::RootNotFound { .. }))
    }

    /// The split's route on one root port: every backend with its weight; a backend that
    /// cannot be used there carries the reason its requests fail and names no endpoint set.
    /// `None` when the split routes nothing.
    pub fn route(&self, model: &Model, port: u16) -> Option<Route> {
        if !self.routes_anything() {
            return None;
        }
        let ns = &self.split.meta.namespace;
        let mut backends: Vec<WeightedBackend> = self
            .split
            .backends
            .iter()
            .map(|b| {
                let bref = ObjectRef::new(ns.clone(), b.service.clone());
                let failure = match model.services.get(&bref) {
                    None => SplitIssue::BackendNotFound {
                        backend: bref.clone(),
                    }
                    .backend_failure(&self.key, port),
                    Some(bsvc) if !bsvc.ports.iter().any(|p| p.port == port) => {
                        SplitIssue::BackendPortMismatch {
                            backend: bref.clone(),
                            ports: vec![port],
                        }
                        .backend_failure(&self.key, port)
                    }
                    Some(_) => None,
                };
                match failure {
                    // Its own targetPort is in its EndpointSet.
                    None => WeightedBackend {
                        service: b.service.clone(),
                        weight: b.weight_milli,
                        endpoint_set: endpoints_name(ns, &b.service, port),
                        unavailable_reason: String::new(),
                        ..Default::default()
                    },
                    // No endpoint set: a proxy that does not know `unavailable_reason` finds
                    // no endpoints and answers 503 as well.
                    Some(reason) => WeightedBackend {
                        service: b.service.clone(),
                        weight: b.weight_milli,
                        endpoint_set: String::new(),
                        unavailable_reason: reason,
                        ..Default::default()
                    },
                }
            })
            .collect();
        // Weights are kept in thousandths in the hub; show whole numbers when they are.
        if backends.iter().all(|b| b.weight % 1000 == 0) {
            for b in &mut backends {
                b.weight /= 1000;
            }
        }
        Some(Route {
            name: format!("split:{}", self.key),
            matches: self.matches.clone().unwrap_or_default(),
            backends,
            ..Default::default()
        })
    }
}

/// What a zero weight means: the backend stays in the split's route with weight 0 and gets no
/// traffic. Whether a backend gets a share of the split's traffic.
pub fn carries_traffic(b: &hub::Backend) -> bool {
    b.weight_milli > 0
}

/// A split whose backends all weigh 0 (and has some): the requests it matches fail with 503;
/// they are not sent to the root ([`SplitIssue::NoWeight`]; the validator's `ZeroWeights`).
pub fn has_no_weight(split: &hub::TrafficSplit) -> bool {
    !split.backends.is_empty() && !split.backends.iter().any(carries_traffic)
}
