//! The pack format's reader and scanner: packs built from arbitrary records, then damaged
//! (bits flipped, cut, bytes inserted or overwritten), and arbitrary bytes as a pack.
//!
//! Never a panic; a scan returns only records whose header and payload verify, inside the
//! bytes; an undamaged pack reads back exactly as built; damage after a record never loses it.

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use piecestore::checksum::crc32c;
use piecestore::pack::format::{self, PackBuilder};

#[derive(Arbitrary, Debug)]
enum Rec {
    Piece {
        key: String,
        seq: u64,
        data: Vec<u8>,
    },
    Tombstone {
        key: String,
        seq: u64,
        deletes: u64,
    },
}

#[derive(Arbitrary, Debug)]
enum Damage {
    Flip { at: usize, bit: u8 },
    Cut { at: usize },
    Insert { at: usize, bytes: Vec<u8> },
    Overwrite { at: usize, bytes: Vec<u8> },
}

#[derive(Arbitrary, Debug)]
struct Input {
    compacted: bool,
    records: Vec<Rec>,
    damage: Vec<Damage>,
    /// Arbitrary bytes, read as a pack.
    raw: Vec<u8>,
    /// Where a scan of `raw` starts, and the pack length a footer parse is told.
    start: u64,
    claimed_len: u64,
}

/// A key as the store would write one: at most 1,024 bytes (the format holds up to 65,535).
fn key_of(k: &str) -> &str {
    let mut end = k.len().min(1024);
    while !k.is_char_boundary(end) {
        end -= 1;
    }
    &k[..end]
}

/// Every verified entry lies inside `pack` and its payload matches its CRC; the scan ends
/// inside the bytes (or where it started, past them).
fn check_scan(pack: &[u8], scan: &format::Scan, start: u64) {
    assert!(scan.end >= start.min(pack.len() as u64));
    assert!(scan.end <= start.max(pack.len() as u64));
    for e in &scan.entries {
        let end = e.offset.checked_add(e.len).expect("entry end overflows");
        assert!(end as usize <= pack.len(), "entry past the end");
        assert_eq!(crc32c(&pack[e.offset as usize..end as usize]), e.crc);
    }
    for (e, actual) in &scan.damaged {
        let end = (e.offset + e.len) as usize;
        assert!(end <= pack.len());
        assert_eq!(crc32c(&pack[e.offset as usize..end]), *actual);
        assert_ne!(*actual, e.crc);
    }
}

fn check_footer(tail: &[u8], pack_len: u64) {
    if let Ok(f) = format::parse_footer(tail, pack_len) {
        for e in &f.entries {
            assert!(
                e.offset
                    .checked_add(e.len)
                    .is_some_and(|end| end <= pack_len)
            );
        }
    }
}

fuzz_target!(|input: Input| {
    let mut b = if input.compacted {
        PackBuilder::compacted()
    } else {
        PackBuilder::new()
    };
    for r in input.records.iter().take(64) {
        match r {
            Rec::Piece { key, seq, data } => {
                b.push_piece(key_of(key), *seq, data, crc32c(data));
            }
            Rec::Tombstone { key, seq, deletes } => {
                b.push_tombstone(key_of(key), *seq, *deletes);
            }
        }
    }
    let records_end = b.len();
    let (pack, built) = b.finish();
    let pack = pack.to_vec();

    // Undamaged: read back exactly as built, by a scan and by the footer.
    let scan = format::scan(&pack).expect("a built pack scans");
    check_scan(&pack, &scan, 8);
    assert_eq!(scan.entries, built, "scan differs from what was built");
    assert!(scan.damaged.is_empty());
    assert_eq!(scan.end, records_end);
    let footer = format::parse_footer(&pack, pack.len() as u64).expect("a built pack's footer");
    let mut sorted = built.clone();
    sorted.sort_by(|a, b| a.key.cmp(&b.key).then(a.seq.cmp(&b.seq)));
    assert_eq!(footer.entries, sorted);
    assert_eq!(footer.flags != 0, input.compacted);
    for e in built
        .iter()
        .filter(|e| e.kind == format::RecordKind::Tombstone)
    {
        let p = &pack[e.offset as usize..(e.offset + e.len) as usize];
        assert!(format::tombstone_target(p).is_some());
    }

    // Damaged: what verifies is genuine, and records wholly before the first damage survive.
    let mut bad = pack.clone();
    let mut first = bad.len();
    for d in input.damage.iter().take(8) {
        if bad.is_empty() {
            break;
        }
        match d {
            Damage::Flip { at, bit } => {
                let at = at % bad.len();
                let before = bad[at];
                bad[at] ^= 1 << (bit % 8);
                if bad[at] != before {
                    first = first.min(at);
                }
            }
            Damage::Cut { at } => {
                let at = at % (bad.len() + 1);
                bad.truncate(at);
                first = first.min(at);
            }
            Damage::Insert { at, bytes } => {
                let at = at % (bad.len() + 1);
                bad.splice(at..at, bytes.iter().copied());
                if !bytes.is_empty() {
                    first = first.min(at);
                }
            }
            Damage::Overwrite { at, bytes } => {
                let at = at % bad.len();
                let end = (at + bytes.len()).min(bad.len());
                if bad[at..end] != bytes[..end - at] {
                    first = first.min(at);
                }
                bad[at..end].copy_from_slice(&bytes[..end - at]);
            }
        }
    }
    if let Ok(scan) = format::scan(&bad) {
        check_scan(&bad, &scan, 8);
        for e in built.iter().filter(|e| e.offset + e.len <= first as u64) {
            assert!(scan.entries.contains(e), "{e:?} lost to damage after it");
        }
    } else {
        assert!(first < 8, "the magic was not damaged, yet the scan failed");
    }
    check_footer(&bad, bad.len() as u64);

    // Arbitrary bytes, from anywhere, with any claimed length.
    if let Ok(scan) = format::scan(&input.raw) {
        check_scan(&input.raw, &scan, 8);
    }
    let from = format::scan_from(&input.raw, input.start);
    check_scan(&input.raw, &from, input.start);
    check_footer(&input.raw, input.raw.len() as u64);
    check_footer(&input.raw, input.claimed_len);
    let _ = format::parse_trailer(&input.raw, input.claimed_len);
    let _ = format::tombstone_target(&input.raw);
});
