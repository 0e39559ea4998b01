//! The C ABI's argument checks, against a model: arbitrary operations with arbitrary key bytes
//! (not UTF-8, NUL, too long, `..`), NULL pointers where a length says there are bytes, and
//! ranges past the end, on a memory store.
//!
//! Never a panic (`PS_PANIC` is a crash here); each status is the one the model expects; every
//! read returns exactly the bytes the model holds.

#![no_main]

use std::collections::HashMap;
use std::ptr;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use piecestore_c::{
    PsBytes, PsError, PsStatus, PsStore, ps_bytes_free, ps_close, ps_delete, ps_error_free,
    ps_exists, ps_get, ps_get_range, ps_open, ps_put, ps_store_free,
};

#[derive(Arbitrary, Debug)]
enum Op {
    Put {
        key: Vec<u8>,
        data: Vec<u8>,
        overwrite: bool,
    },
    Get {
        key: Vec<u8>,
    },
    Range {
        key: Vec<u8>,
        offset: u64,
        len: u64,
    },
    Exists {
        key: Vec<u8>,
    },
    Delete {
        key: Vec<u8>,
    },
    /// A NULL key or data pointer with a length.
    Null {
        key_len: usize,
        data_len: usize,
    },
    /// A key an earlier op used (so that ops meet each other's pieces).
    Again {
        which: u8,
        data: Vec<u8>,
    },
}

fn valid(key: &[u8]) -> bool {
    std::str::from_utf8(key).is_ok_and(|k| piecestore::key::validate(k).is_ok())
}

struct Call {
    status: PsStatus,
    err: *mut PsError,
}

impl Drop for Call {
    fn drop(&mut self) {
        // SAFETY: NULL or an error this library made.
        unsafe { ps_error_free(self.err) }
    }
}

fn status(f: impl FnOnce(*mut *mut PsError) -> PsStatus) -> Call {
    let mut err = ptr::null_mut();
    let status = f(&mut err);
    assert_ne!(status, PsStatus::PsPanic, "the library panicked");
    assert_eq!(
        status == PsStatus::PsOk,
        err.is_null(),
        "{status:?} and its error disagree"
    );
    Call { status, err }
}

fn read(out: &mut PsBytes) -> Vec<u8> {
    // SAFETY: filled by a call that returned PS_OK.
    let v = unsafe { std::slice::from_raw_parts(out.data, out.len) }.to_vec();
    // SAFETY: as above; freed once.
    unsafe { ps_bytes_free(out) };
    v
}

fn empty() -> PsBytes {
    PsBytes {
        data: ptr::null(),
        len: 0,
        owner: ptr::null_mut(),
    }
}

