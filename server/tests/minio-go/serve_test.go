// Package miniogo drives `piecestore serve` with minio-go, an S3 client no one here wrote:
// the workspace's piecestore binary (built by `cargo test --workspace`) is started on
// 127.0.0.1 over a fresh directory, with fresh keys.
package miniogo

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

func token(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

// binary is target/debug/piecestore (or CARGO_TARGET_DIR's).
func binary(t *testing.T) string {
	target := os.Getenv("CARGO_TARGET_DIR")
	if target == "" {
		target = filepath.Join("..", "..", "..", "target")
	}
	p := filepath.Join(target, "debug", "piecestore")
	if _, err := os.Stat(p); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s is not built (cargo test --workspace builds it)", p)
		}
		t.Skipf("%s is not built", p)
	}
	abs, err := filepath.Abs(p)
	if err != nil {
		t.Fatal(err)
	}
	return abs
}

// serve starts `piecestore serve` and returns its host:port and keys.
func serve(t *testing.T) (string, string, string) {
	dir := t.TempDir()
	ak, sk := "minio-go-"+token(4), token(20)
	cmd := exec.Command(binary(t), "--store", filepath.Join(dir, "data"), "serve", "--listen", "127.0.0.1:0")
	cmd.Env = append(os.Environ(), "PIECESTORE_SERVE_ACCESS_KEY="+ak, "PIECESTORE_SERVE_SECRET_KEY="+sk,
		"XDG_CACHE_HOME="+filepath.Join(dir, "cache"))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
		}
		if strings.Contains(stderr.String(), sk) {
			t.Errorf("the secret is in the server's log")
		}
	})
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "listening on http://") {
		t.Fatalf("piecestore serve did not start: %q %v\n%s", line, err, stderr.String())
	}
	addr := strings.TrimPrefix(strings.Fields(line)[2], "http://")
	return addr, ak, sk
}

