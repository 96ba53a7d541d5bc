//! Issuance throughput of the identity service on one core: token check, strict CSR
//! validation (parse, key policy, signature, SAN) and signing, without the network.
//!
//! `cargo run --release -p weft-operator --example identity_bench -- [COUNT]`

use std::sync::Arc;
use std::time::Instant;

use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType};
use weft_operator::identity::{BootstrapToken, CaStore, IdentityOptions, IdentityService};
use weft_proxy_api::v1::CertifyRequest;

fn main() -> anyhow::Result<()> {
    let count: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(20_000);
    let identity = "spiffe://cluster.local/ns/default/sa/default";
    let service = IdentityService::new(
        Arc::new(CaStore::generate("cluster.local")?),
        Arc::new(BootstrapToken::new(b"bench-token")),
        IdentityOptions::default(),
    );
    // CSRs are made by proxies, not the operator: prepare a pool outside the timed loop.
    let pool: Vec<Vec<u8>> = (0..256)
        .map(|_| {
            let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
            let mut params = CertificateParams::default();
            params.distinguished_name = DistinguishedName::new();
            params.subject_alt_names = vec![SanType::URI(identity.to_owned().try_into()?)];
            Ok(params.serialize_request(&key)?.der().to_vec())
        })
        .collect::<anyhow::Result<_>>()?;
    let requests: Vec<CertifyRequest> = (0..count)
        .map(|i| CertifyRequest {
            identity: identity.to_owned(),
            token: b"bench-token".to_vec(),
            csr_der: pool[i % pool.len()].clone(),
            pod_namespace: "default".into(),
            pod_name: "bench-0".into(),
        })
        .collect();

    let rt = tokio::runtime::Builder::new_current_thread().build()?;
    let started = Instant::now();
    let issued = rt.block_on(async {
        let mut issued = 0usize;
        for req in &requests {
            if service.certify(req).await.is_ok() {
                issued += 1;
            }
        }
        issued
    });
    let elapsed = started.elapsed();
    anyhow::ensure!(issued == count, "only {issued} of {count} issued");
    println!(
        "identity issuance: {count} certificates in {:.3} s on one thread = {:.0} certs/s ({:.1} us each)",
        elapsed.as_secs_f64(),
        count as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1e6 / count as f64
    );
    Ok(())
}
