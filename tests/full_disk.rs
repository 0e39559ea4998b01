//! A local store on a disk that fills up, turns read-only, goes missing or loses a pack file
//! behind the store's back: puts fail with a clear error, nothing acknowledged is lost,
//! compaction refuses to start without the space it needs, and the store works again once
//! space is freed.
//!
//! Each test mounts a small tmpfs of its own (a real filesystem that really runs out of
//! space). That needs root: as another user the tests say so and skip, except under `CI=true`
//! as root, where a failed mount fails the test.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use bytes::Bytes;
use piecestore::config::OptionValue;
use piecestore::pack::fsck::FsckOptions;
use piecestore::pack::gc::GcOptions;
use piecestore::{Config, Error, ErrorKind, PieceStore};
use piecestore_tests::{NoOk, pseudo_random};

/// What an error says of a write that reached its pack but not the pack index.
const IN_PACK: &str = "takes effect once the index can be written";

/// A tmpfs of a fixed size, unmounted on drop.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    /// Mounts a tmpfs of `mib` MiB, or `None` (with a message) where this user cannot mount.
    fn mount(mib: u64) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={mib}m,mode=0755"),
                "tmpfs",
            ])
            .arg(dir.path())
            .output();
        match out {
            Ok(o) if o.status.success() => Some(SmallDisk { dir }),
            other => {
                let why = match other {
                    Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
                    Err(e) => e.to_string(),
                };
                // SAFETY: geteuid has no preconditions.
                let root = unsafe { libc::geteuid() } == 0;
                if root && std::env::var("CI").is_ok_and(|v| v == "true") {
                    panic!("mounting a {mib} MiB tmpfs as root failed: {why}");
                }
                eprintln!("skipped: cannot mount a {mib} MiB tmpfs here ({why})");
                None
            }
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Remounts read-only (`true`) or read-write.
    fn set_read_only(&self, ro: bool) {
        let opts = if ro { "remount,ro" } else { "remount,rw" };
        let out = Command::new("mount")
            .args(["-o", opts])
            .arg(self.path())
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mount -o {opts} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Fills the disk with a file until fewer than `leave` bytes are free; returns its path.
    fn fill(&self, leave: u64) -> PathBuf {
        let path = self.path().join("filler");
        let free = free_bytes(self.path());
        let len = free.saturating_sub(leave);
        std::fs::write(&path, vec![0u8; len as usize]).expect("write the filler");
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

fn free_bytes(p: &Path) -> u64 {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).expect("path");
    // SAFETY: zeroed statvfs is a valid out-parameter; `c` is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    assert_eq!(rc, 0, "statvfs {}", p.display());
    st.f_bavail as u64 * st.f_frsize as u64
}

fn config(root: &Path, packed: bool) -> Config {
    let mut c = Config::from_url(&format!("file://{}", root.display())).expect("url");
    c.set_option("Pack", OptionValue::Bool(packed))
        .expect("Pack");
    if packed {
        c.set_option("PackThreshold", OptionValue::Int(16 << 10))
            .expect("PackThreshold");
        c.set_option("PackTargetSize", OptionValue::Int(256 << 10))
            .expect("PackTargetSize");
        c.set_option("PackMaxAge", OptionValue::Str("20ms".into()))
            .expect("PackMaxAge");
    }
    c
}

/// A full disk, as the error says it: the OS's words, on a Backend error naming the op.
fn assert_full_disk(e: &Error, what: &str) {
    let text = e.to_string();
    assert_eq!(e.kind(), ErrorKind::Backend, "{what}: {text}");
    let lower = text.to_lowercase();
    assert!(
        // The OS's words, or SQLite's for the pack index.
        lower.contains("no space left on device") || lower.contains("disk is full"),
        "{what}: the error does not say the disk is full: {text}"
    );
}

/// Puts `len`-byte pieces under `prefix` until one fails; returns the acknowledged pieces and
/// the error.
async fn put_until_full(
    store: &PieceStore,
    prefix: &str,
    len: usize,
    most: usize,
) -> (BTreeMap<String, Bytes>, Error) {
    let mut acked = BTreeMap::new();
    for i in 0..most {
        let key = format!("{prefix}/{i:05}");
        let bytes: Bytes = pseudo_random(len, i as u64).into();
        match store.put(&key, bytes.clone()).await {
            Ok(()) => {
                acked.insert(key, bytes);
            }
            Err(e) => {
                // The failed piece is not there, not even in part.
                let got = store.get(&key).await;
                assert!(
                    matches!(&got, Err(g) if g.kind() == ErrorKind::NotFound),
                    "{key} failed to put ({e}) yet reads {:?}",
                    got.map(|b| b.len())
                );
                return (acked, e);
            }
        }
    }
    panic!("{most} pieces of {len} bytes fit: the disk never filled");
}

async fn read_back(store: &PieceStore, pieces: &BTreeMap<String, Bytes>, when: &str) {
    for (k, want) in pieces {
        let got = store
            .get(k)
            .await
            .unwrap_or_else(|e| panic!("{when}: get {k}: {e}"));
        assert!(got == *want, "{when}: {k} reads other bytes");
    }
}

async fn assert_fsck_clean(store: &PieceStore, when: &str) {
    let report = store
        .fsck(FsckOptions::default(), &|_| {})
        .await
        .unwrap_or_else(|e| panic!("{when}: fsck: {e}"));
    assert!(
        report.is_clean(),
        "{when}: fsck is not clean:\n{}",
        piecestore_tests::fsck_problems(&report)
    );
}

#[tokio::test]
async fn unpacked_puts_fail_clearly_on_a_full_disk_and_work_again_once_space_is_freed() {
    let Some(disk) = SmallDisk::mount(8) else {
        return;
    };
    let root = disk.path().join("store");
    let store = PieceStore::open(config(&root, false)).await.expect("open");
    let (mut acked, e) = put_until_full(&store, "big", 256 << 10, 1000).await;
    assert_full_disk(&e, "put");
    assert!(
        acked.len() >= 10,
        "only {} pieces fit in 8 MiB",
        acked.len()
    );
    // Still full: another put fails the same way, and reads go on.
    let e = store
        .put("big/more", Bytes::from(vec![1u8; 256 << 10]))
        .await
        .no_ok();
    assert_full_disk(&e, "a second put");
    read_back(&store, &acked, "on the full disk").await;
    // A failed put leaves no staging file behind to eat the space.
    let mut listed: Vec<String> = futures::TryStreamExt::try_collect::<Vec<_>>(store.list(""))
        .await
        .expect("list")
        .into_iter()
        .map(|m| m.key)
        .collect();
    listed.sort();
    assert_eq!(
        listed,
        acked.keys().cloned().collect::<Vec<_>>(),
        "listing on the full disk"
    );
    // Free space by deleting half: puts work again.
    let gone: Vec<String> = acked.keys().step_by(2).cloned().collect();
    for k in &gone {
        store.delete(k).await.expect("delete");
        acked.remove(k);
    }
    for i in 0..gone.len() / 2 {
        let key = format!("again/{i}");
        let bytes: Bytes = pseudo_random(256 << 10, 900 + i as u64).into();
        store
            .put(&key, bytes.clone())
            .await
            .unwrap_or_else(|e| panic!("put {key} after freeing space: {e}"));
        acked.insert(key, bytes);
    }
    store.close().await;
    let store = PieceStore::open(config(&root, false))
        .await
        .expect("reopen");
    read_back(&store, &acked, "reopened").await;
    assert_fsck_clean(&store, "reopened").await;
}

#[tokio::test]
async fn packed_puts_fail_clearly_on_a_full_disk_and_lose_nothing_acknowledged() {
    let Some(disk) = SmallDisk::mount(16) else {
        return;
    };
    // Another tenant of the disk, whose file goes away later.
    let tenant = disk.path().join("tenant");
    std::fs::write(&tenant, vec![0u8; 4 << 20]).expect("write the tenant's file");
    let root = disk.path().join("store");
    let store = PieceStore::open(config(&root, true)).await.expect("open");
    let (mut acked, e) = put_until_full(&store, "small", 3000, 100_000).await;
    assert_full_disk(&e, "packed put");
    // A write whose record reached its pack but not the index says so: it takes effect later
    // (checked once the store opens again); any other failed write never happened.
    let mut later: BTreeMap<String, Option<Bytes>> = BTreeMap::new();
    let mut never: BTreeMap<String, Option<Bytes>> = BTreeMap::new();
    let failed_key = format!("small/{:05}", acked.len());
    let failed_bytes: Bytes = pseudo_random(3000, acked.len() as u64).into();
    if e.to_string().contains(IN_PACK) {
        later.insert(failed_key, Some(failed_bytes));
    } else {
        never.insert(failed_key, None);
    }
    assert!(
        acked.len() >= 500,
        "only {} pieces fit in 16 MiB",
        acked.len()
    );
    read_back(&store, &acked, "on the full disk").await;
    // A delete on the full disk (it writes a tombstone) either works, and the piece is gone,
    // or fails as a full disk, and the piece is still there.
    for k in acked.keys().take(5).cloned().collect::<Vec<_>>() {
        match store.delete(&k).await {
            Ok(()) => {
                assert_eq!(
                    store.get(&k).await.no_ok().kind(),
                    ErrorKind::NotFound,
                    "{k}"
                );
                acked.remove(&k);
            }
            Err(e) => {
                assert_full_disk(&e, "delete on a full disk");
                // Not yet gone: the index did not take the tombstone in.
                assert!(store.get(&k).await.expect("get") == acked[&k], "{k}");
                let bytes = acked.remove(&k);
                if e.to_string().contains(IN_PACK) {
                    later.insert(k, None);
                } else {
                    never.insert(k, bytes);
                }
            }
        }
    }
    store.close().await;
    drop(store);
    // Reopened on the still-full disk: every acknowledged piece is there, or (when the
    // opening's recovery has to write its index) the open says the disk is full.
    match PieceStore::open(config(&root, true)).await {
        Ok(store) => {
            read_back(&store, &acked, "reopened on the full disk").await;
            store.close().await;
        }
        Err(e) => assert_full_disk(&e, "reopen on a full disk"),
    }
    // The tenant's file goes: the store opens, and puts and deletes work again.
    std::fs::remove_file(&tenant).expect("remove the tenant's file");
    let store = PieceStore::open(config(&root, true))
        .await
        .expect("reopen once space is back");
    read_back(&store, &acked, "reopened once space is back").await;
    for (k, want) in later.iter().chain(&never) {
        let got = store.get(k).await;
        let ok = match (want, &got) {
            (Some(w), Ok(b)) => b == w,
            (None, Err(e)) => e.kind() == ErrorKind::NotFound,
            _ => false,
        };
        assert!(
            ok,
            "{k}: wanted {:?}, read {:?}",
            want.as_ref().map(|b| b.len()),
            got.map(|b| b.len())
        );
    }
    eprintln!(
        "{} acknowledged pieces, {} failed writes in their packs, {} failed writes that never happened",
        acked.len(),
        later.len(),
        never.len()
    );
    for (k, want) in never {
        if let Some(b) = want {
            acked.insert(k, b);
        }
    }
    for i in 0..100u64 {
        let key = format!("again/{i:03}");
        let bytes: Bytes = pseudo_random(3000, 50_000 + i).into();
        store
            .put(&key, bytes.clone())
            .await
            .unwrap_or_else(|e| panic!("put {key} after space came back: {e}"));
        acked.insert(key, bytes);
    }
    let gone: Vec<String> = acked.keys().step_by(10).cloned().collect();
    for k in &gone {
        store
            .delete(k)
            .await
            .unwrap_or_else(|e| panic!("delete {k}: {e}"));
        acked.remove(k);
    }
    store.close().await;
    let store = PieceStore::open(config(&root, true)).await.expect("reopen");
    read_back(&store, &acked, "reopened after space came back").await;
    for k in &gone {
        assert_eq!(
            store.get(k).await.no_ok().kind(),
            ErrorKind::NotFound,
            "{k}"
        );
    }
    assert_fsck_clean(&store, "reopened after space came back").await;
    store.close().await;
}

#[tokio::test]
async fn compaction_waits_for_space_and_runs_once_it_is_there() {
    let Some(disk) = SmallDisk::mount(160) else {
        return;
    };
    let root = disk.path().join("store");
    let store = PieceStore::open(config(&root, true)).await.expect("open");
    let mut all: BTreeMap<String, Bytes> = (0..2000u64)
        .map(|i| {
            let len = 2000 + (i * 7919) % 6000;
            (format!("p/{i:05}"), pseudo_random(len as usize, i).into())
        })
        .collect();
    for (k, v) in &all {
        store.put(k, v.clone()).await.expect("put");
    }
    let doomed: Vec<String> = all.keys().filter(|k| !k.ends_with('7')).cloned().collect();
    for k in &doomed {
        store.delete(k).await.expect("delete");
        all.remove(k);
    }
    let opts = GcOptions {
        grace: Some(std::time::Duration::ZERO),
        garbage_ratio: Some(0.3),
        dry_run: false,
    };
    // Another tenant fills the disk: gc refuses, and touches nothing.
    let filler = disk.fill(16 << 20);
    let e = store.gc(opts, &|_| {}).await.no_ok();
    assert_eq!(e.kind(), ErrorKind::Backend, "{e}");
    assert!(e.to_string().contains("not compacting"), "{e}");
    read_back(&store, &all, "after a refused gc").await;
    assert_fsck_clean(&store, "after a refused gc").await;
    // Space is back: gc runs and reclaims what the deletes left.
    std::fs::remove_file(&filler).expect("remove the filler");
    let report = store.gc(opts, &|_| {}).await.expect("gc with space");
    assert!(
        report.bytes_reclaimed > 0 && report.packs_compacted > 0,
        "gc reclaimed nothing: {report:?}"
    );
    read_back(&store, &all, "after gc").await;
    assert_fsck_clean(&store, "after gc").await;
    store.close().await;
}

#[tokio::test]
async fn a_read_only_disk_serves_reads_and_refuses_writes_clearly() {
    let Some(disk) = SmallDisk::mount(16) else {
        return;
    };
    for packed in [false, true] {
        let root = disk.path().join(format!("store-{packed}"));
        let store = PieceStore::open(config(&root, packed)).await.expect("open");
        let all: BTreeMap<String, Bytes> = (0..50u64)
            .map(|i| {
                (
                    format!("r/{i:03}"),
                    pseudo_random(1000 + i as usize * 100, i).into(),
                )
            })
            .collect();
        for (k, v) in &all {
            store.put(k, v.clone()).await.expect("put");
        }
        store.close().await;
        drop(store);
        disk.set_read_only(true);
        let result = async {
            let opened = PieceStore::open(config(&root, packed)).await;
            if packed {
                // A packed store writes its index and leases beside its packs even to read:
                // it does not open, and says why.
                let e = opened.no_ok();
                assert!(
                    e.to_string().contains("read-only filesystem"),
                    "a packed store on a read-only disk: {e}"
                );
                return;
            }
            let store = opened.unwrap_or_else(|e| panic!("open read-only (packed {packed}): {e}"));
            read_back(&store, &all, &format!("read-only, packed {packed}")).await;
            let e = store.put("r/new", vec![1u8; 100]).await.no_ok();
            assert_eq!(e.kind(), ErrorKind::Backend, "packed {packed}: {e}");
            assert!(
                e.to_string()
                    .to_lowercase()
                    .contains("read-only file system"),
                "packed {packed}: the error does not say why: {e}"
            );
            let e = store.delete("r/000").await.no_ok();
            assert_eq!(e.kind(), ErrorKind::Backend, "packed {packed}: delete: {e}");
            store.close().await;
        };
        // Back to read-write whatever happened, so that the tmpfs can be cleaned up.
        let outcome = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(result)).await;
        disk.set_read_only(false);
        if let Err(p) = outcome {
            std::panic::resume_unwind(p);
        }
        let store = PieceStore::open(config(&root, packed))
            .await
            .expect("reopen rw");
        read_back(&store, &all, "read-write again").await;
        store.put("r/new", vec![1u8; 100]).await.expect("put rw");
        assert_fsck_clean(&store, "read-write again").await;
        store.close().await;
    }
}

#[tokio::test]
async fn a_missing_directory_is_created_or_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Missing, in a place we may write: created at open, as the original does.
    let root = dir.path().join("not/yet/there");
    let store = PieceStore::open(config(&root, false)).await.expect("open");
    store.put("m/1", vec![1u8; 10]).await.expect("put");
    assert!(root.join("m/1").is_file());
    store.close().await;
    // Missing, where it cannot be made (its parent is a file): a clear error naming the path.
    let blocker = dir.path().join("a-file");
    std::fs::write(&blocker, b"x").expect("write");
    let root = blocker.join("store");
    let e = match PieceStore::open(config(&root, false)).await {
        Err(e) => e,
        Ok(store) => store.put("m/1", vec![1u8; 10]).await.no_ok(),
    };
    assert!(
        e.to_string().contains(&blocker.display().to_string()),
        "the error does not name the path: {e}"
    );
    // The directory deleted behind an open store's back: a put says so, or makes it again.
    let root = dir.path().join("vanishing");
    let store = PieceStore::open(config(&root, false)).await.expect("open");
    store.put("v/1", vec![1u8; 10]).await.expect("put");
    std::fs::remove_dir_all(&root).expect("rm -r");
    assert_eq!(store.get("v/1").await.no_ok().kind(), ErrorKind::NotFound);
    store
        .put("v/2", vec![2u8; 10])
        .await
        .expect("put after rm -r");
    assert_eq!(store.get("v/2").await.expect("get").as_ref(), &[2u8; 10]);
}

