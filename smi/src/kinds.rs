//! The one table of the SMI kinds weft serves: group, kind, plural, short names and versions.
//!
//! Everything that needs a kind's plural, its storage version or the list of served
//! `(apiVersion, kind)` pairs reads it here (CRD generation, parsing, the CLI's cluster
//! reader, the operator's watchers and status writer).

/// One served version of a kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KindVersion {
    /// `v1alpha4`, …
    pub name: &'static str,
    /// `group/version`.
    pub api_version: &'static str,
    /// Every listed version is served; exactly one per kind is the storage version.
    pub served: bool,
    pub storage: bool,
}

/// One SMI kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SmiKind {
    pub group: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    pub short_names: &'static [&'static str],
    /// Oldest first; the last one is the storage version.
    pub versions: &'static [KindVersion],
}

impl SmiKind {
    /// `<plural>.<group>`: the name of its CRD.
    pub fn crd_name(&self) -> String {
        format!("{}.{}", self.plural, self.group)
    }

    /// The storage (and newest) version.
    pub fn storage(&self) -> &'static KindVersion {
        self.versions
            .iter()
            .find(|v| v.storage)
            .unwrap_or(&self.versions[self.versions.len() - 1])
    }

    /// Whether `(api_version, kind)` is one of this kind's served versions.
    pub fn serves(&self, api_version: &str, kind: &str) -> bool {
        self.kind == kind
            && self
                .versions
                .iter()
                .any(|v| v.served && v.api_version == api_version)
    }
}

macro_rules! v {
    ($group:literal, $name:literal, $storage:literal) => {
        KindVersion {
            name: $name,
            api_version: concat!($group, "/", $name),
            served: true,
            storage: $storage,
        }
    };
}

pub const TRAFFIC_SPLIT: SmiKind = SmiKind {
    group: "split.smi-spec.io",
    kind: "TrafficSplit",
    plural: "trafficsplits",
    short_names: &["ts"],
    versions: &[
        v!("split.smi-spec.io", "v1alpha1", false),
        v!("split.smi-spec.io", "v1alpha2", false),
        v!("split.smi-spec.io", "v1alpha3", false),
        v!("split.smi-spec.io", "v1alpha4", true),
    ],
};

pub const TRAFFIC_TARGET: SmiKind = SmiKind {
    group: "access.smi-spec.io",
    kind: "TrafficTarget",
    plural: "traffictargets",
    short_names: &["tt"],
    versions: &[
        v!("access.smi-spec.io", "v1alpha1", false),
        v!("access.smi-spec.io", "v1alpha2", false),
        v!("access.smi-spec.io", "v1alpha3", true),
    ],
};

const SPECS_VERSIONS: &[KindVersion] = &[
    v!("specs.smi-spec.io", "v1alpha1", false),
    v!("specs.smi-spec.io", "v1alpha2", false),
    v!("specs.smi-spec.io", "v1alpha3", false),
    v!("specs.smi-spec.io", "v1alpha4", true),
];

pub const HTTP_ROUTE_GROUP: SmiKind = SmiKind {
    group: "specs.smi-spec.io",
    kind: "HTTPRouteGroup",
    plural: "httproutegroups",
    short_names: &["htr"],
    versions: SPECS_VERSIONS,
};

pub const TCP_ROUTE: SmiKind = SmiKind {
    group: "specs.smi-spec.io",
    kind: "TCPRoute",
    plural: "tcproutes",
    short_names: &["tr"],
    versions: SPECS_VERSIONS,
};

pub const UDP_ROUTE: SmiKind = SmiKind {
    group: "specs.smi-spec.io",
    kind: "UDPRoute",
    plural: "udproutes",
    short_names: &["ur"],
    versions: SPECS_VERSIONS,
};

/// Every SMI kind weft serves.
pub const SMI_KINDS: [SmiKind; 5] = [
    TRAFFIC_SPLIT,
    TRAFFIC_TARGET,
    HTTP_ROUTE_GROUP,
    TCP_ROUTE,
    UDP_ROUTE,
];

/// The kind named `kind` (`TrafficSplit`, …), in `group` when given.
pub fn by_kind(group: Option<&str>, kind: &str) -> Option<&'static SmiKind> {
    SMI_KINDS
        .iter()
        .find(|k| k.kind == kind && group.is_none_or(|g| g == k.group))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_storage_version_per_kind_and_it_is_the_newest() {
        for k in SMI_KINDS {
            assert_eq!(
                k.versions.iter().filter(|v| v.storage).count(),
                1,
                "{}",
                k.kind
            );
            assert_eq!(k.storage(), k.versions.last().unwrap());
            for v in k.versions {
                assert_eq!(v.api_version, format!("{}/{}", k.group, v.name));
            }
        }
    }

    #[test]
    fn served_versions_are_the_table() {
        let from_table: Vec<(&str, &str)> = SMI_KINDS
            .iter()
            .flat_map(|k| k.versions.iter().map(move |v| (v.api_version, k.kind)))
            .collect();
        assert_eq!(crate::served_versions(), from_table.as_slice());
    }
}
