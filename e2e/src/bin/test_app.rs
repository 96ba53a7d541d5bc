//! `weft-test-app`: the application the fake kubelet runs for test images.
//!
//! ```text
//! weft-test-app http  --listen 0.0.0.0:8080 --name web --version v1   # answers "web v1\n"
//!                                         # GET .../whoami answers "client-id <x-weft-client-id>\n"
//!                                         # `Upgrade: x` answers 101, then echoes bytes
//!                                         # GET .../echo answers the request head it received
//!                                         # GET /_seen (JSON) lists every request head received
//!                                         #   (request line and headers, as sent), except its own
//! weft-test-app echo  --listen 0.0.0.0:9000                           # TCP echo
//! weft-test-app origdst --listen 127.0.0.1:4140                       # answers the SO_ORIGINAL_DST
//! weft-test-app frontend --listen 0.0.0.0:8080 --name frontend \
//!     --backend http://backend.demo.svc.cluster.local/
//!                     # GET /?n=N calls the backend N times (1 to 1000, default 1), one line
//!                     # per call: "<status> <backend's answer>", e.g. "200 backend v2" or
//!                     # "403 ..." or "502 unreachable: ..."; the status is the backend's
//!                     # when N=1, else 200. GET /healthz answers "ok" without calling it.
//! weft-test-app echo-basic --listen 0.0.0.0:8080 --grpc-listen 0.0.0.0:7070
//!                     # upstream Gateway API conformance's echo-basic: every HTTP path answers
//!                     # its JSON (path, host, method, proto, headers, namespace, ingress,
//!                     # service, pod from NAMESPACE, INGRESS_NAME, SERVICE_NAME, POD_NAME), and
//!                     # gRPC GrpcEcho (Echo, EchoTwo; EchoThree unimplemented); see
//!                     # weft_e2e::echo_basic
//! weft-test-app client http://echo/path -H 'Version: one' --method GET --count 3 \
//!     --search gateway-conformance-mesh      # (or grpc://echo:7070) one JSON line per request
//!                     # (weft_e2e::echo_basic::Reply); redirects are not followed
//! ```
//! Flags may also come from `APP_LISTEN`, `APP_NAME`, `APP_VERSION`, `APP_BACKEND` (set them in
//! a pod's env). This is the sample application of examples/app (image `weft/sample-app`).
#![forbid(unsafe_code)]

use anyhow::Context;
use clap::{Parser, ValueEnum};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Mode {
    Http,
    Echo,
    Origdst,
    Frontend,
    EchoBasic,
    Client,
}

#[derive(Parser, Debug)]
struct Args {
    #[arg(value_enum, env = "APP_MODE", default_value = "http")]
    mode: Mode,
    #[arg(long, env = "APP_LISTEN", default_value = "0.0.0.0:8080")]
    listen: String,
    #[arg(long, env = "APP_NAME", default_value = "app")]
    name: String,
    #[arg(long, env = "APP_VERSION", default_value = "v1")]
    version: String,
    /// Frontend mode: the backend's URL (`http://host[:port][/path]`).
    #[arg(long, env = "APP_BACKEND", default_value = "http://backend/")]
    backend: String,
    /// Echo-basic mode: where gRPC `GrpcEcho` listens.
    #[arg(long, env = "APP_GRPC_LISTEN", default_value = "0.0.0.0:7070")]
    grpc_listen: String,
    /// Client mode: the URL (`http://host[:port][/path][?query]` or `grpc://host[:port]`).
    #[arg(required_if_eq("mode", "client"))]
    url: Option<String>,
    /// Client mode: a request header `Name: value` (repeatable; `Host: x` sets the authority).
    #[arg(short = 'H', long = "header")]
    headers: Vec<String>,
    /// Client mode: the HTTP method.
    #[arg(long, default_value = "GET")]
    method: String,
    /// Client mode: how many requests, one after another (1 to 10000).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    count: u32,
    /// Client mode: DNS search suffixes tried after a bare name (repeatable).
    #[arg(long)]
    search: Vec<String>,
}

