//! One analysis per SMI kind, whose result every consumer reads: the compiler's decision,
//! status conditions and Events, `weft compile`'s report (the compiled conditions) and
//! admission ([`crate::validate::validate_object`]).
//!
//! | kind | single object (what admission judges) | against the model (compiler, status) |
//! |---|---|---|
//! | HTTPRouteGroup | [`http_route_group`]: each match compiled or its problems | (references nothing) |
//! | TrafficSplit | [`traffic_split`]: weights, backends, `matches` references | [`split_plan`]: routes, backends, matches in force and every [`SplitIssue`] |
//! | TrafficTarget | [`traffic_target`]: identities, allows-nothing | [`target_rules`]: which rules resolve |
//! | TCPRoute/UDPRoute | [`port_route`]: ports | (references nothing) |
//!
//! A single-object result carries the typed decision the compiler reads (e.g.
//! [`SplitWeights`], [`SplitMatchRef`], [`TargetAnalysis::destination_is_identity`]) and the
//! [`Problem`]s (typed [`Reason`], [`Severity`], field path, message) admission reports. The
//! cross-object functions take a typed context (the [`Model`], or a lookup), never an empty one
//! filtered afterwards.

use std::collections::{BTreeMap, BTreeSet};

use weft_smi::hub::{self, RouteKind};

use super::rules::{analyze_match, has_no_weight, is_identity, MatchProblem};
use super::rules::{SplitIssue, SplitPlan};
use super::types::HttpMatch;
use crate::model::{Model, ObjectRef};
use crate::reason::Reason;

/// How bad a problem is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// Accept the object but tell the user (condition message, Event).
    Warning,
    /// Reject the object: it is not applied.
    Error,
}

/// One finding about one object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub severity: Severity,
    /// Field path in the object, e.g. `spec.backends[1].weight`.
    pub path: String,
    /// Why, typed; [`Reason::as_str`] is the CamelCase reason of conditions and Events.
    pub reason: Reason,
    /// A sentence for humans.
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{sev}: {}: {}", self.path, self.message)
    }
}

fn push(
    out: &mut Vec<Problem>,
    severity: Severity,
    path: impl Into<String>,
    reason: Reason,
    message: impl Into<String>,
) {
    out.push(Problem {
        severity,
        path: path.into(),
        reason,
        message: message.into(),
    });
}

/// The analysis of one match of an HTTPRouteGroup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MatchAnalysis<'a> {
    /// Position in `spec.matches`.
    pub index: usize,
    pub source: &'a hub::HttpMatch,
    /// The compiled match the proxies get, or why it is left out (it matches nothing).
    pub outcome: Result<HttpMatch, Vec<MatchProblem>>,
}

/// The analysis of an HTTPRouteGroup: every match, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteGroupAnalysis<'a> {
    pub group: &'a hub::HttpRouteGroup,
    pub matches: Vec<MatchAnalysis<'a>>,
}

impl<'a> RouteGroupAnalysis<'a> {
    /// Every problem, with the match it belongs to, in match order.
    pub fn problems(&self) -> impl Iterator<Item = (&MatchAnalysis<'a>, &MatchProblem)> {
        self.matches.iter().flat_map(|m| {
            m.outcome
                .as_ref()
                .err()
                .into_iter()
                .flatten()
                .map(move |p| (m, p))
        })
    }
}

