// Command gobench measures the Go binding of PieceStore against minio-go (github.com/minio/
// minio-go/v7) doing the same 4 KiB and 1 MiB puts and gets on the same S3-compatible server
// in one run, and the Go binding's per-operation latency on memory:// (whose difference from
// the Rust core's, measured by benches/examples/core_latency.rs in the same run by run.sh, is
// the cost of the cgo boundary).
//
//	bash benches/go/run.sh          # starts s3s-fs on 127.0.0.1 and runs everything
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"github.com/piecestore/piecestore/bindings/go"
)

var ctx = context.Background()

// client is one way to put and get an object.
type client struct {
	name string
	put  func(key string, data []byte) error
	get  func(key string) ([]byte, error)
}

type result struct {
	Client      string  `json:"client"`
	Round       int     `json:"round"`
	Op          string  `json:"op"`
	Size        int     `json:"size"`
	Concurrency int     `json:"concurrency"`
	Ops         int     `json:"ops"`
	Errors      int64   `json:"errors"`
	OpsPerSec   float64 `json:"ops_per_s"`
	MBPerSec    float64 `json:"mb_per_s"`
	P50us       float64 `json:"p50_us"`
	P99us       float64 `json:"p99_us"`
}

// run does op for d with c workers; workers take keys from keyOf(worker, n).
func run(name, op string, size, c int, d time.Duration, f func(w, n int) error) result {
	var stop atomic.Bool
	var errs atomic.Int64
	lat := make([][]time.Duration, c)
	var wg sync.WaitGroup
	start := time.Now()
	for w := range c {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; !stop.Load(); n++ {
				t0 := time.Now()
				if err := f(w, n); err != nil {
					if errs.Add(1) == 1 {
						fmt.Fprintf(os.Stderr, "%s %s: %v\n", name, op, err)
					}
					continue
				}
				lat[w] = append(lat[w], time.Since(t0))
			}
		}()
	}
	time.Sleep(d)
	stop.Store(true)
	wg.Wait()
	secs := time.Since(start).Seconds()
	var all []time.Duration
	for _, l := range lat {
		all = append(all, l...)
	}
	sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
	pct := func(p float64) float64 {
		if len(all) == 0 {
			return 0
		}
		return float64(all[min(int(p*float64(len(all))), len(all)-1)].Nanoseconds()) / 1e3
	}
	return result{Client: name, Op: op, Size: size, Concurrency: c, Ops: len(all),
		Errors: errs.Load(), OpsPerSec: float64(len(all)) / secs,
		MBPerSec: float64(len(all)*size) / secs / 1e6, P50us: pct(0.5), P99us: pct(0.99)}
}

func payload(size int, seed byte) []byte {
	b := make([]byte, size)
	for i := range b {
		b[i] = byte(i*31) ^ seed
	}
	return b
}

func minioClient(endpoint, bucket, ak, sk string) client {
	u, err := url.Parse(endpoint)
	check(err)
	mc, err := minio.New(u.Host, &minio.Options{
		Creds: credentials.NewStaticV4(ak, sk, ""), Secure: u.Scheme == "https", Region: "us-east-1",
	})
	check(err)
	return client{
		name: "minio-go v7",
		put: func(key string, data []byte) error {
			// minio-go's fastest settings for small objects: no payload hash, one PUT.
			_, err := mc.PutObject(ctx, bucket, key, bytes.NewReader(data), int64(len(data)),
				minio.PutObjectOptions{DisableContentSha256: true, DisableMultipart: true})
			return err
		},
		get: func(key string) ([]byte, error) {
			obj, err := mc.GetObject(ctx, bucket, key, minio.GetObjectOptions{})
			if err != nil {
				return nil, err
			}
			defer obj.Close()
			return io.ReadAll(obj)
		},
	}
}

func storeClient(name string, s *piecestore.Store) client {
	return client{
		name: name,
		put:  func(key string, data []byte) error { return s.Put(ctx, key, data) },
		get:  func(key string) ([]byte, error) { return s.Get(ctx, key) },
	}
}

