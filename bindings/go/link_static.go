//go:build !piecestore_dynamic && !piecestore_external

package piecestore

// The default: the Rust library linked statically from this repository's release build, so
// programs are one self-contained binary. Build it first, from the repository root:
//
//	cargo build --release -p piecestore-c

// #cgo LDFLAGS: ${SRCDIR}/../../target/release/libpiecestore_c.a -lpthread -ldl -lm
import "C"