impl RouteGroupAnalysis<'_> {
    /// What admission reports: no matches (Warning), a match name used twice, and every match
    /// the compiler leaves out (Error).
    pub fn issues(&self) -> Vec<Problem> {
        use Severity::*;
        let mut out = Vec::new();
        if self.group.matches.is_empty() {
            push(
                &mut out,
                Warning,
                "spec.matches",
                Reason::NoMatches,
                "no matches: this route group matches nothing",
            );
        }
        let mut names = BTreeMap::new();
        for (i, m) in self.group.matches.iter().enumerate() {
            if let Some(first) = names.insert(m.name.as_str(), i) {
                push(
                    &mut out,
                    Error,
                    format!("spec.matches[{i}].name"),
                    Reason::DuplicateMatch,
                    format!(
                        "match name {:?} is used twice (also spec.matches[{first}])",
                        m.name
                    ),
                );
            }
        }
        for (a, p) in self.problems() {
            let (path, m) = (format!("spec.matches[{}]", a.index), a.source);
            let at = match p {
                MatchProblem::InvalidPathRegex { .. } => format!("{path}.pathRegex"),
                MatchProblem::UnknownMethod { method } => {
                    let j = m.methods.iter().position(|x| x == method).unwrap_or(0);
                    format!("{path}.methods[{j}]")
                }
                MatchProblem::InvalidHeaderName { header }
                | MatchProblem::InvalidHeaderRegex { header, .. } => {
                    format!("{path}.headers.{header}")
                }
            };
            push(&mut out, Error, at, p.reason(), p.to_string());
        }
        out
    }
}

/// Analyses an HTTPRouteGroup on its own (it references nothing).
pub fn http_route_group(g: &hub::HttpRouteGroup) -> RouteGroupAnalysis<'_> {
    RouteGroupAnalysis {
        group: g,
        matches: g
            .matches
            .iter()
            .enumerate()
            .map(|(index, source)| MatchAnalysis {
                index,
                source,
                outcome: analyze_match(source),
            })
            .collect(),
    }
}

// ---------------------------------------------------------------------------------------------
// TrafficSplit.

/// What a split's weights put in force.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SplitWeights {
    /// `backends` is empty: requests the split matches fail (503).
    NoBackends,
    /// Every backend weighs 0 ([`has_no_weight`]): requests the split matches fail (503).
    NoWeight,
    /// Some backend carries traffic.
    Carries,
}

/// What one `spec.matches` entry of a split refers to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SplitMatchRef<'a> {
    /// An HTTPRouteGroup of the split's namespace, by name.
    Group(&'a str),
    /// A kind other than HTTPRouteGroup: it matches nothing.
    UnsupportedKind,
    /// An HTTPRouteGroup of an API group other than `specs.smi-spec.io`: it matches nothing.
    ForeignApiGroup(&'a str),
    /// A namespaced name (`ns/name`): splits only reference their own namespace; it matches
    /// nothing.
    CrossNamespace,
}

/// A TrafficSplit judged on its own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SplitAnalysis<'a> {
    pub split: &'a hub::TrafficSplit,
    pub weights: SplitWeights,
    /// Each `spec.matches` entry, in order.
    pub matches: Vec<SplitMatchRef<'a>>,
    /// What admission reports (errors first is the validator's ordering, not this list's).
    pub problems: Vec<Problem>,
}

