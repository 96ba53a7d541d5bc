//! The Gateway API conformance report (upstream `conformance/apis/v1` `ConformanceReport`,
//! v1.5.1) built from the results of the ported mesh tests, with upstream's rules
//! (`conformance/utils/suite/reports.go`):
//!
//! * a test counts in a profile when every feature it needs is one of the profile's core or
//!   extended features (so tests that also need a Gateway feature such as
//!   `HTTPRouteResponseHeaderModification` count in no mesh profile, as upstream);
//! * in that profile it is *extended* when one of its features is not a core feature;
//! * a profile part's result is `failure` with any failure, else `partial` with any skip, else
//!   `success`; the summary reads as upstream's.
//!
//! weft adds one key upstream's type does not have, `weftTestResults`: every test's outcome
//! and failure message (unknown keys are ignored by upstream's readers).

use std::collections::BTreeSet;

use serde_json::{json, Value};

/// The Gateway API release the tests and CRDs come from.
pub const GATEWAY_API_VERSION: &str = "v1.5.1";
/// The channel of the vendored CRDs.
pub const GATEWAY_API_CHANNEL: &str = "standard";

/// Upstream's mesh extended features (`pkg/features/mesh.go`).
pub const MESH_EXTENDED_FEATURES: &[&str] = &[
    "MeshClusterIPMatching",
    "MeshConsumerRoute",
    "MeshHTTPRouteBackendRequestHeaderModification",
    "MeshHTTPRouteNamedRouteRule",
    "MeshHTTPRouteQueryParamMatching",
    "MeshHTTPRouteRedirectPath",
    "MeshHTTPRouteRedirectPort",
    "MeshHTTPRouteRewritePath",
    "MeshHTTPRouteSchemeRedirect",
];

/// A conformance profile (`conformance/utils/suite/profiles.go`).
#[derive(Debug, Clone, Copy)]
pub struct Profile {
    pub name: &'static str,
    pub core: &'static [&'static str],
    pub extended: &'static [&'static str],
}

/// The mesh profiles, in upstream's report order (by name).
pub const MESH_PROFILES: &[Profile] = &[
    Profile {
        name: "MESH-GRPC",
        core: &["Mesh", "GRPCRoute"],
        extended: MESH_EXTENDED_FEATURES,
    },
    Profile {
        name: "MESH-HTTP",
        core: &["Mesh", "HTTPRoute"],
        extended: MESH_EXTENDED_FEATURES,
    },
];

/// One test's outcome.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Passed,
    Failed(String),
    Skipped(String),
}

/// One upstream test as run here.
#[derive(Debug, Clone)]
pub struct TestResult {
    /// Upstream's `ShortName`.
    pub name: &'static str,
    /// Upstream's `Features`.
    pub features: &'static [&'static str],
    pub provisional: bool,
    pub outcome: Outcome,
}

impl Profile {
    fn covers(&self, t: &TestResult) -> bool {
        t.features
            .iter()
            .all(|f| self.core.contains(f) || self.extended.contains(f))
    }

    fn is_extended(&self, t: &TestResult) -> bool {
        t.features.iter().any(|f| !self.core.contains(f))
    }
}

#[derive(Default)]
struct Part {
    passed: usize,
    failed: Vec<&'static str>,
    skipped: Vec<&'static str>,
}

impl Part {
    fn result(&self) -> &'static str {
        if !self.failed.is_empty() {
            "failure"
        } else if !self.skipped.is_empty() {
            "partial"
        } else {
            "success"
        }
    }

    fn summary(&self) -> String {
        match self.result() {
            "failure" => format!("failed with {} test failures", self.failed.len()),
            "partial" => format!("partially succeeded with {} test skips", self.skipped.len()),
            _ => "succeeded".into(),
        }
    }

    fn status(&self) -> Value {
        let mut v = json!({
            "result": self.result(),
            "statistics": {
                "Failed": self.failed.len(),
                "Passed": self.passed,
                "Skipped": self.skipped.len(),
            },
        });
        if !self.skipped.is_empty() {
            v["skippedTests"] = json!(self.skipped);
        }
        if !self.failed.is_empty() {
            v["failedTests"] = json!(self.failed);
        }
        v
    }
}

/// Who is reporting.
#[derive(Debug, Clone)]
pub struct Implementation {
    pub organization: String,
    pub project: String,
    pub url: String,
    pub version: String,
    pub contact: Vec<String>,
}

