// Command gos3 is an independent S3 load client (minio-go) for cross-checking
// `piecestore bench`: the same puts or gets at the same concurrency against the
// same server, printing ops/s and latency percentiles as JSON.
package main

import (
	"bytes"
	"context"
	"crypto/rand"
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
)

func main() {
	endpoint := flag.String("endpoint", "", "http://127.0.0.1:PORT")
	bucket := flag.String("bucket", "", "bucket")
	op := flag.String("op", "put", "put or get")
	size := flag.Int("size", 4096, "object size")
	concurrency := flag.Int("concurrency", 16, "workers")
	duration := flag.Duration("duration", 10*time.Second, "how long")
	objects := flag.Int("objects", 1000, "objects to prepare for get")
	flag.Parse()

	u, err := url.Parse(*endpoint)
	if err != nil {
		panic(err)
	}
	client, err := minio.New(u.Host, &minio.Options{
		Creds:  credentials.NewStaticV4(os.Getenv("AWS_ACCESS_KEY_ID"), os.Getenv("AWS_SECRET_ACCESS_KEY"), ""),
		Secure: u.Scheme == "https",
		Region: "us-east-1",
	})
	if err != nil {
		panic(err)
	}
	ctx := context.Background()
	payload := make([]byte, *size)
	_, _ = rand.Read(payload)
	prefix := fmt.Sprintf("minio-go-%d", os.Getpid())
	put := func(key string) error {
		_, err := client.PutObject(ctx, *bucket, key, bytes.NewReader(payload), int64(len(payload)),
			minio.PutObjectOptions{DisableContentSha256: true, DisableMultipart: true})
		return err
	}
	if *op == "get" {
		for i := 0; i < *objects; i++ {
			if err := put(fmt.Sprintf("%s/p%d", prefix, i)); err != nil {
				panic(err)
			}
		}
	}
	var stop atomic.Bool
	var errors atomic.Int64
	lat := make([][]time.Duration, *concurrency)
	var wg sync.WaitGroup
	start := time.Now()
	for w := 0; w < *concurrency; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for n := 0; !stop.Load(); n++ {
				t0 := time.Now()
				var err error
				if *op == "put" {
					err = put(fmt.Sprintf("%s/w%d/%d", prefix, w, n))
				} else {
					var obj *minio.Object
					obj, err = client.GetObject(ctx, *bucket, fmt.Sprintf("%s/p%d", prefix, (w*7919+n)%*objects), minio.GetObjectOptions{})
					if err == nil {
						var b []byte
						b, err = io.ReadAll(obj)
						obj.Close()
						if err == nil && len(b) != *size {
							err = fmt.Errorf("short read")
						}
					}
				}
				if err != nil {
					errors.Add(1)
					continue
				}
				lat[w] = append(lat[w], time.Since(t0))
			}
		}(w)
	}
	time.Sleep(*duration)
	stop.Store(true)
	wg.Wait()
	elapsed := time.Since(start).Seconds()
	var all []time.Duration
	for _, l := range lat {
		all = append(all, l...)
	}
	sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
	pct := func(p float64) float64 {
		if len(all) == 0 {
			return 0
		}
		i := int(p * float64(len(all)))
		if i >= len(all) {
			i = len(all) - 1
		}
		return float64(all[i].Microseconds())
	}
	out, _ := json.Marshal(map[string]any{
		"client": "minio-go v7", "op": *op, "size": *size, "concurrency": *concurrency,
		"ops": len(all), "errors": errors.Load(), "seconds": elapsed,
		"ops_per_s": float64(len(all)) / elapsed, "p50_us": pct(0.5), "p99_us": pct(0.99),
	})
	fmt.Println(string(out))
}