/// Analyses a TrafficSplit on its own: the weights and `matches` references the compiler reads
/// ([`split_plan`]) and the problems admission reports.
pub fn traffic_split(s: &hub::TrafficSplit) -> SplitAnalysis<'_> {
    use Severity::*;
    let mut out = Vec::new();
    if s.service.is_empty() {
        push(
            &mut out,
            Error,
            "spec.service",
            Reason::MissingService,
            "the root service is empty",
        );
    }
    let weights = if s.backends.is_empty() {
        SplitWeights::NoBackends
    } else if has_no_weight(s) {
        SplitWeights::NoWeight
    } else {
        SplitWeights::Carries
    };
    match weights {
        SplitWeights::NoBackends => push(
            &mut out,
            Error,
            "spec.backends",
            Reason::NoBackends,
            "the split has no backends",
        ),
        SplitWeights::NoWeight => push(
            &mut out,
            Error,
            "spec.backends",
            Reason::ZeroWeights,
            "the weights sum to 0: no backend would get traffic",
        ),
        SplitWeights::Carries => {}
    }
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, b) in s.backends.iter().enumerate() {
        let path = format!("spec.backends[{i}].service");
        if b.service.is_empty() {
            push(
                &mut out,
                Error,
                &path,
                Reason::MissingService,
                "the backend service is empty",
            );
            continue;
        }
        if let Some(first) = seen.insert(&b.service, i) {
            push(
                &mut out,
                Error,
                &path,
                Reason::DuplicateBackend,
                format!(
                    "backend {:?} is listed twice (also spec.backends[{first}])",
                    b.service
                ),
            );
        }
    }
    let mut weighted = s
        .backends
        .iter()
        .filter(|b| super::rules::carries_traffic(b))
        .peekable();
    if !s.service.is_empty()
        && weighted.peek().is_some()
        && weighted.all(|b| b.service == s.service)
    {
        push(
            &mut out,
            Warning,
            "spec.backends",
            Reason::RootOnlyBackend,
            format!(
                "the root service {:?} is the only backend with traffic: the split changes nothing",
                s.service
            ),
        );
    }
    let mut matches = Vec::with_capacity(s.matches.len());
    for (i, m) in s.matches.iter().enumerate() {
        let path = format!("spec.matches[{i}]");
        let r = if m.kind != RouteKind::HTTPRouteGroup.as_str() {
            push(
                &mut out,
                Error,
                format!("{path}.kind"),
                Reason::UnsupportedMatchKind,
                format!(
                    "kind {:?} cannot be used in a TrafficSplit; only HTTPRouteGroup",
                    m.kind
                ),
            );
            SplitMatchRef::UnsupportedKind
        } else if let Some(g) = m
            .api_group
            .as_deref()
            .filter(|g| !g.is_empty() && *g != weft_smi::specs::GROUP)
        {
            push(
                &mut out,
                Error,
                format!("{path}.apiGroup"),
                Reason::UnsupportedMatchKind,
                format!("apiGroup {g:?} is not {}", weft_smi::specs::GROUP),
            );
            SplitMatchRef::ForeignApiGroup(g)
        } else if m.name.contains('/') {
            push(
                &mut out,
                Error,
                format!("{path}.name"),
                Reason::CrossNamespaceReference,
                format!(
                    "{:?}: matches must name an HTTPRouteGroup in the split's own namespace",
                    m.name
                ),
            );
            SplitMatchRef::CrossNamespace
        } else {
            SplitMatchRef::Group(&m.name)
        };
        matches.push(r);
    }
    SplitAnalysis {
        split: s,
        weights,
        matches,
        problems: out,
    }
}

/// A TrafficSplit against the model, as the root `apex`: what it puts in force (routes,
/// backends, matches) and every [`SplitIssue`] its status conditions and Events report. Builds
/// on [`traffic_split`] (weights, `matches` references), so admission and the compiler judge
/// those alike.
pub fn split_plan<'a>(
    model: &Model,
    apex: &ObjectRef,
    split: &'a hub::TrafficSplit,
) -> SplitPlan<'a> {
    let own = traffic_split(split);
    let key = ObjectRef::new(split.meta.namespace.clone(), split.meta.name.clone());
    let mut issues = Vec::new();
    let root = model.services.get(apex);
    if root.is_none() {
        issues.push(SplitIssue::RootNotFound { root: apex.clone() });
    }
    match own.weights {
        SplitWeights::NoBackends => issues.push(SplitIssue::NoBackends),
        SplitWeights::NoWeight => issues.push(SplitIssue::NoWeight),
        SplitWeights::Carries => {}
    }
    for b in &split.backends {
        let bref = ObjectRef::new(apex.namespace.clone(), b.service.clone());
        match model.services.get(&bref) {
            None => issues.push(SplitIssue::BackendNotFound { backend: bref }),
            Some(bsvc) => {
                if let Some(root) = root {
                    let ports: Vec<u16> = root
                        .ports
                        .iter()
                        .map(|rp| rp.port)
                        .filter(|p| !bsvc.ports.iter().any(|bp| bp.port == *p))
                        .collect();
                    if !ports.is_empty() {
                        issues.push(SplitIssue::BackendPortMismatch {
                            backend: bref,
                            ports,
                        });
                    }
                }
            }
        }
    }
    let matches = if split.matches.is_empty() {
        Some(Vec::new())
    } else {
        let mut out: Vec<HttpMatch> = Vec::new();
        for (m, r) in split.matches.iter().zip(&own.matches) {
            let name = match r {
                SplitMatchRef::Group(name) => *name,
                SplitMatchRef::UnsupportedKind => {
                    issues.push(SplitIssue::UnsupportedMatchKind {
                        kind: m.kind.clone(),
                        name: m.name.clone(),
                    });
                    continue;
                }
                SplitMatchRef::ForeignApiGroup(g) => {
                    issues.push(SplitIssue::UnsupportedMatchKind {
                        kind: format!("{}.{g}", m.kind),
                        name: m.name.clone(),
                    });
                    continue;
                }
                // No object name has a '/': it is not found, as before.
                SplitMatchRef::CrossNamespace => &m.name,
            };
            let gref = ObjectRef::new(apex.namespace.clone(), name.to_string());
            let Some(g) = model.http_routes.get(&gref) else {
                issues.push(SplitIssue::RouteGroupNotFound { group: gref });
                continue;
            };
            if g.matches.is_empty() {
                issues.push(SplitIssue::EmptyRouteGroup { group: gref });
                continue;
            }
            for a in http_route_group(g).matches {
                match a.outcome {
                    Ok(hm) => out.push(hm),
                    Err(problems) => issues.push(SplitIssue::InvalidMatch {
                        group: gref.clone(),
                        name: a.source.name.clone(),
                        problems,
                    }),
                }
            }
        }
        // An empty list would mean every request: with no usable match the split applies to
        // none.
        (!out.is_empty()).then_some(out)
    };
    SplitPlan {
        split,
        key,
        matches,
        issues,
    }
}

