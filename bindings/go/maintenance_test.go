package piecestore_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/piecestore/piecestore/bindings/go"
)

func TestGetInto(t *testing.T) {
	eachBackend(t, func(t *testing.T, _ backend, s *piecestore.Store) {
		buf := make([]byte, 64<<10)
		for i, n := range []int{0, 1, 4096, 64 << 10} {
			key := fmt.Sprintf("into/%d_s0", i)
			data := pseudoRandom(n, uint64(70+i))
			if err := s.Put(ctx, key, data); err != nil {
				t.Fatal(err)
			}
			for j := range buf {
				buf[j] = 0xAA
			}
			got, err := s.GetInto(ctx, key, buf)
			if err != nil || got != n || !bytes.Equal(buf[:got], data) {
				t.Fatalf("GetInto of %d bytes: n=%d err=%v (bytes equal: %v)", n, got, err, bytes.Equal(buf[:got], data))
			}
			if n < len(buf) && buf[n] != 0xAA {
				t.Fatalf("GetInto of %d bytes wrote past the piece", n)
			}
		}
		// A buffer too small: nothing read, the size it needs returned, a typed error.
		big := pseudoRandom(5000, 77)
		if err := s.Put(ctx, "into/big_s0", big); err != nil {
			t.Fatal(err)
		}
		small := make([]byte, 100)
		n, err := s.GetInto(ctx, "into/big_s0", small)
		if n != 5000 || !errors.Is(err, io.ErrShortBuffer) || !errors.Is(err, piecestore.ErrInvalidArgument) {
			t.Fatalf("GetInto into 100 bytes of a 5000-byte piece: n=%d err=%v", n, err)
		}
		if !bytes.Equal(small, make([]byte, 100)) {
			t.Fatal("a too-small buffer was written to")
		}
		if n, err := s.GetInto(ctx, "into/big_s0", nil); n != 5000 || !errors.Is(err, io.ErrShortBuffer) {
			t.Fatalf("GetInto(nil): n=%d err=%v", n, err)
		}
		if _, err := s.GetInto(ctx, "into/missing_s0", buf); !errors.Is(err, piecestore.ErrNotFound) {
			t.Fatalf("GetInto of a missing piece: %v", err)
		}
		if _, err := s.GetInto(ctx, "../x", buf); !errors.Is(err, piecestore.ErrInvalidKey) {
			t.Fatalf("GetInto of an invalid key: %v", err)
		}
	})
}

