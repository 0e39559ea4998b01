//! The pack format, version 1 (`docs/pack-format.md` describes it for other readers).
//!
//! ```text
//! pack    = header record* footer trailer
//! header  = "PSPACK\0\x01"                                   (8 bytes)
//! record  = rmagic "PSR1" | key_len u16 | kind u8 | 0u8 | seq u64 | len u64
//!           | payload_crc u32 | header_crc u32                 (32 bytes, LE)
//!           key (key_len bytes) | payload (len bytes)
//! footer  = entry*, sorted by key
//! entry   = key_len u16 | kind u8 | seq u64 | offset u64 | len u64 | crc u32 | key
//! trailer = footer_len u64 | count u64 | footer_crc u32 | version u16 | flags u16
//!           | "PSPKEND1"                                       (32 bytes, LE)
//! ```
//!
//! `header_crc` covers the record header's first 28 bytes and the key, so a torn or
//! overwritten record is found by a forward scan without the footer. A tombstone's payload is
//! the 8-byte `seq` of the record it deletes. `offset` in an entry is the payload's offset
//! from the start of the pack.

use bytes::Bytes;

use crate::checksum::{crc32c, crc32c_of_parts};

/// The first 8 bytes of every pack.
pub const PACK_MAGIC: [u8; 8] = *b"PSPACK\0\x01";
/// The last 8 bytes of every complete pack.
pub const END_MAGIC: [u8; 8] = *b"PSPKEND1";
/// The first 4 bytes of every record.
pub const RECORD_MAGIC: [u8; 4] = *b"PSR1";
/// The format version this code writes and reads.
pub const VERSION: u16 = 1;
/// Trailer flag: the pack was written by compaction (its pieces are copies of pieces in older
/// packs; recovery does not re-index them, since the move never committed).
pub const FLAG_COMPACTED: u16 = 1;
/// Size of a record header.
pub const RECORD_HEADER: usize = 32;
/// Size of the trailer.
pub const TRAILER: usize = 32;
const ENTRY_FIXED: usize = 2 + 1 + 8 + 8 + 8 + 4;

/// What a record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    /// A piece's bytes.
    Piece,
    /// A delete: the payload is the sequence number of the record it deletes.
    Tombstone,
}

impl RecordKind {
    fn code(self) -> u8 {
        match self {
            RecordKind::Piece => 0,
            RecordKind::Tombstone => 1,
        }
    }
    fn from_code(c: u8) -> Option<Self> {
        match c {
            0 => Some(RecordKind::Piece),
            1 => Some(RecordKind::Tombstone),
            _ => None,
        }
    }
}

/// One record of a pack, as its footer lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The piece key.
    pub key: String,
    /// Piece or tombstone.
    pub kind: RecordKind,
    /// The write's sequence number: of two records of one key, the higher one wins.
    pub seq: u64,
    /// Offset of the payload in the pack.
    pub offset: u64,
    /// Payload length.
    pub len: u64,
    /// CRC32C of the payload.
    pub crc: u32,
}

/// Why a pack could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FormatError {
    /// The pack is shorter than a header and a trailer.
    TooShort,
    /// The first bytes are not the pack magic.
    BadMagic,
    /// The trailer is missing or damaged (an unfinished pack).
    NoTrailer,
    /// A version this code does not read.
    Version(u16),
    /// The footer's checksum or structure is wrong.
    BadFooter(&'static str),
}

impl std::fmt::Display for FormatError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FormatError::TooShort => f.write_str("shorter than a pack header and trailer"),
            FormatError::BadMagic => f.write_str("does not start with the pack magic"),
            FormatError::NoTrailer => f.write_str("has no valid trailer (unfinished or truncated)"),
            FormatError::Version(v) => {
                write!(f, "is format version {v}, this build reads {VERSION}")
            }
            FormatError::BadFooter(why) => write!(f, "has a damaged footer: {why}"),
        }
    }
}

/// Builds one pack in memory.
#[derive(Debug)]
pub struct PackBuilder {
    buf: Vec<u8>,
    entries: Vec<Entry>,
    flags: u16,
}

impl Default for PackBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl PackBuilder {
    /// An empty pack (just the header).
    pub fn new() -> Self {
        PackBuilder {
            buf: PACK_MAGIC.to_vec(),
            entries: Vec::new(),
            flags: 0,
        }
    }

    /// An empty pack that compaction fills ([`FLAG_COMPACTED`]).
    pub fn compacted() -> Self {
        PackBuilder {
            flags: FLAG_COMPACTED,
            ..Self::new()
        }
    }

    /// Bytes so far (without footer and trailer).
    pub fn len(&self) -> u64 {
        self.buf.len() as u64
    }

