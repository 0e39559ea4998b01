//! The HTTP/S3 request handling of `piecestore serve`: arbitrary bytes as a request, sent over
//! a loopback connection to a server (in this process, over a memory store) with a signed-in
//! bucket and a public-read bucket holding a few pieces.
//!
//! Never a panic (any thread's panic aborts under libFuzzer); every request gets a complete
//! HTTP answer or a closed connection, never a 5xx other than 501 and 503; the server still
//! answers a plain request afterwards. Built only with `--features serve` (the server's
//! dependencies double the build).

#![no_main]

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use piecestore::PieceStore;
use piecestore::config::{Secret, ServeBucket, ServeKey, ServeOptions};
use piecestore_server::{Server, Setup};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::runtime::Runtime;

/// The server's runtime and address. The runtime has one thread, the fuzzing thread itself:
/// the server's tasks run while an input's exchange waits for them, and nowhere else. With
/// the server on threads of its own, two thirds of the run's time went to the kernel waking
/// threads across every read and write of every connection.
fn server() -> &'static (Runtime, SocketAddr) {
    static SERVER: OnceLock<(Runtime, SocketAddr)> = OnceLock::new();
    SERVER.get_or_init(|| {
        // libFuzzer's C `main` starts this process, not Rust's, so SIGPIPE still has its
        // default action: the server writing an answer (with `writev`, which has no
        // MSG_NOSIGNAL) to a connection this harness has stopped waiting on killed the whole
        // run, silently. `piecestore serve` ignores SIGPIPE, as every Rust binary does.
        // SAFETY: only sets SIGPIPE's disposition to SIG_IGN; no handler of ours runs.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let addr = rt.block_on(async {
            let store = PieceStore::open_spec("memory://")
                .await
                .expect("memory store");
            for (k, v) in [
                ("a/b", &b"hello"[..]),
                ("1_s0", b"piece"),
                ("e1_s0_p0", b""),
            ] {
                store.put(k, v.to_vec()).await.expect("seed piece");
            }
            let options = ServeOptions {
                listen: Some("127.0.0.1:0".into()),
                keys: vec![ServeKey {
                    access_key: "fuzzaccesskey".into(),
                    secret_key: Secret::new("fuzzsecretkey0123456789"),
                }],
                max_object_size: 1 << 20,
                header_timeout: Duration::from_secs(2),
                body_timeout: Duration::from_secs(2),
                buckets: ["pieces", "public"]
                    .into_iter()
                    .map(|name| ServeBucket {
                        name: name.into(),
                        store: None,
                        public_read: name == "public",
                        allow_overwrite: false,
                    })
                    .collect(),
                ..Default::default()
            };
            let mut setup = Setup::new(store, options);
            setup.env_keys = false;
            let server = Server::bind(setup).await.expect("bind");
            let addr = server.local_addr();
            tokio::spawn(server.run(std::future::pending()));
            addr
        });
        (rt, addr)
    })
}

/// A last request that asks the server to close the connection once it has answered (the
/// server, like most, drops a connection whose client half-closes it before the answer).
const CLOSE: &[u8] = b"\r\n\r\nGET /public/a/b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";

/// Sends `request` and reads the answer until the server closes or goes `quiet` that long.
///
/// The server runs on this thread, so the quiet time starts to count only once the server has
/// nothing left to do but wait for bytes that will not come (a body longer than what the
/// input holds): a few milliseconds are plenty.
async fn exchange(addr: SocketAddr, request: &[u8], quiet: Duration) -> Vec<u8> {
    let limit = Duration::from_secs(2);
    let mut conn = tokio::time::timeout(limit, TcpStream::connect(addr))
        .await
        .expect("connect: timed out")
        .expect("connect");
    let _ = conn.set_nodelay(true);
    // A server that stops reading (it answered an error and closes) fails the write: fine.
    let _ = tokio::time::timeout(limit, conn.write_all(request)).await;
    let mut answer = Vec::new();
    let mut chunk = vec![0u8; 64 << 10];
    while let Ok(Ok(n)) = tokio::time::timeout(quiet, conn.read(&mut chunk)).await {
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&chunk[..n]);
    }
    answer
}

/// The status of every response in `answer` (pipelined requests get several).
fn statuses(answer: &[u8]) -> Vec<u16> {
    let text = String::from_utf8_lossy(answer);
    text.match_indices("HTTP/1.1 ")
        .filter_map(|(i, _)| text.get(i + 9..i + 12)?.parse().ok())
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let (rt, addr) = server();
    let addr = *addr;
    // An input that leaves the server waiting (a body longer than what follows it) gets no
    // more answer once the server is idle.
    let answer = rt.block_on(exchange(
        addr,
        &[data, CLOSE].concat(),
        Duration::from_millis(5),
    ));
    for status in statuses(&answer) {
        assert!(
            !(500..600).contains(&status) || status == 501 || status == 503,
            "answered {status}:\n{}",
            String::from_utf8_lossy(&answer[..answer.len().min(2000)])
        );
    }
    // The server closes this one once it has answered: a generous wait only matters when it
    // has stopped answering.
    let check = rt.block_on(exchange(addr, &CLOSE[4..], Duration::from_secs(2)));
    assert!(
        check.starts_with(b"HTTP/1.1 200") && check.ends_with(b"hello"),
        "the server stopped answering: {}",
        String::from_utf8_lossy(&check)
    );
});
