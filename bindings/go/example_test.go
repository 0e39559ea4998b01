package piecestore_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/piecestore/piecestore/bindings/go"
)

// Open a store on a local directory, store a piece, read it and part of it back, and tell a
// missing piece from a failure.
func Example() {
	dir, err := os.MkdirTemp("", "pieces-")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir)

	s, err := piecestore.Open("file://" + dir)
	if err != nil {
		panic(err)
	}
	defer s.Close()
	ctx := context.Background()

	if err := s.Put(ctx, "1_s0", []byte("hello from Go")); err != nil {
		panic(err)
	}
	data, err := s.Get(ctx, "1_s0")
	if err != nil {
		panic(err)
	}
	part, err := s.GetRange(ctx, "1_s0", 6, 4)
	if err != nil {
		panic(err)
	}
	fmt.Printf("%s / %s\n", data, part)

	for p, err := range s.List(ctx, "1_") {
		if err != nil {
			panic(err)
		}
		fmt.Println(p.Key, p.Size)
	}

	if _, err := s.Get(ctx, "2_s0"); errors.Is(err, piecestore.ErrNotFound) {
		fmt.Println("2_s0 is not there")
	}
	// Output:
	// hello from Go / from
	// 1_s0 13
	// 2_s0 is not there
}

// Put refuses different bytes under an existing key unless asked to overwrite.
func ExampleStore_Put() {
	s, err := piecestore.Open("memory://")
	if err != nil {
		panic(err)
	}
	defer s.Close()
	ctx := context.Background()

	_ = s.Put(ctx, "7_s1", []byte("v1"))
	err = s.Put(ctx, "7_s1", []byte("v2"))
	fmt.Println(errors.Is(err, piecestore.ErrExists))
	err = s.Put(ctx, "7_s1", []byte("v2"), piecestore.Overwrite())
	fmt.Println(err)
	// Output:
	// true
	// <nil>
}

// Gc reclaims the space of deleted pieces in a packed store; Fsck checks what is left.
func ExampleStore_Gc() {
	dir, err := os.MkdirTemp("", "pieces-")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir)
	s, err := piecestore.Open("file://" + dir) // packed by default
	if err != nil {
		panic(err)
	}
	defer s.Close()
	ctx := context.Background()

	for i := range 10 {
		_ = s.Put(ctx, fmt.Sprintf("9_s%d", i), make([]byte, 500))
	}
	for i := range 8 {
		_ = s.Delete(ctx, fmt.Sprintf("9_s%d", i))
	}
	zero := time.Duration(0) // delete compacted packs at once (default: Pack.Grace)
	r, err := s.Gc(ctx, piecestore.GcOptions{Grace: &zero})
	if err != nil {
		panic(err)
	}
	fmt.Println("pieces moved:", r.PiecesMoved, "packs deleted:", r.PacksDeleted)

	f, err := s.Fsck(ctx, piecestore.FsckOptions{})
	if err != nil {
		panic(err)
	}
	fmt.Println("clean:", f.Clean(), "pieces:", f.PackedPieces)

	buf := make([]byte, 1024)
	n, err := s.GetInto(ctx, "9_s9", buf)
	fmt.Println(n, err)
	// Output:
	// pieces moved: 2 packs deleted: 1
	// clean: true pieces: 2
	// 500 <nil>
}