#[tokio::test]
async fn a_pack_deleted_behind_the_stores_back_is_named_and_the_rest_reads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("store");
    let store = PieceStore::open(config(&root, true)).await.expect("open");
    let all: BTreeMap<String, Bytes> = (0..400u64)
        .map(|i| {
            (
                format!("d/{i:04}"),
                pseudo_random(2000 + i as usize * 3, i).into(),
            )
        })
        .collect();
    for (k, v) in &all {
        store.put(k, v.clone()).await.expect("put");
    }
    store.close().await;
    let packs_dir = root.join(".piecestore/packs");
    let mut packs: Vec<PathBuf> = std::fs::read_dir(&packs_dir)
        .expect("packs dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "pack"))
        .collect();
    packs.sort();
    assert!(packs.len() >= 3, "only {} packs", packs.len());
    let victim = packs[1].clone();
    let victim_name = victim.file_name().unwrap().to_string_lossy().to_string();
    std::fs::remove_file(&victim).expect("rm the pack");

    let store = PieceStore::open(config(&root, true)).await.expect("reopen");
    let (mut lost, mut kept) = (Vec::new(), 0);
    for (k, want) in &all {
        match store.get(k).await {
            Ok(got) => {
                assert!(got == *want, "{k} reads other bytes");
                kept += 1;
            }
            Err(e) => {
                assert!(
                    matches!(e.kind(), ErrorKind::Corrupt | ErrorKind::NotFound),
                    "{k}: {e}"
                );
                lost.push(k.clone());
            }
        }
    }
    assert!(!lost.is_empty() && kept > 0, "lost {lost:?}, kept {kept}");
    let report = store
        .fsck(FsckOptions::default(), &|_| {})
        .await
        .expect("fsck");
    let text = piecestore_tests::fsck_problems(&report);
    assert!(
        text.contains(&victim_name),
        "fsck does not name {victim_name}:\n{text}"
    );
    for k in &lost {
        assert!(
            report
                .problems
                .iter()
                .any(|p| p.key.as_deref() == Some(k.as_str())),
            "fsck does not name {k}, lost with {victim_name}:\n{text}"
        );
    }
    // Rebuilding the index drops what the pack held, and fsck is clean after.
    let report = store
        .fsck(
            FsckOptions {
                rebuild_index: true,
            },
            &|_| {},
        )
        .await
        .expect("fsck --rebuild-index");
    assert!(
        report.is_clean(),
        "{}",
        piecestore_tests::fsck_problems(&report)
    );
    for k in &lost {
        assert_eq!(
            store.get(k).await.no_ok().kind(),
            ErrorKind::NotFound,
            "{k}"
        );
    }
    store.close().await;
}