func check(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

// latency is the binding's per-operation latency on a store, one operation at a time (best
// of 3 rounds of n), as core_latency.rs measures the core's.
//
// allocUs is Go's own cost of what Get must do beyond GetInto: a fresh slice per piece, filled
// by a copy from n distinct sources (as Get copies from n distinct pieces), with no library call.
func latency(s *piecestore.Store, size, n int) (putUs, getUs, bufUs, intoUs, allocUs float64) {
	data := payload(size, 1)
	into := make([]byte, size)
	sources := make([][]byte, n)
	for i := range sources {
		sources[i] = payload(size, byte(i))
	}
	putUs, getUs, bufUs, intoUs, allocUs = 1e18, 1e18, 1e18, 1e18, 1e18
	for round := range 3 {
		keys := make([]string, n)
		for i := range keys {
			keys[i] = fmt.Sprintf("%d_s%d", round, i)
		}
		t := time.Now()
		for _, k := range keys {
			check(s.Put(ctx, k, data))
		}
		putUs = min(putUs, float64(time.Since(t).Nanoseconds())/1e3/float64(n))
		t = time.Now()
		for _, k := range keys {
			_, err := s.Get(ctx, k)
			check(err)
		}
		getUs = min(getUs, float64(time.Since(t).Nanoseconds())/1e3/float64(n))
		t = time.Now()
		for _, k := range keys {
			b, err := s.GetBuffer(ctx, k)
			check(err)
			b.Release()
		}
		bufUs = min(bufUs, float64(time.Since(t).Nanoseconds())/1e3/float64(n))
		t = time.Now()
		for _, k := range keys {
			_, err := s.GetInto(ctx, k, into)
			check(err)
		}
		intoUs = min(intoUs, float64(time.Since(t).Nanoseconds())/1e3/float64(n))
		t = time.Now()
		for _, src := range sources {
			sink = append([]byte{}, src...)
		}
		allocUs = min(allocUs, float64(time.Since(t).Nanoseconds())/1e3/float64(n))
	}
	return putUs, getUs, bufUs, intoUs, allocUs
}

// sink keeps the baseline's copies from being optimized away.
var sink []byte

func main() {
	endpoint := flag.String("endpoint", "", "S3 endpoint, http://127.0.0.1:PORT (empty: only the memory latency)")
	bucket := flag.String("bucket", "bench", "bucket (must exist)")
	concurrency := flag.Int("concurrency", 16, "workers per run")
	duration := flag.Duration("duration", 3*time.Second, "how long each run lasts")
	rounds := flag.Int("rounds", 3, "rounds of every client, interleaved")
	latencyOps := flag.Int("latency-ops", 20000, "operations per round of the memory latency")
	flag.Parse()
	enc := json.NewEncoder(os.Stdout)
	ak, sk := os.Getenv("AWS_ACCESS_KEY_ID"), os.Getenv("AWS_SECRET_ACCESS_KEY")

	// First, in a fresh process: the per-operation latency on memory://.
	mem, err := piecestore.Open("memory://")
	check(err)
	putUs, getUs, bufUs, intoUs, allocUs := latency(mem, 4<<10, *latencyOps)
	check(mem.Close())
	check(enc.Encode(map[string]any{"client": "piecestore-go", "store": "memory://",
		"size": 4 << 10, "put_us": putUs, "get_us": getUs, "getbuffer_us": bufUs, "getinto_us": intoUs, "go_alloc_us": allocUs}))

	if *endpoint != "" {
		base := *endpoint + "/" + *bucket
		creds := piecestore.WithCredentials(ak, sk)
		// One object per piece, as minio-go writes them. s3s-fs ignores If-None-Match, so
		// conditional_writes=on makes a create-only put one PUT (as minio-go's), not HEAD+PUT.
		// unsigned_payload skips the SHA-256 of each body, as minio-go's DisableContentSha256.
		cw, unsignedPayload := piecestore.WithOption("conditional_writes", "on"),
			piecestore.WithOption("unsigned_payload", "true")
		unpacked, err := piecestore.Open(base, creds, piecestore.WithPacking(false), cw, unsignedPayload)
		check(err)
		signed, err := piecestore.Open(base, creds, piecestore.WithPacking(false), cw)
		check(err)
		idx, err := os.MkdirTemp("", "gobench-index-")
		check(err)
		defer os.RemoveAll(idx)
		// Packing (the default for buckets) groups the puts in flight: a put that finds the
		// writer idle is sent at once, puts that arrive meanwhile share the next PUT.
		packed, err := piecestore.Open(base, creds, piecestore.WithOption("index_dir", idx),
			piecestore.WithPacking(true), cw, unsignedPayload)
		check(err)
		clients := []client{
			minioClient(*endpoint, *bucket, ak, sk),
			storeClient("piecestore-go", unpacked),
			storeClient("piecestore-go signed payload", signed),
			storeClient("piecestore-go packed", packed),
		}
		// Rounds interleave the clients (A B C D, A B C D, ...) so that a slow spell of the
		// shared machine hits every client alike; the summary takes each client's median.
		for _, size := range []int{4 << 10, 1 << 20} {
			written := make([][]atomic.Int64, len(clients))
			for ci := range clients {
				written[ci] = make([]atomic.Int64, *concurrency)
			}
			key := func(ci, round, w, n int) string {
				return fmt.Sprintf("c%d/%d/r%d/%d/%d_s0", ci, size, round, w, n)
			}
			for round := range *rounds {
				for ci, c := range clients {
					data := payload(size, byte(ci))
					r := run(c.name, "put", size, *concurrency, *duration, func(w, n int) error {
						if err := c.put(key(ci, round, w, n), data); err != nil {
							return err
						}
						if round == 0 {
							written[ci][w].Store(int64(n + 1))
						}
						return nil
					})
					r.Round = round
					check(enc.Encode(r))
				}
			}
			for round := range *rounds {
				for ci, c := range clients {
					r := run(c.name, "get", size, *concurrency, *duration, func(w, n int) error {
						k := key(ci, 0, w, n%int(max(written[ci][w].Load(), 1)))
						b, err := c.get(k)
						if err == nil && len(b) != size {
							err = fmt.Errorf("%s: %d bytes, want %d", k, len(b), size)
						}
						return err
					})
					r.Round = round
					check(enc.Encode(r))
				}
			}
		}
		check(unpacked.Close())
		check(signed.Close())
		check(packed.Close())
	}

}
