//go:build piecestore_dynamic && !piecestore_external

package piecestore

// -tags piecestore_dynamic: the Rust library linked dynamically from this repository's release
// build (target/release/libpiecestore_c.so), found at run time through an rpath.

// #cgo LDFLAGS: -L${SRCDIR}/../../target/release -lpiecestore_c -Wl,-rpath,${SRCDIR}/../../target/release
import "C"
