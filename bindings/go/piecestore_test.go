package piecestore_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/piecestore/piecestore/bindings/go"
)

var ctx = context.Background()

// backend opens a fresh, empty store of one kind.
type backend struct {
	name string
	// racy: different bytes put under one key at the same moment may all succeed. Only on
	// s3s-fs without packing: it ignores If-None-Match (the core's suite marks it so too);
	// packing serializes puts in the process, and memory and file create atomically. s3s-fs
	// also writes an object's bytes and its metadata (our CRC32C) apart, so racing PUTs may
	// leave the bytes of one and the checksum of another: that reads as ErrCorrupt, never as
	// wrong bytes.
	racy bool
	open func(t testing.TB, opts ...piecestore.Option) (*piecestore.Store, string)
}

func mustOpen(t testing.TB, url string, opts ...piecestore.Option) *piecestore.Store {
	t.Helper()
	s, err := piecestore.Open(url, opts...)
	if err != nil {
		t.Fatalf("Open(%q): %v", url, err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func backends(t *testing.T) []backend {
	file := func(pack bool) func(t testing.TB, opts ...piecestore.Option) (*piecestore.Store, string) {
		return func(t testing.TB, opts ...piecestore.Option) (*piecestore.Store, string) {
			url := "file://" + t.TempDir()
			opts = append([]piecestore.Option{piecestore.WithPacking(pack)}, opts...)
			return mustOpen(t, url, opts...), url
		}
	}
	bs := []backend{
		{name: "memory", open: func(t testing.TB, opts ...piecestore.Option) (*piecestore.Store, string) {
			return mustOpen(t, "memory://", opts...), "memory://"
		}},
		{name: "file", open: file(true)},
		{name: "file-unpacked", open: file(false)},
	}
	s3b := func(pack bool) func(t testing.TB, opts ...piecestore.Option) (*piecestore.Store, string) {
		return func(t testing.TB, opts ...piecestore.Option) (*piecestore.Store, string) {
			url := s3.bucket(t)
			opts = append([]piecestore.Option{
				piecestore.WithCredentials(s3.accessKey, s3.secretKey),
				piecestore.WithMaxRetries(2),
				piecestore.WithPacking(pack),
				// The pack index of a bucket lives on local disk.
				piecestore.WithOption("index_dir", t.TempDir()),
			}, opts...)
			return mustOpen(t, url, opts...), url
		}
	}
	if s3 != nil {
		unsigned := func(t testing.TB, opts ...piecestore.Option) (*piecestore.Store, string) {
			return s3b(false)(t, append([]piecestore.Option{piecestore.WithOption("unsigned_payload", "true")}, opts...)...)
		}
		bs = append(bs, backend{name: "s3", open: s3b(true)},
			backend{name: "s3-unpacked", racy: true, open: s3b(false)},
			backend{name: "s3-unsigned-payload", racy: true, open: unsigned})
	} else {
		t.Log("SKIPPED the S3 cases: s3s-fs is not installed")
	}
	return bs
}

// eachBackend runs f as a subtest on every backend.
func eachBackend(t *testing.T, f func(t *testing.T, b backend, s *piecestore.Store)) {
	for _, b := range backends(t) {
		t.Run(b.name, func(t *testing.T) {
			s, _ := b.open(t)
			f(t, b, s)
		})
	}
}

// pseudoRandom returns n deterministic bytes (xorshift) that differ per seed.
func pseudoRandom(n int, seed uint64) []byte {
	b := make([]byte, n)
	x := seed*0x9E3779B97F4A7C15 | 1
	for i := range b {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		b[i] = byte(x)
	}
	return b
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func TestRoundTrip(t *testing.T) {
	sizes := []int{0, 1, 4 << 10, 1 << 20, 1<<20 + 1, 64 << 20}
	eachBackend(t, func(t *testing.T, _ backend, s *piecestore.Store) {
		for i, n := range sizes {
			key := fmt.Sprintf("rt/%d_s%d", n, i)
			data := pseudoRandom(n, uint64(i+1))
			if err := s.Put(ctx, key, data); err != nil {
				t.Fatalf("Put %d bytes: %v", n, err)
			}
			got, err := s.Get(ctx, key)
			if err != nil {
				t.Fatalf("Get %d bytes: %v", n, err)
			}
			if !bytes.Equal(got, data) {
				t.Fatalf("Get %d bytes: got %d other bytes", n, len(got))
			}
			info, err := s.Head(ctx, key)
			if err != nil {
				t.Fatalf("Head: %v", err)
			}
			want := crc32.Checksum(data, castagnoli)
			if info.Key != key || info.Size != int64(n) || !info.HasCRC32C || info.CRC32C != want {
				t.Fatalf("Head = %+v, want size %d crc %08x", info, n, want)
			}
			if time.Since(info.LastModified) > time.Hour || info.LastModified.After(time.Now().Add(time.Minute)) {
				t.Fatalf("Head LastModified = %v, not now", info.LastModified)
			}
			if ok, err := s.Exists(ctx, key); err != nil || !ok {
				t.Fatalf("Exists = %v, %v", ok, err)
			}
		}
	})
}

func TestRanges(t *testing.T) {
	data := pseudoRandom(1000, 7)
	eachBackend(t, func(t *testing.T, _ backend, s *piecestore.Store) {
		if err := s.Put(ctx, "range_s0", data); err != nil {
			t.Fatal(err)
		}
		for _, r := range [][2]int64{{0, 1000}, {0, 1}, {10, 20}, {999, 1}, {1000, 0}, {500, 0}} {
			got, err := s.GetRange(ctx, "range_s0", r[0], r[1])
			if err != nil {
				t.Fatalf("GetRange%v: %v", r, err)
			}
			if !bytes.Equal(got, data[r[0]:r[0]+r[1]]) {
				t.Fatalf("GetRange%v: other bytes", r)
			}
		}
		for _, r := range [][2]int64{{990, 20}, {1001, 0}, {0, 1001}, {-1, 1}, {0, -1}} {
			_, err := s.GetRange(ctx, "range_s0", r[0], r[1])
			if !errors.Is(err, piecestore.ErrInvalidRange) {
				t.Fatalf("GetRange%v: want ErrInvalidRange, got %v", r, err)
			}
		}
		if _, err := s.GetRange(ctx, "missing_s0", 0, 1); !errors.Is(err, piecestore.ErrNotFound) {
			t.Fatalf("GetRange of a missing piece: %v", err)
		}
	})
}

func TestImmutabilityAndNotFound(t *testing.T) {
	eachBackend(t, func(t *testing.T, _ backend, s *piecestore.Store) {
		_, err := s.Get(ctx, "nope_s0")
		var pe *piecestore.Error
		if !errors.Is(err, piecestore.ErrNotFound) || !errors.As(err, &pe) || pe.Key != "nope_s0" {
			t.Fatalf("Get of a missing piece: %#v", err)
		}
		if !strings.Contains(err.Error(), "nope_s0") {
			t.Fatalf("message does not name the key: %v", err)
		}
		if _, err := s.Head(ctx, "nope_s0"); !errors.Is(err, piecestore.ErrNotFound) {
			t.Fatalf("Head of a missing piece: %v", err)
		}
		if ok, err := s.Exists(ctx, "nope_s0"); ok || err != nil {
			t.Fatalf("Exists of a missing piece: %v, %v", ok, err)
		}
		if err := s.Delete(ctx, "nope_s0"); err != nil {
			t.Fatalf("Delete of a missing piece: %v", err)
		}

		if err := s.Put(ctx, "imm_s0", []byte("first")); err != nil {
			t.Fatal(err)
		}
		if err := s.Put(ctx, "imm_s0", []byte("first")); err != nil {
			t.Fatalf("the same bytes again: %v", err)
		}
		err = s.Put(ctx, "imm_s0", []byte("second"))
		if !errors.Is(err, piecestore.ErrExists) || errors.Is(err, piecestore.ErrNotFound) {
			t.Fatalf("different bytes: want ErrExists, got %v", err)
		}
		if got, _ := s.Get(ctx, "imm_s0"); string(got) != "first" {
			t.Fatalf("a refused put changed the piece: %q", got)
		}
		if err := s.Put(ctx, "imm_s0", []byte("second"), piecestore.Overwrite()); err != nil {
			t.Fatalf("Overwrite: %v", err)
		}
		if got, _ := s.Get(ctx, "imm_s0"); string(got) != "second" {
			t.Fatalf("after Overwrite: %q", got)
		}
		if err := s.Delete(ctx, "imm_s0"); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Get(ctx, "imm_s0"); !errors.Is(err, piecestore.ErrNotFound) {
			t.Fatalf("Get after Delete: %v", err)
		}
	})
}

func TestInvalidKeys(t *testing.T) {
	s := mustOpen(t, "memory://")
	for _, key := range []string{"", "../etc/passwd", "a//b", "/abs", "bad\xffutf8", strings.Repeat("k", 2000)} {
		if err := s.Put(ctx, key, []byte("x")); !errors.Is(err, piecestore.ErrInvalidKey) {
			t.Errorf("Put(%q): want ErrInvalidKey, got %v", key, err)
		}
		if _, err := s.Get(ctx, key); !errors.Is(err, piecestore.ErrInvalidKey) {
			t.Errorf("Get(%q): want ErrInvalidKey, got %v", key, err)
		}
	}
	// Nothing was stored by the refused puts.
	n := 0
	for _, err := range s.List(ctx, "") {
		if err != nil {
			t.Fatal(err)
		}
		n++
	}
	if n != 0 {
		t.Fatalf("%d pieces after refused puts", n)
	}
}

func TestInvalidConfig(t *testing.T) {
	const secret = "sEcReT-do-not-print-0123456789"
	cases := []struct {
		url  string
		opts []piecestore.Option
	}{
		{"bogus://x", nil},
		{"memory://", []piecestore.Option{piecestore.WithOption("shardz", "2")}},
		{"memory://", []piecestore.Option{piecestore.WithOption("max_retries", "many")}},
		{"file:///tmp/ps-%d", []piecestore.Option{piecestore.WithShards(0)}},
		{"http://127.0.0.1:9/b", []piecestore.Option{piecestore.WithCredentials("AK", secret), piecestore.WithOption("request_timeout", "soon")}},
		{"http://AKID:" + secret + "@127.0.0.1:9/b", []piecestore.Option{piecestore.WithOption("request_timeout", "soon")}},
	}
	for _, c := range cases {
		s, err := piecestore.Open(c.url, c.opts...)
		if s != nil || !errors.Is(err, piecestore.ErrInvalidConfig) {
			t.Errorf("Open(%q): want ErrInvalidConfig, got %v", c.url, err)
			continue
		}
		if strings.Contains(err.Error(), secret) || strings.Contains(fmt.Sprintf("%#v", err), secret) {
			t.Errorf("the error shows the secret key: %v", err)
		}
	}
	// A NUL byte would cut the C string short: refused, not truncated.
	if _, err := piecestore.Open("memory://\x00/elsewhere"); !errors.Is(err, piecestore.ErrInvalidArgument) {
		t.Errorf("a URL with a NUL byte: want ErrInvalidArgument, got %v", err)
	}
}

func TestTextOptionsStayText(t *testing.T) {
	// Keys and secrets that look like numbers or booleans are still strings.
	for _, pair := range [][2]string{{"12345678", "0070"}, {"true", "1.5"}} {
		s, err := piecestore.Open("memory://", piecestore.WithCredentials(pair[0], pair[1]), piecestore.WithRegion("1"))
		if err != nil {
			t.Fatalf("credentials %q: %v", pair, err)
		}
		s.Close()
	}
	// Number-valued options still take numbers, and decimals are seconds.
	s, err := piecestore.Open("memory://", piecestore.WithMaxRetries(3), piecestore.WithOption("request_timeout", "2.5"))
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
}

func TestCorruptPieceIsNeverReturned(t *testing.T) {
	dir := t.TempDir()
	s := mustOpen(t, dir, piecestore.WithPacking(false))
	data := pseudoRandom(4096, 3)
	if err := s.Put(ctx, "bad_s0", data); err != nil {
		t.Fatal(err)
	}
	// One piece is one file whose payload comes first: flip its first byte.
	path := filepath.Join(dir, "bad_s0")
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	raw[0] ^= 0x40
	if err := os.WriteFile(path, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := s.Get(ctx, "bad_s0")
	var pe *piecestore.Error
	if !errors.Is(err, piecestore.ErrCorrupt) || got != nil || !errors.As(err, &pe) || pe.Key != "bad_s0" {
		t.Fatalf("Get of a corrupt piece: %v (%d bytes)", err, len(got))
	}
	if _, err := s.GetRange(ctx, "bad_s0", 0, 10); !errors.Is(err, piecestore.ErrCorrupt) {
		t.Fatalf("GetRange of a corrupt piece: %v", err)
	}
}

func TestUnauthorized(t *testing.T) {
	if s3 == nil {
		t.Skip("s3s-fs is not installed")
	}
	url := s3.bucket(t)
	const wrong = "wrong-secret-0123456789abcdef0123456789"
	s, err := piecestore.Open(url, piecestore.WithCredentials(s3.accessKey, wrong), piecestore.WithMaxRetries(0))
	if s != nil || !errors.Is(err, piecestore.ErrUnauthorized) {
		t.Fatalf("Open with a wrong secret key: want ErrUnauthorized, got %v", err)
	}
	if strings.Contains(err.Error(), wrong) || strings.Contains(err.Error(), s3.secretKey) {
		t.Fatalf("the error shows a secret key: %v", err)
	}
}

func TestMissingBucketIsNamedAndNotCreated(t *testing.T) {
	if s3 == nil {
		t.Skip("s3s-fs is not installed")
	}
	name := "go-missing-" + token(8)
	url := s3.endpoint + "/" + name
	creds := piecestore.WithCredentials(s3.accessKey, s3.secretKey)
	s, err := piecestore.Open(url, creds)
	if s != nil || !errors.Is(err, piecestore.ErrBucketNotFound) {
		t.Fatalf("Open of a missing bucket: want ErrBucketNotFound, got %v", err)
	}
	if !errors.Is(err, piecestore.ErrInvalidConfig) || !strings.Contains(err.Error(), name) {
		t.Fatalf("ErrBucketNotFound should match ErrInvalidConfig and name the bucket: %v", err)
	}
	if _, statErr := os.Stat(filepath.Join(s3.dir, name)); !os.IsNotExist(statErr) {
		t.Fatalf("the missing bucket was created: %v", statErr)
	}
	s, err = piecestore.Open(url, creds, piecestore.WithOption("create_bucket", "true"))
	if err != nil {
		t.Fatalf("Open with create_bucket: %v", err)
	}
	defer s.Close()
	if _, statErr := os.Stat(filepath.Join(s3.dir, name)); statErr != nil {
		t.Fatalf("create_bucket did not create the bucket: %v", statErr)
	}
}

func TestBackendError(t *testing.T) {
	// A port with nothing listening: the request fails at connect.
	port, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := port.Addr().String()
	port.Close()
	s := mustOpen(t, "http://"+addr+"/bucket",
		piecestore.WithCredentials("AK", "SK"), piecestore.WithMaxRetries(0),
		piecestore.WithOption("check_bucket", "false"), piecestore.WithPacking(false))
	_, err = s.Get(ctx, "x_s0")
	var pe *piecestore.Error
	if !errors.Is(err, piecestore.ErrBackend) || !errors.As(err, &pe) || pe.Backend == "" {
		t.Fatalf("Get from a dead endpoint: want ErrBackend naming the backend, got %#v", err)
	}
}

func TestContextCancellation(t *testing.T) {
	s := mustOpen(t, silentServer(t),
		piecestore.WithCredentials("AK", "SK"), piecestore.WithMaxRetries(0),
		piecestore.WithRequestTimeout(time.Minute),
		piecestore.WithOption("check_bucket", "false"), piecestore.WithPacking(false))

	var err error
	tctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err = s.Get(tctx, "x_s0")
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Get past its deadline: want context.DeadlineExceeded, got %v", err)
	}
	// Bounded, not timed: the request itself would wait a minute.
	if waited := time.Since(start); waited > 20*time.Second {
		t.Fatalf("Get returned %v after its deadline", waited)
	}

	cctx, cancel2 := context.WithCancel(ctx)
	go func() { time.Sleep(100 * time.Millisecond); cancel2() }()
	if err := s.Put(cctx, "y_s0", []byte("x")); !errors.Is(err, context.Canceled) {
		t.Fatalf("Put cancelled while running: want context.Canceled, got %v", err)
	}
	// An already-cancelled context never reaches the store.
	if _, err := s.Get(cctx, "y_s0"); !errors.Is(err, context.Canceled) {
		t.Fatalf("Get with a cancelled context: %v", err)
	}
}

func TestPerOperationTimeouts(t *testing.T) {
	s := mustOpen(t, silentServer(t),
		piecestore.WithCredentials("AK", "SK"), piecestore.WithMaxRetries(0),
		piecestore.WithRequestTimeout(time.Minute),
		piecestore.WithGetTimeout(200*time.Millisecond), piecestore.WithPutTimeout(200*time.Millisecond),
		piecestore.WithDeleteTimeout(200*time.Millisecond),
		piecestore.WithOption("check_bucket", "false"), piecestore.WithPacking(false))
	for _, op := range []struct {
		name, option string
		call         func() error
	}{
		{"Get", "GetTimeout", func() error { _, err := s.Get(ctx, "x_s0"); return err }},
		{"Put", "PutTimeout", func() error { return s.Put(ctx, "x_s0", []byte("x")) }},
		{"Delete", "DeleteTimeout", func() error { return s.Delete(ctx, "x_s0") }},
	} {
		start := time.Now()
		err := op.call()
		var pe *piecestore.Error
		if !errors.Is(err, piecestore.ErrBackend) || !errors.As(err, &pe) || !pe.Retryable ||
			!strings.Contains(pe.Message, op.option) {
			t.Fatalf("%s on a server that never answers: want a retryable ErrBackend naming %s, got %#v",
				op.name, op.option, err)
		}
		// Bounded, not timed: one request would wait a minute.
		if waited := time.Since(start); waited > 20*time.Second {
			t.Fatalf("%s returned after %v: its timeout did not cut it off", op.name, waited)
		}
	}
	if _, err := piecestore.Open("memory://", piecestore.WithOption("get_timeout", "soon")); !errors.Is(err, piecestore.ErrInvalidConfig) {
		t.Fatalf("get_timeout=soon: want ErrInvalidConfig, got %v", err)
	}
}

func TestListAndDeletePrefix(t *testing.T) {
	eachBackend(t, func(t *testing.T, _ backend, s *piecestore.Store) {
		var want []string
		for i := range 25 {
			k := fmt.Sprintf("list/%02d_s0", i)
			want = append(want, k)
			if err := s.Put(ctx, k, pseudoRandom(100+i, uint64(i))); err != nil {
				t.Fatal(err)
			}
		}
		if err := s.Put(ctx, "other_s0", []byte("x")); err != nil {
			t.Fatal(err)
		}
		var got []string
		for p, err := range s.List(ctx, "list/") {
			if err != nil {
				t.Fatal(err)
			}
			if !strings.HasPrefix(p.Key, "list/") || p.Size < 100 {
				t.Fatalf("listed %+v", p)
			}
			got = append(got, p.Key)
		}
		slices.Sort(got)
		if !slices.Equal(got, want) {
			t.Fatalf("List = %v, want %v", got, want)
		}
		// Breaking out of the loop ends the listing.
		n := 0
		for _, err := range s.List(ctx, "") {
			if err != nil {
				t.Fatal(err)
			}
			n++
			if n == 3 {
				break
			}
		}
		// Walk stops at the callback's error and returns it.
		stop := errors.New("stop")
		calls := 0
		if err := s.Walk(ctx, "list/", func(piecestore.PieceInfo) error { calls++; return stop }); err != stop || calls != 1 {
			t.Fatalf("Walk = %v after %d calls", err, calls)
		}
		sum, err := s.DeletePrefix(ctx, "list/")
		if err != nil || sum.Pieces != 25 {
			t.Fatalf("DeletePrefix = %+v, %v", sum, err)
		}
		for p, err := range s.List(ctx, "list/") {
			t.Fatalf("listed %+v, %v after DeletePrefix", p, err)
		}
		if ok, _ := s.Exists(ctx, "other_s0"); !ok {
			t.Fatal("DeletePrefix removed a piece outside the prefix")
		}
	})
}

func TestParallelGoroutines(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend, s *piecestore.Store) {
		const workers, perWorker = 64, 20
		var wg sync.WaitGroup
		errs := make(chan error, workers)
		winners := make(chan int, workers)
		for w := range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range perWorker {
					key := fmt.Sprintf("par/%d/%d_s0", w, i)
					data := pseudoRandom(512+w*37+i, uint64(w*1000+i))
					if err := s.Put(ctx, key, data); err != nil {
						errs <- fmt.Errorf("Put %s: %w", key, err)
						return
					}
					got, err := s.Get(ctx, key)
					if err != nil || !bytes.Equal(got, data) {
						errs <- fmt.Errorf("Get %s: %v (equal %v)", key, err, bytes.Equal(got, data))
						return
					}
					if i%4 == 0 {
						if err := s.Delete(ctx, key); err != nil {
							errs <- err
							return
						}
					}
				}
				// Every worker races for one key with its own bytes: one wins.
				switch err := s.Put(ctx, "race_s0", []byte(fmt.Sprint("worker ", w))); {
				case err == nil:
					winners <- w
				case !errors.Is(err, piecestore.ErrExists):
					errs <- fmt.Errorf("racing Put: %w", err)
				}
			}()
		}
		wg.Wait()
		close(errs)
		close(winners)
		for err := range errs {
			t.Error(err)
		}
		var won []int
		for w := range winners {
			won = append(won, w)
		}
		if len(won) == 0 || (len(won) > 1 && !b.racy) {
			t.Fatalf("%d racing puts of different bytes succeeded (%v), want exactly 1", len(won), won)
		}
		got, err := s.Get(ctx, "race_s0")
		torn := b.racy && len(won) > 1 && errors.Is(err, piecestore.ErrCorrupt) && got == nil
		if !torn && (err != nil || !slices.ContainsFunc(won, func(w int) bool { return string(got) == fmt.Sprint("worker ", w) })) {
			t.Fatalf("race_s0 = %q, %v; the winners were workers %v", got, err, won)
		}
		n := 0
		for _, err := range s.List(ctx, "par/") {
			if err != nil {
				t.Fatal(err)
			}
			n++
		}
		if want := workers * (perWorker - perWorker/4); n != want {
			t.Fatalf("listed %d pieces, want %d", n, want)
		}
	})
}

