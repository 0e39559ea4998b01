//! How the index stores its values: fixed little-endian layouts of [`Slot`], [`PackInfo`] and
//! [`Intent`] (internal to PieceStore; only the packs are an interchange format).

use super::{Intent, Loc, OwnedIntent, PackInfo, PackState, Slot};

impl Slot {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(45);
        match self {
            Slot::Packed(l) => {
                v.push(0);
                v.extend_from_slice(&l.pack.to_le_bytes());
                v.extend_from_slice(&l.offset.to_le_bytes());
                v.extend_from_slice(&l.len.to_le_bytes());
                v.extend_from_slice(&l.crc.to_le_bytes());
                v.extend_from_slice(&l.seq.to_le_bytes());
            }
            Slot::Object { len, crc, seq } => {
                v.push(1);
                v.extend_from_slice(&len.to_le_bytes());
                v.extend_from_slice(&crc.to_le_bytes());
                v.extend_from_slice(&seq.to_le_bytes());
            }
        }
        v
    }

    pub(crate) fn decode(b: &[u8]) -> Option<Slot> {
        let u64_at = |at: usize| -> Option<u64> {
            Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
        };
        let u32_at = |at: usize| -> Option<u32> {
            Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
        };
        match b.first()? {
            0 => Some(Slot::Packed(Loc {
                pack: u128::from_le_bytes(b.get(1..17)?.try_into().ok()?),
                offset: u64_at(17)?,
                len: u64_at(25)?,
                crc: u32_at(33)?,
                seq: u64_at(37)?,
            })),
            1 => Some(Slot::Object {
                len: u64_at(1)?,
                crc: u32_at(9)?,
                seq: u64_at(13)?,
            }),
            _ => None,
        }
    }
}

impl PackInfo {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(57);
        for x in [
            self.size,
            self.payload,
            self.live_bytes,
            self.live_count,
            self.records,
            self.min_seq,
        ] {
            v.extend_from_slice(&x.to_le_bytes());
        }
        match self.state {
            PackState::Live => v.extend_from_slice(&[0; 9]),
            PackState::Doomed { since_ms } => {
                v.push(1);
                v.extend_from_slice(&since_ms.to_le_bytes());
            }
            PackState::Active => {
                v.push(2);
                v.extend_from_slice(&[0; 8]);
            }
        }
        v
    }

    pub(crate) fn decode(b: &[u8]) -> Option<PackInfo> {
        let u = |i: usize| -> Option<u64> {
            Some(u64::from_le_bytes(
                b.get(i * 8..i * 8 + 8)?.try_into().ok()?,
            ))
        };
        let state = match b.get(48)? {
            0 => PackState::Live,
            1 => PackState::Doomed {
                since_ms: u64::from_le_bytes(b.get(49..57)?.try_into().ok()?),
            },
            2 => PackState::Active,
            _ => return None,
        };
        Some(PackInfo {
            size: u(0)?,
            payload: u(1)?,
            live_bytes: u(2)?,
            live_count: u(3)?,
            records: u(4)?,
            min_seq: u(5)?,
            state,
        })
    }
}

impl Intent {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(21);
        match self {
            Intent::PutObject { len, crc, seq } => {
                v.push(0);
                v.extend_from_slice(&len.to_le_bytes());
                v.extend_from_slice(&crc.to_le_bytes());
                v.extend_from_slice(&seq.to_le_bytes());
            }
            Intent::DeleteObject { upto_seq } => {
                v.push(1);
                v.extend_from_slice(&upto_seq.to_le_bytes());
            }
        }
        v
    }

    pub(crate) fn decode(b: &[u8]) -> Option<Intent> {
        let u64_at = |at: usize| -> Option<u64> {
            Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
        };
        match b.first()? {
            0 => Some(Intent::PutObject {
                len: u64_at(1)?,
                crc: u32::from_le_bytes(b.get(9..13)?.try_into().ok()?),
                seq: u64_at(13)?,
            }),
            1 => Some(Intent::DeleteObject {
                upto_seq: u64_at(1)?,
            }),
            _ => None,
        }
    }
}

impl OwnedIntent {
    /// The intent's encoding, then the owner (8 bytes, little-endian).
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut v = self.intent.encode();
        v.extend_from_slice(&self.owner.to_le_bytes());
        v
    }

    /// Reads what [`OwnedIntent::encode`] wrote, or an intent without an owner (owner 0).
    pub(crate) fn decode(b: &[u8]) -> Option<OwnedIntent> {
        let intent = Intent::decode(b)?;
        let bare = intent.encode().len();
        let owner = match b.len().checked_sub(bare)? {
            0 => 0,
            8 => u64::from_le_bytes(b[bare..].try_into().ok()?),
            _ => return None,
        };
        Some(OwnedIntent { intent, owner })
    }
}