// ---------------------------------------------------------------------------------------------
// TrafficTarget.

/// Why a TrafficTarget allows nothing (it still restricts its destination).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AllowsNothing {
    NoRules,
    NoSources,
}

/// A TrafficTarget judged on its own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetAnalysis<'a> {
    pub target: &'a hub::TrafficTarget,
    /// The destination is a ServiceAccount ([`is_identity`]); otherwise the TrafficTarget is
    /// ignored (status `Accepted=False`, `Invalid`).
    pub destination_is_identity: bool,
    /// Indexes of the sources that are not ServiceAccounts: they admit no one.
    pub unsupported_sources: Vec<usize>,
    /// Whether it allows nothing (rules are looked at first).
    pub allows_nothing: Option<AllowsNothing>,
    /// What admission reports.
    pub problems: Vec<Problem>,
}

fn identity_problems(r: &hub::IdentityRef, path: &str, out: &mut Vec<Problem>) {
    if !is_identity(r) {
        push(
            out,
            Severity::Error,
            format!("{path}.kind"),
            Reason::UnsupportedIdentityKind,
            format!("kind {:?} is not supported; only ServiceAccount", r.kind),
        );
    }
    if r.name.is_empty() {
        push(
            out,
            Severity::Error,
            format!("{path}.name"),
            Reason::MissingName,
            "the service account name is empty",
        );
    }
}

