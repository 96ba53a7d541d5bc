//! Gateway API `gateway.networking.k8s.io/v1` GRPCRoute in the model: converted, by the one pure
//! function [`from_gateway_grpc_route`], into the model's [`HttpRoute`] form (with
//! [`RouteKind::Grpc`]), so that the compiler turns both kinds into the same proxy routes.
//!
//! gRPC is HTTP/2 with `POST /<service>/<method>`, so a GRPCRoute is an HTTPRoute whose
//! matches are paths:
//!
//! | `matches[].method` | HTTPRoute `path` |
//! |---|---|
//! | `Exact`, `service` and `method` | `Exact` `/<service>/<method>` |
//! | `Exact`, `service` only | `PathPrefix` `/<service>/` |
//! | `Exact`, `method` only | `RegularExpression` `/[^/]+/<method, escaped>` |
//! | `RegularExpression` | `RegularExpression` `/(?:<service>)/(?:<method>)`, an absent one `[^/]+` |
//! | neither `service` nor `method` | refused (the CRD's rule: at least one) |
//!
//! Header matches, filters, backendRefs and parentRefs have the same shape in both kinds and are
//! carried over field for field (through their JSON form); `hostnames` are carried and, as for
//! HTTPRoutes, ignored by the mesh.

use gateway_api::grpcroutes as grpc;
use gateway_api::httproutes as gw;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::gateway::{meta_of, HttpRoute, RouteKind};
use super::ModelError;

/// The Gateway API kind name.
pub const KIND: &str = "GRPCRoute";

/// A model [`HttpRoute`] ([`RouteKind::Grpc`]) from the `gateway-api` crate's GRPCRoute (a
/// watch's typed object, or a manifest parsed into it). Fails for a method match with neither
/// `service` nor `method` (the CRD refuses it; a manifest may still hold one).
pub fn from_gateway_grpc_route(route: &grpc::GrpcRoute) -> Result<HttpRoute, ModelError> {
    let meta = meta_of(&route.metadata, KIND)?;
    let spec = http_spec(&route.spec).map_err(|message| ModelError::Field {
        kind: KIND.into(),
        name: format!("{}/{}", meta.namespace, meta.name),
        message,
    })?;
    Ok(HttpRoute {
        meta,
        spec,
        kind: RouteKind::Grpc,
    })
}

