//! The Service Mesh Interface API as Rust types.
//!
//! * [`hub`]: one version-independent model that the rest of weft uses.
//! * [`split`], [`access`], [`specs`]: the typed objects of every served version.
//! * [`from_value`] / [`to_value`]: tolerant parsing of any served version into the hub, and
//!   rendering the hub in any served version.
//! * [`convert`]: hub conversions per version and the CRD conversion webhook logic.
//! * [`kinds`]: the one table of served kinds (group, plural, versions, storage version).
//! * [`crd`]: the CustomResourceDefinitions (`crds/smi.yaml`).
#![forbid(unsafe_code)]

pub mod access;
pub mod convert;
pub mod crd;
pub mod hub;
pub mod kinds;
pub mod limits;
pub mod quantity;
pub mod specs;
pub mod split;
pub mod status;

mod parse;

/// Re-exports for [`impl_resource!`]'s expansion.
#[doc(hidden)]
pub mod __private {
    pub use k8s_openapi;
    pub use kube_core;
}

pub use parse::{from_value, from_value_in, is_smi, served_versions, to_value};

/// Why an object could not be read or rendered as SMI.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SmiError {
    #[error("object has no {0}")]
    MissingField(&'static str),
    #[error("{api_version} {kind} is not an SMI kind weft serves")]
    NotSmi { api_version: String, kind: String },
    #[error("{kind} {api_version}: {message}")]
    Malformed {
        api_version: String,
        kind: String,
        message: String,
    },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
    #[error("cannot render a {found} as {expected}")]
    KindMismatch {
        expected: &'static str,
        found: &'static str,
    },
}

impl SmiError {
    pub(crate) fn invalid(path: impl Into<String>, message: impl Into<String>) -> Self {
        SmiError::Invalid {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// Implements `kube_core::Resource` for the hand-written (spec-less) root types.
#[macro_export]
#[doc(hidden)]
macro_rules! impl_resource {
    ($ty:ty, $group:literal, $version:literal, $kind:literal, $plural:literal) => {
        impl $crate::__private::kube_core::Resource for $ty {
            type DynamicType = ();
            type Scope = $crate::__private::kube_core::NamespaceResourceScope;

            fn kind(_: &()) -> std::borrow::Cow<'_, str> {
                $kind.into()
            }
            fn group(_: &()) -> std::borrow::Cow<'_, str> {
                $group.into()
            }
            fn version(_: &()) -> std::borrow::Cow<'_, str> {
                $version.into()
            }
            fn api_version(_: &()) -> std::borrow::Cow<'_, str> {
                concat!($group, "/", $version).into()
            }
            fn plural(_: &()) -> std::borrow::Cow<'_, str> {
                $plural.into()
            }
            fn meta(
                &self,
            ) -> &$crate::__private::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta
            {
                &self.metadata
            }
            fn meta_mut(
                &mut self,
            ) -> &mut $crate::__private::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta
            {
                &mut self.metadata
            }
        }
    };
}
