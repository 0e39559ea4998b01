//! `/piecestore/piece/1`: the messages nodes exchange, and their encoding on a stream.
//!
//! One request and one response per stream (libp2p's request-response). Big-endian integers,
//! length-prefixed strings and bytes; a piece travels as raw bytes after its header, never
//! re-encoded, with the CRC32C of exactly the bytes sent.
//!
//! ```text
//! request  = op:u8 key_len:u16 key
//!            [Get:  offset:u64 len:u64]          (len u64::MAX: to the end)
//!            [Put:  crc32c:u32 size:u64 bytes]
//! response = status:u8 …
//!            Piece:  crc32c:u32 size:u64 bytes
//!            Meta:   size:u64 has_crc:u8 crc32c:u32 modified_ms:u64 (0: unknown)
//!            Stored: (nothing)
//!            Info:   text_len:u32 text (UTF-8)
//!            errors: text_len:u32 text
//! ```

use std::io;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;

/// The protocol's name.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/piecestore/piece/1");

/// The largest piece a node sends or accepts (the S3 service's default `MaxObjectSize`).
pub const MAX_PIECE: u64 = 256 << 20;

/// The longest key (the engine's own limit is shorter; this only bounds the allocation).
const MAX_KEY: usize = 4096;

/// The longest text of an error or info answer.
const MAX_TEXT: u32 = 64 << 10;

/// What a node asks another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// A piece, or `len` bytes of it at `offset` (`None`: to the end).
    Get {
        /// The piece key.
        key: String,
        /// Start of the range.
        offset: u64,
        /// Its length; `None` for the rest of the piece.
        len: Option<u64>,
    },
    /// A piece's size and checksum.
    Head {
        /// The piece key.
        key: String,
    },
    /// Store a piece (create-only: the same bytes again succeed).
    Put {
        /// The piece key.
        key: String,
        /// The CRC32C of `bytes`, checked by the receiver before it stores anything.
        crc32c: u32,
        /// The piece.
        bytes: Bytes,
    },
    /// What the node is and serves.
    Info,
}

/// What a node answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// The bytes asked for, with their CRC32C.
    Piece {
        /// The CRC32C of `bytes`.
        crc32c: u32,
        /// The piece (or range).
        bytes: Bytes,
    },
    /// A piece's size and checksum.
    Meta {
        /// Its size in bytes.
        size: u64,
        /// Its CRC32C, when it has one.
        crc32c: Option<u32>,
        /// When it was last written, to the millisecond (`UNIX_EPOCH`: unknown).
        last_modified: SystemTime,
    },
    /// The piece was stored (or was there already, byte for byte).
    Stored,
    /// A description of the node: version and the store it serves.
    Info(String),
    /// No such piece.
    NotFound(String),
    /// This peer may not ask (not on the allow-list).
    Denied(String),
    /// Another piece already exists under the key.
    AlreadyExists(String),
    /// A bad key or range, or a piece too large.
    Invalid(String),
    /// The node's copy is corrupt, or the pushed bytes did not match their checksum.
    Corrupt(String),
    /// Anything else went wrong (the text says what).
    Failed(String),
}

impl Response {
    /// The answer's kind, for messages (never its bytes).
    pub fn name(&self) -> &'static str {
        match self {
            Response::Piece { .. } => "piece",
            Response::Meta { .. } => "meta",
            Response::Stored => "stored",
            Response::Info(_) => "info",
            Response::NotFound(_) => "not found",
            Response::Denied(_) => "denied",
            Response::AlreadyExists(_) => "already exists",
            Response::Invalid(_) => "invalid",
            Response::Corrupt(_) => "corrupt",
            Response::Failed(_) => "failed",
        }
    }
}

const OP_GET: u8 = 1;
const OP_HEAD: u8 = 2;
const OP_PUT: u8 = 3;
const OP_INFO: u8 = 4;

