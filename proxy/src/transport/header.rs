//! The proxy-to-proxy transport header.
//!
//! Sent by the client proxy as the first bytes inside the mTLS stream to the server proxy's
//! inbound port, so that the server proxy knows which application port the connection is for
//! and how to treat the bytes that follow. Fixed size, 8 bytes:
//!
//! ```text
//! +------+------+------+------+------+------------+------------+------+
//! | 'W'  | 'E'  | 'F'  | 'T'  | 0x01 | port (u16, big endian)  | hint |
//! +------+------+------+------+------+------------+------------+------+
//! ```
//!
//! `0x01` is the header version. Hints: see [`Hint`].

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub const MAGIC: &[u8; 4] = b"WEFT";
pub const VERSION: u8 = 1;
pub const LEN: usize = 8;

/// How the server proxy treats the stream after the header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hint {
    /// Opaque TCP: relay bytes to the app, authorize per connection.
    Opaque = 0,
    /// Unknown: the server proxy detects HTTP/1, HTTP/2 or opaque itself (used for connections
    /// to pod IPs, which are tunnelled byte for byte).
    Detect = 1,
    /// HTTP/2 between the proxies; the app speaks HTTP/1.1.
    Http1 = 2,
    /// HTTP/2 between the proxies; the app speaks HTTP/2 (gRPC, h2c).
    Http2 = 3,
}

impl Hint {
    fn from_u8(v: u8) -> Option<Hint> {
        match v {
            0 => Some(Hint::Opaque),
            1 => Some(Hint::Detect),
            2 => Some(Hint::Http1),
            3 => Some(Hint::Http2),
            _ => None,
        }
    }
}

/// The decoded header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TransportHeader {
    pub port: u16,
    pub hint: Hint,
}

#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    #[error("reading transport header: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a weft transport header")]
    BadMagic,
    #[error("unsupported transport header version {0}")]
    Version(u8),
    #[error("unknown protocol hint {0}")]
    Hint(u8),
    #[error("invalid target port 0")]
    Port,
}

impl TransportHeader {
    pub fn encode(&self) -> [u8; LEN] {
        let p = self.port.to_be_bytes();
        [
            MAGIC[0],
            MAGIC[1],
            MAGIC[2],
            MAGIC[3],
            VERSION,
            p[0],
            p[1],
            self.hint as u8,
        ]
    }

    pub fn decode(buf: &[u8; LEN]) -> Result<Self, HeaderError> {
        if &buf[..4] != MAGIC {
            return Err(HeaderError::BadMagic);
        }
        if buf[4] != VERSION {
            return Err(HeaderError::Version(buf[4]));
        }
        let port = u16::from_be_bytes([buf[5], buf[6]]);
        if port == 0 {
            return Err(HeaderError::Port);
        }
        let hint = Hint::from_u8(buf[7]).ok_or(HeaderError::Hint(buf[7]))?;
        Ok(TransportHeader { port, hint })
    }

    pub async fn write<W: AsyncWrite + Unpin>(&self, w: &mut W) -> std::io::Result<()> {
        w.write_all(&self.encode()).await
    }

    pub async fn read<R: AsyncRead + Unpin>(r: &mut R) -> Result<Self, HeaderError> {
        let mut buf = [0u8; LEN];
        r.read_exact(&mut buf).await?;
        Self::decode(&buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_rejects() {
        let h = TransportHeader {
            port: 8080,
            hint: Hint::Http2,
        };
        let bytes = h.encode();
        assert_eq!(&bytes, b"WEFT\x01\x1f\x90\x03");
        assert_eq!(TransportHeader::decode(&bytes).ok(), Some(h));
        assert!(matches!(
            TransportHeader::decode(b"GET / HT"),
            Err(HeaderError::BadMagic)
        ));
        assert!(matches!(
            TransportHeader::decode(b"WEFT\x02\x00\x50\x00"),
            Err(HeaderError::Version(2))
        ));
        assert!(matches!(
            TransportHeader::decode(b"WEFT\x01\x00\x50\x09"),
            Err(HeaderError::Hint(9))
        ));
        assert!(matches!(
            TransportHeader::decode(b"WEFT\x01\x00\x00\x00"),
            Err(HeaderError::Port)
        ));
    }

    #[tokio::test]
    async fn reads_from_stream() {
        let h = TransportHeader {
            port: 443,
            hint: Hint::Opaque,
        };
        let (mut a, mut b) = tokio::io::duplex(64);
        h.write(&mut a).await.unwrap_or_else(|e| panic!("{e}"));
        let got = TransportHeader::read(&mut b).await.ok();
        assert_eq!(got, Some(h));
    }
}