/// The HTTPRoute spec a GRPCRoute spec means (see the module documentation).
pub fn http_spec(spec: &grpc::GrpcRouteSpec) -> Result<gw::HttpRouteSpec, String> {
    let mut rules = Vec::new();
    for (i, rule) in spec.rules.iter().flatten().enumerate() {
        let at = format!("spec.rules[{i}]");
        let matches = match &rule.matches {
            None => None,
            Some(ms) => Some(
                ms.iter()
                    .enumerate()
                    .map(|(j, m)| http_match(m, &format!("{at}.matches[{j}]")))
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        rules.push(gw::HttpRouteRules {
            backend_refs: same_shape(&rule.backend_refs, &format!("{at}.backendRefs"))?,
            filters: same_shape(&rule.filters, &format!("{at}.filters"))?,
            matches,
            name: rule.name.clone(),
            timeouts: None,
        });
    }
    Ok(gw::HttpRouteSpec {
        hostnames: spec.hostnames.clone(),
        parent_refs: same_shape(&spec.parent_refs, "spec.parentRefs")?,
        rules: spec.rules.as_ref().map(|_| rules),
    })
}

/// The HTTPRoute match of one GRPCRoute match.
fn http_match(
    m: &grpc::GrpcRouteRulesMatches,
    at: &str,
) -> Result<gw::HttpRouteRulesMatches, String> {
    Ok(gw::HttpRouteRulesMatches {
        headers: same_shape(&m.headers, &format!("{at}.headers"))?,
        method: None,
        path: match &m.method {
            None => None,
            Some(method) => Some(method_path(method, at)?),
        },
        query_params: None,
    })
}

/// The path match of a GRPCRoute method match.
fn method_path(
    m: &grpc::GrpcRouteRulesMatchesMethod,
    at: &str,
) -> Result<gw::HttpRouteRulesMatchesPath, String> {
    use gw::HttpRouteRulesMatchesPathType as P;
    let service = m.service.as_deref().filter(|s| !s.is_empty());
    let method = m.method.as_deref().filter(|s| !s.is_empty());
    let regex = matches!(
        m.r#type,
        Some(grpc::GrpcRouteRulesMatchesMethodType::RegularExpression)
    );
    let (kind, value) = match (regex, service, method) {
        (_, None, None) => {
            return Err(format!(
                "{at}.method: at least one of service and method must be set"
            ))
        }
        (false, Some(s), Some(m)) => (P::Exact, format!("/{s}/{m}")),
        (false, Some(s), None) => (P::PathPrefix, format!("/{s}/")),
        (false, None, Some(m)) => (P::RegularExpression, format!("/[^/]+/{}", regex::escape(m))),
        (true, s, m) => (
            P::RegularExpression,
            format!("/(?:{})/(?:{})", s.unwrap_or("[^/]+"), m.unwrap_or("[^/]+")),
        ),
    };
    Ok(gw::HttpRouteRulesMatchesPath {
        r#type: Some(kind),
        value: Some(value),
    })
}

/// A GRPCRoute field as the HTTPRoute field of the same shape (parentRefs, backendRefs, header
/// matches, filters), through its JSON form: every field carried, none invented.
fn same_shape<A: Serialize, B: DeserializeOwned>(
    from: &Option<A>,
    at: &str,
) -> Result<Option<B>, String> {
    match from {
        None => Ok(None),
        Some(a) => serde_json::to_value(a)
            .and_then(serde_json::from_value)
            .map(Some)
            .map_err(|e| format!("{at}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(yaml: &str) -> grpc::GrpcRoute {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn paths(r: &HttpRoute) -> Vec<(String, String)> {
        r.spec
            .rules
            .iter()
            .flatten()
            .flat_map(|rule| rule.matches.iter().flatten())
            .map(|m| {
                let p = m.path.clone().unwrap_or_default();
                (
                    format!(
                        "{:?}",
                        p.r#type
                            .unwrap_or(gw::HttpRouteRulesMatchesPathType::PathPrefix)
                    ),
                    p.value.unwrap_or_default(),
                )
            })
            .collect()
    }

    const HEAD: &str = "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\n\
                        metadata: {name: g, namespace: demo, generation: 3}\n";

    #[test]
    fn method_matches_become_paths() {
        let r = from_gateway_grpc_route(&route(&format!(
            "{HEAD}spec:
  parentRefs: [{{group: '', kind: Service, name: echo, port: 7070}}]
  rules:
  - name: both
    matches:
    - method: {{service: grpc.Echo, method: Ping}}
    - method: {{service: grpc.Echo}}
    - method: {{method: Ping.x}}
    - method: {{type: RegularExpression, service: 'grpc\\..*', method: 'P.*'}}
    - method: {{type: RegularExpression, method: 'P.*'}}
    - headers: [{{name: x-tenant, value: a}}]
    backendRefs: [{{name: echo-v2, port: 7070, weight: 3}}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {{set: [{{name: x-a, value: b}}], remove: [x-c]}}
"
        )))
        .unwrap();
        assert_eq!(r.kind, RouteKind::Grpc);
        assert_eq!(r.meta.generation, Some(3));
        assert_eq!(
            paths(&r),
            vec![
                ("Exact".into(), "/grpc.Echo/Ping".into()),
                ("PathPrefix".into(), "/grpc.Echo/".into()),
                ("RegularExpression".into(), "/[^/]+/Ping\\.x".into()),
                ("RegularExpression".into(), "/(?:grpc\\..*)/(?:P.*)".into()),
                ("RegularExpression".into(), "/(?:[^/]+)/(?:P.*)".into()),
                ("PathPrefix".into(), String::new()),
            ]
        );
        let rule = &r.spec.rules.as_ref().unwrap()[0];
        assert_eq!(rule.name.as_deref(), Some("both"));
        let h = &rule.matches.as_ref().unwrap()[5].headers.as_ref().unwrap()[0];
        assert_eq!((h.name.as_str(), h.value.as_str()), ("x-tenant", "a"));
        let b = &rule.backend_refs.as_ref().unwrap()[0];
        assert_eq!(
            (b.name.as_str(), b.port, b.weight),
            ("echo-v2", Some(7070), Some(3))
        );
        let f = &rule.filters.as_ref().unwrap()[0];
        assert_eq!(
            f.r#type,
            gw::HttpRouteRulesFiltersType::RequestHeaderModifier
        );
        let set = f
            .request_header_modifier
            .as_ref()
            .unwrap()
            .set
            .as_ref()
            .unwrap();
        assert_eq!(set[0].name, "x-a");
        let p = &r.spec.parent_refs.as_ref().unwrap()[0];
        assert_eq!(
            (p.kind.as_deref(), p.name.as_str(), p.port),
            (Some("Service"), "echo", Some(7070))
        );
        assert!(super::super::gateway::is_service_parent(p));
    }

    #[test]
    fn unsupported_filters_are_carried_so_the_compiler_refuses_them() {
        let r = from_gateway_grpc_route(&route(&format!(
            "{HEAD}spec:
  rules:
  - filters:
    - type: RequestMirror
      requestMirror: {{backendRef: {{name: shadow, port: 80}}}}
    - type: ExtensionRef
      extensionRef: {{group: x.io, kind: X, name: y}}
"
        )))
        .unwrap();
        let f = r.spec.rules.as_ref().unwrap()[0].filters.as_ref().unwrap();
        assert_eq!(f[0].r#type, gw::HttpRouteRulesFiltersType::RequestMirror);
        assert_eq!(f[1].r#type, gw::HttpRouteRulesFiltersType::ExtensionRef);
    }

    #[test]
    fn a_method_match_without_service_or_method_is_refused() {
        let e = from_gateway_grpc_route(&route(&format!(
            "{HEAD}spec:\n  rules:\n  - matches: [{{method: {{type: Exact}}}}]\n"
        )))
        .unwrap_err();
        assert!(
            e.to_string().contains("spec.rules[0].matches[0].method"),
            "{e}"
        );
    }
}