func TestMetrics(t *testing.T) {
	for _, kind := range []string{"memory", "file"} {
		t.Run(kind, func(t *testing.T) {
			url := "memory://"
			if kind == "file" {
				url = "file://" + t.TempDir()
			}
			s, err := piecestore.Open(url)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			for i, v := range []string{"hello", "abc", ""} {
				if err := s.Put(ctx, fmt.Sprintf("%d_s0", i+1), []byte(v)); err != nil {
					t.Fatal(err)
				}
			}
			for _, k := range []string{"1_s0", "2_s0"} {
				if _, err := s.Get(ctx, k); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := s.Get(ctx, "9_s0"); !errors.Is(err, piecestore.ErrNotFound) {
				t.Fatalf("Get of a missing piece: %v", err)
			}
			text, err := s.Metrics()
			if err != nil {
				t.Fatalf("Metrics: %v", err)
			}
			labels := func(op string) string { return fmt.Sprintf(`backend=%q,shard="0",op=%q`, kind, op) }
			for _, line := range []string{
				"piecestore_operations_total{" + labels("put") + "} 3",
				"piecestore_operations_total{" + labels("get") + "} 3",
				"piecestore_operations_total{" + labels("delete") + "} 0",
				"piecestore_operation_errors_total{" + labels("get") + `,kind="PIECE_NOT_FOUND"} 1`,
				"piecestore_operation_bytes_total{" + labels("put") + "} 8",
				"piecestore_operation_bytes_total{" + labels("get") + "} 8",
				"piecestore_operation_duration_seconds_count{" + labels("put") + "} 3",
			} {
				if !strings.Contains(text, line+"\n") {
					t.Errorf("Metrics lacks %q; it is:\n%s", line, text)
				}
			}
		})
	}
	t.Run("off", func(t *testing.T) {
		s, err := piecestore.Open("memory://", piecestore.WithOption("metrics", "false"))
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Put(ctx, "1_s0", []byte("x")); err != nil {
			t.Fatal(err)
		}
		text, err := s.Metrics()
		if err != nil {
			t.Fatalf("Metrics: %v", err)
		}
		for _, line := range strings.Split(strings.TrimSpace(text), "\n") {
			if !strings.HasPrefix(line, "# ") {
				t.Errorf("metrics=false still has a sample: %q", line)
			}
		}
		if !strings.Contains(text, "# TYPE piecestore_operations_total counter") {
			t.Errorf("metrics=false lost the TYPE lines:\n%s", text)
		}
		s.Close()
		if _, err := s.Metrics(); !errors.Is(err, piecestore.ErrClosed) {
			t.Fatalf("Metrics after Close: want ErrClosed, got %v", err)
		}
	})
}

func TestUseAfterClose(t *testing.T) {
	for _, b := range backends(t) {
		t.Run(b.name, func(t *testing.T) {
			s, _ := b.open(t)
			if err := s.Put(ctx, "c_s0", []byte("x")); err != nil {
				t.Fatal(err)
			}
			if s.Closed() {
				t.Fatal("Closed() before Close")
			}
			if err := s.Close(); err != nil {
				t.Fatalf("Close: %v", err)
			}
			if !s.Closed() {
				t.Fatal("not Closed() after Close")
			}
			if err := s.Close(); err != nil {
				t.Fatalf("Close again: %v", err)
			}
			checks := map[string]error{
				"Put":    s.Put(ctx, "c_s0", []byte("x")),
				"Delete": s.Delete(ctx, "c_s0"),
				"Flush":  s.Flush(ctx),
			}
			_, checks["Get"] = s.Get(ctx, "c_s0")
			_, checks["GetRange"] = s.GetRange(ctx, "c_s0", 0, 1)
			_, checks["Head"] = s.Head(ctx, "c_s0")
			_, checks["Exists"] = s.Exists(ctx, "c_s0")
			_, checks["DeletePrefix"] = s.DeletePrefix(ctx, "c")
			checks["Walk"] = s.Walk(ctx, "", func(piecestore.PieceInfo) error { return nil })
			for _, err := range s.List(ctx, "") {
				checks["List"] = err
			}
			for op, err := range checks {
				if !errors.Is(err, piecestore.ErrClosed) {
					t.Errorf("%s after Close: want ErrClosed, got %v", op, err)
				}
			}
		})
	}
}

// silentServer accepts connections and never answers; it is closed with the test.
func silentServer(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var conns []net.Conn
	var mu sync.Mutex
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
	})
	return "http://" + l.Addr().String() + "/bucket"
}

