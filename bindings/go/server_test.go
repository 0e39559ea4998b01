package piecestore_test

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// s3Server is the real S3-compatible server the core's Rust suite also uses (s3s-fs, which
// checks SigV4 signatures), started on 127.0.0.1 for this test binary.
type s3Server struct {
	endpoint, accessKey, secretKey, dir string
	cmd                                 *exec.Cmd
}

var s3 *s3Server

func findS3sFs() string {
	if p, err := exec.LookPath("s3s-fs"); err == nil {
		return p
	}
	if home, err := os.UserHomeDir(); err == nil {
		p := filepath.Join(home, ".cargo", "bin", "s3s-fs")
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return ""
}

func token(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)[:n]
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// startS3 starts s3s-fs, or returns nil when it is not installed.
func startS3() (*s3Server, error) {
	bin := findS3sFs()
	if bin == "" {
		return nil, nil
	}
	dir, err := os.MkdirTemp("", "piecestore-go-s3s-")
	if err != nil {
		return nil, err
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	s := &s3Server{
		endpoint:  fmt.Sprintf("http://127.0.0.1:%d", port),
		accessKey: strings.ToUpper(token(20)),
		secretKey: token(40),
		dir:       dir,
	}
	s.cmd = exec.Command(bin, "--host", "127.0.0.1", "--port", fmt.Sprint(port),
		"--access-key", s.accessKey, "--secret-key", s.secretKey, dir)
	if err := s.cmd.Start(); err != nil {
		return nil, err
	}
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), 200*time.Millisecond); err == nil {
			c.Close()
			return s, nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	s.stop()
	return nil, fmt.Errorf("s3s-fs did not start on port %d", port)
}

func (s *s3Server) stop() {
	if s.cmd != nil && s.cmd.Process != nil {
		_ = s.cmd.Process.Kill()
		_ = s.cmd.Wait()
	}
	os.RemoveAll(s.dir)
}

// bucket creates a fresh bucket (for s3s-fs, a directory) and returns its URL.
func (s *s3Server) bucket(t testing.TB) string {
	name := "go-" + token(12)
	if err := os.Mkdir(filepath.Join(s.dir, name), 0o755); err != nil {
		t.Fatal(err)
	}
	return s.endpoint + "/" + name
}

func TestMain(m *testing.M) {
	if dir := os.Getenv("PIECESTORE_GO_CHILD_STORE"); dir != "" {
		os.Exit(childProcess(dir, os.Getenv("PIECESTORE_GO_CHILD_ID")))
	}
	srv, err := startS3()
	if err != nil {
		fmt.Fprintln(os.Stderr, "starting s3s-fs:", err)
		os.Exit(1)
	}
	if srv == nil && os.Getenv("CI") == "true" {
		fmt.Fprintln(os.Stderr, "CI=true but s3s-fs is not installed (bash scripts/test.sh installs it)")
		os.Exit(1)
	}
	s3 = srv
	code := m.Run()
	if srv != nil {
		srv.stop()
	}
	os.Exit(code)
}
