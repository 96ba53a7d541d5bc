//! The typed reasons of problems found in SMI objects (the validator's and the compiler's
//! split issues), and their one string form: the `reason` of conditions and Events.

/// Why the validator reports a problem: the reason of conditions, Events and admission
/// messages ([`Reason::as_str`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    /// The root service is empty.
    MissingService,
    /// The split has no backends.
    NoBackends,
    /// Every weight is 0.
    ZeroWeights,
    /// A name is empty.
    MissingName,
    /// A backend is listed twice.
    DuplicateBackend,
    /// A backend Service does not exist (needs the namespace's Services).
    BackendNotFound,
    /// The root is the only backend with traffic.
    RootOnlyBackend,
    /// The root Service does not exist (needs the namespace's Services).
    ServiceNotFound,
    /// A `matches` entry is not an HTTPRouteGroup.
    UnsupportedMatchKind,
    /// A reference leaves the object's namespace.
    CrossNamespaceReference,
    /// A `matches` entry names a missing HTTPRouteGroup (needs the other objects).
    RouteGroupNotFound,
    /// An older split on the same root takes precedence (needs the other objects).
    Conflicted,
    /// An identity is not a ServiceAccount.
    UnsupportedIdentityKind,
    /// No sources: allows nothing.
    NoSources,
    /// A source is listed twice.
    DuplicateSource,
    /// No rules: allows nothing.
    NoRules,
    /// A rule names a missing route object (needs the other objects).
    RouteNotFound,
    /// A rule names a match its route object lacks (needs the other objects).
    MatchNotFound,
    /// A route group has no matches.
    NoMatches,
    /// A match name is used twice.
    DuplicateMatch,
    /// A path or header regex does not compile.
    InvalidRegex,
    /// A header name is not an HTTP token.
    InvalidHeaderName,
    /// A method SMI does not define.
    UnknownMethod,
    /// Port 0.
    InvalidPort,
    /// A port is listed twice.
    DuplicatePort,
    /// Every backend of a split has weight 0 (the compiler's name for [`Reason::ZeroWeights`]).
    NoWeight,
    /// A split backend lacks some of the root's ports (needs the Services).
    BackendPortMismatch,
    /// A split `matches` entry is of a kind other than HTTPRouteGroup (the compiler's name).
    InvalidKind,
    /// A match cannot be compiled; for a split, one of a referenced group's matches.
    InvalidMatch,
    /// The object is in force as written.
    Accepted,
    /// Every reference resolves.
    ResolvedRefs,
    /// No other split has this root.
    NoConflict,
    /// Another split on the same root takes precedence (the `Conflicted` condition).
    ApexConflict,
    /// A TrafficTarget has no rules or no sources: it allows nothing but restricts.
    AllowsNothing,
    /// A TrafficTarget names identities of a kind other than ServiceAccount.
    Invalid,
    /// An annotation value is ignored.
    InvalidAnnotation,
    /// Services targeting the same pod port give different inbound limits (the strictest
    /// applies).
    InboundLimitConflict,
    /// An HTTPS probe gets no authorization (its path is not visible).
    HttpsProbeNotAuthorized,
    /// A UDPRoute is not enforced (UDP bypasses the proxy).
    UDPNotProxied,
    /// A field has a value the object cannot have.
    InvalidField,
    /// A required field is missing.
    MissingField,
    /// Not an SMI kind weft serves.
    NotSmi,
    /// The object does not have its version's shape.
    Malformed,
    /// Rendered as the wrong kind.
    KindMismatch,
    /// A TrafficSplit is not in force: an HTTPRoute targets the same Service and takes
    /// precedence (docs/gateway-api.md).
    HTTPRouteInForce,
    /// Gateway API: a parentRef names no Service weft can attach the route to (missing, no
    /// such port or port name, no cluster IP).
    NoMatchingParent,
    /// Gateway API: the route uses a field or value weft does not implement (yet).
    UnsupportedValue,
    /// Gateway API: a backendRef leaves the route's namespace.
    RefNotPermitted,
    /// Gateway API: a rule's filters cannot be combined (RequestRedirect with URLRewrite, a
    /// filter type twice, ReplacePrefixMatch on a match that is not a PathPrefix).
    IncompatibleFilters,
}

impl Reason {
    /// The CamelCase reason string of conditions and Events.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::MissingService => "MissingService",
            Reason::NoBackends => "NoBackends",
            Reason::ZeroWeights => "ZeroWeights",
            Reason::MissingName => "MissingName",
            Reason::DuplicateBackend => "DuplicateBackend",
            Reason::BackendNotFound => "BackendNotFound",
            Reason::RootOnlyBackend => "RootOnlyBackend",
            Reason::ServiceNotFound => "ServiceNotFound",
            Reason::UnsupportedMatchKind => "UnsupportedMatchKind",
            Reason::CrossNamespaceReference => "CrossNamespaceReference",
            Reason::RouteGroupNotFound => "RouteGroupNotFound",
            Reason::Conflicted => "Conflicted",
            Reason::UnsupportedIdentityKind => "UnsupportedIdentityKind",
            Reason::NoSources => "NoSources",
            Reason::DuplicateSource => "DuplicateSource",
            Reason::NoRules => "NoRules",
            Reason::RouteNotFound => "RouteNotFound",
            Reason::MatchNotFound => "MatchNotFound",
            Reason::NoMatches => "NoMatches",
            Reason::DuplicateMatch => "DuplicateMatch",
            Reason::InvalidRegex => "InvalidRegex",
            Reason::InvalidHeaderName => "InvalidHeaderName",
            Reason::UnknownMethod => "UnknownMethod",
            Reason::InvalidPort => "InvalidPort",
            Reason::DuplicatePort => "DuplicatePort",
            Reason::NoWeight => "NoWeight",
            Reason::BackendPortMismatch => "BackendPortMismatch",
            Reason::InvalidKind => "InvalidKind",
            Reason::InvalidMatch => "InvalidMatch",
            Reason::Accepted => "Accepted",
            Reason::ResolvedRefs => "ResolvedRefs",
            Reason::NoConflict => "NoConflict",
            Reason::ApexConflict => "ApexConflict",
            Reason::AllowsNothing => "AllowsNothing",
            Reason::Invalid => "Invalid",
            Reason::InvalidAnnotation => "InvalidAnnotation",
            Reason::InboundLimitConflict => "InboundLimitConflict",
            Reason::HttpsProbeNotAuthorized => "HttpsProbeNotAuthorized",
            Reason::UDPNotProxied => "UDPNotProxied",
            Reason::InvalidField => "InvalidField",
            Reason::MissingField => "MissingField",
            Reason::NotSmi => "NotSmi",
            Reason::HTTPRouteInForce => "HTTPRouteInForce",
            Reason::NoMatchingParent => "NoMatchingParent",
            Reason::UnsupportedValue => "UnsupportedValue",
            Reason::RefNotPermitted => "RefNotPermitted",
            Reason::IncompatibleFilters => "IncompatibleFilters",
            Reason::Malformed => "Malformed",
            Reason::KindMismatch => "KindMismatch",
        }
    }

    /// Whether judging this needs objects other than the one judged (its namespace's SMI
    /// objects or Services): admission, which sees one object, never reports these.
    pub fn needs_other_objects(self) -> bool {
        matches!(
            self,
            Reason::BackendNotFound
                | Reason::ServiceNotFound
                | Reason::RouteGroupNotFound
                | Reason::Conflicted
                | Reason::RouteNotFound
                | Reason::MatchNotFound
                | Reason::BackendPortMismatch
        )
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
