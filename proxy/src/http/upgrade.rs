//! HTTP/1.1 protocol upgrades (`Connection: upgrade` + `Upgrade: websocket`, or any other
//! protocol switched with `101 Switching Protocols`).
//!
//! A request that asks for an upgrade is forwarded alone on a dedicated HTTP/1.1 connection
//! (never a pooled one, since the connection will stop speaking HTTP), with its `Upgrade` header
//! and `Connection: upgrade` kept (the other hop-by-hop headers are removed as usual). When the
//! upstream answers `101`, the `101` goes back downstream with a [`Splice`] attached; the
//! downstream connection's task ([`crate::http::serve_downstream`]) runs it once hyper has handed
//! both connections over: bytes are copied both ways until either side closes. Any other answer
//! is returned as an ordinary response and nothing is spliced.
//!
//! `h2c` is not treated as an upgrade (its `HTTP2-Settings` header is meant for the next hop
//! only): such requests are forwarded without the upgrade, as before.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::header::{CONNECTION, UPGRADE};
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

use super::{Body, MAX_RESPONSE_HEAD_BYTES};
use crate::transport::{self, TransportError};

/// Time an upstream has to answer an upgrade request (connect included) when the service sets
/// no `weft.io/timeout`.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// Time hyper has to hand over both connections once the `101` is on its way.
pub const HANDOFF_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether `req` asks for a protocol upgrade the proxy carries: HTTP/1.1, an `Upgrade` header
/// naming a protocol other than `h2c`, and `upgrade` among the `Connection` options. Cheap for
/// ordinary requests: a version comparison, then one header lookup.
pub fn wants_upgrade<B>(req: &Request<B>) -> bool {
    if req.version() != Version::HTTP_11 {
        return false;
    }
    let headers = req.headers();
    let Some(first) = headers.get(UPGRADE) else {
        return false;
    };
    let carried = |v: &HeaderValue| {
        v.to_str().is_ok_and(|v| {
            v.split(',')
                .map(str::trim)
                .any(|p| !p.is_empty() && !p.eq_ignore_ascii_case("h2c"))
        })
    };
    let protocol = carried(first) || headers.get_all(UPGRADE).iter().skip(1).any(carried);
    protocol && connection_has(headers, "upgrade")
}

fn connection_has(headers: &HeaderMap, option: &str) -> bool {
    headers.get_all(CONNECTION).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.split(',').any(|o| o.trim().eq_ignore_ascii_case(option)))
    })
}

/// Removes the hop-by-hop headers of an upgrade request or its `101` answer except the upgrade
/// itself: `Upgrade` stays and `Connection` becomes `upgrade`.
pub fn keep_upgrade_headers(headers: &mut HeaderMap) {
    let upgrade: Vec<HeaderValue> = headers.get_all(UPGRADE).iter().cloned().collect();
    super::strip_hop_by_hop(headers);
    for v in upgrade {
        headers.append(UPGRADE, v);
    }
    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
}

/// Prepares `req` for an HTTP/1.1 upstream (a connection of its own, or a pooled one
/// ([`super::pool`])): origin-form target, moved out of the URI, and the authority in `Host`
/// (from the URI when the client sent an absolute-form target without `Host`).
pub fn set_origin_form<B>(req: &mut Request<B>) {
    if !req.headers().contains_key(http::header::HOST) {
        if let Some(v) = req
            .uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        {
            req.headers_mut().insert(http::header::HOST, v);
        }
    }
    let pq = std::mem::take(req.uri_mut())
        .into_parts()
        .path_and_query
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    *req.uri_mut() = Uri::from(pq);
    *req.version_mut() = Version::HTTP_11;
}

/// Errors of forwarding an upgrade request.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("HTTP/1.1 handshake: {0}")]
    Handshake(#[source] hyper::Error),
    #[error("upgrade request: {0}")]
    Request(#[source] hyper::Error),
}

/// Sends `req` as the only request of a new HTTP/1.1 connection over `io`, with upgrades
/// enabled. On a `101` answer, [`hyper::upgrade::on`] on the response yields the connection.
pub async fn send<I>(io: I, req: Request<Body>) -> Result<Response<Incoming>, UpgradeError>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
        .max_buf_size(MAX_RESPONSE_HEAD_BYTES)
        .handshake::<_, Body>(TokioIo::new(io))
        .await
        .map_err(UpgradeError::Handshake)?;
    // Ends once the connection is handed over (101), or when the response is done (anything
    // else: the sender is gone, so no second request follows) or dropped.
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "upgrade connection closed");
        }
    });
    sender
        .send_request(req)
        .await
        .map_err(UpgradeError::Request)
}

