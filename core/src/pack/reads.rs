//! Shared ranged reads of a bucket's packs: gets of different pieces of one pack that arrive
//! together make one ranged GET between them (ARCHITECTURE §6, "one fetch per miss").
//!
//! The first get of a pack opens a *batch* and lets the other ready tasks run once (a
//! `yield_now`, no timer: a get on its own is not delayed by a window). Gets of the same pack
//! that arrive meanwhile (a `get_many` of one object's pieces, concurrent requests) join it.
//! Then the batch is sealed: its ranges are sorted and merged into spans where the gap
//! between neighbours is small and the span stays bounded, and each span is one ranged GET.
//! Each get slices its piece out of its span (the caller verifies the piece's CRC32C as
//! always). When a span's read fails, each of its gets reads its own range, so every caller
//! sees its own error (a missing pack is still `NotFound`, a short one still `Corrupt`).
//!
//! Whichever member of a batch is polled first after the yield does the reads, so a get that
//! is cancelled (dropped) never strands the others.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::OnceCell;

use super::index::PackId;
use crate::backend::Backend;
use crate::error::Result;

/// Two ranges share a read when the bytes between them are at most this many (reading them
/// costs less than another request's round trip, and bounds what a read fetches beyond the
/// pieces asked for).
const MAX_GAP: u64 = 256 << 10;

/// One shared read never spans more than this many bytes.
const MAX_SPAN: u64 = 8 << 20;

/// The spans a sealed batch read: each span's range and its bytes (`None`: the read failed).
type Spans = Vec<(Range<u64>, Option<Bytes>)>;

/// The gets of one pack that share reads.
struct Batch {
    /// The ranges asked for; `None` once sealed.
    ranges: Mutex<Option<Vec<Range<u64>>>>,
    /// The spans read, set by whichever member did the reads.
    spans: OnceCell<Spans>,
}

/// The open batches of one shard's packs, and what sharing saved.
#[derive(Default)]
pub(crate) struct SharedReads {
    open: Mutex<HashMap<PackId, Arc<Batch>>>,
    /// Ranged GETs made.
    requests: AtomicU64,
    /// Pieces read through them (more than `requests` when reads were shared).
    pieces: AtomicU64,
}

impl SharedReads {
    /// Reads `range` of pack `id`, sharing one ranged GET with the other gets of the pack that
    /// arrive with it.
    pub(crate) async fn read(
        &self,
        backend: &Backend,
        id: PackId,
        range: Range<u64>,
    ) -> Result<Bytes> {
        let batch = {
            let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
            let batch = open.entry(id).or_insert_with(|| {
                Arc::new(Batch {
                    ranges: Mutex::new(Some(Vec::new())),
                    spans: OnceCell::new(),
                })
            });
            let mut ranges = batch.ranges.lock().unwrap_or_else(|p| p.into_inner());
            ranges
                .as_mut()
                .expect("a batch in the map is open")
                .push(range.clone());
            drop(ranges);
            Arc::clone(batch)
        };
        // Let the gets that are ready to run join before the batch is sealed.
        tokio::task::yield_now().await;
        let spans = batch
            .spans
            .get_or_init(|| self.seal_and_read(backend, id, &batch))
            .await;
        let covering = spans
            .iter()
            .find(|(r, _)| r.start <= range.start && range.end <= r.end);
        match covering {
            // A span that came back whole (a pack cut short returns fewer bytes: then each
            // piece reads its own range, and a short one is reported `Corrupt` by the caller).
            Some((span, Some(bytes))) if bytes.len() as u64 == span.end - span.start => {
                let from = (range.start - span.start) as usize;
                let to = (range.end - span.start) as usize;
                let piece = bytes.slice(from..to);
                // A piece much smaller than its span is copied out, so that it does not keep
                // the whole span alive.
                Ok(if piece.len() * 2 < bytes.len() {
                    Bytes::copy_from_slice(&piece)
                } else {
                    piece
                })
            }
            // The shared read failed (or never covered this range): read on its own.
            _ => {
                self.count(1);
                backend.read_pack_range(id, range).await
            }
        }
    }

    /// Closes `batch` to newcomers and reads its spans, concurrently.
    async fn seal_and_read(&self, backend: &Backend, id: PackId, batch: &Arc<Batch>) -> Spans {
        {
            let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
            if open.get(&id).is_some_and(|b| Arc::ptr_eq(b, batch)) {
                open.remove(&id);
            }
        }
        let ranges = batch
            .ranges
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .unwrap_or_default();
        let spans = spans(ranges);
        let reads = spans.iter().map(|(span, n)| async move {
            self.count(*n);
            backend.read_pack_range(id, span.clone()).await.ok()
        });
        let got = futures::future::join_all(reads).await;
        spans
            .into_iter()
            .zip(got)
            .map(|((span, _), bytes)| (span, bytes))
            .collect()
    }

    fn count(&self, pieces: u64) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.pieces.fetch_add(pieces, Ordering::Relaxed);
    }

    /// Ranged GETs made, and the pieces they read.
    pub(crate) fn counts(&self) -> (u64, u64) {
        (
            self.requests.load(Ordering::Relaxed),
            self.pieces.load(Ordering::Relaxed),
        )
    }
}

/// `ranges` merged into the spans to read, each with how many ranges it serves: sorted by
/// start; a range joins the span before it when the gap is at most [`MAX_GAP`] and the span
/// stays within [`MAX_SPAN`].
fn spans(mut ranges: Vec<Range<u64>>) -> Vec<(Range<u64>, u64)> {
    ranges.sort_by_key(|r| (r.start, r.end));
    let mut out: Vec<(Range<u64>, u64)> = Vec::new();
    for r in ranges {
        if let Some((span, n)) = out.last_mut()
            && r.start <= span.end.saturating_add(MAX_GAP)
            && r.end.max(span.end) - span.start <= MAX_SPAN
        {
            span.end = span.end.max(r.end);
            *n += 1;
            continue;
        }
        out.push((r, 1));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn neighbours_share_a_span_and_far_ones_do_not() {
        let got = spans(vec![
            100..200,
            0..100,
            150..180,
            200 + MAX_GAP..300 + MAX_GAP,
            10 * MAX_GAP..10 * MAX_GAP + 5,
        ]);
        assert_eq!(
            got,
            vec![(0..300 + MAX_GAP, 4), (10 * MAX_GAP..10 * MAX_GAP + 5, 1)]
        );
    }

    #[test]
    fn a_span_stays_bounded() {
        let half = MAX_SPAN / 2 + 1;
        let got = spans(vec![0..half, half..2 * half]);
        assert_eq!(got, vec![(0..half, 1), (half..2 * half, 1)]);
        assert_eq!(spans(vec![]), vec![]);
    }
}
