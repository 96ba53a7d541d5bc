//! What the mesh link's TLS costs (issue #20: "TLS record sizing and session resumption between
//! proxies"): a handshake per cipher suite, records of the sizes the proxy writes, and a
//! handshake with and without session resumption.
//!
//! ```text
//! cargo run --release -p weft-proxy --example handshake_cost -- [handshakes] [records]
//! ```
//!
//! Both ends run in this one thread over in-memory buffers, with rustls and ring as the proxy
//! builds them: TLS 1.3, ECDSA P-256 certificates from a test CA, a client certificate required
//! and verified. The time each side spends (the client's and the server's rustls calls) is
//! printed per handshake or per record.
//!
//! - Cipher suites: the same handshake and records with each TLS 1.3 suite ring offers, the
//!   suite the proxy negotiates (`weft_proxy::identity::provider`) marked. Records: one side
//!   writes a message of 256 B, 1 KiB or 16 KiB (one record each, the largest TLS allows) and the
//!   other decrypts it.
//! - Key exchange: a handshake with each key-exchange group the proxy offers, alone, the one two
//!   proxies agree on marked (X25519: `weft_common::tls::KX_GROUPS`).
//! - Resumption: the shipped proxy disables it (`identity::Identity`: every connection verifies
//!   the peer's current certificate against the current trust anchors); the resumed variant clones
//!   the same configurations and turns on what rustls offers (an in-memory session cache on the
//!   client, stateful tickets on the server). Full and resumed handshakes alternate in blocks, so
//!   a busy machine disturbs both alike; printed with the bytes exchanged and whether the server
//!   still sees the client's certificate on a resumed connection.

#[path = "../tests/dataplane_support/mod.rs"]
mod dataplane_support;

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dataplane_support::{ok, TestCa};
use rustls::crypto::ring::cipher_suite;
use rustls::{ClientConnection, HandshakeKind, ServerConnection, SupportedCipherSuite};
use weft_proxy::transport::MeshIdentity;

const WEB: &str = "spiffe://cluster.local/ns/demo/sa/web";
const API: &str = "spiffe://cluster.local/ns/demo/sa/api";
const BLOCK: usize = 50;

#[derive(Default)]
struct Cost {
    client: Duration,
    server: Duration,
    bytes: usize,
    handshakes: usize,
    with_client_cert: usize,
}

/// Moves what `from` has to send into `to`; the time each side spends is added to its account.
fn flow(
    from: &mut rustls::Connection,
    to: &mut rustls::Connection,
    from_time: &mut Duration,
    to_time: &mut Duration,
    bytes: &mut usize,
) -> Result<bool, rustls::Error> {
    let mut buf = Vec::new();
    let t = Instant::now();
    while from.wants_write() {
        if from.write_tls(&mut buf).is_err() {
            break;
        }
    }
    *from_time += t.elapsed();
    if buf.is_empty() {
        return Ok(false);
    }
    *bytes += buf.len();
    let t = Instant::now();
    let mut rd = &buf[..];
    while !rd.is_empty() {
        if to.read_tls(&mut rd).is_err() {
            break;
        }
        to.process_new_packets()?;
    }
    *to_time += t.elapsed();
    Ok(true)
}

/// One handshake; the connections are returned for records to be sent over them.
fn handshake(
    client: &Arc<rustls::ClientConfig>,
    server: &Arc<rustls::ServerConfig>,
    name: &rustls_pki_types::ServerName<'static>,
    cost: &mut Cost,
) -> Result<(rustls::Connection, rustls::Connection), rustls::Error> {
    let t = Instant::now();
    let mut c: rustls::Connection = ClientConnection::new(client.clone(), name.clone())?.into();
    cost.client += t.elapsed();
    let t = Instant::now();
    let mut s: rustls::Connection = ServerConnection::new(server.clone())?.into();
    cost.server += t.elapsed();
    // Until neither side has anything left to send: the server's session tickets, sent after
    // the handshake, reach the client too.
    loop {
        let a = flow(
            &mut c,
            &mut s,
            &mut cost.client,
            &mut cost.server,
            &mut cost.bytes,
        )?;
        let b = flow(
            &mut s,
            &mut c,
            &mut cost.server,
            &mut cost.client,
            &mut cost.bytes,
        )?;
        if !a && !b {
            break;
        }
    }
    if c.is_handshaking() || s.is_handshaking() {
        return Err(rustls::Error::General("handshake did not complete".into()));
    }
    cost.handshakes += 1;
    if s.peer_certificates().is_some_and(|c| !c.is_empty()) {
        cost.with_client_cert += 1;
    }
    Ok((c, s))
}

