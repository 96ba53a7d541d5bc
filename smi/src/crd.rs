//! CustomResourceDefinitions for every SMI kind, generated from the Rust types.
//!
//! One CRD per kind, every version served, the newest stored, a `status` subresource
//! everywhere, and webhook conversion (`/convert` on the `weft-operator` service in
//! `weft-system`; the Helm chart fills in the CA bundle). `crds/smi.yaml` is this module's
//! [`render_yaml`] output; `cargo test -p weft-smi --test crds` fails when it drifts.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceColumnDefinition, CustomResourceConversion, CustomResourceDefinition,
    CustomResourceDefinitionNames, CustomResourceDefinitionSpec, CustomResourceDefinitionVersion,
    CustomResourceSubresourceStatus, CustomResourceSubresources, CustomResourceValidation,
    JSONSchemaProps, ServiceReference, WebhookClientConfig, WebhookConversion,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use schemars::JsonSchema;
use serde_json::{json, Value};

use crate::hub::SmiStatus;
use crate::kinds::{self, SmiKind};
use crate::{access, specs, split};

/// Where the API server sends ConversionReviews (placeholder; the Helm chart sets `caBundle`).
pub const WEBHOOK_SERVICE: &str = "weft-operator";
pub const WEBHOOK_NAMESPACE: &str = "weft-system";
pub const WEBHOOK_PATH: &str = "/convert";
pub const WEBHOOK_PORT: i32 = 443;

/// Integer formats Kubernetes understands; others (schemars' `uint16`, `uint64`…) are dropped.
const KNOWN_FORMATS: [&str; 6] = ["int32", "int64", "float", "double", "date-time", "byte"];

fn generate<T: JsonSchema>() -> Value {
    let generator = schemars::generate::SchemaSettings::openapi3()
        .with(|s| {
            s.inline_subschemas = true;
            s.meta_schema = None;
        })
        .with_transform(schemars::transform::AddNullable::default())
        .with_transform(kube_core::schema::StructuralSchemaRewriter)
        .with_transform(kube_core::schema::OptionalEnum)
        .with_transform(kube_core::schema::OptionalIntOrString)
        .into_generator();
    let mut v = serde_json::to_value(generator.into_root_schema_for::<T>()).unwrap_or(Value::Null);
    clean(&mut v);
    v
}

/// Strips what a CRD schema must not or need not carry: `$schema`, `title`, `default`s
/// (the API server would write them into every object), unknown formats.
fn clean(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.remove("$schema");
            m.remove("title");
            m.remove("default");
            if m.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true)) {
                m.insert(
                    "anyOf".into(),
                    json!([{"type": "integer"}, {"type": "string"}]),
                );
            }
            if let Some(f) = m.get("format").and_then(Value::as_str) {
                if !KNOWN_FORMATS.contains(&f) {
                    m.remove("format");
                }
            }
            for (k, child) in m.iter_mut() {
                // `properties` maps names to schemas; recurse into each.
                if k == "enum" {
                    continue;
                }
                clean(child);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(clean),
        _ => {}
    }
}

fn root_props() -> serde_json::Map<String, Value> {
    let mut p = serde_json::Map::new();
    p.insert("apiVersion".into(), json!({"type": "string"}));
    p.insert("kind".into(), json!({"type": "string"}));
    p.insert("metadata".into(), json!({"type": "object"}));
    p.insert("status".into(), generate::<SmiStatus>());
    p
}

/// Schema of an object with a `spec` of type `S`.
fn with_spec<S: JsonSchema>() -> Value {
    let mut p = root_props();
    p.insert("spec".into(), generate::<S>());
    json!({"type": "object", "properties": p, "required": ["spec"]})
}

/// Schema of a spec-less (top-level fields) root type `R`.
fn top_level<R: JsonSchema>() -> Value {
    let mut v = generate::<R>();
    if let Some(props) = v.get_mut("properties").and_then(Value::as_object_mut) {
        props.extend(root_props());
    }
    if let Some(o) = v.as_object_mut() {
        o.remove("description");
        if let Some(Value::Array(req)) = o.get_mut("required") {
            req.retain(|r| r != "metadata" && r != "status");
        }
    }
    v
}

fn column(
    name: &str,
    type_: &str,
    json_path: &str,
    description: &str,
) -> CustomResourceColumnDefinition {
    CustomResourceColumnDefinition {
        name: name.into(),
        type_: type_.into(),
        json_path: json_path.into(),
        description: Some(description.into()),
        ..Default::default()
    }
}

