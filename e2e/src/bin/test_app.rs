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
//! ```
//! Flags may also come from `APP_LISTEN`, `APP_NAME`, `APP_VERSION` (set them in a pod's env).
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
    let listener = TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    eprintln!(
        "weft-test-app {:?} listening on {}",
        args.mode,
        listener.local_addr()?
    );
    let body = format!("{} {}\n", args.name, args.version);
    loop {
        let (stream, _) = listener.accept().await?;
        let (body, name) = (body.clone(), args.name.clone());
        let mode = args.mode;
        tokio::spawn(async move {
            let r = match mode {
                Mode::Http => serve_http(stream, body, name).await,
                Mode::Echo => serve_echo(stream).await,
                Mode::Origdst => serve_origdst(stream).await,
            };
            if let Err(e) = r {
                eprintln!("connection: {e:#}");
            }
        });
    }
}
