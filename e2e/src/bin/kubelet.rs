//! `weft-e2e-kubelet`: runs the kubelet stand-in against a cluster until Ctrl-C, then cleans up.
//!
//! ```text
//! sudo weft-e2e-kubelet --kubeconfig /tmp/weft-kube-XXXX/kubeconfig --api-server https://198.18.0.1:PORT \
//!     --ca /tmp/weft-kube-XXXX/ca.crt
//! ```
//! Pods run from the images in `target/images` (run `scripts/build-images.sh` first).
#![forbid(unsafe_code)]

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use weft_e2e::images::ImageStore;
use weft_e2e::kubelet::{Images, Kubelet, KubeletConfig};

#[derive(Parser, Debug)]
struct Args {
    #[arg(long)]
    kubeconfig: PathBuf,
    /// The API server as pods reach it.
    #[arg(long)]
    api_server: String,
    /// CA of the API server's certificate.
    #[arg(long)]
    ca: PathBuf,
    /// Folder with `images.json` and the image layouts (`scripts/build-images.sh` output).
    #[arg(long, default_value = "target/images")]
    images_dir: PathBuf,
    #[arg(long, default_value = "/tmp/weft-e2e-kubelet")]
    state_dir: PathBuf,
    #[arg(long, default_value = "weft-e2e")]
    node_name: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter("info").init();
    let args = Args::parse();
    weft_e2e::cluster::install_crypto_provider();
    let kc = kube::config::Kubeconfig::read_from(&args.kubeconfig)?;
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
    let client = kube::Client::try_from(config)?;
    let handle = Kubelet::start(
        client,
        KubeletConfig {
            node_name: args.node_name,
            images: Images {
                store: std::sync::Arc::new(
                    ImageStore::open(&args.images_dir, &weft_e2e::images::rootfs_cache())
                        .context("reading the images")?,
                ),
            },
            api_server: args.api_server,
            api_ca_pem: std::fs::read_to_string(&args.ca).context("reading the CA")?,
            state_dir: args.state_dir,
        },
    )
    .await?;
    tokio::signal::ctrl_c().await?;
    handle.shutdown().await;
    Ok(())
}
