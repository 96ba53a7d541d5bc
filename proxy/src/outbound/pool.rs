//! Pooled HTTP/2 connections to other proxies: one multiplexed mTLS connection per (endpoint,
//! target port, hint), reopened when it closes. Live state: the pool belongs to the outbound
//! listener, not to a config, so a config push keeps every connection.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioIo, TokioTimer};

use crate::http::{coalesce, Body};
use crate::transport::{self, Hint, MeshIdentity, TransportError, TransportHeader};

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct Key {
    addr: SocketAddr,
    port: u16,
    hint: u8,
    identity: Arc<str>,
}

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("HTTP/2 handshake with {addr}: {source}")]
    Handshake {
        addr: SocketAddr,
        #[source]
        source: hyper::Error,
    },
}

/// HTTP/2 senders to peer proxies.
#[derive(Debug, Default)]
pub struct MeshPool {
    // Held only to look up or insert a sender, never across an await.
    conns: Mutex<HashMap<Key, SendRequest<Body>>>,
}

impl MeshPool {
    fn cached(&self, key: &Key) -> Option<SendRequest<Body>> {
        let mut conns = match self.conns.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        match conns.get(key) {
            Some(s) if !s.is_closed() => Some(s.clone()),
            Some(_) => {
                conns.remove(key);
                None
            }
            None => None,
        }
    }

    /// A sender to the proxy at `addr` (which must be `identity`) for app port `port`.
    pub async fn sender(
        &self,
        mesh: &dyn MeshIdentity,
        addr: SocketAddr,
        identity: &Arc<str>,
        port: u16,
        hint: Hint,
    ) -> Result<SendRequest<Body>, PoolError> {
        let key = Key {
            addr,
            port,
            hint: hint as u8,
            identity: identity.clone(),
        };
        if let Some(s) = self.cached(&key) {
            return Ok(s);
        }
        // Boxed: connecting (TCP, TLS, HTTP/2 handshakes) is rare, and its state would otherwise
        // be part of every request's future, moved on each poll of the connection (issue #20).
        Box::pin(self.connect(mesh, key, hint)).await
    }

    /// Connects to a peer proxy and keeps the sender for `key` (made with `hint`).
    async fn connect(
        &self,
        mesh: &dyn MeshIdentity,
        key: Key,
        hint: Hint,
    ) -> Result<SendRequest<Body>, PoolError> {
        let (addr, port) = (key.addr, key.port);
        let identity = &key.identity;
        let tls =
            transport::connect_mesh(mesh, addr, identity, TransportHeader { port, hint }).await?;
        // The frames of all the requests of one poll of the connection go out in one write.
        let (tls, flusher) = coalesce::coalesce(tls);
        let exec = coalesce::SpawnFlushing::new(flusher.clone());
        let (sender, conn) = hyper::client::conn::http2::Builder::new(exec)
            .timer(TokioTimer::new())
            .keep_alive_interval(std::time::Duration::from_secs(30))
            .keep_alive_timeout(std::time::Duration::from_secs(10))
            .max_header_list_size(crate::http::MAX_RESPONSE_HEAD_BYTES as u32)
            .handshake::<_, Body>(TokioIo::new(tls))
            .await
            .map_err(|source| PoolError::Handshake { addr, source })?;
        let conn = coalesce::Driven::new(conn, flusher);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%addr, error = %e, "mesh connection closed");
            }
        });
        let mut conns = match self.conns.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        // Bounded: connections that have closed (their endpoint gone, or idle and shut by the
        // peer) leave the pool here, not only when their own key is looked up again.
        conns.retain(|_, s| !s.is_closed());
        conns.insert(key, sender.clone());
        Ok(sender)
    }
}