    /// Whether no record was added.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The records so far, in the order they were added.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Appends a piece whose CRC32C is `crc` (already computed by the caller); returns its entry.
    pub fn push_piece(&mut self, key: &str, seq: u64, data: &[u8], crc: u32) -> &Entry {
        self.push(key, RecordKind::Piece, seq, data, crc)
    }

    /// Appends a tombstone for the record of `key` with sequence number `deletes`.
    pub fn push_tombstone(&mut self, key: &str, seq: u64, deletes: u64) -> &Entry {
        let payload = tombstone_payload(deletes);
        let crc = crc32c(&payload);
        self.push(key, RecordKind::Tombstone, seq, &payload, crc)
    }

    fn push(&mut self, key: &str, kind: RecordKind, seq: u64, data: &[u8], crc: u32) -> &Entry {
        write_record_head(&mut self.buf, key, kind, seq, data.len() as u64, crc);
        let offset = self.buf.len() as u64;
        self.buf.extend_from_slice(data);
        self.entries.push(Entry {
            key: key.to_string(),
            kind,
            seq,
            offset,
            len: data.len() as u64,
            crc,
        });
        self.entries.last().expect("just pushed")
    }

    /// The complete pack: records, then the sorted footer and the trailer.
    pub fn finish(mut self) -> (Bytes, Vec<Entry>) {
        let tail = footer_and_trailer(&self.entries, self.flags);
        self.buf.extend_from_slice(&tail);
        (Bytes::from(self.buf), self.entries)
    }
}

fn write_record_head(buf: &mut Vec<u8>, key: &str, kind: RecordKind, seq: u64, len: u64, crc: u32) {
    let start = buf.len();
    buf.extend_from_slice(&RECORD_MAGIC);
    buf.extend_from_slice(&(key.len() as u16).to_le_bytes());
    buf.push(kind.code());
    buf.push(0);
    buf.extend_from_slice(&seq.to_le_bytes());
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&crc.to_le_bytes());
    let header_crc = crc32c_of_parts(&[&buf[start..start + 28], key.as_bytes()]);
    buf.extend_from_slice(&header_crc.to_le_bytes());
    buf.extend_from_slice(key.as_bytes());
}

/// What precedes a record's payload in a pack: its 32-byte header, then its key (so a record
/// can be written as this and the caller's payload, without copying the payload).
pub fn record_head(key: &str, kind: RecordKind, seq: u64, len: u64, crc: u32) -> Vec<u8> {
    let mut buf = Vec::with_capacity(RECORD_HEADER + key.len());
    write_record_head(&mut buf, key, kind, seq, len, crc);
    buf
}

/// A tombstone's payload: the sequence number of the write it deletes.
pub fn tombstone_payload(deletes: u64) -> [u8; 8] {
    deletes.to_le_bytes()
}

/// The footer (the entries sorted by key, then sequence number) and the trailer that end a
/// pack holding `entries`.
pub fn footer_and_trailer(entries: &[Entry], flags: u16) -> Vec<u8> {
    let mut sorted: Vec<&Entry> = entries.iter().collect();
    sorted.sort_by(|a, b| a.key.cmp(&b.key).then(a.seq.cmp(&b.seq)));
    let mut buf = Vec::with_capacity(entries.len() * 48 + TRAILER);
    for e in sorted {
        buf.extend_from_slice(&(e.key.len() as u16).to_le_bytes());
        buf.push(e.kind.code());
        buf.extend_from_slice(&e.seq.to_le_bytes());
        buf.extend_from_slice(&e.offset.to_le_bytes());
        buf.extend_from_slice(&e.len.to_le_bytes());
        buf.extend_from_slice(&e.crc.to_le_bytes());
        buf.extend_from_slice(e.key.as_bytes());
    }
    let footer_len = buf.len() as u64;
    let footer_crc = crc32c(&buf);
    buf.extend_from_slice(&footer_len.to_le_bytes());
    buf.extend_from_slice(&(entries.len() as u64).to_le_bytes());
    buf.extend_from_slice(&footer_crc.to_le_bytes());
    buf.extend_from_slice(&VERSION.to_le_bytes());
    buf.extend_from_slice(&flags.to_le_bytes());
    buf.extend_from_slice(&END_MAGIC);
    buf
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// What a pack's footer and trailer say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Footer {
    /// The records, sorted by key.
    pub entries: Vec<Entry>,
    /// The trailer's flags ([`FLAG_COMPACTED`]).
    pub flags: u16,
}

