//! A piece read as a stream of chunks: what a server sends while it is still reading, so that
//! a 64 MiB piece neither waits for its last byte before its first leaves nor sits whole in
//! memory.
//!
//! Every streamed read is verified as a whole read is: the stream keeps a running CRC32C and
//! holds back its last chunk until the piece's length and checksum have matched, so a reader
//! that takes the stream to its end has had either the piece, byte-exact, or an error
//! (`Corrupt` for bytes that do not match; a retryable `Backend` error for a stream that ended
//! early). The chunks before it are sent unverified, as every streaming protocol must; the
//! error at the end is what tells the reader to drop them (gRPC: a `DATA_LOSS` status after the
//! messages; HTTP: a body cut short of its `Content-Length`).

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::stream::{self, BoxStream, StreamExt};

use super::Backend;
use crate::error::{Error, Result};

/// The size of a streamed piece's chunks (the last may be shorter).
pub(crate) const CHUNK: usize = 1 << 20;

/// The state of one verified stream.
struct Check {
    inner: BoxStream<'static, Result<Bytes>>,
    digest: crc_fast::Digest,
    expected: Option<u32>,
    size: u64,
    seen: u64,
    /// Bytes from small frames (an HTTP body), joined until a chunk is full.
    pending: BytesMut,
    /// The last chunk ready to go: sent when the next arrives, or when the piece has matched.
    held: Option<Bytes>,
    /// What is left to send once the inner stream has ended.
    out: VecDeque<Result<Bytes>>,
    done: bool,
    backend: Arc<Backend>,
    key: String,
}

impl Check {
    /// Ends the stream with `e`, dropping the chunk held back.
    fn fail(&mut self, e: Error) {
        self.done = true;
        self.held = None;
        self.pending.clear();
        self.out.clear();
        self.out.push_back(Err(e));
    }

    /// The inner stream has ended: checks length and checksum, then lets the rest go.
    fn finish(&mut self) {
        self.done = true;
        if self.seen != self.size {
            let e = Error::Backend {
                op: "get",
                key: Some(self.key.clone()),
                backend: self.backend.label().into(),
                message: format!(
                    "the piece's stream ended after {} of its {} bytes",
                    self.seen, self.size
                ),
                retryable: true,
            };
            return self.fail(e);
        }
        if let Some(expected) = self.expected {
            let actual = self.digest.finalize() as u32;
            if actual != expected {
                let e = self.backend.corrupt(
                    &self.key,
                    format!("crc32c is {actual}, expected {expected}"),
                );
                return self.fail(e);
            }
        }
        self.out.extend(self.held.take().map(Ok));
        if !self.pending.is_empty() {
            self.out.push_back(Ok(self.pending.split().freeze()));
        }
    }

    /// Takes one frame of the inner stream: whole chunks of it (sliced, not copied) go out
    /// behind the one held back; a rest, or a small frame, waits in `pending` for more.
    fn take(&mut self, mut b: Bytes) {
        self.seen += b.len() as u64;
        if self.seen > self.size {
            let detail = format!("the object holds more than the piece's {} bytes", self.size);
            let e = self.backend.corrupt(&self.key, detail);
            return self.fail(e);
        }
        self.digest.update(&b);
        if !self.pending.is_empty() {
            let n = (CHUNK - self.pending.len()).min(b.len());
            self.pending.extend_from_slice(&b.split_to(n));
            if self.pending.len() < CHUNK {
                return;
            }
            let full = self.pending.split().freeze();
            self.ready(full);
        }
        while b.len() >= CHUNK {
            let full = b.split_to(CHUNK);
            self.ready(full);
        }
        if !b.is_empty() {
            if self.pending.capacity() < CHUNK {
                self.pending.reserve(CHUNK);
            }
            self.pending.extend_from_slice(&b);
        }
    }

    /// A full chunk: held back, and the one held before it goes out.
    fn ready(&mut self, chunk: Bytes) {
        if let Some(prev) = self.held.replace(chunk) {
            self.out.push_back(Ok(prev));
        }
    }
}

/// `inner`, the bytes of `key` (`size` bytes, CRC32C `expected` when it carries one), checked
/// as the module says, in chunks of about [`CHUNK`] bytes.
pub(crate) fn verified(
    backend: Arc<Backend>,
    key: &str,
    size: u64,
    expected: Option<u32>,
    inner: BoxStream<'static, Result<Bytes>>,
) -> BoxStream<'static, Result<Bytes>> {
    let state = Check {
        inner,
        digest: crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc32Iscsi),
        expected,
        size,
        seen: 0,
        pending: BytesMut::new(),
        held: None,
        out: VecDeque::new(),
        done: false,
        backend,
        key: key.into(),
    };
    stream::unfold(state, |mut s| async move {
        loop {
            if let Some(item) = s.out.pop_front() {
                return Some((item, s));
            }
            if s.done {
                return None;
            }
            match s.inner.next().await {
                Some(Ok(b)) => s.take(b),
                Some(Err(e)) => s.fail(e),
                None => s.finish(),
            }
        }
    })
    .fuse()
    .boxed()
}