fn common_columns() -> Vec<CustomResourceColumnDefinition> {
    vec![
        column(
            "Accepted",
            "string",
            r#".status.conditions[?(@.type=="Accepted")].status"#,
            "Whether weft accepted the object",
        ),
        column("Age", "date", ".metadata.creationTimestamp", "Age"),
    ]
}

fn version(
    name: &str,
    schema: Value,
    columns: Vec<CustomResourceColumnDefinition>,
    storage: bool,
) -> CustomResourceDefinitionVersion {
    let props: Option<JSONSchemaProps> = serde_json::from_value(schema).ok();
    CustomResourceDefinitionVersion {
        name: name.into(),
        served: true,
        storage,
        schema: Some(CustomResourceValidation {
            open_api_v3_schema: props,
        }),
        subresources: Some(CustomResourceSubresources {
            status: Some(CustomResourceSubresourceStatus(json!({}))),
            scale: None,
        }),
        additional_printer_columns: Some(columns),
        ..Default::default()
    }
}

/// The CRD of `smi_kind` (names from [`kinds`]); `versions` are given oldest first and must be
/// the table's versions with the table's storage flag (checked in the tests).
fn crd(
    smi_kind: &SmiKind,
    versions: Vec<CustomResourceDefinitionVersion>,
) -> CustomResourceDefinition {
    let (group, kind, plural) = (smi_kind.group, smi_kind.kind, smi_kind.plural);
    let short_names = smi_kind.short_names;
    CustomResourceDefinition {
        metadata: ObjectMeta {
            name: Some(format!("{plural}.{group}")),
            labels: Some(
                [("app.kubernetes.io/part-of".to_string(), "weft".to_string())]
                    .into_iter()
                    .collect(),
            ),
            ..Default::default()
        },
        spec: CustomResourceDefinitionSpec {
            group: group.into(),
            names: CustomResourceDefinitionNames {
                kind: kind.into(),
                list_kind: Some(format!("{kind}List")),
                plural: plural.into(),
                singular: Some(kind.to_ascii_lowercase()),
                short_names: Some(short_names.iter().map(|s| s.to_string()).collect()),
                categories: Some(vec!["smi".into()]),
            },
            scope: "Namespaced".into(),
            versions,
            conversion: Some(CustomResourceConversion {
                strategy: "Webhook".into(),
                webhook: Some(WebhookConversion {
                    conversion_review_versions: vec!["v1".into()],
                    client_config: Some(WebhookClientConfig {
                        service: Some(ServiceReference {
                            name: WEBHOOK_SERVICE.into(),
                            namespace: WEBHOOK_NAMESPACE.into(),
                            path: Some(WEBHOOK_PATH.into()),
                            port: Some(WEBHOOK_PORT),
                        }),
                        ..Default::default()
                    }),
                }),
            }),
            preserve_unknown_fields: None,
        },
        status: None,
    }
}

fn traffic_split() -> CustomResourceDefinition {
    let cols = || {
        let mut c = vec![
            column(
                "Service",
                "string",
                ".spec.service",
                "The root (apex) service",
            ),
            column(
                "Backends",
                "string",
                ".spec.backends[*].service",
                "Backend services",
            ),
            column(
                "Weights",
                "string",
                ".spec.backends[*].weight",
                "Backend weights, in order",
            ),
        ];
        c.extend(common_columns());
        c
    };
    crd(
        &kinds::TRAFFIC_SPLIT,
        vec![
            version(
                "v1alpha1",
                with_spec::<split::v1alpha1::TrafficSplitSpec>(),
                cols(),
                false,
            ),
            version(
                "v1alpha2",
                with_spec::<split::v1alpha2::TrafficSplitSpec>(),
                cols(),
                false,
            ),
            version(
                "v1alpha3",
                with_spec::<split::v1alpha3::TrafficSplitSpec>(),
                cols(),
                false,
            ),
            version(
                "v1alpha4",
                with_spec::<split::v1alpha4::TrafficSplitSpec>(),
                cols(),
                true,
            ),
        ],
    )
}