/// The report (as JSON, in upstream's field names) for `results`, dated `date` (RFC 3339).
/// `supported`: the extended features the implementation claims (upstream's
/// `supportedFeatures`); the others of [`MESH_EXTENDED_FEATURES`] are listed as unsupported.
pub fn report(
    implementation: &Implementation,
    date: &str,
    supported: &[&str],
    results: &[TestResult],
) -> Value {
    let mut sorted: Vec<&TestResult> = results.iter().collect();
    sorted.sort_by_key(|t| t.name);
    let mut profiles = Vec::new();
    for p in MESH_PROFILES {
        let (mut core, mut ext) = (Part::default(), Part::default());
        let mut any_ext = false;
        let mut any = false;
        for t in sorted.iter().filter(|t| p.covers(t)) {
            any = true;
            let part = if p.is_extended(t) {
                any_ext = true;
                &mut ext
            } else {
                &mut core
            };
            match &t.outcome {
                Outcome::Passed => part.passed += 1,
                Outcome::Failed(_) => part.failed.push(t.name),
                Outcome::Skipped(_) => part.skipped.push(t.name),
            }
        }
        if !any {
            continue;
        }
        let mut summary = format!("Core tests {}", core.summary());
        let mut v = json!({"name": p.name, "core": core.status()});
        if any_ext {
            summary = format!("{summary}. Extended tests {}", ext.summary());
            let mut e = ext.status();
            let sup: BTreeSet<&str> = supported
                .iter()
                .copied()
                .filter(|f| p.extended.contains(f))
                .collect();
            let unsup: BTreeSet<&str> = p
                .extended
                .iter()
                .copied()
                .filter(|f| !sup.contains(f))
                .collect();
            if !sup.is_empty() {
                e["supportedFeatures"] = json!(sup);
            }
            if !unsup.is_empty() {
                e["unsupportedFeatures"] = json!(unsup);
            }
            v["extended"] = e;
        }
        v["summary"] = json!(format!("{summary}."));
        profiles.push(v);
    }
    let provisional_ok: Vec<&str> = sorted
        .iter()
        .filter(|t| t.provisional && t.outcome == Outcome::Passed)
        .map(|t| t.name)
        .collect();
    let mut r = json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "ConformanceReport",
        "date": date,
        "gatewayAPIVersion": GATEWAY_API_VERSION,
        "gatewayAPIChannel": GATEWAY_API_CHANNEL,
        "implementation": {
            "organization": implementation.organization,
            "project": implementation.project,
            "url": implementation.url,
            "version": implementation.version,
            "contact": implementation.contact,
        },
        "mode": "default",
        "profiles": profiles,
    });
    if !provisional_ok.is_empty() {
        r["succeededProvisionalTests"] = json!(provisional_ok);
    }
    r["weftTestResults"] = Value::Array(
        sorted
            .iter()
            .map(|t| {
                let mut v = json!({"name": t.name, "features": t.features});
                match &t.outcome {
                    Outcome::Passed => v["result"] = json!("passed"),
                    Outcome::Failed(m) => {
                        v["result"] = json!("failed");
                        v["message"] = json!(m);
                    }
                    Outcome::Skipped(m) => {
                        v["result"] = json!("skipped");
                        v["message"] = json!(m);
                    }
                }
                if t.provisional {
                    v["provisional"] = json!(true);
                }
                v
            })
            .collect(),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &'static str, features: &'static [&'static str], outcome: Outcome) -> TestResult {
        TestResult {
            name,
            features,
            provisional: false,
            outcome,
        }
    }

    #[test]
    fn profiles_count_tests_as_upstream_does() {
        let results = vec![
            t("MeshBasic", &["Mesh"], Outcome::Passed),
            t(
                "MeshHTTPRouteWeight",
                &["Mesh", "HTTPRoute"],
                Outcome::Passed,
            ),
            t(
                "MeshHTTPRouteRewritePath",
                &["Mesh", "HTTPRoute", "MeshHTTPRouteRewritePath"],
                Outcome::Failed("x".into()),
            ),
            // Needs a Gateway feature: in no mesh profile.
            t(
                "MeshFrontend",
                &["Mesh", "HTTPRoute", "HTTPRouteResponseHeaderModification"],
                Outcome::Failed("y".into()),
            ),
            t(
                "MeshGRPCRouteWeight",
                &["Mesh", "GRPCRoute"],
                Outcome::Skipped("z".into()),
            ),
        ];
        let imp = Implementation {
            organization: "o".into(),
            project: "p".into(),
            url: "u".into(),
            version: "v".into(),
            contact: vec!["c".into()],
        };
        let r = report(&imp, "d", &["MeshHTTPRouteRewritePath"], &results);
        let grpc = &r["profiles"][0];
        assert_eq!(grpc["name"], "MESH-GRPC");
        assert_eq!(grpc["core"]["statistics"]["Passed"], 1);
        assert_eq!(grpc["core"]["statistics"]["Skipped"], 1);
        assert_eq!(grpc["core"]["result"], "partial");
        assert!(grpc.get("extended").is_none());
        let http = &r["profiles"][1];
        assert_eq!(http["name"], "MESH-HTTP");
        assert_eq!(http["core"]["statistics"]["Passed"], 2);
        assert_eq!(http["core"]["result"], "success");
        assert_eq!(http["extended"]["result"], "failure");
        assert_eq!(
            http["extended"]["failedTests"],
            json!(["MeshHTTPRouteRewritePath"])
        );
        assert_eq!(
            http["extended"]["supportedFeatures"],
            json!(["MeshHTTPRouteRewritePath"])
        );
        assert_eq!(
            http["summary"],
            "Core tests succeeded. Extended tests failed with 1 test failures."
        );
        assert_eq!(r["weftTestResults"].as_array().unwrap().len(), 5);
        assert_eq!(r["weftTestResults"][1]["name"], "MeshFrontend");
        assert_eq!(r["weftTestResults"][1]["message"], "y");
    }
}