func TestCloseWaitsForRunningCallsAndRefusesNewOnes(t *testing.T) {
	s := mustOpen(t, silentServer(t),
		piecestore.WithCredentials("AK", "SK"), piecestore.WithMaxRetries(0),
		piecestore.WithRequestTimeout(time.Minute),
		piecestore.WithOption("check_bucket", "false"), piecestore.WithPacking(false))
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	running := make(chan error, 1)
	go func() { _, err := s.Get(cctx, "x_s0"); running <- err }()
	time.Sleep(100 * time.Millisecond) // let the Get reach the server

	closed := make(chan error, 1)
	go func() { closed <- s.Close() }()
	// While Close waits for the Get, a new call fails at once instead of queueing behind it.
	deadline := time.Now().Add(10 * time.Second)
	for {
		// A probe that got in before Close began would wait on the silent server: bound it.
		pctx, pcancel := context.WithTimeout(ctx, 50*time.Millisecond)
		_, err := s.Get(pctx, "y_s0")
		pcancel()
		if errors.Is(err, piecestore.ErrClosed) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("calls are still accepted after Close began")
		}
		time.Sleep(10 * time.Millisecond)
	}
	select {
	case err := <-closed:
		t.Fatalf("Close returned (%v) while a call was still running", err)
	case <-time.After(200 * time.Millisecond):
	}
	cancel()
	if err := <-running; !errors.Is(err, context.Canceled) {
		t.Fatalf("the running Get: want context.Canceled, got %v", err)
	}
	if err := <-closed; err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close again: %v", err)
	}
}