/// What the trailer of a pack of `pack_len` bytes says: `(footer_len, count, footer_crc, flags)`.
pub fn parse_trailer(trailer: &[u8], pack_len: u64) -> Result<(u64, u64, u32, u16), FormatError> {
    if pack_len < (PACK_MAGIC.len() + TRAILER) as u64 || trailer.len() < TRAILER {
        return Err(FormatError::TooShort);
    }
    let t = &trailer[trailer.len() - TRAILER..];
    if t[24..32] != END_MAGIC {
        return Err(FormatError::NoTrailer);
    }
    let version = u16_at(t, 20);
    if version != VERSION {
        return Err(FormatError::Version(version));
    }
    let footer_len = u64_at(t, 0);
    if footer_len > pack_len - (PACK_MAGIC.len() + TRAILER) as u64 {
        return Err(FormatError::BadFooter("footer longer than the pack"));
    }
    Ok((footer_len, u64_at(t, 8), u32_at(t, 16), u16_at(t, 22)))
}

/// The entries of a pack from its footer: `tail` must hold at least the footer and the trailer
/// (the whole pack works too); `pack_len` is the pack's size.
pub fn parse_footer(tail: &[u8], pack_len: u64) -> Result<Footer, FormatError> {
    let (footer_len, count, footer_crc, flags) = parse_trailer(tail, pack_len)?;
    let need = footer_len as usize + TRAILER;
    if tail.len() < need {
        return Err(FormatError::BadFooter("tail too short for the footer"));
    }
    let footer = &tail[tail.len() - need..tail.len() - TRAILER];
    if crc32c(footer) != footer_crc {
        return Err(FormatError::BadFooter("footer checksum mismatch"));
    }
    let records_end = pack_len - need as u64;
    let mut entries = Vec::with_capacity(count.min(1 << 20) as usize);
    let mut at = 0usize;
    while at < footer.len() {
        if footer.len() - at < ENTRY_FIXED {
            return Err(FormatError::BadFooter("truncated entry"));
        }
        let key_len = u16_at(footer, at) as usize;
        let kind = RecordKind::from_code(footer[at + 2])
            .ok_or(FormatError::BadFooter("unknown record kind"))?;
        let seq = u64_at(footer, at + 3);
        let offset = u64_at(footer, at + 11);
        let len = u64_at(footer, at + 19);
        let crc = u32_at(footer, at + 27);
        at += ENTRY_FIXED;
        if footer.len() - at < key_len {
            return Err(FormatError::BadFooter("truncated key"));
        }
        let key = std::str::from_utf8(&footer[at..at + key_len])
            .map_err(|_| FormatError::BadFooter("key is not UTF-8"))?
            .to_string();
        at += key_len;
        let in_bounds = offset >= (PACK_MAGIC.len() + RECORD_HEADER) as u64
            && offset
                .checked_add(len)
                .is_some_and(|end| end <= records_end);
        if !in_bounds {
            return Err(FormatError::BadFooter("entry outside the pack's records"));
        }
        entries.push(Entry {
            key,
            kind,
            seq,
            offset,
            len,
            crc,
        });
    }
    if entries.len() as u64 != count {
        return Err(FormatError::BadFooter(
            "entry count does not match the trailer",
        ));
    }
    Ok(Footer { entries, flags })
}

/// The outcome of [`scan`]: the records whose header and payload verify, in order, and where
/// the valid part of the pack ends.
#[derive(Debug, Default)]
pub struct Scan {
    /// The verified records.
    pub entries: Vec<Entry>,
    /// Records whose header verified but whose payload did not: `(entry, actual crc)`.
    pub damaged: Vec<(Entry, u32)>,
    /// Where the scan stopped (the first byte that is not a record).
    pub end: u64,
}

impl Scan {
    /// Every record whose header verified, damaged or not, in pack order.
    pub fn all_entries(&self) -> Vec<Entry> {
        let mut all: Vec<Entry> = self.entries.clone();
        all.extend(self.damaged.iter().map(|(e, _)| e.clone()));
        all.sort_by_key(|e| e.offset);
        all
    }
}

/// Reads a pack's records from its start without the footer, verifying each header and
/// payload; stops at the first bytes that are not a valid record header (the footer, or a torn
/// tail). A record whose payload fails its CRC is listed in `damaged` and the scan goes on.
pub fn scan(pack: &[u8]) -> Result<Scan, FormatError> {
    if pack.len() < PACK_MAGIC.len() {
        return Err(FormatError::TooShort);
    }
    if pack[..8] != PACK_MAGIC {
        return Err(FormatError::BadMagic);
    }
    Ok(scan_records(pack, PACK_MAGIC.len() as u64))
}

/// [`scan`] of a pack's records from byte `start`: `pack` holds the pack's bytes from its
/// beginning (only those from `start` are read). Offsets are the pack's.
pub fn scan_from(pack: &[u8], start: u64) -> Scan {
    scan_records(pack, start)
}

