package piecestore_test

import (
	"fmt"
	"testing"

	"github.com/piecestore/piecestore/bindings/go"
)

// The binding's per-operation cost on memory://, one operation at a time (go test -bench .).
// benches/go/run.sh compares it with the Rust core's in one run.

func BenchmarkPut4KiB(b *testing.B) {
	s := mustOpen(b, "memory://")
	data := pseudoRandom(4096, 1)
	b.SetBytes(4096)
	for i := 0; b.Loop(); i++ {
		if err := s.Put(ctx, fmt.Sprintf("b/%d_s0", i), data); err != nil {
			b.Fatal(err)
		}
	}
}

// storeOf1000 is a memory store holding 1,000 pieces of 4 KiB, and their keys.
func storeOf1000(b *testing.B) (*piecestore.Store, []string) {
	s := mustOpen(b, "memory://")
	keys := make([]string, 1000)
	for i := range keys {
		keys[i] = fmt.Sprintf("b/%d_s0", i)
		if err := s.Put(ctx, keys[i], pseudoRandom(4096, uint64(i))); err != nil {
			b.Fatal(err)
		}
	}
	b.SetBytes(4096)
	return s, keys
}

func BenchmarkGet4KiB(b *testing.B) {
	s, keys := storeOf1000(b)
	for i := 0; b.Loop(); i++ {
		if _, err := s.Get(ctx, keys[i%len(keys)]); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkGetBuffer4KiB(b *testing.B) {
	s, keys := storeOf1000(b)
	for i := 0; b.Loop(); i++ {
		buf, err := s.GetBuffer(ctx, keys[i%len(keys)])
		if err != nil {
			b.Fatal(err)
		}
		buf.Release()
	}
}

func BenchmarkGetInto4KiB(b *testing.B) {
	s, keys := storeOf1000(b)
	buf := make([]byte, 4096)
	for i := 0; b.Loop(); i++ {
		if _, err := s.GetInto(ctx, keys[i%len(keys)], buf); err != nil {
			b.Fatal(err)
		}
	}
}
