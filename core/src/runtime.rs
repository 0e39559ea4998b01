//! The one tokio runtime that every binding and front end shares.
//!
//! Rust programs that already run inside tokio never need this module: every [`PieceStore`]
//! method is an ordinary future. Bindings (Python, Node, Go, Swift/Kotlin) have no runtime of
//! their own; they drive the core's futures on the runtime this module owns:
//!
//! - one multi-threaded runtime per process, created on first use;
//! - its size set once, before first use, by [`configure`] or the environment variable
//!   `PIECESTORE_RUNTIME_THREADS`;
//! - **fork-safe**: a child made by `fork()` (Python `multiprocessing`, Node `cluster`) gets a
//!   fresh runtime on its first call instead of hanging on the parent's worker threads, which
//!   do not exist in the child. [`fork_generation`] tells code that caches runtime-bound state
//!   (connection pools) that it must rebuild it; [`PieceStore`] does so for its S3 clients.
//!
//! ```
//! let store = piecestore::runtime::block_on(piecestore::PieceStore::open_spec("memory://")).unwrap();
//! piecestore::runtime::block_on(store.put("1_s0", &b"hello"[..])).unwrap();
//! ```
//!
//! [`PieceStore`]: crate::PieceStore

use std::cell::RefCell;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, Once};

use tokio::runtime::{Builder, Handle, Runtime};

use crate::error::{Error, Result};

/// Settings of the shared runtime. Set them with [`configure`] before first use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RuntimeOptions {
    /// Worker threads of the runtime. Default: `PIECESTORE_RUNTIME_THREADS`, else the number of
    /// cores.
    pub worker_threads: Option<usize>,
    /// Most threads for blocking work (local-file I/O). Default: tokio's (512).
    pub max_blocking_threads: Option<usize>,
}

/// Bumped in the child after every `fork()`.
static GENERATION: AtomicU64 = AtomicU64::new(0);
static ATFORK: Once = Once::new();
/// The runtime of the current generation, and the options it is (or will be) built with.
static STATE: Mutex<State> = Mutex::new(State {
    options: RuntimeOptions {
        worker_threads: None,
        max_blocking_threads: None,
    },
    runtime: None,
});