const MAX_HEAD: usize = 16 * 1024;

/// Most request heads `/_seen` keeps (the oldest are dropped).
const MAX_SEEN: usize = 20_000;

/// Every request head received (request line and header lines, CRLF stripped), for `/_seen`.
static SEEN: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

fn record(head: &[String]) {
    let text = head
        .iter()
        .map(|l| l.trim_end_matches(['\r', '\n']))
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("\n");
    if let Ok(mut seen) = SEEN.lock() {
        if seen.len() >= MAX_SEEN {
            seen.remove(0);
        }
        seen.push(text);
    }
}

fn seen_json() -> String {
    let seen = SEEN.lock().map(|s| s.clone()).unwrap_or_default();
    serde_json::to_string(&seen).unwrap_or_else(|_| "[]".into())
}

async fn serve_http(stream: TcpStream, body: String, name: String) -> anyhow::Result<()> {
    let mut reader = BufReader::new(stream);
    loop {
        let mut head = Vec::new();
        let mut content_length = 0usize;
        let mut chunked = false;
        let mut close = false;
        let mut client_id = String::from("none");
        let mut upgrade = None;
        let mut connection_upgrade = false;
        loop {
            let mut line = String::new();
            let n = reader.read_line(&mut line).await?;
            if n == 0 {
                return Ok(());
            }
            head.push(line.clone());
            if head.iter().map(String::len).sum::<usize>() > MAX_HEAD {
                anyhow::bail!("request head too large");
            }
            let l = line.trim_end().to_ascii_lowercase();
            if l.is_empty() {
                break;
            }
            if let Some(v) = l.strip_prefix("content-length:") {
                content_length = v.trim().parse().unwrap_or(0);
            }
            if l.starts_with("transfer-encoding:") && l.contains("chunked") {
                chunked = true;
            }
            if l == "connection: close" {
                close = true;
            }
            if let Some(v) = l.strip_prefix("x-weft-client-id:") {
                client_id = v.trim().to_string();
            }
            if let Some(v) = l.strip_prefix("upgrade:") {
                upgrade = Some(v.trim().to_string());
            }
            if let Some(v) = l.strip_prefix("connection:") {
                connection_upgrade |= v.split(',').any(|t| t.trim() == "upgrade");
            }
        }
        // The request line's path: `/whoami` reports the identity the server's proxy saw.
        let path = head
            .first()
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or("")
            .to_string();
        let whoami = path.ends_with("/whoami");
        let seen = path == "/_seen";
        let echo = path.ends_with("/echo");
        if !seen {
            record(&head);
        }
        if chunked {
            // Read the whole chunked body before answering (a bad chunk closes the connection).
            loop {
                let mut size_line = String::new();
                if reader.read_line(&mut size_line).await? == 0 {
                    anyhow::bail!("EOF inside a chunked body");
                }
                let hex = size_line.split(';').next().unwrap_or("").trim();
                let size = usize::from_str_radix(hex, 16)
                    .with_context(|| format!("bad chunk size {hex:?}"))?;
                if size == 0 {
                    loop {
                        let mut trailer = String::new();
                        if reader.read_line(&mut trailer).await? == 0 || trailer.trim().is_empty() {
                            break;
                        }
                    }
                    break;
                }
                let mut chunk = vec![0u8; size.min(1 << 20) + 2];
                reader.read_exact(&mut chunk).await?;
            }
        } else {
            let mut discard = vec![0u8; content_length.min(1 << 20)];
            reader.read_exact(&mut discard).await?;
        }
        if let (Some(proto), true) = (upgrade, connection_upgrade) {
            let resp = format!(
                "HTTP/1.1 101 Switching Protocols\r\nupgrade: {proto}\r\nconnection: upgrade\r\nx-app: {name}\r\n\r\n"
            );
            reader.get_mut().write_all(resp.as_bytes()).await?;
            // The switched protocol: echo until the client closes.
            let mut buf = [0u8; 4096];
            loop {
                let n = reader.read(&mut buf).await?;
                if n == 0 {
                    return Ok(());
                }
                reader.get_mut().write_all(&buf[..n]).await?;
            }
        }
        let body = if seen {
            seen_json()
        } else if echo {
            head.concat()
        } else if whoami {
            format!("client-id {client_id}\n")
        } else {
            body.clone()
        };
        let resp = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nx-app: {name}\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        reader.get_mut().write_all(resp.as_bytes()).await?;
        if close {
            return Ok(());
        }
    }
}