fuzz_target!(|ops: Vec<Op>| {
    let spec = c"memory://";
    let mut store: *mut PsStore = ptr::null_mut();
    // SAFETY: valid pointers throughout this target.
    let open =
        status(|e| unsafe { ps_open(spec.as_ptr(), ptr::null(), ptr::null(), 0, &mut store, e) });
    assert_eq!(open.status, PsStatus::PsOk);
    let s = store as *const PsStore;
    let mut model: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
    let mut used: Vec<Vec<u8>> = Vec::new();
    for op in ops.into_iter().take(64) {
        match op {
            Op::Put {
                key,
                data,
                overwrite,
            } => put(s, &mut model, &mut used, key, data, overwrite),
            Op::Again { which, data } => {
                if let Some(key) = used.get(which as usize % used.len().max(1)).cloned() {
                    put(s, &mut model, &mut used, key, data, false);
                }
            }
            Op::Get { key } => {
                let mut out = empty();
                // SAFETY: key valid for its length; out writable.
                let c = status(|e| unsafe {
                    ps_get(s, key.as_ptr(), key.len(), ptr::null(), &mut out, e)
                });
                match (valid(&key), model.get(&key)) {
                    (false, _) => assert_eq!(c.status, PsStatus::PsInvalidKey),
                    (true, None) => assert_eq!(c.status, PsStatus::PsNotFound),
                    (true, Some(want)) => {
                        assert_eq!(c.status, PsStatus::PsOk);
                        assert_eq!(&read(&mut out), want);
                    }
                }
            }
            Op::Range { key, offset, len } => {
                let mut out = empty();
                // SAFETY: as above.
                let c = status(|e| unsafe {
                    ps_get_range(
                        s,
                        key.as_ptr(),
                        key.len(),
                        offset,
                        len,
                        ptr::null(),
                        &mut out,
                        e,
                    )
                });
                match (valid(&key), model.get(&key)) {
                    (false, _) => assert_eq!(c.status, PsStatus::PsInvalidKey),
                    (true, None) => assert_eq!(c.status, PsStatus::PsNotFound),
                    (true, Some(want)) => {
                        let inside = offset
                            .checked_add(len)
                            .is_some_and(|end| end <= want.len() as u64);
                        if c.status == PsStatus::PsOk {
                            assert!(inside, "range {offset}+{len} of {} read", want.len());
                            let got = read(&mut out);
                            assert_eq!(got, want[offset as usize..(offset + len) as usize]);
                        } else {
                            assert_eq!(c.status, PsStatus::PsInvalidRange);
                            assert!(
                                !inside || len == 0,
                                "range {offset}+{len} of {} refused",
                                want.len()
                            );
                        }
                    }
                }
            }
            Op::Exists { key } => {
                let mut there = false;
                // SAFETY: as above.
                let c = status(|e| unsafe {
                    ps_exists(s, key.as_ptr(), key.len(), ptr::null(), &mut there, e)
                });
                if valid(&key) {
                    assert_eq!(c.status, PsStatus::PsOk);
                    assert_eq!(there, model.contains_key(&key));
                } else {
                    assert_eq!(c.status, PsStatus::PsInvalidKey);
                }
            }
            Op::Delete { key } => {
                // SAFETY: as above.
                let c =
                    status(|e| unsafe { ps_delete(s, key.as_ptr(), key.len(), ptr::null(), e) });
                if valid(&key) {
                    assert!(
                        matches!(c.status, PsStatus::PsOk | PsStatus::PsNotFound),
                        "{:?}",
                        c.status
                    );
                    if model.remove(&key).is_some() {
                        assert_eq!(c.status, PsStatus::PsOk);
                    }
                } else {
                    assert_eq!(c.status, PsStatus::PsInvalidKey);
                }
            }
            Op::Null { key_len, data_len } => {
                let key_len = key_len % 2048;
                let data_len = data_len % 2048;
                let key = b"null/key";
                let c = status(|e| unsafe {
                    // SAFETY: a NULL pointer with a length is what the checks must refuse; a
                    // non-NULL one is valid for its length.
                    let (k, kl) = if key_len == 0 {
                        (key.as_ptr(), key.len())
                    } else {
                        (ptr::null(), key_len)
                    };
                    ps_put(s, k, kl, ptr::null(), data_len, false, ptr::null(), e)
                });
                if key_len > 0 || data_len > 0 {
                    assert_eq!(c.status, PsStatus::PsInvalidArgument);
                } else {
                    // An empty piece under a valid key, written through a NULL data pointer.
                    let prior = model.get(key.as_slice());
                    match prior {
                        Some(p) if !p.is_empty() => assert_eq!(c.status, PsStatus::PsAlreadyExists),
                        _ => {
                            assert_eq!(c.status, PsStatus::PsOk);
                            model.insert(key.to_vec(), Vec::new());
                        }
                    }
                }
            }
        }
    }
    // SAFETY: the store opened above, freed once.
    unsafe {
        let c = status(|e| ps_close(s, e));
        assert_eq!(c.status, PsStatus::PsOk);
        ps_store_free(store);
    }
});

fn put(
    s: *const PsStore,
    model: &mut HashMap<Vec<u8>, Vec<u8>>,
    used: &mut Vec<Vec<u8>>,
    key: Vec<u8>,
    data: Vec<u8>,
    overwrite: bool,
) {
    // SAFETY: key and data valid for their lengths.
    let c = status(|e| unsafe {
        ps_put(
            s,
            key.as_ptr(),
            key.len(),
            data.as_ptr(),
            data.len(),
            overwrite,
            ptr::null(),
            e,
        )
    });
    if !valid(&key) {
        assert_eq!(
            c.status,
            PsStatus::PsInvalidKey,
            "{:?}",
            String::from_utf8_lossy(&key)
        );
        return;
    }
    match model.get(&key) {
        Some(prior) if prior != &data && !overwrite => {
            assert_eq!(c.status, PsStatus::PsAlreadyExists);
        }
        _ => {
            assert_eq!(
                c.status,
                PsStatus::PsOk,
                "put {:?}",
                String::from_utf8_lossy(&key)
            );
            model.insert(key.clone(), data);
        }
    }
    used.push(key);
}
