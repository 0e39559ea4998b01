//! The HTTP/S3 request handling of `piecestore serve`: arbitrary bytes as a request, sent over
//! a loopback connection to a server (in this process, over a memory store) with a signed-in
//! bucket and a public-read bucket holding a few pieces.
//!
//! Never a panic (any thread's panic aborts under libFuzzer); every request gets a complete
//! HTTP answer or a closed connection, never a 5xx other than 501 and 503; the server still
//! answers a plain request afterwards. Built only with `--features serve` (the server's
//! dependencies double the build).

#![no_main]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use piecestore::PieceStore;
use piecestore::config::{Secret, ServeBucket, ServeKey, ServeOptions};
use piecestore_server::{Server, Setup};

fn server() -> SocketAddr {
    static ADDR: OnceLock<SocketAddr> = OnceLock::new();
    *ADDR.get_or_init(|| {
        // libFuzzer's C `main` starts this process, not Rust's, so SIGPIPE still has its
        // default action: the server writing an answer (with `writev`, which has no
        // MSG_NOSIGNAL) to a connection this harness has stopped waiting on killed the whole
        // run, silently. `piecestore serve` ignores SIGPIPE, as every Rust binary does.
        // SAFETY: only sets SIGPIPE's disposition to SIG_IGN; no handler of ours runs.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        }
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
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
                tx.send(server.local_addr()).expect("send addr");
                server.run(std::future::pending()).await.expect("serve");
            });
        });
        rx.recv().expect("server address")
    })
}

/// A last request that asks the server to close the connection once it has answered (the
/// server, like most, drops a connection whose client half-closes it before the answer).
const CLOSE: &[u8] = b"\r\n\r\nGET /public/a/b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";

/// Sends `request` and reads the answer until the server closes or goes `quiet` that long.
fn exchange(addr: SocketAddr, request: &[u8], quiet: Duration) -> Vec<u8> {
    let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect");
    conn.set_read_timeout(Some(quiet)).expect("timeout");
    conn.set_write_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let _ = conn.write_all(request);
    let mut answer = Vec::new();
    let _ = conn.read_to_end(&mut answer);
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
    let addr = server();
    // An input that leaves the server waiting (a body longer than what follows it) gets no
    // more answer after the server's in-memory work is done: waiting 300 ms for it (as
    // this harness once did) took half of the run's time for nothing.
    let answer = exchange(addr, &[data, CLOSE].concat(), Duration::from_millis(40));
    for status in statuses(&answer) {
        assert!(
            !(500..600).contains(&status) || status == 501 || status == 503,
            "answered {status}:\n{}",
            String::from_utf8_lossy(&answer[..answer.len().min(2000)])
        );
    }
    // The server closes this one once it has answered: a generous wait only matters when it
    // has stopped answering.
    let check = exchange(addr, &CLOSE[4..], Duration::from_secs(2));
    assert!(
        check.starts_with(b"HTTP/1.1 200") && check.ends_with(b"hello"),
        "the server stopped answering: {}",
        String::from_utf8_lossy(&check)
    );
});