/// Where the frontend sends its calls.
#[derive(Clone, Debug)]
struct Backend {
    /// `host:port` to connect to.
    authority: String,
    /// The `Host` header.
    host: String,
    path: String,
}

impl Backend {
    fn parse(url: &str) -> anyhow::Result<Backend> {
        let rest = url
            .strip_prefix("http://")
            .with_context(|| format!("backend {url:?}: only http:// URLs"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        anyhow::ensure!(!authority.is_empty(), "backend {url:?}: no host");
        let with_port = if authority.contains(':') {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        Ok(Backend {
            authority: with_port,
            host: authority.to_string(),
            path: path.to_string(),
        })
    }
}

/// Most calls one frontend request may fan out to.
const MAX_CALLS: usize = 1000;

/// One call to the backend: its status and its body's first line (`502` when unreachable).
async fn call_backend(backend: &Backend) -> (u16, String) {
    let attempt = async {
        let mut stream = TcpStream::connect(&backend.authority).await?;
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            backend.path, backend.host
        );
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.take(64 * 1024).read_to_end(&mut response).await?;
        anyhow::Ok(String::from_utf8_lossy(&response).into_owned())
    };
    let text = match tokio::time::timeout(std::time::Duration::from_secs(5), attempt).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => return (502, format!("unreachable: {e}")),
        Err(_) => return (504, "timed out after 5s".into()),
    };
    let status = text
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse::<u16>().ok());
    let Some(status) = status else {
        return (502, "not an HTTP response".into());
    };
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.lines().next().unwrap_or("").trim().to_string())
        .unwrap_or_default();
    (status, body)
}

/// The number of calls `GET /?n=N` asks for.
fn calls_asked(target: &str) -> Result<usize, String> {
    let Some((_, query)) = target.split_once('?') else {
        return Ok(1);
    };
    for pair in query.split('&') {
        if let Some(n) = pair.strip_prefix("n=") {
            return match n.parse::<usize>() {
                Ok(n) if (1..=MAX_CALLS).contains(&n) => Ok(n),
                _ => Err(format!("n must be 1 to {MAX_CALLS}, not {n:?}")),
            };
        }
    }
    Ok(1)
}

async fn serve_frontend(stream: TcpStream, backend: Backend) -> anyhow::Result<()> {
    let mut reader = BufReader::new(stream);
    loop {
        let mut head = Vec::new();
        let mut content_length = 0usize;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).await? == 0 {
                return Ok(());
            }
            head.push(line.clone());
            if head.iter().map(String::len).sum::<usize>() > MAX_HEAD {
                anyhow::bail!("request head too large");
            }
            let l = line.trim_end().to_ascii_lowercase();
            if l.is_empty() {
                break;
            }
            if let Some(v) = l.strip_prefix("content-length:") {
                content_length = v.trim().parse().unwrap_or(0);
            }
        }
        let mut discard = vec![0u8; content_length.min(1 << 20)];
        reader.read_exact(&mut discard).await?;
        let target = head
            .first()
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or("/")
            .to_string();
        let (status, body) = if target.starts_with("/healthz") {
            (200, "ok\n".to_string())
        } else {
            match calls_asked(&target) {
                Err(e) => (400, format!("{e}\n")),
                Ok(n) => {
                    let mut lines = String::new();
                    let mut last = 200;
                    for _ in 0..n {
                        let (code, answer) = call_backend(&backend).await;
                        last = code;
                        lines.push_str(&format!("{code} {answer}\n"));
                    }
                    (if n == 1 { last } else { 200 }, lines)
                }
            }
        };
        let resp = format!(
            "HTTP/1.1 {status} {}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}",
            if status == 200 { "OK" } else { "Upstream" },
            body.len()
        );
        reader.get_mut().write_all(resp.as_bytes()).await?;
    }
}

