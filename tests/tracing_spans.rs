//! Operations as `tracing` spans. Alone in its test binary: tracing caches whether a call site
//! is enabled process-wide, so a test without a subscriber running in parallel could hide the
//! spans from this one's thread-local subscriber.

use piecestore::{Config, PieceStore};

/// Every operation runs in a `piecestore` tracing span naming the operation, key and shard,
/// so a subscriber (here fmt, with span close events) times each one.
#[tokio::test]
async fn operations_are_tracing_spans() {
    use std::sync::{Arc, Mutex};
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter("piecestore=debug")
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let store = PieceStore::open(Config::from_url("memory://?shards=1").unwrap())
        .await
        .unwrap();
    store.put("7_s0", &b"hello"[..]).await.unwrap();
    let _ = store.get("7_s1").await;
    let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    assert!(
        text.contains(
            "piecestore{op=\"put\" key=\"7_s0\" shard=0}: piecestore::store: close time.busy="
        ),
        "{text}"
    );
    assert!(
        text.contains("piecestore{op=\"get\" key=\"7_s1\" shard=0}: piecestore::store: close"),
        "{text}"
    );
}