/// Sends `n` messages of `size` bytes from `from` to `to` (each written and read whole): the
/// sender's time is encryption and record framing, the receiver's decryption.
fn records(
    from: &mut rustls::Connection,
    to: &mut rustls::Connection,
    size: usize,
    n: usize,
) -> Result<(Duration, Duration), rustls::Error> {
    let msg = vec![0x5a_u8; size];
    let mut got = vec![0_u8; size];
    let (mut send, mut recv) = (Duration::ZERO, Duration::ZERO);
    let mut bytes = 0;
    for _ in 0..n {
        let t = Instant::now();
        let _ = from.writer().write_all(&msg);
        send += t.elapsed();
        flow(from, to, &mut send, &mut recv, &mut bytes)?;
        let t = Instant::now();
        let mut read = 0;
        while read < size {
            match to.reader().read(&mut got[read..]) {
                Ok(0) | Err(_) => break,
                Ok(k) => read += k,
            }
        }
        recv += t.elapsed();
        if read != size {
            return Err(rustls::Error::General(format!(
                "read {read} of {size} bytes"
            )));
        }
    }
    Ok((send, recv))
}

/// The client configuration of `web` and the server configuration of `api` as the proxy ships
/// them (resumption off: `identity::no_resumption_*`, as `Identity` applies them), and the name
/// `web` verifies `api` by.
fn link_configs(
    web: &dyn MeshIdentity,
    api: &dyn MeshIdentity,
) -> (
    Arc<rustls::ClientConfig>,
    Arc<rustls::ServerConfig>,
    rustls_pki_types::ServerName<'static>,
) {
    let (Some(client), Some(server), Some(name)) = (
        web.client_config(),
        api.server_config(),
        web.server_name_for(API),
    ) else {
        panic!("test identities have configurations");
    };
    let mut client = (*client).clone();
    weft_proxy::identity::no_resumption_client(&mut client);
    let mut server = (*server).clone();
    weft_proxy::identity::no_resumption_server(&mut server);
    (Arc::new(client), Arc::new(server), name)
}

/// Microseconds per item: `d` spent on `k` of them.
fn us(d: Duration, k: usize) -> f64 {
    d.as_secs_f64() * 1e6 / k as f64
}

/// [`BLOCK`] handshakes in a row: µs a handshake on each side (client, server), and the last
/// handshake's two connections.
fn handshake_block(
    client: &Arc<rustls::ClientConfig>,
    server: &Arc<rustls::ServerConfig>,
    name: &rustls_pki_types::ServerName<'static>,
) -> ((f64, f64), (rustls::Connection, rustls::Connection)) {
    let mut cost = Cost::default();
    let mut conns = None;
    for _ in 0..BLOCK {
        conns = Some(ok(handshake(client, server, name, &mut cost)));
    }
    let Some(conns) = conns else {
        panic!("at least one handshake");
    };
    (
        (
            us(cost.client, cost.handshakes),
            us(cost.server, cost.handshakes),
        ),
        conns,
    )
}

/// What marks the variant two proxies negotiate in a table.
fn mark(ours: bool) -> &'static str {
    if ours {
        " (the proxy's)"
    } else {
        ""
    }
}