// packFiles lists a packed directory store's pack files.
func packFiles(t *testing.T, dir string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, ".piecestore", "packs", "*.pack"))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestGcReclaimsDeletedPiecesAndFsckFindsDamage(t *testing.T) {
	dir := t.TempDir()
	s := mustOpen(t, "file://"+dir)
	piece := func(i int) []byte { return pseudoRandom(100+i*37, uint64(i)) }
	for i := range 24 {
		if err := s.Put(ctx, fmt.Sprintf("gc/%d_s0", i), piece(i)); err != nil {
			t.Fatal(err)
		}
	}
	zero := time.Duration(0)
	r, err := s.Gc(ctx, piecestore.GcOptions{Grace: &zero})
	if err != nil || r.PacksCompacted != 0 || r.PacksBefore != 1 {
		t.Fatalf("gc with no garbage: %+v, %v", r, err)
	}
	for i := range 20 {
		if err := s.Delete(ctx, fmt.Sprintf("gc/%d_s0", i)); err != nil {
			t.Fatal(err)
		}
	}
	// A dry run changes nothing (it does not even seal the open pack to look inside).
	dry, err := s.Gc(ctx, piecestore.GcOptions{Grace: &zero, DryRun: true})
	if err != nil || dry.PacksWritten != 0 || dry.PacksDeleted != 0 || len(packFiles(t, dir)) != 1 {
		t.Fatalf("dry run: %+v, %v, %d packs", dry, err, len(packFiles(t, dir)))
	}
	r, err = s.Gc(ctx, piecestore.GcOptions{Grace: &zero})
	if err != nil {
		t.Fatal(err)
	}
	if r.PacksCompacted != 1 || r.PiecesMoved != 4 || r.PacksDeleted != 1 || r.BytesReclaimed == 0 {
		t.Fatalf("gc after deleting 20 of 24 pieces: %+v", r)
	}
	if n := len(packFiles(t, dir)); n != 1 {
		t.Fatalf("%d pack files after gc; want the compacted one", n)
	}
	for i := 20; i < 24; i++ {
		got, err := s.Get(ctx, fmt.Sprintf("gc/%d_s0", i))
		if err != nil || !bytes.Equal(got, piece(i)) {
			t.Fatalf("piece %d after gc: %v", i, err)
		}
	}
	// A ratio outside 0..1 and a negative grace are refused before any work.
	bad := 1.5
	if _, err := s.Gc(ctx, piecestore.GcOptions{GarbageRatio: &bad}); !errors.Is(err, piecestore.ErrInvalidArgument) {
		t.Fatalf("garbage ratio 1.5: %v", err)
	}
	neg := -time.Second
	if _, err := s.Gc(ctx, piecestore.GcOptions{Grace: &neg}); !errors.Is(err, piecestore.ErrInvalidArgument) {
		t.Fatalf("negative grace: %v", err)
	}

	f, err := s.Fsck(ctx, piecestore.FsckOptions{})
	if err != nil || !f.Clean() || f.Packs != 1 || f.PackedPieces != 4 || f.RebuiltPieces != nil {
		t.Fatalf("fsck of a clean store: %+v, %v", f, err)
	}
	// Damage one byte of the pack: fsck reports it (a report, not an error) and the piece is
	// never returned with wrong bytes.
	if err := s.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	p := packFiles(t, dir)[0]
	raw, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	at := bytes.Index(raw, piece(22)[:64])
	if at < 0 {
		t.Fatal("piece 22's bytes are not in the pack")
	}
	raw[at+10] ^= 0xFF
	if err := os.WriteFile(p, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	f, err = s.Fsck(ctx, piecestore.FsckOptions{})
	if err != nil || f.Clean() {
		t.Fatalf("fsck of a damaged pack: %+v, %v", f, err)
	}
	if f.Problems[0].Pack == nil || f.Problems[0].What == "" {
		t.Fatalf("the problem names no pack: %+v", f.Problems[0])
	}
	if _, err := s.Get(ctx, "gc/22_s0"); !errors.Is(err, piecestore.ErrCorrupt) {
		t.Fatalf("get of the damaged piece: %v", err)
	}
	// A rebuild from the packs reports what it indexed.
	f, err = s.Fsck(ctx, piecestore.FsckOptions{RebuildIndex: true})
	if err != nil || f.RebuiltPieces == nil || f.ProblemsBeforeRebuild == nil {
		t.Fatalf("fsck with a rebuild: %+v, %v", f, err)
	}

	// An unpacked store has nothing to collect or check.
	u := mustOpen(t, "file://"+t.TempDir(), piecestore.WithPacking(false))
	if r, err := u.Gc(ctx, piecestore.GcOptions{}); err != nil || r != (piecestore.GcReport{}) {
		t.Fatalf("gc of an unpacked store: %+v, %v", r, err)
	}
	if f, err := u.Fsck(ctx, piecestore.FsckOptions{}); err != nil || !f.Clean() || f.Packs != 0 {
		t.Fatalf("fsck of an unpacked store: %+v, %v", f, err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Gc(ctx, piecestore.GcOptions{}); !errors.Is(err, piecestore.ErrClosed) {
		t.Fatalf("gc after close: %v", err)
	}
	if _, err := s.Fsck(ctx, piecestore.FsckOptions{}); !errors.Is(err, piecestore.ErrClosed) {
		t.Fatalf("fsck after close: %v", err)
	}
}

func TestDescribeAndShardOf(t *testing.T) {
	dir := t.TempDir()
	s, err := piecestore.Open("file://"+dir+"/s-%d", piecestore.WithShards(4))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	d, err := s.Describe()
	if err != nil {
		t.Fatal(err)
	}
	if d.ShardCount != 4 || len(d.ShardLabels) != 4 || d.Placement != "fnv-mod" ||
		!strings.HasPrefix(d.Packing, "on: pieces under 1MiB packed") {
		t.Fatalf("Describe: %+v", d)
	}
	for i, label := range d.ShardLabels {
		if !strings.HasSuffix(label, fmt.Sprintf("s-%d", i)) {
			t.Fatalf("shard %d's label %q", i, label)
		}
	}
	// ShardOf names the shard a piece lands on: the shard's directory, opened alone, has it.
	for i := range 8 {
		key := fmt.Sprintf("%d_s0", 100+i)
		shard, err := s.ShardOf(key)
		if err != nil || shard < 0 || shard >= 4 {
			t.Fatalf("ShardOf(%q) = %d, %v", key, shard, err)
		}
		if err := s.Put(ctx, key, []byte(key)); err != nil {
			t.Fatal(err)
		}
		one, err := piecestore.Open(fmt.Sprintf("file://%s/s-%d", dir, shard))
		if err != nil {
			t.Fatal(err)
		}
		got, err := one.Get(ctx, key)
		one.Close()
		if err != nil || string(got) != key {
			t.Fatalf("%q on shard %d: %q, %v", key, shard, got, err)
		}
	}
	plain, err := piecestore.Open("file://"+t.TempDir(), piecestore.WithOption("pack", "false"))
	if err != nil {
		t.Fatal(err)
	}
	if d, err := plain.Describe(); err != nil || d.Packing != "off (one object per piece)" || d.ShardCount != 1 {
		t.Fatalf("an unpacked store: %+v, %v", d, err)
	}
	plain.Close()
	if _, err := plain.Describe(); !errors.Is(err, piecestore.ErrClosed) {
		t.Fatalf("Describe after Close: %v", err)
	}
}

func TestClearCache(t *testing.T) {
	dir := t.TempDir()
	s, err := piecestore.Open("file://"+dir+"/pieces", piecestore.WithOption("cache_memory", "1MiB"),
		piecestore.WithOption("cache_disk", dir+"/cache"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.Put(ctx, "1_s0", []byte("cached piece")); err != nil {
		t.Fatal(err)
	}
	for range 2 { // a miss (fetched, then admitted), then a memory hit
		if _, err := s.Get(ctx, "1_s0"); err != nil {
			t.Fatal(err)
		}
	}
	if had, err := s.ClearCache(ctx); !had || err != nil {
		t.Fatalf("ClearCache: %v, %v", had, err)
	}
	if got, err := s.Get(ctx, "1_s0"); err != nil || string(got) != "cached piece" {
		t.Fatalf("after ClearCache: %q, %v", got, err)
	}
	text, err := s.Metrics()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`piecestore_cache_hits_total{tier="memory"} 1`, "piecestore_cache_fetches_total 2"} {
		if !strings.Contains(text, want) {
			t.Fatalf("metrics lack %q:\n%s", want, text)
		}
	}
	plain, err := piecestore.Open("file://" + t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	if had, err := plain.ClearCache(ctx); had || err != nil {
		t.Fatalf("ClearCache without a cache: %v, %v", had, err)
	}
}

func TestInventory(t *testing.T) {
	dir := t.TempDir()
	s, err := piecestore.Open("file://"+dir+"/s-%d", piecestore.WithShards(2), piecestore.WithOption("pack", "false"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	sizes := []int{0, 1, 100, 4096, 5000}
	total := 0
	for i, n := range sizes {
		if err := s.Put(ctx, fmt.Sprintf("inv/%d_s0", i), pseudoRandom(n, uint64(i))); err != nil {
			t.Fatal(err)
		}
		total += n
	}
	// A valid key on the other shard than its own, and a temp file of the original's naming.
	const key = "inv/99_s0"
	own, err := s.ShardOf(key)
	if err != nil {
		t.Fatal(err)
	}
	wrong, err := piecestore.Open(fmt.Sprintf("file://%s/s-%d", dir, 1-own), piecestore.WithOption("pack", "false"))
	if err != nil {
		t.Fatal(err)
	}
	if err := wrong.Put(ctx, key, []byte("elsewhere")); err != nil {
		t.Fatal(err)
	}
	wrong.Close()
	if err := os.WriteFile(filepath.Join(dir, "s-0", ".7_s0.tmp3"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	inv, err := s.Inventory(ctx, piecestore.InventoryOptions{MaxOrphanSamples: 5})
	if err != nil {
		t.Fatal(err)
	}
	if inv.Pieces != uint64(len(sizes)) || inv.Bytes != uint64(total) || inv.MinSize != 0 || inv.MaxSize != 5000 {
		t.Fatalf("inventory: %+v", inv)
	}
	var bucketed uint64
	for _, b := range inv.Sizes {
		bucketed += b.Pieces
		if b.Max == 4096 && (b.Min != 2049 || b.Pieces != 1 || b.Bytes != 4096) {
			t.Fatalf("the 4 KiB bucket: %+v", b)
		}
	}
	if bucketed != uint64(len(sizes)) || len(inv.Shards) != 2 || !strings.HasSuffix(inv.Shards[1].Backend, "s-1") {
		t.Fatalf("sizes %+v, shards %+v", inv.Sizes, inv.Shards)
	}
	o := inv.Orphans
	if o.Misplaced != 1 || o.MisplacedBytes != uint64(len("elsewhere")) || o.Temp != 1 || o.OtherBytes != 1 || len(o.Samples) != 2 {
		t.Fatalf("orphans: %+v", o)
	}
	named := map[string]int{}
	for _, smp := range o.Samples {
		named[smp.Key] = smp.Shard
		if smp.Why == "" {
			t.Fatalf("a sample without a reason: %+v", smp)
		}
	}
	if sh, ok := named[key]; !ok || sh != 1-own {
		t.Fatalf("the misplaced piece's sample: %+v", o.Samples)
	}
	if inv.Packs != nil {
		t.Fatalf("an unpacked store's pack stats: %+v", inv.Packs)
	}
	if _, err := s.Inventory(ctx, piecestore.InventoryOptions{MaxOrphanSamples: -1}); !errors.Is(err, piecestore.ErrInvalidArgument) {
		t.Fatalf("a negative sample count: %v", err)
	}
	// A packed store reports its packs.
	packed, err := piecestore.Open("file://" + t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer packed.Close()
	for i := range 6 {
		if err := packed.Put(ctx, fmt.Sprintf("p/%d_s0", i), pseudoRandom(100+i, 9)); err != nil {
			t.Fatal(err)
		}
	}
	p, err := packed.Inventory(ctx, piecestore.InventoryOptions{MaxOrphanSamples: 0})
	if err != nil || p.Pieces != 6 || p.Packs == nil || p.Packs.Pieces != 6 || !(p.Packs.Fill > 0 && p.Packs.Fill <= 1) {
		t.Fatalf("a packed store: %+v (packs %+v), %v", p, p.Packs, err)
	}
}

// Open takes a config.toml path as well as a URL: the original Go piecestore's layout,
// [PieceStore] and its Store table, other sections ignored.
func TestOpenConfigToml(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "config.toml")
	text := fmt.Sprintf("[Other]\nignored = true\n[PieceStore]\nShards = 2\n[PieceStore.Store]\nBucketURL = %q\n", dir+"/f-%d")
	if err := os.WriteFile(cfg, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	s, err := piecestore.Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if d, err := s.Describe(); err != nil || d.ShardCount != 2 || !strings.HasSuffix(d.ShardLabels[1], "f-1") {
		t.Fatalf("opened from %s: %+v, %v", cfg, d, err)
	}
	if err := s.Put(ctx, "1_s0", []byte("cfg")); err != nil {
		t.Fatal(err)
	}
	s.Close()
	again, err := piecestore.Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	if got, err := again.Get(ctx, "1_s0"); err != nil || string(got) != "cfg" {
		t.Fatalf("reopened from the config: %q, %v", got, err)
	}
	if err := os.WriteFile(cfg, []byte("[PieceStore]\nShards = \"two\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := piecestore.Open(cfg); !errors.Is(err, piecestore.ErrInvalidConfig) {
		t.Fatalf("a bad config: %v", err)
	}
}

func TestPutManyGetMany(t *testing.T) {
	eachBackend(t, func(t *testing.T, _ backend, s *piecestore.Store) {
		var items []piecestore.Item
		for i, n := range []int{0, 1, 4096, 70000, 3} {
			items = append(items, piecestore.Item{Key: fmt.Sprintf("many/%d_s0", i), Data: pseudoRandom(n, uint64(200+i))})
		}
		if err := s.PutMany(ctx, items); err != nil {
			t.Fatal(err)
		}
		keys := make([]string, len(items))
		for i, it := range items {
			keys[i] = it.Key
		}
		got, err := s.GetMany(ctx, keys)
		if err != nil || len(got) != len(items) {
			t.Fatalf("GetMany: %d pieces, %v", len(got), err)
		}
		for i := range items {
			if !bytes.Equal(got[i], items[i].Data) {
				t.Fatalf("piece %d differs (%d bytes, want %d)", i, len(got[i]), len(items[i].Data))
			}
		}
		// The same bytes again are a retried put; different bytes are refused unless Overwrite.
		if err := s.PutMany(ctx, items); err != nil {
			t.Fatalf("the same items again: %v", err)
		}
		changed := []piecestore.Item{items[0], {Key: items[2].Key, Data: []byte("other")}}
		if err := s.PutMany(ctx, changed); !errors.Is(err, piecestore.ErrExists) {
			t.Fatalf("a changed piece without Overwrite: %v", err)
		}
		if err := s.PutMany(ctx, changed, piecestore.Overwrite()); err != nil {
			t.Fatal(err)
		}
		if b, err := s.Get(ctx, items[2].Key); err != nil || string(b) != "other" {
			t.Fatalf("after an overwriting PutMany: %q, %v", b, err)
		}
		// The first failure in key order; an invalid key fails before anything is read.
		if _, err := s.GetMany(ctx, []string{keys[0], "many/missing_s0"}); !errors.Is(err, piecestore.ErrNotFound) {
			t.Fatalf("GetMany with a missing piece: %v", err)
		}
		if _, err := s.GetMany(ctx, []string{"../x"}); !errors.Is(err, piecestore.ErrInvalidKey) {
			t.Fatalf("GetMany with an invalid key: %v", err)
		}
		if err := s.PutMany(ctx, []piecestore.Item{{Key: "ok_s0", Data: []byte("x")}, {Key: "", Data: nil}}); !errors.Is(err, piecestore.ErrInvalidKey) {
			t.Fatalf("PutMany with an empty key: %v", err)
		}
		if got, err := s.GetMany(ctx, nil); err != nil || len(got) != 0 {
			t.Fatalf("GetMany of nothing: %v, %v", got, err)
		}
		if err := s.PutMany(ctx, nil); err != nil {
			t.Fatalf("PutMany of nothing: %v", err)
		}
	})
}

func TestMigrateTo(t *testing.T) {
	src, err := piecestore.Open("file://" + t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dest, err := piecestore.Open("file://"+t.TempDir(), piecestore.WithOption("pack", "false"))
	if err != nil {
		t.Fatal(err)
	}
	defer dest.Close()
	var want []byte
	for i := range 8 {
		data := pseudoRandom(100+i*37, uint64(300+i))
		if err := src.Put(ctx, fmt.Sprintf("mig/%d_s0", i), data); err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			if err := dest.Put(ctx, "mig/0_s0", data); err != nil {
				t.Fatal(err)
			}
		} else {
			want = append(want, data...)
		}
	}
	dry, err := src.MigrateTo(ctx, dest, piecestore.MigrateOptions{DryRun: true})
	if err != nil || dry.Copied != 7 || dry.Skipped != 1 || dry.Failed != 0 {
		t.Fatalf("dry run: %+v, %v", dry, err)
	}
	if ok, _ := dest.Exists(ctx, "mig/1_s0"); ok {
		t.Fatal("a dry run copied")
	}
	r, err := src.MigrateTo(ctx, dest, piecestore.MigrateOptions{Concurrency: 2})
	if err != nil || r.TotalPieces != 8 || r.Copied != 7 || r.Skipped != 1 || r.CopiedBytes != uint64(len(want)) || len(r.Failures) != 0 {
		t.Fatalf("migrate: %+v, %v", r, err)
	}
	for i := range 8 {
		a, _ := src.Get(ctx, fmt.Sprintf("mig/%d_s0", i))
		b, err := dest.Get(ctx, fmt.Sprintf("mig/%d_s0", i))
		if err != nil || !bytes.Equal(a, b) {
			t.Fatalf("piece %d at the destination: %v", i, err)
		}
	}
	if err := src.Put(ctx, "mig/9_s0", []byte("source bytes")); err != nil {
		t.Fatal(err)
	}
	if err := dest.Put(ctx, "mig/9_s0", []byte("other bytes!")); err != nil {
		t.Fatal(err)
	}
	r, err = src.MigrateTo(ctx, dest, piecestore.MigrateOptions{})
	if err != nil || r.Failed != 1 || r.Skipped != 8 || len(r.Failures) != 1 ||
		r.Failures[0].Key != "mig/9_s0" || r.Failures[0].Code != "PIECE_EXISTS" || r.Failures[0].Message == "" {
		t.Fatalf("a conflicting piece: %+v, %v", r, err)
	}
	if _, err := src.MigrateTo(ctx, dest, piecestore.MigrateOptions{Concurrency: -1}); !errors.Is(err, piecestore.ErrInvalidArgument) {
		t.Fatalf("negative concurrency: %v", err)
	}
	// Above the core's bound (MigrateOptions::MAX_CONCURRENCY): refused by the core, as in
	// every binding.
	if _, err := src.MigrateTo(ctx, dest, piecestore.MigrateOptions{Concurrency: 4097}); !errors.Is(err, piecestore.ErrInvalidConfig) ||
		!strings.Contains(err.Error(), "from 1 to 4096, not 4097") {
		t.Fatalf("concurrency 4097: %v", err)
	}
	closed, _ := piecestore.Open("memory://")
	closed.Close()
	if _, err := src.MigrateTo(ctx, closed, piecestore.MigrateOptions{}); !errors.Is(err, piecestore.ErrClosed) {
		t.Fatalf("to a closed store: %v", err)
	}
}

// progressLog records a long call's progress reports.
type progressLog struct {
	mu    sync.Mutex
	calls [][2]uint64
}

func (p *progressLog) report(done, total uint64) {
	p.mu.Lock()
	p.calls = append(p.calls, [2]uint64{done, total})
	p.mu.Unlock()
}

func TestProgressOfGcFsckMigrateAndInventory(t *testing.T) {
	dir := t.TempDir()
	s := mustOpen(t, "file://"+dir)
	for i := range 24 {
		if err := s.Put(ctx, fmt.Sprintf("pr/%d_s0", i), pseudoRandom(200+i, uint64(i))); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 20 {
		if err := s.Delete(ctx, fmt.Sprintf("pr/%d_s0", i)); err != nil {
			t.Fatal(err)
		}
	}
	zero := time.Duration(0)
	var gc progressLog
	r, err := s.Gc(ctx, piecestore.GcOptions{Grace: &zero, Progress: gc.report})
	if err != nil || r.PacksCompacted != 1 {
		t.Fatalf("gc: %+v, %v", r, err)
	}
	if len(gc.calls) == 0 {
		t.Fatal("gc reported no progress")
	}
	for _, c := range gc.calls {
		if c[1] == 0 || c[0] > c[1] {
			t.Fatalf("gc progress %d of %d: %v", c[0], c[1], gc.calls)
		}
	}
	if last := gc.calls[len(gc.calls)-1]; last[0] != last[1] {
		t.Fatalf("gc's last report is not done: %v", gc.calls)
	}

	var fsck progressLog
	f, err := s.Fsck(ctx, piecestore.FsckOptions{Progress: fsck.report})
	if err != nil || !f.Clean() {
		t.Fatalf("fsck: %+v, %v", f, err)
	}
	if len(fsck.calls) == 0 || fsck.calls[len(fsck.calls)-1][0] != f.Bytes {
		t.Fatalf("fsck progress %v; the report read %d bytes", fsck.calls, f.Bytes)
	}

	// Pieces handled of pieces in the source, once per piece, with four in flight.
	src := mustOpen(t, "memory://")
	dest := mustOpen(t, "memory://")
	const n = 2500
	items := make([]piecestore.Item, n)
	for i := range items {
		items[i] = piecestore.Item{Key: fmt.Sprintf("m/%d_s0", i), Data: []byte(strconv.Itoa(i))}
	}
	if err := src.PutMany(ctx, items); err != nil {
		t.Fatal(err)
	}
	var mig progressLog
	m, err := src.MigrateTo(ctx, dest, piecestore.MigrateOptions{Concurrency: 4, Progress: mig.report})
	if err != nil || m.Copied != n {
		t.Fatalf("migrate: %+v, %v", m, err)
	}
	// One report once the source is listed (0 done), then one per piece.
	if len(mig.calls) != n+1 || mig.calls[0] != [2]uint64{0, n} {
		t.Fatalf("%d migrate reports for %d pieces, first %v", len(mig.calls), n, mig.calls[0])
	}
	seen := map[uint64]bool{}
	for _, c := range mig.calls[1:] {
		if c[1] != n || c[0] < 1 || c[0] > n || seen[c[0]] {
			t.Fatalf("migrate progress %d of %d (seen before: %v)", c[0], c[1], seen[c[0]])
		}
		seen[c[0]] = true
	}

	// Objects listed, every 1,000.
	var inv progressLog
	in, err := src.Inventory(ctx, piecestore.InventoryOptions{Progress: inv.report})
	if err != nil || in.Pieces != n {
		t.Fatalf("inventory: %+v, %v", in, err)
	}
	if len(inv.calls) != 2 || inv.calls[0] != [2]uint64{1000, 0} || inv.calls[1] != [2]uint64{2000, 0} {
		t.Fatalf("inventory progress %v", inv.calls)
	}

	// A panic in the callback comes back in the calling goroutine, once the call is over, and
	// leaves the store working.
	func() {
		defer func() {
			if r := recover(); r != "stop here" {
				t.Fatalf("recovered %v; want the callback's panic", r)
			}
		}()
		_, _ = src.Inventory(ctx, piecestore.InventoryOptions{Progress: func(uint64, uint64) { panic("stop here") }})
		t.Fatal("Inventory returned without the callback's panic")
	}()
	if got, err := src.Get(ctx, "m/7_s0"); err != nil || string(got) != "7" {
		t.Fatalf("after the panic: %q, %v", got, err)
	}
}