func TestCloseWhileManyGoroutinesPut(t *testing.T) {
	s, err := piecestore.Open("memory://")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var puts sync.WaitGroup
	puts.Add(16)
	for w := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				err := s.Put(ctx, fmt.Sprintf("cl/%d/%d_s0", w, i), []byte("x"))
				if i == 0 {
					puts.Done()
				}
				if errors.Is(err, piecestore.ErrClosed) {
					return
				}
				if err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	puts.Wait() // every goroutine has put at least once
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
}

func TestFileStoreSurvivesReopen(t *testing.T) {
	for _, pack := range []bool{true, false} {
		dir := t.TempDir()
		s := mustOpen(t, "file://"+dir, piecestore.WithPacking(pack))
		key := fmt.Sprintf("durable/%v_s0", pack)
		if err := s.Put(ctx, key, pseudoRandom(3000, 9)); err != nil {
			t.Fatal(err)
		}
		if err := s.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		s = mustOpen(t, "file://"+dir, piecestore.WithPacking(pack))
		got, err := s.Get(ctx, key)
		if err != nil || !bytes.Equal(got, pseudoRandom(3000, 9)) {
			t.Fatalf("after reopen (pack=%v): %v", pack, err)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		if pack {
			// A store that holds packs refuses to open unpacked (it would not see them).
			_, err := piecestore.Open("file://"+dir, piecestore.WithPacking(false))
			if !errors.Is(err, piecestore.ErrInvalidConfig) || !strings.Contains(err.Error(), "piecestore migrate") {
				t.Fatalf("a packed store opened unpacked: %v", err)
			}
		}
	}
}

func TestGetBufferLendsTheBytes(t *testing.T) {
	eachBackend(t, func(t *testing.T, _ backend, s *piecestore.Store) {
		for i, n := range []int{0, 5000, 3 << 20} {
			key := fmt.Sprintf("buf/%d_s0", i)
			data := pseudoRandom(n, uint64(40+i))
			if err := s.Put(ctx, key, data); err != nil {
				t.Fatal(err)
			}
			b, err := s.GetBuffer(ctx, key)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(b.Bytes(), data) {
				t.Fatalf("GetBuffer of %d bytes: other bytes", n)
			}
			b.Release()
			b.Release()
			if b.Bytes() != nil {
				t.Fatal("Bytes after Release is not nil")
			}
		}
		if _, err := s.GetBuffer(ctx, "buf/none_s0"); !errors.Is(err, piecestore.ErrNotFound) {
			t.Fatalf("GetBuffer of a missing piece: %v", err)
		}
	})
}

// childProcess is the test binary run again as one of several processes on one packed store
// (TestSeveralProcessesShareOnePackedStore): it puts its own pieces, the same bytes under
// shared_s0, and its own bytes under contested_s0, then prints "won" or "lost".
func childProcess(dir, id string) int {
	s, err := piecestore.Open("file://" + dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer s.Close()
	for j := 0; j < 40; j++ {
		if err := s.Put(ctx, fmt.Sprintf("%s_s%d", id, j), []byte(fmt.Sprintf("process %s piece %d", id, j))); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	if err := s.Put(ctx, "shared_s0", []byte("the same bytes")); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	switch err := s.Put(ctx, "contested_s0", []byte("process "+id)); {
	case err == nil:
		fmt.Println("won")
	case errors.Is(err, piecestore.ErrExists):
		fmt.Println("lost")
	default:
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// Several Go processes use one packed directory at once (and with the process that opened it
// first): every process's pieces are found here, the same bytes are Ok for all, and of other
// bytes under one key exactly one wins.
func TestSeveralProcessesShareOnePackedStore(t *testing.T) {
	dir := t.TempDir()
	s := mustOpen(t, "file://"+dir)
	if err := s.Put(ctx, "parent_s0", []byte("from the parent")); err != nil {
		t.Fatal(err)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	type result struct {
		out []byte
		err error
	}
	results := make(chan result, 4)
	for id := 1; id <= 4; id++ {
		go func(id int) {
			cmd := exec.Command(exe)
			cmd.Env = append(os.Environ(), "PIECESTORE_GO_CHILD_STORE="+dir, fmt.Sprintf("PIECESTORE_GO_CHILD_ID=%d", id))
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			out, err := cmd.Output()
			if err != nil {
				err = fmt.Errorf("process %d: %w: %s", id, err, stderr.String())
			}
			results <- result{out, err}
		}(id)
	}
	won := 0
	for range 4 {
		r := <-results
		if r.err != nil {
			t.Fatal(r.err)
		}
		if strings.TrimSpace(string(r.out)) == "won" {
			won++
		}
	}
	if won != 1 {
		t.Fatalf("%d processes were told their bytes are stored under contested_s0", won)
	}
	for id := 1; id <= 4; id++ {
		for j := 0; j < 40; j++ {
			got, err := s.Get(ctx, fmt.Sprintf("%d_s%d", id, j))
			if want := fmt.Sprintf("process %d piece %d", id, j); err != nil || string(got) != want {
				t.Fatalf("process %d's piece %d: %q, %v", id, j, got, err)
			}
		}
	}
	if got, err := s.Get(ctx, "shared_s0"); err != nil || string(got) != "the same bytes" {
		t.Fatalf("shared_s0: %q, %v", got, err)
	}
	if got, err := s.Get(ctx, "contested_s0"); err != nil || !strings.HasPrefix(string(got), "process ") {
		t.Fatalf("contested_s0: %q, %v", got, err)
	}
	if got, err := s.Get(ctx, "parent_s0"); err != nil || string(got) != "from the parent" {
		t.Fatalf("parent_s0: %q, %v", got, err)
	}
}
