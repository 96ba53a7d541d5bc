//! The `weft-proxy` binary refuses bad configuration with exit code 2 and names the variable.

use std::process::Command;

fn run(env: &[(&str, &str)]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_weft-proxy"))
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .expect("run weft-proxy");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const BASE: [(&str, &str); 5] = [
    ("WEFT_PROXY_CONTROL_ADDR", "127.0.0.1:1"),
    ("WEFT_PROXY_POD", "demo/web-0"),
    ("WEFT_PROXY_TOKEN_FILE", "/nonexistent/token"),
    ("WEFT_PROXY_ADMIN_ADDR", "127.0.0.1:0"),
    ("WEFT_PROXY_INBOUND_ADDR", "127.0.0.1:0"),
];

fn with<'a>(over: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut env: Vec<_> = BASE
        .iter()
        .copied()
        .filter(|(k, _)| !over.iter().any(|(o, _)| o == k))
        .collect();
    env.extend(over.iter().copied().filter(|(_, v)| !v.is_empty()));
    env
}

#[test]
fn missing_required_variable_exits_2() {
    let (code, stderr) = run(&with(&[("WEFT_PROXY_POD", "")]));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("WEFT_PROXY_POD is required"), "{stderr}");
}

#[test]
fn invalid_values_exit_2_with_the_variable_named() {
    for (name, value) in [
        ("WEFT_PROXY_POD", "web-0"),
        ("WEFT_PROXY_ADMIN_ADDR", "everywhere"),
        ("WEFT_PROXY_SHUTDOWN_GRACE", "soon"),
        ("WEFT_PROXY_THREADS", "0"),
        ("WEFT_LOG", "[[["),
        ("WEFT_PROXY_CONTROL_ADDR", "https://127.0.0.1:1"),
    ] {
        let (code, stderr) = run(&with(&[(name, value)]));
        assert_eq!(code, Some(2), "{name}={value}: {stderr}");
        let named = stderr.contains(name)
            || (name == "WEFT_PROXY_CONTROL_ADDR" && stderr.contains("https"));
        assert!(named, "{name}={value}: {stderr}");
    }
}

#[test]
fn port_in_use_exits_1() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let (code, stderr) = run(&with(&[
        ("WEFT_PROXY_ADMIN_ADDR", addr.as_str()),
        ("WEFT_PROXY_OUTBOUND_ADDR", "127.0.0.1:0"),
    ]));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("bind admin listener"), "{stderr}");
}