const ST_PIECE: u8 = 0;
const ST_META: u8 = 1;
const ST_STORED: u8 = 2;
const ST_INFO: u8 = 3;
const ST_NOT_FOUND: u8 = 10;
const ST_DENIED: u8 = 11;
const ST_EXISTS: u8 = 12;
const ST_INVALID: u8 = 13;
const ST_CORRUPT: u8 = 14;
const ST_FAILED: u8 = 15;

/// The codec of [`PROTOCOL`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Codec;

fn bad(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

async fn read_u8<T: AsyncRead + Unpin>(io: &mut T) -> io::Result<u8> {
    let mut b = [0u8; 1];
    io.read_exact(&mut b).await?;
    Ok(b[0])
}

async fn read_u16<T: AsyncRead + Unpin>(io: &mut T) -> io::Result<u16> {
    let mut b = [0u8; 2];
    io.read_exact(&mut b).await?;
    Ok(u16::from_be_bytes(b))
}

async fn read_u32<T: AsyncRead + Unpin>(io: &mut T) -> io::Result<u32> {
    let mut b = [0u8; 4];
    io.read_exact(&mut b).await?;
    Ok(u32::from_be_bytes(b))
}

async fn read_u64<T: AsyncRead + Unpin>(io: &mut T) -> io::Result<u64> {
    let mut b = [0u8; 8];
    io.read_exact(&mut b).await?;
    Ok(u64::from_be_bytes(b))
}

async fn read_key<T: AsyncRead + Unpin>(io: &mut T) -> io::Result<String> {
    let len = read_u16(io).await? as usize;
    if len > MAX_KEY {
        return Err(bad(format!("a key of {len} bytes")));
    }
    let mut b = vec![0u8; len];
    io.read_exact(&mut b).await?;
    String::from_utf8(b).map_err(|_| bad("a key that is not UTF-8"))
}

/// `size` bytes, refusing sizes above [`MAX_PIECE`] before allocating.
async fn read_bytes<T: AsyncRead + Unpin>(io: &mut T, size: u64) -> io::Result<Bytes> {
    if size > MAX_PIECE {
        return Err(bad(format!(
            "a piece of {size} bytes (at most {MAX_PIECE})"
        )));
    }
    let mut b = vec![0u8; size as usize];
    io.read_exact(&mut b).await?;
    Ok(Bytes::from(b))
}

async fn read_text<T: AsyncRead + Unpin>(io: &mut T) -> io::Result<String> {
    let len = read_u32(io).await?;
    if len > MAX_TEXT {
        return Err(bad(format!("a text of {len} bytes")));
    }
    let mut b = vec![0u8; len as usize];
    io.read_exact(&mut b).await?;
    Ok(String::from_utf8_lossy(&b).into_owned())
}

fn put_key(out: &mut Vec<u8>, key: &str) -> io::Result<()> {
    let len = u16::try_from(key.len())
        .ok()
        .filter(|l| (*l as usize) <= MAX_KEY)
        .ok_or_else(|| bad(format!("a key of {} bytes", key.len())))?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(key.as_bytes());
    Ok(())
}

fn put_text(out: &mut Vec<u8>, text: &str) {
    let mut end = text.len().min(MAX_TEXT as usize);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    out.extend_from_slice(&(end as u32).to_be_bytes());
    out.extend_from_slice(&text.as_bytes()[..end]);
}

/// Writes a header, then `body` (a piece's bytes, sent as they are). The request-response
/// handler closes the stream after.
async fn write_all<T: AsyncWrite + Unpin>(io: &mut T, head: &[u8], body: &[u8]) -> io::Result<()> {
    io.write_all(head).await?;
    if !body.is_empty() {
        io.write_all(body).await?;
    }
    io.flush().await
}

impl libp2p::request_response::Codec for Codec {
    type Protocol = StreamProtocol;
    type Request = Request;
    type Response = Response;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Request>
    where
        T: AsyncRead + Unpin + Send,
    {
        let op = read_u8(io).await?;
        match op {
            OP_INFO => return Ok(Request::Info),
            OP_GET | OP_HEAD | OP_PUT => {}
            other => return Err(bad(format!("unknown request {other}"))),
        }
        let key = read_key(io).await?;
        match op {
            OP_GET => {
                let offset = read_u64(io).await?;
                let len = read_u64(io).await?;
                Ok(Request::Get {
                    key,
                    offset,
                    len: (len != u64::MAX).then_some(len),
                })
            }
            OP_HEAD => Ok(Request::Head { key }),
            OP_PUT => {
                let crc32c = read_u32(io).await?;
                let size = read_u64(io).await?;
                let bytes = read_bytes(io, size).await?;
                Ok(Request::Put { key, crc32c, bytes })
            }
            other => Err(bad(format!("unknown request {other}"))),
        }
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Response>
    where
        T: AsyncRead + Unpin + Send,
    {
        let status = read_u8(io).await?;
        Ok(match status {
            ST_PIECE => {
                let crc32c = read_u32(io).await?;
                let size = read_u64(io).await?;
                let bytes = read_bytes(io, size).await?;
                Response::Piece { crc32c, bytes }
            }
            ST_META => {
                let size = read_u64(io).await?;
                let has = read_u8(io).await? != 0;
                let crc = read_u32(io).await?;
                let ms = read_u64(io).await?;
                Response::Meta {
                    size,
                    crc32c: has.then_some(crc),
                    // A time past what the clock can hold (a hostile peer) reads as unknown.
                    last_modified: SystemTime::UNIX_EPOCH
                        .checked_add(Duration::from_millis(ms))
                        .unwrap_or(SystemTime::UNIX_EPOCH),
                }
            }
            ST_STORED => Response::Stored,
            ST_INFO => Response::Info(read_text(io).await?),
            ST_NOT_FOUND => Response::NotFound(read_text(io).await?),
            ST_DENIED => Response::Denied(read_text(io).await?),
            ST_EXISTS => Response::AlreadyExists(read_text(io).await?),
            ST_INVALID => Response::Invalid(read_text(io).await?),
            ST_CORRUPT => Response::Corrupt(read_text(io).await?),
            ST_FAILED => Response::Failed(read_text(io).await?),
            other => return Err(bad(format!("unknown response {other}"))),
        })
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Request,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        let mut head = Vec::with_capacity(64);
        match &req {
            Request::Info => head.push(OP_INFO),
            Request::Get { key, offset, len } => {
                head.push(OP_GET);
                put_key(&mut head, key)?;
                head.extend_from_slice(&offset.to_be_bytes());
                head.extend_from_slice(&len.unwrap_or(u64::MAX).to_be_bytes());
            }
            Request::Head { key } => {
                head.push(OP_HEAD);
                put_key(&mut head, key)?;
            }
            Request::Put { key, crc32c, bytes } => {
                head.push(OP_PUT);
                put_key(&mut head, key)?;
                head.extend_from_slice(&crc32c.to_be_bytes());
                head.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
            }
        }
        let body: &[u8] = match &req {
            Request::Put { bytes, .. } => bytes,
            _ => &[],
        };
        write_all(io, &head, body).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Response,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        let mut head = Vec::with_capacity(64);
        let text = |status: u8, t: &str, head: &mut Vec<u8>| {
            head.push(status);
            put_text(head, t);
        };
        match &res {
            Response::Piece { crc32c, bytes } => {
                head.push(ST_PIECE);
                head.extend_from_slice(&crc32c.to_be_bytes());
                head.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
            }
            Response::Meta {
                size,
                crc32c,
                last_modified,
            } => {
                head.push(ST_META);
                head.extend_from_slice(&size.to_be_bytes());
                head.push(u8::from(crc32c.is_some()));
                head.extend_from_slice(&crc32c.unwrap_or(0).to_be_bytes());
                // Before 1970 (a clock set wrong) reads as unknown.
                let ms = last_modified
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
                head.extend_from_slice(&ms.to_be_bytes());
            }
            Response::Stored => head.push(ST_STORED),
            Response::Info(t) => text(ST_INFO, t, &mut head),
            Response::NotFound(t) => text(ST_NOT_FOUND, t, &mut head),
            Response::Denied(t) => text(ST_DENIED, t, &mut head),
            Response::AlreadyExists(t) => text(ST_EXISTS, t, &mut head),
            Response::Invalid(t) => text(ST_INVALID, t, &mut head),
            Response::Corrupt(t) => text(ST_CORRUPT, t, &mut head),
            Response::Failed(t) => text(ST_FAILED, t, &mut head),
        }
        let body: &[u8] = match &res {
            Response::Piece { bytes, .. } => bytes,
            _ => &[],
        };
        write_all(io, &head, body).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use libp2p::request_response::Codec as _;

    async fn round_trip_request(req: Request) -> Request {
        let mut buf = Vec::new();
        let mut w = futures::io::Cursor::new(&mut buf);
        Codec.write_request(&PROTOCOL, &mut w, req).await.unwrap();
        let mut r = futures::io::Cursor::new(buf);
        Codec.read_request(&PROTOCOL, &mut r).await.unwrap()
    }

    async fn round_trip_response(res: Response) -> Response {
        let mut buf = Vec::new();
        let mut w = futures::io::Cursor::new(&mut buf);
        Codec.write_response(&PROTOCOL, &mut w, res).await.unwrap();
        let mut r = futures::io::Cursor::new(buf);
        Codec.read_response(&PROTOCOL, &mut r).await.unwrap()
    }

    #[tokio::test]
    async fn every_message_survives_its_encoding() {
        for req in [
            Request::Info,
            Request::Head { key: "1_s0".into() },
            Request::Get {
                key: "e42_s3_p1".into(),
                offset: 7,
                len: Some(9),
            },
            Request::Get {
                key: "k".into(),
                offset: 0,
                len: None,
            },
            Request::Put {
                key: "k".into(),
                crc32c: 0xdead_beef,
                bytes: Bytes::from_static(b"piece bytes"),
            },
        ] {
            assert_eq!(round_trip_request(req.clone()).await, req);
        }
        for res in [
            Response::Piece {
                crc32c: 1,
                bytes: Bytes::from(vec![9u8; 100_000]),
            },
            Response::Meta {
                size: 5,
                crc32c: Some(3),
                last_modified: SystemTime::UNIX_EPOCH + Duration::from_millis(1_764_000_123_456),
            },
            Response::Meta {
                size: 5,
                crc32c: None,
                last_modified: SystemTime::UNIX_EPOCH,
            },
            Response::Stored,
            Response::Info("piecestore 0.1.0".into()),
            Response::NotFound("no piece k".into()),
            Response::Denied("not allowed".into()),
            Response::AlreadyExists("k".into()),
            Response::Invalid("bad key".into()),
            Response::Corrupt("crc".into()),
            Response::Failed("disk".into()),
        ] {
            assert_eq!(round_trip_response(res.clone()).await, res);
        }
    }

    #[tokio::test]
    async fn a_truncated_or_oversized_message_is_an_error_not_a_piece() {
        let mut buf = Vec::new();
        let mut w = futures::io::Cursor::new(&mut buf);
        Codec
            .write_response(
                &PROTOCOL,
                &mut w,
                Response::Piece {
                    crc32c: 1,
                    bytes: Bytes::from(vec![1u8; 1000]),
                },
            )
            .await
            .unwrap();
        buf.truncate(buf.len() - 1);
        let mut r = futures::io::Cursor::new(buf);
        let err = Codec.read_response(&PROTOCOL, &mut r).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);

        // A header that claims more than MAX_PIECE is refused before any allocation.
        let mut huge = vec![ST_PIECE, 0, 0, 0, 1];
        huge.extend_from_slice(&(MAX_PIECE + 1).to_be_bytes());
        let mut r = futures::io::Cursor::new(huge);
        let err = Codec.read_response(&PROTOCOL, &mut r).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("at most"), "{err}");

        let mut r = futures::io::Cursor::new(vec![99u8]);
        let err = Codec.read_request(&PROTOCOL, &mut r).await.unwrap_err();
        assert!(err.to_string().contains("unknown request"), "{err}");
    }
}