/// Waits for both connections to be handed over (at most [`HANDOFF_TIMEOUT`]), then copies bytes
/// both ways until both directions are closed. Returns (client→server, server→client) bytes.
pub async fn splice(downstream: OnUpgrade, upstream: OnUpgrade) -> std::io::Result<(u64, u64)> {
    let both = async { tokio::try_join!(downstream, upstream) };
    let (down, up) = match tokio::time::timeout(HANDOFF_TIMEOUT, both).await {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => return Err(std::io::Error::other(e)),
        Err(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "upgrade hand-over timed out",
            ))
        }
    };
    Ok(transport::relay(TokioIo::new(down), TokioIo::new(up)).await)
}

type SpliceFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The work that continues on a downstream connection after a `101`: attached to the response
/// as an extension by the handler, taken by [`crate::http::serve_downstream`], which runs it on
/// the connection's task (so that graceful shutdown bounds it like any connection).
#[derive(Clone)]
pub struct Splice(Arc<Mutex<Option<SpliceFuture>>>);

impl std::fmt::Debug for Splice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Splice").finish_non_exhaustive()
    }
}

impl Splice {
    /// Attaches `work` to a `101` response.
    pub fn attach<B>(rsp: &mut Response<B>, work: impl Future<Output = ()> + Send + 'static) {
        rsp.extensions_mut()
            .insert(Splice(Arc::new(Mutex::new(Some(Box::pin(work))))));
    }

    /// Takes the work attached to `rsp`, if it is a `101` carrying one.
    pub(crate) fn take<B>(rsp: &mut Response<B>) -> Option<SpliceFuture> {
        if rsp.status() != StatusCode::SWITCHING_PROTOCOLS {
            return None;
        }
        let splice = rsp.extensions_mut().remove::<Splice>()?;
        let mut slot = match splice.0.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        slot.take()
    }
}

/// The slot of one downstream HTTP/1 connection in which its upgraded request's work waits for
/// hyper to hand the connection over.
#[derive(Clone, Default)]
pub(crate) struct ConnectionSlot(Arc<Mutex<Option<SpliceFuture>>>);

impl ConnectionSlot {
    pub(crate) fn put(&self, work: SpliceFuture) {
        let mut slot = match self.0.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        *slot = Some(work);
    }

    pub(crate) fn take(&self) -> Option<SpliceFuture> {
        let mut slot = match self.0.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        slot.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(version: Version, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::get("/chat").version(version);
        for (n, v) in headers {
            b = b.header(*n, *v);
        }
        b.body(()).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn recognizes_upgrades() {
        let ws = [
            ("upgrade", "websocket"),
            ("connection", "keep-alive, Upgrade"),
        ];
        assert!(wants_upgrade(&req(Version::HTTP_11, &ws)));
        assert!(!wants_upgrade(&req(Version::HTTP_10, &ws)));
        assert!(!wants_upgrade(&req(Version::HTTP_2, &ws)));
        assert!(!wants_upgrade(&req(Version::HTTP_11, &[])));
        // Upgrade not named by Connection: not an upgrade (the header is dropped as before).
        assert!(!wants_upgrade(&req(
            Version::HTTP_11,
            &[("upgrade", "websocket"), ("connection", "keep-alive")]
        )));
        assert!(!wants_upgrade(&req(
            Version::HTTP_11,
            &[
                ("upgrade", "h2c"),
                ("connection", "Upgrade, HTTP2-Settings")
            ]
        )));
        assert!(wants_upgrade(&req(
            Version::HTTP_11,
            &[("upgrade", "h2c, foo/2"), ("connection", "upgrade")]
        )));
    }

    #[test]
    fn keeps_only_the_upgrade_hop_by_hop_headers() {
        let mut h = HeaderMap::new();
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        h.insert(
            "connection",
            HeaderValue::from_static("Upgrade, keep-alive, x-private"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert("sec-websocket-key", HeaderValue::from_static("abc"));
        keep_upgrade_headers(&mut h);
        assert_eq!(
            h.get("upgrade").map(|v| v.as_bytes()),
            Some(&b"websocket"[..])
        );
        assert_eq!(
            h.get("connection").map(|v| v.as_bytes()),
            Some(&b"upgrade"[..])
        );
        assert!(h.get("keep-alive").is_none());
        assert!(h.get("x-private").is_none());
        assert!(h.get("sec-websocket-key").is_some());
    }

    #[test]
    fn origin_form_keeps_the_authority_in_host() {
        let mut r = Request::get("http://api.demo:9090/chat?room=1")
            .body(())
            .unwrap_or_else(|e| panic!("{e}"));
        set_origin_form(&mut r);
        assert_eq!(r.uri().to_string(), "/chat?room=1");
        assert_eq!(
            r.headers().get("host").map(|v| v.as_bytes()),
            Some(&b"api.demo:9090"[..])
        );
    }

    #[test]
    fn only_a_101_gives_up_its_splice() {
        let mut rsp = Response::new(());
        Splice::attach(&mut rsp, async {});
        assert!(Splice::take(&mut rsp).is_none());
        *rsp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        assert!(Splice::take(&mut rsp).is_some());
        assert!(Splice::take(&mut rsp).is_none());
    }
}
