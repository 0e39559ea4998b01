//go:build !piecestore_dynamic && !piecestore_external

package piecestore

// The default: the Rust library linked statically, so programs are one self-contained binary.
// The linker takes the first libpiecestore_c.a it finds:
//   - lib/<goos>_<goarch>/ in this module: the prebuilt library a released module carries
//     (release.sh puts it there), so `go build` alone builds a program that requires it;
//   - target/release/ of this checkout: build it first, from the repository root:
//
//	cargo build --release -p piecestore-c

// #cgo linux,amd64 LDFLAGS: -L${SRCDIR}/lib/linux_amd64
// #cgo linux,arm64 LDFLAGS: -L${SRCDIR}/lib/linux_arm64
// #cgo LDFLAGS: -L${SRCDIR}/../../target/release -l:libpiecestore_c.a -lpthread -ldl -lm
import "C"
