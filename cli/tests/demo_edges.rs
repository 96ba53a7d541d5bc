//! #18: `weft edges` and `weft stat --from` against a running `weft demo --keep` (operator,
//! proxies and apps as real processes on loopback). At the end of its script the demo's access
//! policy admits `frontend` and denies `batch`, and the canary sends everything to `api-v2`;
//! the traffic keeps flowing. So:
//!
//! - `weft edges` shows `frontend` → `api-v2` and `batch` → `api-v2`, both over mTLS with the
//!   callers' and the callee's identities;
//! - `weft stat --from deploy/frontend` is 100 % successful and `--from deploy/batch` 0 % (its
//!   403s), where the destination's inbound success rate blends the two.
//!
//! Build first: `cargo build -p weft-proxy -p weft-operator --bins` (the test builds them when
//! missing).

use std::process::{Child, Command};

use serde_json::Value;

mod demo_support;
use demo_support::spawn_demo;

/// The demo's /24 for this test (others use 127.43.0, 127.44.0; the default is 127.42.0).
const PREFIX: &str = "127.45.0";
/// The demo's pods' hosts (cli/src/demo/manifests.rs): frontend, batch, api-v1, api-v2.
const HOSTS: [u8; 4] = [10, 11, 20, 21];

/// Stops the demo (SIGINT, as Ctrl-C: it stops every process it started) when dropped.
struct Demo(Child);

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-INT", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

fn weft_json(args: &[&str]) -> Value {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_weft"));
    cmd.args(args);
    for h in HOSTS {
        cmd.arg("--proxy-admin").arg(format!("{PREFIX}.{h}:4191"));
    }
    let out = cmd
        .args(["--window", "3s", "-o", "json"])
        .output()
        .expect("running weft");
    assert!(out.status.success(), "weft {args:?}: {out:?}");
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

#[test]
fn edges_and_stat_from_show_the_demo_callers_apart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut started = spawn_demo(
        PREFIX,
        &["--keep", "--duration", "20s", "--rate", "100"],
        dir.path(),
    );
    let (seen, kept) = started.read_until("the mesh keeps running");
    let lines = started.lines;
    let demo = Demo(started.child);
    // Keep reading: a closed stdout would stop the demo at its next line.
    std::thread::spawn(move || lines.for_each(drop));
    assert!(
        kept,
        "the demo ended before keeping the mesh running:\n{seen}"
    );

    let edges = weft_json(&["edges"]);
    let rows = edges.as_array().unwrap_or_else(|| panic!("{edges}"));
    let id = |sa: &str| format!("spiffe://cluster.local/ns/demo/sa/{sa}");
    for (caller, rate) in [("frontend", 1.0), ("batch", 0.0)] {
        let row = rows
            .iter()
            .find(|r| r["src"]["name"] == format!("deployment/{caller}"))
            .unwrap_or_else(|| panic!("no edge from {caller}: {edges:#}\n{seen}"));
        assert_eq!(row["src"]["namespace"], "demo");
        assert_eq!(row["dst"]["name"], "deployment/api-v2", "{row:#}");
        assert_eq!(row["client_id"], id(caller), "{row:#}");
        assert_eq!(row["server_id"], id("api"), "{row:#}");
        assert_eq!(row["tls"], true, "{row:#}");
        assert!(row["requests"].as_u64().unwrap_or(0) > 0, "{row:#}");
        assert_eq!(row["success_rate"], rate, "{caller}: {row:#}");
    }

    for (caller, rate) in [("frontend", 1.0), ("batch", 0.0)] {
        let from = format!("deploy/{caller}");
        let stat = weft_json(&["stat", "--from", &from]);
        let rows = stat.as_array().unwrap_or_else(|| panic!("{stat}"));
        assert_eq!(rows.len(), 1, "{caller}: {stat:#}");
        assert_eq!(
            rows[0]["name"],
            format!("demo/deployment/{caller} -> demo/deployment/api-v2")
        );
        assert_eq!(rows[0]["success_rate"], rate, "{caller}: {stat:#}");
    }
    drop(demo);
}
