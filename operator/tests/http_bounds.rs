//! The operator's HTTP listeners (admin; in a cluster also the webhook and the aggregated API,
//! served by the same function) are reachable from the pod network: a client that opens
//! hundreds of connections and sends nothing costs the real `weft-operator` at most
//! `MAX_CONNECTIONS` sockets, idle connections are closed after the header timeout, a probe
//! behind them is answered once they are, and proxies keep being served meanwhile.
//!
//! No timing asserts: the waits are bounded waits for an outcome.

mod operator_process;
mod runtime_support;

use std::time::Duration;

use operator_process::Operator;
use runtime_support::*;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use weft_operator::admin::{HEADER_READ_TIMEOUT, MAX_CONNECTIONS};

const MANY: usize = MAX_CONNECTIONS + 150;

/// Sockets the process holds (`/proc/<pid>/fd` entries that are sockets).
fn sockets_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| {
            dir.filter_map(Result::ok)
                .filter(|e| {
                    std::fs::read_link(e.path())
                        .is_ok_and(|l| l.to_string_lossy().starts_with("socket:"))
                })
                .count()
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_flood_on_the_admin_port_is_bounded_and_drains() {
    let dir = mesh_dir();
    let op = Operator::start(dir.path(), &[]).await;
    let before = sockets_of(op.pid());

    let mut many = Vec::new();
    for _ in 0..MANY {
        many.push(TcpStream::connect(op.admin).await.expect("connect admin"));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let held = sockets_of(op.pid()).saturating_sub(before);
    assert!(
        (1..=MAX_CONNECTIONS).contains(&held),
        "{MANY} idle connections: the operator holds {held} more sockets (at most {MAX_CONNECTIONS})"
    );

    // Proxies are served meanwhile (discovery has its own listener).
    let mut proxy = Proxy::connect(op.discovery, "web-0").await;
    let first = proxy.next().await;
    assert!(first.full_state);

    // An idle connection is closed by the operator; a probe behind the flood is then answered.
    let probe = tokio::spawn(get(op.admin, "/ready"));
    let mut first_conn = many.swap_remove(0);
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(HEADER_READ_TIMEOUT * 3, first_conn.read(&mut byte))
        .await
        .expect("an idle admin connection is closed by the operator");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    let deadline = HEADER_READ_TIMEOUT * (MANY / MAX_CONNECTIONS + 3) as u32;
    let (code, body) = tokio::time::timeout(deadline, probe)
        .await
        .expect("a probe behind the idle connections is answered once they are closed")
        .expect("probe task");
    assert_eq!(code, 200, "{body}");
    drop(many);
    assert!(!op.log().contains("panicked"), "{}", op.log());
    op.stop().await;
}