/// Analyses a TrafficTarget on its own: the identity decisions the compiler's status reads and
/// the problems admission reports. Whether its rules resolve is [`target_rules`].
pub fn traffic_target(t: &hub::TrafficTarget) -> TargetAnalysis<'_> {
    use Severity::*;
    let mut out = Vec::new();
    let ns = &t.meta.namespace;
    identity_problems(&t.destination, "spec.destination", &mut out);
    if &t.destination.namespace != ns {
        push(
            &mut out,
            Error,
            "spec.destination.namespace",
            Reason::CrossNamespaceReference,
            format!(
                "the destination must be in the TrafficTarget's namespace {ns:?}, not {:?}",
                t.destination.namespace
            ),
        );
    }
    if t.sources.is_empty() {
        push(
            &mut out,
            Warning,
            "spec.sources",
            Reason::NoSources,
            "no sources: this TrafficTarget allows nothing",
        );
    }
    let mut seen = BTreeSet::new();
    for (i, s) in t.sources.iter().enumerate() {
        let path = format!("spec.sources[{i}]");
        identity_problems(s, &path, &mut out);
        if !seen.insert((&s.kind, &s.namespace, &s.name)) {
            push(
                &mut out,
                Warning,
                path,
                Reason::DuplicateSource,
                format!("source {}/{} is listed twice", s.namespace, s.name),
            );
        }
    }
    if t.rules.is_empty() {
        push(
            &mut out,
            Warning,
            "spec.rules",
            Reason::NoRules,
            "no rules: this TrafficTarget allows nothing",
        );
    }
    let allows_nothing = if t.rules.is_empty() {
        Some(AllowsNothing::NoRules)
    } else if t.sources.is_empty() {
        Some(AllowsNothing::NoSources)
    } else {
        None
    };
    TargetAnalysis {
        target: t,
        destination_is_identity: is_identity(&t.destination),
        unsupported_sources: t
            .sources
            .iter()
            .enumerate()
            .filter(|(_, s)| !is_identity(s))
            .map(|(i, _)| i)
            .collect(),
        allows_nothing,
        problems: out,
    }
}

/// Whether one rule of a TrafficTarget resolves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RuleResolution<'a> {
    /// The route object and every named match exist.
    Resolved,
    /// No route object of the rule's kind and name in the TrafficTarget's namespace.
    RouteNotFound,
    /// The route object lacks these match names (index in `rule.matches`, name).
    MatchesNotFound(Vec<(usize, &'a str)>),
}

/// The rules of a TrafficTarget against its namespace: `match_names(kind, name)` gives the
/// match names of that route object, or `None` when it does not exist. The compiler's status
/// (`RouteNotFound`/`MatchNotFound`) reads this.
pub fn target_rules<'a, N>(
    t: &'a hub::TrafficTarget,
    match_names: impl Fn(RouteKind, &str) -> Option<N>,
) -> Vec<RuleResolution<'a>>
where
    N: IntoIterator,
    N::Item: AsRef<str>,
{
    t.rules
        .iter()
        .map(|rule| match match_names(rule.kind, &rule.name) {
            None => RuleResolution::RouteNotFound,
            Some(names) => {
                let names: BTreeSet<String> =
                    names.into_iter().map(|n| n.as_ref().to_string()).collect();
                let missing: Vec<(usize, &str)> = rule
                    .matches
                    .iter()
                    .enumerate()
                    .filter(|(_, m)| !names.contains(m.as_str()))
                    .map(|(j, m)| (j, m.as_str()))
                    .collect();
                if missing.is_empty() {
                    RuleResolution::Resolved
                } else {
                    RuleResolution::MatchesNotFound(missing)
                }
            }
        })
        .collect()
}

/// The match names of route object `kind`/`name` of `namespace` in the model, or `None`.
pub fn model_match_names(
    model: &Model,
    namespace: &str,
    kind: RouteKind,
    name: &str,
) -> Option<Vec<String>> {
    let r = ObjectRef::new(namespace.to_string(), name.to_string());
    match kind {
        RouteKind::HTTPRouteGroup => model
            .http_routes
            .get(&r)
            .map(|g| g.matches.iter().map(|m| m.name.clone()).collect()),
        RouteKind::TCPRoute => model
            .tcp_routes
            .get(&r)
            .map(|r| r.matches.iter().filter_map(|m| m.name.clone()).collect()),
        RouteKind::UDPRoute => model
            .udp_routes
            .get(&r)
            .map(|r| r.matches.iter().filter_map(|m| m.name.clone()).collect()),
    }
}

// ---------------------------------------------------------------------------------------------
// TCPRoute / UDPRoute.

/// A TCPRoute or UDPRoute judged on its own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortRouteAnalysis<'a> {
    pub route: &'a hub::PortRoute,
    /// The valid ports it names (not 0), deduplicated, in order: the ports a destination's
    /// inbound policy lists for it. Which ports the route covers is decided on its `matches`
    /// (no ports listed = every port; a list of only port 0 covers none — never widened).
    pub ports: Vec<u16>,
    /// Port 0 (Error), a port listed twice (Warning).
    pub problems: Vec<Problem>,
}

