//! CustomResourceDefinitions for every SMI kind.