fn scan_records(pack: &[u8], start: u64) -> Scan {
    let mut out = Scan {
        end: start,
        ..Scan::default()
    };
    // A start past the bytes (or past what an address holds) finds nothing there.
    let Ok(mut at) = usize::try_from(start) else {
        return out;
    };
    loop {
        out.end = at as u64;
        if pack.len().saturating_sub(at) < RECORD_HEADER || pack[at..at + 4] != RECORD_MAGIC {
            return out;
        }
        let h = &pack[at..at + RECORD_HEADER];
        let key_len = u16_at(h, 4) as usize;
        let Some(kind) = RecordKind::from_code(h[6]) else {
            return out;
        };
        let seq = u64_at(h, 8);
        let len = u64_at(h, 16);
        let crc = u32_at(h, 24);
        let header_crc = u32_at(h, 28);
        let key_start = at + RECORD_HEADER;
        if pack.len() - key_start < key_len {
            return out;
        }
        if crc32c_of_parts(&[&h[..28], &pack[key_start..key_start + key_len]]) != header_crc {
            return out;
        }
        let Ok(key) = std::str::from_utf8(&pack[key_start..key_start + key_len]) else {
            return out;
        };
        let offset = key_start + key_len;
        if ((pack.len() - offset) as u64) < len {
            return out;
        }
        let end = offset + len as usize;
        let entry = Entry {
            key: key.to_string(),
            kind,
            seq,
            offset: offset as u64,
            len,
            crc,
        };
        let actual = crc32c(&pack[offset..end]);
        if actual == crc {
            out.entries.push(entry);
        } else {
            out.damaged.push((entry, actual));
        }
        at = end;
    }
}

/// The sequence number a tombstone's payload names.
pub fn tombstone_target(payload: &[u8]) -> Option<u64> {
    payload.try_into().ok().map(u64::from_le_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `pack_format` fuzz target: a scan starting past the bytes reported an end
    /// past them, and a start near `u64::MAX` overflowed.
    #[test]
    fn a_scan_from_past_the_end_finds_nothing() {
        let (bytes, _) = {
            let mut b = PackBuilder::new();
            b.push_piece("a", 1, b"x", crc32c(b"x"));
            b.finish()
        };
        for start in [
            bytes.len() as u64,
            bytes.len() as u64 + 5,
            u64::MAX - 3,
            u64::MAX,
        ] {
            let s = scan_from(&bytes, start);
            assert!(s.entries.is_empty() && s.damaged.is_empty(), "{start}");
            assert_eq!(s.end, start);
        }
        let s = scan_from(&[0u8; 17], 0x20_0000_0000_0000);
        assert!(s.entries.is_empty());
    }

    #[test]
    fn footer_and_scan_agree() {
        let mut b = PackBuilder::new();
        b.push_piece("b", 2, b"hello", crc32c(b"hello"));
        b.push_piece("a", 1, b"", crc32c(b""));
        b.push_tombstone("c", 3, 1);
        let (bytes, entries) = b.finish();
        let mut footer = parse_footer(&bytes, bytes.len() as u64).unwrap().entries;
        let scanned = scan(&bytes).unwrap();
        assert!(scanned.damaged.is_empty());
        assert_eq!(scanned.entries, entries);
        footer.sort_by_key(|e| e.offset);
        assert_eq!(footer, entries);
        let b_entry = &entries[0];
        assert_eq!(
            &bytes[b_entry.offset as usize..(b_entry.offset + b_entry.len) as usize],
            b"hello"
        );
        let t = &entries[2];
        let payload = &bytes[t.offset as usize..(t.offset + t.len) as usize];
        assert_eq!(tombstone_target(payload), Some(1));
    }

    #[test]
    fn torn_and_damaged_packs_are_detected() {
        let mut b = PackBuilder::new();
        b.push_piece("a", 1, b"first", crc32c(b"first"));
        b.push_piece("b", 2, b"second", crc32c(b"second"));
        let (bytes, entries) = b.finish();
        // Cut inside the second record: the footer is gone, the scan keeps the first.
        let cut = entries[1].offset as usize + 2;
        assert_eq!(
            parse_footer(&bytes[..cut], cut as u64),
            Err(FormatError::NoTrailer)
        );
        let s = scan(&bytes[..cut]).unwrap();
        assert_eq!(s.entries.len(), 1);
        assert_eq!(s.end, entries[1].offset - RECORD_HEADER as u64 - 1);
        // A flipped payload byte: the footer still parses; the scan names the record.
        let mut flipped = bytes.to_vec();
        flipped[entries[1].offset as usize] ^= 1;
        assert!(parse_footer(&flipped, flipped.len() as u64).is_ok());
        let s = scan(&flipped).unwrap();
        assert_eq!(s.damaged.len(), 1);
        assert_eq!(s.damaged[0].0.key, "b");
        // A flipped footer byte.
        let mut bad = bytes.to_vec();
        let n = bad.len();
        bad[n - TRAILER - 1] ^= 1;
        assert!(matches!(
            parse_footer(&bad, n as u64),
            Err(FormatError::BadFooter(_))
        ));
    }
}