fn suite_provider(suite: SupportedCipherSuite) -> Arc<rustls::crypto::CryptoProvider> {
    let mut p = weft_common::tls::crypto_provider();
    p.cipher_suites = vec![suite];
    Arc::new(p)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(1_000);
    let nrec: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(20_000);
    let ca = TestCa::new();

    // What two proxies negotiate: a cipher suite and a key-exchange group.
    let shipped = weft_proxy::identity::provider();
    let (negotiated, group) = {
        let (client, server, name) = link_configs(&*ca.identity(WEB), &*ca.identity(API));
        let (c, _) = ok(handshake(&client, &server, &name, &mut Cost::default()));
        (
            c.negotiated_cipher_suite().map(|s| s.suite()),
            c.negotiated_key_exchange_group().map(|g| g.name()),
        )
    };
    println!(
        "the proxy offers suites {:?} and key-exchange groups {:?}; negotiated between two \
         proxies: {negotiated:?}, {group:?}",
        shipped
            .cipher_suites
            .iter()
            .map(|s| s.suite())
            .collect::<Vec<_>>(),
        shipped
            .kx_groups
            .iter()
            .map(|g| g.name())
            .collect::<Vec<_>>()
    );

    // Cipher suites.
    println!(
        "| suite | handshake µs (client + server) | 256 B record µs (encrypt + decrypt) | 1 KiB | 16 KiB |"
    );
    println!("|---|---|---|---|---|");
    struct Variant {
        suite: SupportedCipherSuite,
        client: Arc<rustls::ClientConfig>,
        server: Arc<rustls::ServerConfig>,
        name: rustls_pki_types::ServerName<'static>,
        /// Per block: handshake (client, server), then per record size (send, receive), µs each.
        blocks: Vec<Vec<(f64, f64)>>,
    }
    let mut variants: Vec<Variant> = [
        cipher_suite::TLS13_AES_256_GCM_SHA384,
        cipher_suite::TLS13_AES_128_GCM_SHA256,
        cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
    ]
    .into_iter()
    .map(|suite| {
        let provider = suite_provider(suite);
        let (client, server, name) = link_configs(
            &*ca.identity_with_provider(WEB, provider.clone()),
            &*ca.identity_with_provider(API, provider),
        );
        Variant {
            suite,
            client,
            server,
            name,
            blocks: Vec::new(),
        }
    })
    .collect();
    // The suites take turns, a block each, and each figure is the median of its blocks: a busy
    // machine (or its hypervisor) slows some blocks, not one suite.
    let sizes = [256, 1024, 16 * 1024];
    for _ in 0..n.div_ceil(BLOCK) {
        for v in &mut variants {
            let (handshakes, (mut c, mut s)) = handshake_block(&v.client, &v.server, &v.name);
            let mut row = vec![handshakes];
            for size in sizes {
                let k = (if size > 1024 { nrec / 8 } else { nrec }) / n.div_ceil(BLOCK);
                let k = k.max(1);
                // Both directions, as a request and its response cross the link.
                let (a, b) = ok(records(&mut c, &mut s, size, k));
                let (d, e) = ok(records(&mut s, &mut c, size, k));
                row.push((us(a + d, 2 * k), us(b + e, 2 * k)));
            }
            v.blocks.push(row);
        }
    }
    let median = |mut xs: Vec<f64>| {
        xs.sort_by(f64::total_cmp);
        xs[xs.len() / 2]
    };
    for v in &variants {
        let cell = |i: usize, digits: usize| {
            let a = median(v.blocks.iter().map(|r| r[i].0).collect());
            let b = median(v.blocks.iter().map(|r| r[i].1).collect());
            format!("{a:.digits$} + {b:.digits$}")
        };
        println!(
            "| {:?}{} | {} | {} | {} | {} |",
            v.suite.suite(),
            mark(Some(v.suite.suite()) == negotiated),
            cell(0, 0),
            cell(1, 2),
            cell(2, 2),
            cell(3, 2)
        );
    }

    // Key-exchange groups: each group alone with the proxy's suites, in blocks taking turns
    // (medians of the blocks, as above).
    println!("| key exchange | handshake µs (client + server) |");
    println!("|---|---|");
    let mut groups: Vec<_> = shipped
        .kx_groups
        .iter()
        .map(|&g| {
            let mut provider = (*shipped).clone();
            provider.kx_groups = vec![g];
            let provider = Arc::new(provider);
            let configs = link_configs(
                &*ca.identity_with_provider(WEB, provider.clone()),
                &*ca.identity_with_provider(API, provider),
            );
            (g.name(), configs, Vec::new())
        })
        .collect();
    for _ in 0..n.div_ceil(BLOCK) {
        for (_, (client, server, name), blocks) in &mut groups {
            blocks.push(handshake_block(client, server, name).0);
        }
    }
    for (g, _, blocks) in groups {
        println!(
            "| {g:?}{} | {:.0} + {:.0} |",
            mark(Some(g) == group),
            median(blocks.iter().map(|b| b.0).collect()),
            median(blocks.iter().map(|b| b.1).collect())
        );
    }

    // Resumption, with the proxy's provider.
    let (full_client, full_server, name) = link_configs(&*ca.identity(WEB), &*ca.identity(API));
    // What rustls offers: an in-memory session cache, stateful TLS 1.3 tickets.
    let mut res_client = (*full_client).clone();
    res_client.resumption = rustls::client::Resumption::in_memory_sessions(256);
    let mut res_server = (*full_server).clone();
    res_server.session_storage = rustls::server::ServerSessionMemoryCache::new(256);
    res_server.send_tls13_tickets = 1;
    let (res_client, res_server) = (Arc::new(res_client), Arc::new(res_server));

    // Warm-up, and the first resumable session.
    for _ in 0..20 {
        ok(handshake(
            &full_client,
            &full_server,
            &name,
            &mut Cost::default(),
        ));
        ok(handshake(
            &res_client,
            &res_server,
            &name,
            &mut Cost::default(),
        ));
    }
    let (mut full, mut resumed) = (Cost::default(), Cost::default());
    let mut not_resumed = 0;
    while full.handshakes < n {
        for _ in 0..BLOCK {
            let (c, _) = ok(handshake(&full_client, &full_server, &name, &mut full));
            assert_eq!(
                c.handshake_kind(),
                Some(HandshakeKind::Full),
                "resumption is off"
            );
        }
        for _ in 0..BLOCK {
            let (c, _) = ok(handshake(&res_client, &res_server, &name, &mut resumed));
            if c.handshake_kind() != Some(HandshakeKind::Resumed) {
                not_resumed += 1;
            }
        }
    }
    for (label, c) in [("full (shipped)", &full), ("resumed", &resumed)] {
        println!(
            "{label:>15}: handshakes={} client_us={:.1} server_us={:.1} total_us={:.1} \
             bytes={:.0} server_saw_client_cert={}",
            c.handshakes,
            us(c.client, c.handshakes),
            us(c.server, c.handshakes),
            us(c.client + c.server, c.handshakes),
            c.bytes as f64 / c.handshakes as f64,
            c.with_client_cert,
        );
    }
    println!(
        "resumed/full CPU: {:.2} (resumed handshakes that fell back to full: {not_resumed})",
        (resumed.client + resumed.server).as_secs_f64() / (full.client + full.server).as_secs_f64()
    );
}