#[cfg(test)]
mod tests {
    use futures::TryStreamExt;

    use super::*;
    use crate::checksum::crc32c;
    use crate::config::{BackendOptions, Layout, StoreConfig};
    use crate::error::ErrorKind;

    fn backend() -> Arc<Backend> {
        let sc = StoreConfig::from_url("memory://");
        Arc::new(Backend::build(&sc, &BackendOptions::default(), Layout::PieceStore).unwrap())
    }

    fn data(len: usize) -> Bytes {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    /// `d` cut into frames of the given sizes (cycled), as a body would bring it.
    fn frames(d: &Bytes, sizes: &[usize]) -> BoxStream<'static, Result<Bytes>> {
        let mut out = Vec::new();
        let (mut at, mut i) = (0, 0);
        while at < d.len() {
            let n = sizes[i % sizes.len()].min(d.len() - at);
            out.push(Ok(d.slice(at..at + n)));
            at += n;
            i += 1;
        }
        stream::iter(out).boxed()
    }

    #[tokio::test]
    async fn frames_of_any_size_come_out_as_whole_chunks_and_the_piece() {
        for (len, sizes) in [
            (0, &[7][..]),
            (5, &[1]),
            (CHUNK, &[CHUNK]),
            (3 * CHUNK + 11, &[16 << 10, 3]),
            (2 * CHUNK + 1, &[5 * CHUNK]),
            (4 * CHUNK, &[CHUNK - 1, CHUNK + 1, 100]),
        ] {
            let d = data(len);
            let s = verified(
                backend(),
                "k",
                len as u64,
                Some(crc32c(&d)),
                frames(&d, sizes),
            );
            let chunks: Vec<Bytes> = s.try_collect().await.unwrap();
            assert!(chunks.concat() == d, "{len} bytes in frames of {sizes:?}");
            let (last, full) = chunks
                .split_last()
                .map_or((None, &[][..]), |(l, f)| (Some(l), f));
            assert!(full.iter().all(|c| c.len() == CHUNK), "{len}: {sizes:?}");
            assert!(last.is_none_or(|l| !l.is_empty() && l.len() <= CHUNK));
        }
    }

    #[tokio::test]
    async fn a_flipped_byte_a_short_or_a_long_body_never_completes() {
        let d = data(2 * CHUNK + 300);
        let good = crc32c(&d);
        let mut rot = d.to_vec();
        rot[2 * CHUNK + 10] ^= 1;
        let rot = Bytes::from(rot);
        let cases = [
            (rot.clone(), d.len() as u64, ErrorKind::Corrupt),
            (d.slice(..d.len() - 1), d.len() as u64, ErrorKind::Backend),
            (d.clone(), d.len() as u64 - 1, ErrorKind::Corrupt),
        ];
        for (body, size, kind) in cases {
            let mut s = verified(backend(), "k", size, Some(good), frames(&body, &[64 << 10]));
            let mut sent = 0;
            let e = loop {
                match s.next().await {
                    Some(Ok(c)) => sent += c.len(),
                    Some(Err(e)) => break e,
                    None => panic!("ended without an error"),
                }
            };
            assert_eq!(e.kind(), kind, "{e}");
            assert!(
                sent < body.len().min(size as usize),
                "{sent} bytes went out"
            );
            assert!(s.next().await.is_none(), "nothing after the error");
        }
        // An unverified piece streams as stored.
        let s = verified(backend(), "k", rot.len() as u64, None, frames(&rot, &[999]));
        let chunks: Vec<Bytes> = s.try_collect().await.unwrap();
        assert!(chunks.concat() == rot);
    }

    #[tokio::test]
    async fn an_error_from_the_body_ends_the_stream() {
        let d = data(3 * CHUNK);
        let body = frames(&d, &[CHUNK])
            .take(2)
            .chain(stream::iter([Err(Error::Closed)]))
            .boxed();
        let s = verified(backend(), "k", d.len() as u64, Some(crc32c(&d)), body);
        let got: Vec<Result<Bytes>> = s.collect().await;
        assert_eq!(got.len(), 2, "the first chunk, then the error");
        assert!(got[0].as_ref().is_ok_and(|c| c.len() == CHUNK));
        assert_eq!(
            got[1].as_ref().map(|_| ()).unwrap_err().kind(),
            ErrorKind::Closed
        );
    }
}
