//! Smoke test of the failure-scenario benchmark's own tools (`e2e/bench/chaos.sh`): the real
//! `chaos_backend` and `chaos_load` processes on loopback. The load generator switches the
//! backend's faults on cue (`--at`), and what it records must be exactly what the backend was
//! told to do in each phase, and what the backend counted; the report must find the recovery.
//! (The benchmark itself is not a test; nothing here depends on timing beyond the phases' order.)

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use weft_e2e::chaos::report::{report, Sample, Window};

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A free loopback port (from below the ephemeral range: see `weft_e2e::cluster::free_port`).
fn free_port() -> SocketAddr {
    SocketAddr::from((
        [127, 0, 0, 1],
        weft_e2e::cluster::free_port().expect("a free port"),
    ))
}

fn get(addr: SocketAddr, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    Some(text)
}

fn window(from_s: f64, to_s: f64) -> Window {
    Window {
        from_s,
        to_s,
        fault_s: None,
        hold_s: 0.0,
        target: 0.999,
    }
}

#[test]
fn the_load_generator_records_each_fault_the_backend_was_switched_to() {
    let (data, control) = (free_port(), free_port());
    let _backend = Kill(
        Command::new(env!("CARGO_BIN_EXE_chaos_backend"))
            .args([
                "--listen",
                &data.to_string(),
                "--control",
                &control.to_string(),
            ])
            .args(["--name", "b0"])
            .stdout(Stdio::null())
            .spawn()
            .expect("start chaos_backend"),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while get(data, "/").is_none_or(|r| !r.starts_with("HTTP/1.1 200")) {
        assert!(Instant::now() < deadline, "chaos_backend did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
    get(control, "/reset").expect("reset");

    let dir = tempfile::tempdir().expect("tempdir");
    let tsv = dir.path().join("run.tsv");
    let ctl = format!("http://{control}");
    // 0-1 s healthy, 1-2 s the app is dead (refused), 2-3 s it answers 503, 3-4 s healthy.
    let out = Command::new(env!("CARGO_BIN_EXE_chaos_load"))
        .args(["run", "--url", &format!("http://{data}/"), "--rate", "200"])
        .args(["--duration", "4", "--timeout-ms", "2000"])
        .arg("--out")
        .arg(&tsv)
        .args(["--at", &format!("1={ctl}/set?mode=refuse")])
        .args(["--at", &format!("2={ctl}/set?mode=status&status=503")])
        .args(["--at", &format!("3={ctl}/set?mode=ok")])
        .output()
        .expect("run chaos_load");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let samples: Vec<Sample> = std::fs::read_to_string(&tsv)
        .expect("record")
        .lines()
        .map(|l| Sample::parse_line(l).expect("a sample line"))
        .collect();
    assert_eq!(
        samples.len(),
        800,
        "rate x duration requests, each recorded"
    );
    // Away from the switches (±0.15 s), every request saw exactly its phase's behaviour.
    let phase = |from, to| report(&samples, &window(from, to)).outcomes;
    let only = |key: &str, n: u64| [(key.to_string(), n)].into_iter().collect();
    assert_eq!(phase(0.15, 0.85), only("200", 140));
    assert_eq!(phase(1.15, 1.85), only("err", 140));
    assert_eq!(phase(2.15, 2.85), only("503", 140));
    assert_eq!(phase(3.15, 3.85), only("200", 140));

    // Recovery from the fault at 1 s: the moment the app answered 200 again, at 3 s.
    let r = report(
        &samples,
        &Window {
            fault_s: Some(1.0),
            hold_s: 0.5,
            ..window(0.0, 4.0)
        },
    );
    let recovery = r.recovery_s.expect("recovered");
    assert!(
        (1.9..=2.1).contains(&recovery),
        "recovery {recovery} s, expected 2 s after the fault"
    );
    assert_eq!(r.failed_in_last_hold, Some(0));

    // The backend counted exactly the requests that reached it: all but the refused ones.
    let stats = get(control, "/stats").expect("stats");
    let body = stats.split("\r\n\r\n").nth(1).expect("a body");
    let stats: serde_json::Value = serde_json::from_str(body.trim()).expect("stats JSON");
    let answered =
        r.outcomes.get("200").copied().unwrap_or(0) + r.outcomes.get("503").copied().unwrap_or(0);
    assert_eq!(stats["requests"].as_u64(), Some(answered));
    assert_eq!(
        stats["statuses"]["503"].as_u64(),
        r.outcomes.get("503").copied()
    );
}