async fn serve_echo(mut stream: TcpStream) -> anyhow::Result<()> {
    let (mut r, mut w) = stream.split();
    tokio::io::copy(&mut r, &mut w).await?;
    Ok(())
}

async fn serve_origdst(stream: TcpStream) -> anyhow::Result<()> {
    let std = stream.into_std()?;
    let sock = socket2::Socket::from(std);
    let dst = sock
        .original_dst_v4()
        .ok()
        .and_then(|a| a.as_socket())
        .map(|a| a.to_string())
        .unwrap_or_else(|| "none".into());
    let std: std::net::TcpStream = sock.into();
    let mut stream = TcpStream::from_std(std)?;
    stream.write_all(format!("{dst}\n").as_bytes()).await?;
    stream.shutdown().await?;
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    match args.mode {
        Mode::Client => return client(&args).await,
        Mode::EchoBasic => return echo_basic(&args).await,
        _ => {}
    }
    let listener = TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    eprintln!(
        "weft-test-app {:?} listening on {}",
        args.mode,
        listener.local_addr()?
    );
    let body = format!("{} {}\n", args.name, args.version);
    let backend = Backend::parse(&args.backend)?;
    loop {
        let (stream, _) = listener.accept().await?;
        let (body, name) = (body.clone(), args.name.clone());
        let mode = args.mode;
        let backend = backend.clone();
        tokio::spawn(async move {
            let r = match mode {
                Mode::Http => serve_http(stream, body, name).await,
                Mode::Echo => serve_echo(stream).await,
                Mode::Origdst => serve_origdst(stream).await,
                Mode::Frontend => serve_frontend(stream, backend).await,
                Mode::EchoBasic | Mode::Client => Ok(()),
            };
            if let Err(e) = r {
                eprintln!("connection: {e:#}");
            }
        });
    }
}

/// Echo-basic mode: HTTP on `--listen`, gRPC on `--grpc-listen`.
async fn echo_basic(args: &Args) -> anyhow::Result<()> {
    use weft_e2e::echo_basic;
    let ctx = echo_basic::PodContext::from_env();
    let http = TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let grpc = TcpListener::bind(&args.grpc_listen)
        .await
        .with_context(|| format!("binding {}", args.grpc_listen))?;
    eprintln!(
        "weft-test-app echo-basic: HTTP on {}, gRPC on {}, pod {:?}",
        http.local_addr()?,
        grpc.local_addr()?,
        ctx.pod
    );
    tokio::try_join!(
        echo_basic::serve_http(http, ctx.clone()),
        echo_basic::serve_grpc(grpc, ctx)
    )?;
    Ok(())
}

/// Client mode: `--count` requests, one JSON line each.
async fn client(args: &Args) -> anyhow::Result<()> {
    use weft_e2e::echo_basic;
    let url = args.url.clone().context("client: a URL is needed")?;
    let mut headers = Vec::new();
    for h in &args.headers {
        let (k, v) = h
            .split_once(':')
            .with_context(|| format!("header {h:?}: want `Name: value`"))?;
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    let req = echo_basic::Request {
        url,
        method: args.method.clone(),
        headers,
        search: args.search.clone(),
    };
    let mut out = std::io::stdout().lock();
    for _ in 0..args.count {
        let reply = echo_basic::request(&req).await;
        let mut line = serde_json::to_vec(&reply)?;
        line.push(b'\n');
        std::io::Write::write_all(&mut out, &line)?;
    }
    std::io::Write::flush(&mut out)?;
    Ok(())
}