fn traffic_target() -> CustomResourceDefinition {
    let cols = |prefix: &str| {
        let mut c = vec![column(
            "Destination",
            "string",
            &format!("{prefix}.destination.name"),
            "Destination service account",
        )];
        c.extend(common_columns());
        c
    };
    crd(
        &kinds::TRAFFIC_TARGET,
        vec![
            version(
                "v1alpha1",
                top_level::<access::v1alpha1::TrafficTarget>(),
                cols(""),
                false,
            ),
            version(
                "v1alpha2",
                with_spec::<access::v1alpha2::TrafficTargetSpec>(),
                cols(".spec"),
                false,
            ),
            version(
                "v1alpha3",
                with_spec::<access::v1alpha3::TrafficTargetSpec>(),
                cols(".spec"),
                true,
            ),
        ],
    )
}

fn http_route_group() -> CustomResourceDefinition {
    crd(
        &kinds::HTTP_ROUTE_GROUP,
        vec![
            version(
                "v1alpha1",
                top_level::<specs::v1alpha1::HTTPRouteGroup>(),
                common_columns(),
                false,
            ),
            version(
                "v1alpha2",
                top_level::<specs::v1alpha2::HTTPRouteGroup>(),
                common_columns(),
                false,
            ),
            version(
                "v1alpha3",
                with_spec::<specs::v1alpha3::HTTPRouteGroupSpec>(),
                common_columns(),
                false,
            ),
            version(
                "v1alpha4",
                with_spec::<specs::v1alpha4::HTTPRouteGroupSpec>(),
                common_columns(),
                true,
            ),
        ],
    )
}

fn port_routes() -> [CustomResourceDefinition; 2] {
    let tcp = crd(
        &kinds::TCP_ROUTE,
        vec![
            version(
                "v1alpha1",
                top_level::<specs::v1alpha1::TCPRoute>(),
                common_columns(),
                false,
            ),
            version(
                "v1alpha2",
                top_level::<specs::v1alpha2::TCPRoute>(),
                common_columns(),
                false,
            ),
            version(
                "v1alpha3",
                with_spec::<specs::v1alpha3::TCPRouteSpec>(),
                common_columns(),
                false,
            ),
            version(
                "v1alpha4",
                with_spec::<specs::v1alpha4::TCPRouteSpec>(),
                common_columns(),
                true,
            ),
        ],
    );
    let udp = crd(
        &kinds::UDP_ROUTE,
        vec![
            version(
                "v1alpha1",
                top_level::<specs::v1alpha1::UDPRoute>(),
                common_columns(),
                false,
            ),
            version(
                "v1alpha2",
                top_level::<specs::v1alpha2::UDPRoute>(),
                common_columns(),
                false,
            ),
            version(
                "v1alpha3",
                with_spec::<specs::v1alpha3::UDPRouteSpec>(),
                common_columns(),
                false,
            ),
            version(
                "v1alpha4",
                with_spec::<specs::v1alpha4::UDPRouteSpec>(),
                common_columns(),
                true,
            ),
        ],
    );
    [tcp, udp]
}

/// Every SMI CRD weft installs, in a fixed order.
pub fn all_crds() -> Vec<CustomResourceDefinition> {
    let mut v = vec![traffic_split(), traffic_target(), http_route_group()];
    v.extend(port_routes());
    v
}

/// [`all_crds`] as multi-document YAML, deterministic (the content of `crds/smi.yaml`).
pub fn render_yaml() -> String {
    let mut out = String::from(
        "# Generated by weft-smi (weft_smi::crd::render_yaml). Do not edit.\n\
         # Regenerate: WEFT_UPDATE_CRDS=1 cargo test -p weft-smi --test crds\n",
    );
    for c in all_crds() {
        out.push_str("---\n");
        match serde_yaml::to_string(&c) {
            Ok(s) => out.push_str(&s),
            Err(e) => out.push_str(&format!("# failed to render {:?}: {e}\n", c.metadata.name)),
        }
    }
    out
}

#[cfg(test)]
mod kind_table_tests {
    use super::*;

    #[test]
    fn every_crd_is_its_kind_table_row() {
        let crds = all_crds();
        assert_eq!(crds.len(), kinds::SMI_KINDS.len());
        for (crd, k) in crds.iter().zip(kinds::SMI_KINDS.iter()) {
            assert_eq!(crd.metadata.name.as_deref(), Some(k.crd_name().as_str()));
            let versions: Vec<(&str, bool, bool)> = crd
                .spec
                .versions
                .iter()
                .map(|v| (v.name.as_str(), v.served, v.storage))
                .collect();
            let table: Vec<(&str, bool, bool)> = k
                .versions
                .iter()
                .map(|v| (v.name, v.served, v.storage))
                .collect();
            assert_eq!(versions, table, "{}", k.kind);
        }
    }
}