struct State {
    options: RuntimeOptions,
    runtime: Option<(u64, &'static Runtime)>,
}

thread_local! {
    static CACHED: RefCell<Option<(u64, Handle)>> = const { RefCell::new(None) };
    /// Set while [`poll_without_blocking`] polls on this thread.
    static NO_BLOCKING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

#[cfg(unix)]
extern "C" fn after_fork_in_child() {
    // Only atomics and a few system calls: async-signal-safe, as a fork handler must be.
    GENERATION.fetch_add(1, Ordering::SeqCst);
    crate::pack::lease::release_in_child();
}

fn install_fork_handler() {
    ATFORK.call_once(|| {
        #[cfg(unix)]
        // SAFETY: registers a handler that only touches atomics and calls async-signal-safe
        // functions.
        unsafe {
            libc::pthread_atfork(None, None, Some(after_fork_in_child));
        }
    });
}

/// How many `fork()`s lie between the process that started the program and this one (0 in the
/// original process). Code that caches runtime-bound state compares it with the value it saw
/// when it built that state.
pub fn fork_generation() -> u64 {
    install_fork_handler();
    GENERATION.load(Ordering::Acquire)
}

fn lock_state() -> std::sync::MutexGuard<'static, State> {
    // The state stays consistent even if a holder panicked: it is only read and replaced.
    STATE.lock().unwrap_or_else(|p| p.into_inner())
}

/// Sets the runtime's size. Fails with `InvalidConfig` once the runtime of this process has
/// started (the first call into a store starts it); a forked child may configure its own
/// before its first call.
pub fn configure(options: RuntimeOptions) -> Result<()> {
    if options.worker_threads == Some(0) || options.max_blocking_threads == Some(0) {
        return Err(Error::config("runtime thread counts must be at least 1"));
    }
    let generation = fork_generation();
    let mut state = lock_state();
    if matches!(state.runtime, Some((g, _)) if g == generation) {
        return Err(Error::config(
            "the runtime has already started; configure it before the first store call",
        ));
    }
    state.options = options;
    Ok(())
}

/// The options the runtime of this process is (or will be) built with.
pub fn options() -> RuntimeOptions {
    lock_state().options
}

fn env_threads() -> Option<usize> {
    std::env::var("PIECESTORE_RUNTIME_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|n| *n > 0)
}

fn build(options: RuntimeOptions) -> Runtime {
    let mut b = Builder::new_multi_thread();
    b.enable_all()
        .thread_name("piecestore")
        .on_thread_start(block_sigpipe);
    if let Some(n) = options.worker_threads.or_else(env_threads) {
        b.worker_threads(n);
    }
    if let Some(n) = options.max_blocking_threads {
        b.max_blocking_threads(n);
    }
    match b.build() {
        Ok(rt) => rt,
        // Building fails only when the OS refuses threads or an epoll instance: nothing a
        // caller could recover from.
        Err(e) => panic!("piecestore: cannot start the tokio runtime: {e}"),
    }
}

/// Keeps SIGPIPE off the calling thread (for the runtimes' threads): a write to a connection
/// the peer closed then fails with `EPIPE` (an error the request reports or retries) instead
/// of raising SIGPIPE, whose default action ends the process. A Rust program ignores SIGPIPE
/// from its `main`; the programs that load the bindings may not: a Go program dies of a
/// SIGPIPE raised on a thread Go did not start (seen: the Go binding's `PutMany` on s3s-fs,
/// whose puts run on these threads), and a C program of any.
pub(crate) fn block_sigpipe() {
    #[cfg(unix)]
    // SAFETY: only changes this thread's signal mask, with a set built here.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGPIPE);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// A handle to the shared runtime, started on first use (and again in a forked child).
pub fn handle() -> Handle {
    let generation = fork_generation();
    if let Some(h) = CACHED.with(|c| match &*c.borrow() {
        Some((g, h)) if *g == generation => Some(h.clone()),
        _ => None,
    }) {
        return h;
    }
    let h = {
        let mut state = lock_state();
        match state.runtime {
            Some((g, rt)) if g == generation => rt.handle().clone(),
            _ => {
                // A runtime of an earlier generation belongs to the parent: its threads do not
                // exist here, so it must never be used or dropped (dropping would wait for
                // them). It stays leaked, like the current one, which lives until exit.
                let rt: &'static Runtime = Box::leak(Box::new(build(state.options)));
                state.runtime = Some((generation, rt));
                rt.handle().clone()
            }
        }
    };
    CACHED.with(|c| *c.borrow_mut() = Some((generation, h.clone())));
    h
}

/// Runs `future` to completion on the calling thread, with the shared runtime's timers, I/O and
/// worker pool. For bindings' blocking calls; must not be called from inside an async task.
///
/// The future is first polled once right here, inside the runtime's context: a call that is
/// done at once (a memory store, a cache hit, a key that fails validation) then returns without
/// the cost of parking the thread in the runtime's `block_on`, the bulk of a small call's
/// overhead through a binding. Otherwise it runs on as usual; its wakers are registered when
/// `block_on` polls it again.
pub fn block_on<F: Future>(future: F) -> F::Output {
    let h = handle();
    let mut future = std::pin::pin!(future);
    {
        let _rt = h.enter();
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        if let std::task::Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
    }
    h.block_on(future)
}

/// Polls `future` once on the calling thread, inside the shared runtime, for a binding that
/// tries a call at once before handing it to the runtime (a call that is done at once, such as
/// a put on a memory store, then costs no thread hand-off). The store is told that this thread
/// must not wait: work that would wait for a disk (a packed put's append and `fdatasync`) is
/// handed to the runtime instead, so an event loop (Node's) is never blocked. A pending
/// `future` is then spawned or polled again by the caller as usual; its wakers are registered
/// when it is next polled with a real waker.
pub fn poll_without_blocking<F: Future + ?Sized>(
    future: std::pin::Pin<&mut F>,
) -> std::task::Poll<F::Output> {
    poll_without_blocking_with(
        future,
        &mut std::task::Context::from_waker(std::task::Waker::noop()),
    )
}

/// [`poll_without_blocking`] with the caller's waker, for a binding that polls a pending
/// future again on its own thread when it wakes (Node's event loop: a 4 KiB read then costs
/// one thread hand-off each way, as it does inside the runtime).
///
/// A future that has CPU-heavy work next (checksumming a large piece) wakes `cx`'s waker
/// during this very poll and returns pending: the caller must then go on polling it where
/// blocking is allowed (on the runtime: [`spawn`]), not on its own thread, or the work runs
/// there after all.
pub fn poll_without_blocking_with<F: Future + ?Sized>(
    future: std::pin::Pin<&mut F>,
    cx: &mut std::task::Context<'_>,
) -> std::task::Poll<F::Output> {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            NO_BLOCKING.with(|b| b.set(false));
        }
    }
    let _rt = handle().enter();
    NO_BLOCKING.with(|b| b.set(true));
    let _reset = Reset;
    future.poll(cx)
}

/// Whether the calling thread may wait for a disk (false inside [`poll_without_blocking`]).
pub(crate) fn may_block() -> bool {
    !NO_BLOCKING.with(|b| b.get())
}

/// Pieces larger than this are not checksummed on a thread that must not block: 1 MiB takes
/// about 20 µs.
const INLINE_CHECKSUM_MAX: u64 = 1 << 20;

/// Before checksumming `len` bytes: on a thread that must not block (inside
/// [`poll_without_blocking`]) and past [`INLINE_CHECKSUM_MAX`], hands the rest of the calling
/// future to the runtime (one `Pending`), so that a large piece (read from a memory store, or
/// put) is checksummed where blocking is allowed, not on the caller's event loop or under
/// Python's GIL. Elsewhere, returns at once.
pub(crate) async fn yield_before_checksum(len: u64) {
    if len > INLINE_CHECKSUM_MAX && !may_block() {
        tokio::task::yield_now().await;
    }
}

/// Starts `future` on the shared runtime's workers (for bindings' async calls).
pub fn spawn<F>(future: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    handle().spawn(future)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn one_runtime_shared_by_threads() {
        let a = std::thread::spawn(|| handle().id()).join().unwrap();
        let b = handle().id();
        assert_eq!(a, b);
        assert_eq!(block_on(async { 7 }), 7);
        assert!(configure(RuntimeOptions::default()).is_err());
        assert!(
            configure(RuntimeOptions {
                worker_threads: Some(0),
                ..Default::default()
            })
            .is_err()
        );
    }

    /// A get polled where blocking is not allowed (Node's event loop) answers a small piece
    /// of a memory store at once, and hands a large one's checksum to the runtime; both
    /// complete with the right bytes, whole or as a range, packed or not.
    #[test]
    fn a_large_piece_is_not_checksummed_where_blocking_is_not_allowed() {
        use std::task::Poll;
        for spec in ["memory://", "memory://?pack=true&pack_threshold=4MiB"] {
            let store = block_on(crate::PieceStore::open_spec(spec)).unwrap();
            let small = bytes::Bytes::from(vec![7u8; 4096]);
            let large = bytes::Bytes::from((0..2u32 << 20).map(|i| i as u8).collect::<Vec<_>>());
            block_on(store.put("1_s0", small.clone())).unwrap();
            block_on(store.put("2_s0", large.clone())).unwrap();

            let mut get = Box::pin(store.get("1_s0"));
            match poll_without_blocking(get.as_mut()) {
                Poll::Ready(Ok(b)) => assert_eq!(b, small, "{spec}"),
                other => panic!("{spec}: a 4 KiB get did not answer at once: {other:?}"),
            }
            let mut get = Box::pin(store.get("2_s0"));
            let woken = Arc::new(Wakes::default());
            let waker = std::task::Waker::from(woken.clone());
            let mut cx = std::task::Context::from_waker(&waker);
            assert!(
                poll_without_blocking_with(get.as_mut(), &mut cx).is_pending(),
                "{spec}"
            );
            // The caller learns in that same poll that the rest must run on the runtime.
            assert_eq!(woken.count(), 1, "{spec}: the hand-off woke no one");
            assert_eq!(block_on(get).unwrap(), large, "{spec}");
            let mut range = Box::pin(store.get_range("2_s0", 1000, 10));
            assert!(poll_without_blocking(range.as_mut()).is_pending(), "{spec}");
            assert_eq!(block_on(range).unwrap(), large.slice(1000..1010), "{spec}");
            // Where blocking is allowed, the same get needs no hand-off.
            assert_eq!(block_on(store.get("2_s0")).unwrap(), large, "{spec}");
        }
    }

    /// Counts its wakes.
    #[derive(Default)]
    struct Wakes(std::sync::atomic::AtomicUsize);

    impl Wakes {
        fn count(&self) -> usize {
            self.0.load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    impl std::task::Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// A get from a local disk, driven the way Node's event loop drives it: polled where
    /// blocking is not allowed, then, once its waker is woken (the read is done on the
    /// runtime's blocking pool), polled again on the same thread, which gives the piece.
    #[test]
    fn a_local_read_wakes_the_thread_that_must_not_block() {
        let dir = tempfile::tempdir().unwrap();
        let spec = format!("file://{}?pack=false", dir.path().display());
        let store = block_on(crate::PieceStore::open_spec(&spec)).unwrap();
        // 1 MiB: a read long enough that it is still running when the first poll returns (a
        // 4 KiB read on a busy machine can finish first, and then there is nothing to wake).
        let piece = bytes::Bytes::from((0..1u32 << 20).map(|i| i as u8).collect::<Vec<_>>());
        block_on(store.put("1_s0", piece.clone())).unwrap();

        let mut resumed = 0;
        for _ in 0..5 {
            let woken = Arc::new(Wakes::default());
            let waker = std::task::Waker::from(woken.clone());
            let mut cx = std::task::Context::from_waker(&waker);
            let mut get = Box::pin(store.get("1_s0"));
            let mut polls = 0;
            let got = loop {
                let seen = woken.count();
                polls += 1;
                if let std::task::Poll::Ready(out) =
                    poll_without_blocking_with(get.as_mut(), &mut cx)
                {
                    break out.unwrap();
                }
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
                while woken.count() == seen {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "the read never woke its poller"
                    );
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
            };
            assert_eq!(got, piece);
            resumed += usize::from(polls >= 2);
        }
        assert!(
            resumed > 0,
            "every read was done within the first poll: nothing was resumed"
        );
    }
}