func TestMinioGoAgainstPiecestoreServe(t *testing.T) {
	addr, ak, sk := serve(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := minio.New(addr, &minio.Options{
		Creds:        credentials.NewStaticV4(ak, sk, ""),
		Region:       "us-east-1",
		BucketLookup: minio.BucketLookupPath,
	})
	if err != nil {
		t.Fatal(err)
	}
	ok, err := c.BucketExists(ctx, "pieces")
	if err != nil || !ok {
		t.Fatalf("bucket pieces: %v %v", ok, err)
	}

	// put, stat, get, ranged get
	body := []byte(strings.Repeat("piece bytes ", 1000))
	info, err := c.PutObject(ctx, "pieces", "42_s0", bytes.NewReader(body), int64(len(body)),
		minio.PutObjectOptions{ContentType: "application/octet-stream"})
	if err != nil {
		t.Fatalf("put: %v", err)
	}
	if len(info.ETag) != 8 {
		t.Errorf("ETag %q is not the 8-digit CRC32C", info.ETag)
	}
	st, err := c.StatObject(ctx, "pieces", "42_s0", minio.StatObjectOptions{})
	if err != nil || st.Size != int64(len(body)) || st.ETag != info.ETag {
		t.Fatalf("stat: %+v %v", st, err)
	}
	obj, err := c.GetObject(ctx, "pieces", "42_s0", minio.GetObjectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(obj)
	if err != nil || !bytes.Equal(got, body) {
		t.Fatalf("get: %d bytes, %v", len(got), err)
	}
	opts := minio.GetObjectOptions{}
	if err := opts.SetRange(100, 199); err != nil {
		t.Fatal(err)
	}
	obj, err = c.GetObject(ctx, "pieces", "42_s0", opts)
	if err != nil {
		t.Fatal(err)
	}
	got, err = io.ReadAll(obj)
	if err != nil || !bytes.Equal(got, body[100:200]) {
		t.Fatalf("ranged get: %q %v", got, err)
	}

	// immutability: other bytes under the key are refused
	_, err = c.PutObject(ctx, "pieces", "42_s0", bytes.NewReader([]byte("other")), 5, minio.PutObjectOptions{})
	var resp minio.ErrorResponse
	if !errors.As(err, &resp) || resp.StatusCode != http.StatusConflict || resp.Code != "PieceExists" {
		t.Fatalf("overwrite: %v", err)
	}
	// an invalid key is a clear 400
	_, err = c.PutObject(ctx, "pieces", "a//b", bytes.NewReader([]byte("x")), 1, minio.PutObjectOptions{})
	if !errors.As(err, &resp) || resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("invalid key: %v", err)
	}

	// listing, recursive and by "directory", in key order
	var want []string
	for i := 0; i < 12; i++ {
		k := "dir/" + string(rune('a'+i)) + "_s0"
		want = append(want, k)
		if _, err := c.PutObject(ctx, "pieces", k, bytes.NewReader([]byte(k)), int64(len(k)), minio.PutObjectOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	var listed []string
	for o := range c.ListObjects(ctx, "pieces", minio.ListObjectsOptions{Prefix: "dir/", Recursive: true, MaxKeys: 5}) {
		if o.Err != nil {
			t.Fatal(o.Err)
		}
		listed = append(listed, o.Key)
	}
	if !sort.StringsAreSorted(listed) || strings.Join(listed, ",") != strings.Join(want, ",") {
		t.Fatalf("listed %v", listed)
	}
	var top []string
	for o := range c.ListObjects(ctx, "pieces", minio.ListObjectsOptions{}) {
		if o.Err != nil {
			t.Fatal(o.Err)
		}
		top = append(top, o.Key)
	}
	if strings.Join(top, ",") != "42_s0,dir/" {
		t.Fatalf("top level: %v", top)
	}

	// a presigned GET through plain net/http
	u, err := c.PresignedGetObject(ctx, "pieces", "42_s0", time.Minute, nil)
	if err != nil {
		t.Fatal(err)
	}
	r, err := http.Get(u.String())
	if err != nil {
		t.Fatal(err)
	}
	got, _ = io.ReadAll(r.Body)
	r.Body.Close()
	if r.StatusCode != 200 || !bytes.Equal(got, body) {
		t.Fatalf("presigned: %d", r.StatusCode)
	}

	// multipart: 12 MiB in 5 MiB parts
	big := make([]byte, 12<<20)
	if _, err := rand.Read(big); err != nil {
		t.Fatal(err)
	}
	if _, err := c.PutObject(ctx, "pieces", "big_s0", bytes.NewReader(big), int64(len(big)),
		minio.PutObjectOptions{PartSize: 5 << 20}); err != nil {
		t.Fatalf("multipart put: %v", err)
	}
	obj, err = c.GetObject(ctx, "pieces", "big_s0", minio.GetObjectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	got, err = io.ReadAll(obj)
	if err != nil || !bytes.Equal(got, big) {
		t.Fatalf("multipart get: %d bytes, %v", len(got), err)
	}

	// delete one, delete many
	if err := c.RemoveObject(ctx, "pieces", "42_s0", minio.RemoveObjectOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.StatObject(ctx, "pieces", "42_s0", minio.StatObjectOptions{}); minio.ToErrorResponse(err).StatusCode != 404 {
		t.Fatalf("stat after delete: %v", err)
	}
	objects := make(chan minio.ObjectInfo, len(want))
	for _, k := range want {
		objects <- minio.ObjectInfo{Key: k}
	}
	close(objects)
	for e := range c.RemoveObjects(ctx, "pieces", objects, minio.RemoveObjectsOptions{}) {
		t.Fatalf("remove %s: %v", e.ObjectName, e.Err)
	}
	for o := range c.ListObjects(ctx, "pieces", minio.ListObjectsOptions{Prefix: "dir/", Recursive: true}) {
		t.Fatalf("left after RemoveObjects: %v %v", o.Key, o.Err)
	}

	// a wrong secret
	bad, _ := minio.New(addr, &minio.Options{Creds: credentials.NewStaticV4(ak, "not-the-secret", ""),
		Region: "us-east-1", BucketLookup: minio.BucketLookupPath})
	_, err = bad.StatObject(ctx, "pieces", "big_s0", minio.StatObjectOptions{})
	if minio.ToErrorResponse(err).StatusCode != http.StatusForbidden {
		t.Fatalf("wrong secret: %v", err)
	}
}
