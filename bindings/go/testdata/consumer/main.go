// A program in a module of its own that requires the released PieceStore module: the test of
// the Go install (scripts/test.sh) fetches that module with `go get` from a module proxy
// directory written by release.sh and builds this with `go build` alone, no Rust on PATH.
// Usage: consumer STORE_URL; puts, reads back and lists a piece, and prints what it read.
package main

import (
	"context"
	"fmt"
	"os"

	piecestore "github.com/piecestore/piecestore/bindings/go"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: consumer STORE_URL")
		os.Exit(2)
	}
	if err := run(os.Args[1]); err != nil {
		fmt.Fprintln(os.Stderr, "consumer:", err)
		os.Exit(1)
	}
}

func run(url string) error {
	ctx := context.Background()
	s, err := piecestore.Open(url)
	if err != nil {
		return err
	}
	defer s.Close()
	if err := s.Put(ctx, "9_s0", []byte("from the released module")); err != nil {
		return err
	}
	got, err := s.Get(ctx, "9_s0")
	if err != nil {
		return err
	}
	n := 0
	for _, err := range s.List(ctx, "9_") {
		if err != nil {
			return err
		}
		n++
	}
	fmt.Printf("%s; %d listed\n", got, n)
	return s.Close()
}