impl PortRouteAnalysis<'_> {
    /// The problems that reject the route (its status is `Accepted=False`).
    pub fn errors(&self) -> impl Iterator<Item = &Problem> {
        self.problems
            .iter()
            .filter(|p| p.severity == Severity::Error)
    }
}

/// Analyses a TCPRoute or UDPRoute (it references nothing).
pub fn port_route(r: &hub::PortRoute) -> PortRouteAnalysis<'_> {
    let mut out = Vec::new();
    let mut ports = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, p) in r.matches.iter().flat_map(|m| m.ports.iter()).enumerate() {
        let path = format!("spec.matches.ports[{i}]");
        if *p == 0 {
            push(
                &mut out,
                Severity::Error,
                &path,
                Reason::InvalidPort,
                "port 0 is not a valid port",
            );
        } else if !seen.insert(*p) {
            push(
                &mut out,
                Severity::Warning,
                &path,
                Reason::DuplicatePort,
                format!("port {p} is listed twice"),
            );
        } else {
            ports.push(*p);
        }
    }
    PortRouteAnalysis {
        route: r,
        ports,
        problems: out,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The group's analysis is the compiler's decision (what is compiled, what is left out)
    /// and the problems status and admission report, from one computation.
    #[test]
    fn route_group_analysis_is_decision_and_problems() {
        let g: hub::HttpRouteGroup = match weft_smi::from_value(&serde_json::json!({
            "apiVersion": "specs.smi-spec.io/v1alpha4", "kind": "HTTPRouteGroup",
            "metadata": {"name": "g", "namespace": "shop"},
            "spec": {"matches": [
                {"name": "odd", "methods": ["FETCH"]},
                {"name": "any", "pathRegex": "/x", "methods": ["*"]}
            ]}
        }))
        .unwrap()
        {
            hub::SmiObject::HTTPRouteGroup(g) => g,
            other => panic!("{other:?}"),
        };
        let a = http_route_group(&g);
        assert_eq!(a.matches.len(), 2);
        assert!(a.matches[0].outcome.is_err());
        let any = a.matches[1].outcome.as_ref().unwrap();
        assert!(any.methods.is_empty());
        let problems: Vec<(usize, &MatchProblem)> =
            a.problems().map(|(m, p)| (m.index, p)).collect();
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].0, 0);
        assert!(matches!(problems[0].1, MatchProblem::UnknownMethod { .. }));
    }

    fn model(objects: &[serde_json::Value]) -> Model {
        Model::from_objects(
            objects
                .iter()
                .map(|v| crate::model::ClusterObject::from_value(v).expect("test object")),
        )
    }

    fn svc(name: &str, port: u16) -> serde_json::Value {
        serde_json::json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "shop"},
            "spec": {"ports": [{"port": port}]}})
    }

    fn smi(v: serde_json::Value) -> hub::SmiObject {
        weft_smi::from_value(&v).expect("test manifest parses")
    }

    /// A split's single-object analysis is what admission reports and what the compiler's
    /// plan reads: no weight is `ZeroWeights` for admission and `NoWeight` for status, from one
    /// decision; a foreign apiGroup is rejected by admission and matches nothing in the plan.
    #[test]
    fn split_analysis_feeds_admission_and_the_plan() {
        let hub::SmiObject::TrafficSplit(s) = smi(serde_json::json!({
            "apiVersion": "split.smi-spec.io/v1alpha4", "kind": "TrafficSplit",
            "metadata": {"name": "s", "namespace": "shop"},
            "spec": {"service": "web", "backends": [{"service": "v1", "weight": 0}],
                     "matches": [{"kind": "HTTPRouteGroup", "apiGroup": "example.com", "name": "g"},
                                 {"kind": "HTTPRouteGroup", "name": "g"}]}
        })) else {
            panic!("not a split")
        };
        let a = traffic_split(&s);
        assert_eq!(a.weights, SplitWeights::NoWeight);
        assert_eq!(
            a.matches,
            vec![
                SplitMatchRef::ForeignApiGroup("example.com"),
                SplitMatchRef::Group("g")
            ]
        );
        let reasons: Vec<Reason> = a.problems.iter().map(|p| p.reason).collect();
        assert_eq!(
            reasons,
            vec![Reason::ZeroWeights, Reason::UnsupportedMatchKind]
        );

        let m = model(&[
            svc("web", 80),
            svc("v1", 80),
            serde_json::json!({"apiVersion": "specs.smi-spec.io/v1alpha4", "kind": "HTTPRouteGroup",
                "metadata": {"name": "g", "namespace": "shop"},
                "spec": {"matches": [{"name": "m", "pathRegex": "/x"}]}}),
        ]);
        let apex = ObjectRef::new("shop", "web");
        let plan = split_plan(&m, &apex, &s);
        let issues: Vec<Reason> = plan.issues.iter().map(SplitIssue::reason).collect();
        assert_eq!(issues, vec![Reason::NoWeight, Reason::InvalidKind]);
        // Only the group of the right apiGroup is in force.
        assert_eq!(plan.matches.as_ref().map(Vec::len), Some(1));
    }

    /// A TrafficTarget's analysis: the identity decisions status reads and the problems
    /// admission reports; its rules resolve through one function for status and `validate`.
    #[test]
    fn target_analysis_and_rule_resolution() {
        let hub::SmiObject::TrafficTarget(t) = smi(serde_json::json!({
            "apiVersion": "access.smi-spec.io/v1alpha3", "kind": "TrafficTarget",
            "metadata": {"name": "t", "namespace": "shop"},
            "spec": {"destination": {"kind": "ServiceAccount", "name": "api", "namespace": "shop"},
                     "sources": [{"kind": "ServiceAccount", "name": "web", "namespace": "shop"},
                                 {"kind": "User", "name": "bob"}],
                     "rules": [{"kind": "HTTPRouteGroup", "name": "g", "matches": ["m", "nope"]},
                               {"kind": "TCPRoute", "name": "db"}]}
        })) else {
            panic!("not a target")
        };
        let a = traffic_target(&t);
        assert!(a.destination_is_identity);
        assert_eq!(a.unsupported_sources, vec![1]);
        assert_eq!(a.allows_nothing, None);
        assert!(a.problems.iter().any(
            |p| p.reason == Reason::UnsupportedIdentityKind && p.path == "spec.sources[1].kind"
        ));

        let m = model(&[
            serde_json::json!({"apiVersion": "specs.smi-spec.io/v1alpha4",
            "kind": "HTTPRouteGroup", "metadata": {"name": "g", "namespace": "shop"},
            "spec": {"matches": [{"name": "m", "pathRegex": "/x"}]}}),
        ]);
        let r = target_rules(&t, |kind, name| model_match_names(&m, "shop", kind, name));
        assert_eq!(
            r,
            vec![
                RuleResolution::MatchesNotFound(vec![(1, "nope")]),
                RuleResolution::RouteNotFound
            ]
        );
    }

    /// A port route's analysis: port 0 rejects it, a duplicate warns, the valid ports remain.
    #[test]
    fn port_route_analysis() {
        let hub::SmiObject::PortRoute(r) = smi(serde_json::json!({
            "apiVersion": "specs.smi-spec.io/v1alpha4", "kind": "TCPRoute",
            "metadata": {"name": "db", "namespace": "shop"},
            "spec": {"matches": {"ports": [5432, 0, 5432, 6432]}}
        })) else {
            panic!("not a port route")
        };
        let a = port_route(&r);
        assert_eq!(a.ports, vec![5432, 6432]);
        let errors: Vec<Reason> = a.errors().map(|p| p.reason).collect();
        assert_eq!(errors, vec![Reason::InvalidPort]);
        assert_eq!(a.problems.len(), 2);
    }
}
