//go:build piecestore_external

package piecestore

// -tags piecestore_external: the Rust library is wherever CGO_LDFLAGS says, e.g. an installed
// copy: CGO_LDFLAGS="-L/usr/local/lib -lpiecestore_c -lpthread -ldl -lm".

import "C"
