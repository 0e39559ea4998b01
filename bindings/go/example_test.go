package piecestore_test

import (
	"context"
	"errors"
	"fmt"
	"os"

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
