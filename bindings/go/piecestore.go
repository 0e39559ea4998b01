// Package piecestore stores immutable pieces (erasure-coded segments of objects, from a few
// bytes to tens of MiB) on a local disk, in memory, or on any S3-compatible object store,
// through the PieceStore Rust core.
//
// The package is a thin layer over the core's C ABI (bindings/c): every check, checksum and
// retry happens in the core, the same as from Rust, Python and Node.
//
//	s, err := piecestore.Open("file:///var/lib/pieces")
//	if err != nil { ... }
//	defer s.Close()
//	err = s.Put(ctx, "1_s0", data)
//	b, err := s.Get(ctx, "1_s0")
//	if errors.Is(err, piecestore.ErrNotFound) { ... }
//
// A Store is safe for use by many goroutines at once. Every operation takes a
// context.Context: a cancelled context makes a running operation return the context's error
// promptly (whether a cancelled Put was stored is unknown, as for any interrupted write;
// repeating it is safe).
//
// Building needs the Rust library; see the README beside this file for static and dynamic
// linking.
package piecestore

// #cgo CFLAGS: -I${SRCDIR}/include -I${SRCDIR}/../c/include
// #include <stdlib.h>
// #include "piecestore.h"
// extern void psGoProgress(size_t ctx, uint64_t done, uint64_t total);
import "C"

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"iter"
	"runtime"
	"runtime/cgo"
	"strconv"
	"strings"
	"sync"
	"time"
	"unsafe"
)

// Store is an open piece store. Close it when done.
type Store struct {
	// mu guards h, closing and calls; done is signalled when the last call ends. Every call
	// into the library counts itself in calls, so Close frees the handle only once no call
	// uses it, while new calls fail at once with ErrClosed instead of queueing behind Close.
	mu      sync.Mutex
	done    sync.Cond
	h       *C.PsStore
	closing bool
	calls   int
	cleanup runtime.Cleanup
}

// acquire counts a call in and returns the handle, or nil once the store is closing.
func (s *Store) acquire() *C.PsStore {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return nil
	}
	s.calls++
	return s.h
}

// release counts a call out.
func (s *Store) release() {
	s.mu.Lock()
	s.calls--
	if s.calls == 0 && s.closing {
		s.done.Broadcast()
	}
	s.mu.Unlock()
}

// PieceInfo is a piece's metadata.
type PieceInfo struct {
	// Key is the piece key.
	Key string
	// Size is the piece's size in bytes.
	Size int64
	// CRC32C is the piece's checksum (valid when HasCRC32C).
	CRC32C uint32
	// HasCRC32C is false for a raw piece written by another tool, which reads cannot verify.
	HasCRC32C bool
	// LastModified is when the piece was stored.
	LastModified time.Time
}

// DeleteSummary is what DeletePrefix removed.
type DeleteSummary struct {
	// Pieces is how many pieces were deleted.
	Pieces int64
	// Bytes is their size in bytes.
	Bytes int64
}

// Option sets one option of Open.
type Option func(*options)

type options struct{ names, values []string }

func (o *options) set(name, value string) {
	o.names = append(o.names, name)
	o.values = append(o.values, value)
}

// WithOption sets an option by its name, as every PieceStore binding and the URL query take it
// (see docs/config.md): WithOption("pack_threshold", "512KiB"), WithOption("max_retries", "3").
func WithOption(name, value string) Option { return func(o *options) { o.set(name, value) } }

// WithShards spreads pieces over n buckets or directories; the URL holds a %d for the shard.
func WithShards(n int) Option { return WithOption("shards", strconv.Itoa(n)) }

// WithRegion sets the S3 region.
func WithRegion(region string) Option { return WithOption("region", region) }

// WithCredentials sets static S3 credentials (otherwise they come from the environment:
// AWS_ACCESS_KEY / AWS_SECRET_KEY or the standard AWS names).
func WithCredentials(accessKey, secretKey string) Option {
	return func(o *options) { o.set("access_key", accessKey); o.set("secret_key", secretKey) }
}

// WithSessionToken sets the session token of temporary S3 credentials.
func WithSessionToken(token string) Option { return WithOption("session_token", token) }

// WithPacking turns small-piece packing on or off (default: on for file and S3 stores).
func WithPacking(enabled bool) Option { return WithOption("pack", strconv.FormatBool(enabled)) }

// WithMaxRetries sets how often a failed backend request is retried.
func WithMaxRetries(n int) Option { return WithOption("max_retries", strconv.Itoa(n)) }

// WithRequestTimeout bounds each backend request.
func WithRequestTimeout(d time.Duration) Option { return WithOption("request_timeout", d.String()) }

// WithGetTimeout bounds each whole read (Get, a range, Head, Exists), retries included: past
// it the read fails with a retryable ErrBackend that names GetTimeout. Zero (the default): no
// bound but RequestTimeout per attempt. A Context deadline bounds one call the same way.
func WithGetTimeout(d time.Duration) Option { return WithOption("get_timeout", d.String()) }

// WithPutTimeout bounds each whole Put, retries included. A timed-out Put may still have
// stored its bytes; putting the same bytes again succeeds.
func WithPutTimeout(d time.Duration) Option { return WithOption("put_timeout", d.String()) }

// WithDeleteTimeout bounds each whole Delete, retries included.
func WithDeleteTimeout(d time.Duration) Option { return WithOption("delete_timeout", d.String()) }

// WithListTimeout bounds the wait for each next page of a listing, retries included.
func WithListTimeout(d time.Duration) Option { return WithOption("list_timeout", d.String()) }

// Open opens the store at url: "memory://", "file:///var/lib/pieces", a directory path,
// "s3://bucket/prefix?region=us-east-1", "http://127.0.0.1:9000/bucket" (MinIO, Ceph RGW
// path style), "https://bucket-%d.s3.us-east-1.amazonaws.com" with WithShards, or a
// config.toml path. Options override the URL; then the environment applies (BUCKET_URL,
// AWS_ACCESS_KEY, AWS_SECRET_KEY, AWS_SESSION_TOKEN, ...).
//
// Open checks an S3 bucket before it returns (unless check_bucket=false), so it may block for
// up to the connect and request timeouts and their retries.
func Open(url string, opts ...Option) (*Store, error) {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	for _, t := range append(append([]string{url}, o.names...), o.values...) {
		if strings.IndexByte(t, 0) >= 0 {
			return nil, &Error{Kind: ErrInvalidArgument, Message: "the store URL or an option contains a NUL byte"}
		}
	}
	cspec := C.CString(url)
	defer C.free(unsafe.Pointer(cspec))
	n := len(o.names)
	var names, values **C.char
	if n > 0 {
		size := C.size_t(n) * C.size_t(unsafe.Sizeof((*C.char)(nil)))
		names, values = (**C.char)(C.malloc(size)), (**C.char)(C.malloc(size))
		ns, vs := unsafe.Slice(names, n), unsafe.Slice(values, n)
		for i := range n {
			ns[i], vs[i] = C.CString(o.names[i]), C.CString(o.values[i])
		}
		defer func() {
			for i := range n {
				C.free(unsafe.Pointer(ns[i]))
				C.free(unsafe.Pointer(vs[i]))
			}
			C.free(unsafe.Pointer(names))
			C.free(unsafe.Pointer(values))
		}()
	}
	var h *C.PsStore
	var cerr *C.PsError
	if st := C.ps_open(cspec, names, values, C.size_t(n), &h, &cerr); st != C.PS_OK {
		return nil, failure(context.Background(), st, cerr)
	}
	s := &Store{h: h}
	s.done.L = &s.mu
	// A Store dropped without Close still frees its handle.
	s.cleanup = runtime.AddCleanup(s, func(h *C.PsStore) { C.ps_store_free(h) }, h)
	return s, nil
}

// Close writes any open packs, releases the store's files and frees it. Operations started
// after Close fail with ErrClosed at once; Close waits for the ones still running (cancel their
// contexts to end them sooner). Closing again, or concurrently, waits for the first Close and
// returns nil.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closing {
		for s.h != nil {
			s.done.Wait()
		}
		s.mu.Unlock()
		return nil
	}
	s.closing = true
	h := s.h
	s.mu.Unlock()

	// Safe beside running calls: the store stops taking new work and writes its open packs.
	var cerr *C.PsError
	st := C.ps_close(h, &cerr)

	s.mu.Lock()
	for s.calls > 0 {
		s.done.Wait()
	}
	s.cleanup.Stop()
	C.ps_store_free(h)
	s.h = nil
	s.done.Broadcast()
	s.mu.Unlock()
	if st != C.PS_OK {
		return failure(context.Background(), st, cerr)
	}
	return nil
}

// Closed reports whether Close was called (every call since fails with ErrClosed).
func (s *Store) Closed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closing
}

// call runs one library call with the store's handle and a cancellation token tied to ctx
// (none for a context that cannot be cancelled).
func (s *Store) call(ctx context.Context, f func(h *C.PsStore, c *C.PsCancel, e **C.PsError) C.PsStatus) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	h := s.acquire()
	if h == nil {
		return errClosed
	}
	defer s.release()
	var cerr *C.PsError
	var st C.PsStatus
	if ctx.Done() == nil {
		st = f(h, nil, &cerr)
	} else {
		tok := C.ps_cancel_new()
		fired := make(chan struct{})
		stop := context.AfterFunc(ctx, func() { C.ps_cancel(tok); close(fired) })
		st = f(h, tok, &cerr)
		if !stop() {
			<-fired // the cancel is running: the token must outlive it
		}
		C.ps_cancel_free(tok)
	}
	if st != C.PS_OK {
		return failure(ctx, st, cerr)
	}
	return nil
}

// str passes a Go string's bytes to C for the duration of a call (no copy).
func str(s string) (*C.uint8_t, C.size_t) {
	return (*C.uint8_t)(unsafe.Pointer(unsafe.StringData(s))), C.size_t(len(s))
}

// PutOption sets one option of Put.
type PutOption func(*putOptions)

type putOptions struct{ overwrite bool }

// Overwrite makes Put replace a piece that exists with different bytes instead of failing
// with ErrExists.
func Overwrite() PutOption { return func(o *putOptions) { o.overwrite = true } }

// Put stores data under key and returns once it is durable. Pieces are immutable: the same
// bytes again succeed; different bytes under an existing key fail with ErrExists unless
// Overwrite is given. data is copied before Put returns.
func (s *Store) Put(ctx context.Context, key string, data []byte, opts ...PutOption) error {
	var o putOptions
	for _, opt := range opts {
		opt(&o)
	}
	k, kl := str(key)
	d := (*C.uint8_t)(unsafe.Pointer(unsafe.SliceData(data)))
	return s.call(ctx, func(h *C.PsStore, c *C.PsCancel, e **C.PsError) C.PsStatus {
		return C.ps_put(h, k, kl, d, C.size_t(len(data)), C.bool(o.overwrite), c, e)
	})
}

// Item is one piece for PutMany.
type Item struct {
	Key  string // the piece key
	Data []byte // its bytes (copied before PutMany returns)
}

// packed lays n byte strings end to end in one buffer with n+1 offsets, the layout
// ps_put_many and ps_get_many take (one cgo argument each, and no Go pointer inside Go
// memory passed to C).
func packed(n int, item func(i int) []byte) ([]byte, []C.size_t) {
	total := 0
	for i := range n {
		total += len(item(i))
	}
	buf := make([]byte, 0, total)
	offsets := make([]C.size_t, n+1)
	for i := range n {
		buf = append(buf, item(i)...)
		offsets[i+1] = C.size_t(len(buf))
	}
	return buf, offsets
}

func bytesPtr(b []byte) *C.uint8_t { return (*C.uint8_t)(unsafe.Pointer(unsafe.SliceData(b))) }

// PutMany stores many pieces concurrently (the core bounds how many run at once) in one call
// and returns once each is durable or has failed. The first failure in item order is returned;
// the others are stored (puts are idempotent: retrying the whole call is safe). Overwrite
// applies to every item.
func (s *Store) PutMany(ctx context.Context, items []Item, opts ...PutOption) error {
	var o putOptions
	for _, opt := range opts {
		opt(&o)
	}
	keys, ko := packed(len(items), func(i int) []byte { return []byte(items[i].Key) })
	data, do := packed(len(items), func(i int) []byte { return items[i].Data })
	return s.call(ctx, func(h *C.PsStore, c *C.PsCancel, e **C.PsError) C.PsStatus {
		return C.ps_put_many(h, bytesPtr(keys), C.size_t(len(keys)), &ko[0], bytesPtr(data),
			C.size_t(len(data)), &do[0], C.size_t(len(items)), C.bool(o.overwrite), c, e)
	})
}

// GetMany reads many pieces concurrently in one call, each verified against its checksum, in
// the order of keys. The first failure in key order is returned (ErrNotFound for a missing
// piece), and then no piece.
func (s *Store) GetMany(ctx context.Context, keys []string) ([][]byte, error) {
	kb, ko := packed(len(keys), func(i int) []byte { return []byte(keys[i]) })
	out := make([]C.PsBytes, len(keys)+1) // +1: &out[0] is valid for no keys too
	err := s.call(ctx, func(h *C.PsStore, c *C.PsCancel, e **C.PsError) C.PsStatus {
		return C.ps_get_many(h, bytesPtr(kb), C.size_t(len(kb)), &ko[0], C.size_t(len(keys)), c, &out[0], e)
	})
	if err != nil {
		return nil, err
	}
	pieces := make([][]byte, len(keys))
	for i := range keys {
		pieces[i] = take(&out[i])
	}
	return pieces, nil
}

// take copies a read's bytes into Go memory and releases the library's buffer.
func take(b *C.PsBytes) []byte {
	// append, unlike make+copy, does not zero the memory it then overwrites.
	out := append([]byte{}, unsafe.Slice((*byte)(unsafe.Pointer(b.data)), int(b.len))...)
	C.ps_bytes_free(b)
	return out
}

// Get returns the piece under key, verified against its checksum (ErrCorrupt, never wrong
// bytes).
func (s *Store) Get(ctx context.Context, key string) ([]byte, error) {
	k, kl := str(key)
	var b C.PsBytes
	err := s.call(ctx, func(h *C.PsStore, c *C.PsCancel, e **C.PsError) C.PsStatus {
		return C.ps_get(h, k, kl, c, &b, e)
	})
	if err != nil {
		return nil, err
	}
	return take(&b), nil
}

// GetInto reads the piece under key, verified against its checksum, into buf and returns its
// size: one call into the library and one copy, with nothing to allocate or release (the
// fastest read for a caller that reuses buffers). A piece larger than buf is not read: the
// error wraps both ErrInvalidArgument and io.ErrShortBuffer, and n is the size buf needs.
func (s *Store) GetInto(ctx context.Context, key string, buf []byte) (n int, err error) {
	k, kl := str(key)
	var size C.uint64_t
	d := (*C.uint8_t)(unsafe.Pointer(unsafe.SliceData(buf)))
	err = s.call(ctx, func(h *C.PsStore, c *C.PsCancel, e **C.PsError) C.PsStatus {
		return C.ps_get_into(h, k, kl, d, C.size_t(len(buf)), c, &size, e)
	})
	if err != nil {
		if int(size) > len(buf) {
			return int(size), fmt.Errorf("%w (%w)", err, io.ErrShortBuffer)
		}
		return 0, err
	}
	return int(size), nil
}

// Buffer is a piece's bytes lent by the library without a copy (see GetBuffer). Bytes is
// valid until Release; a Buffer is not safe for concurrent Release.
type Buffer struct {
	b C.PsBytes
}

// Bytes returns the piece's bytes: read-only, and valid only until Release (nil after it).
func (b *Buffer) Bytes() []byte {
	if b.b.owner == nil {
		return nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(b.b.data)), int(b.b.len))
}

// Release gives the bytes back to the library; releasing twice is a no-op. It must be called:
// a Buffer is never released by the garbage collector (which could not know that a slice from
// Bytes is still in use), so a Buffer dropped without Release leaks its bytes.
func (b *Buffer) Release() {
	if b.b.owner != nil {
		C.ps_bytes_free(&b.b)
	}
}

// GetBuffer is Get without the copy into Go memory: the bytes stay in the library's buffer
// until Release. For large pieces, or readers that only pass the bytes on (hashing, writing to
// a socket or file); Get is the simpler choice otherwise.
func (s *Store) GetBuffer(ctx context.Context, key string) (*Buffer, error) {
	k, kl := str(key)
	buf := &Buffer{}
	err := s.call(ctx, func(h *C.PsStore, c *C.PsCancel, e **C.PsError) C.PsStatus {
		return C.ps_get(h, k, kl, c, &buf.b, e)
	})
	if err != nil {
		return nil, err
	}
	return buf, nil
}

// GetRange returns length bytes from offset of the piece under key (the whole piece is
// verified first). A range outside the piece fails with ErrInvalidRange.
func (s *Store) GetRange(ctx context.Context, key string, offset, length int64) ([]byte, error) {
	if offset < 0 || length < 0 {
		return nil, &Error{Kind: ErrInvalidRange, Key: key, Message: "invalid range " +
			strconv.FormatInt(offset, 10) + "+" + strconv.FormatInt(length, 10) + " for piece " + strconv.Quote(key) + ": negative"}
	}
	k, kl := str(key)
	var b C.PsBytes
	err := s.call(ctx, func(h *C.PsStore, c *C.PsCancel, e **C.PsError) C.PsStatus {
		return C.ps_get_range(h, k, kl, C.uint64_t(offset), C.uint64_t(length), c, &b, e)
	})
	if err != nil {
		return nil, err
	}
	return take(&b), nil
}

func info(key string, i *C.PsPieceInfo) PieceInfo {
	return PieceInfo{
		Key:          key,
		Size:         int64(i.size),
		CRC32C:       uint32(i.crc32c),
		HasCRC32C:    bool(i.has_crc32c),
		LastModified: time.Unix(0, int64(i.last_modified_unix_ns)),
	}
}

// Head returns the metadata of the piece under key.
func (s *Store) Head(ctx context.Context, key string) (PieceInfo, error) {
	k, kl := str(key)
	var i C.PsPieceInfo
	err := s.call(ctx, func(h *C.PsStore, c *C.PsCancel, e **C.PsError) C.PsStatus {
		return C.ps_head(h, k, kl, c, &i, e)
	})
	if err != nil {
		return PieceInfo{}, err
	}
	return info(key, &i), nil
}

// Exists reports whether a piece exists under key.
func (s *Store) Exists(ctx context.Context, key string) (bool, error) {
	k, kl := str(key)
	var ok C.bool
	err := s.call(ctx, func(h *C.PsStore, c *C.PsCancel, e **C.PsError) C.PsStatus {
		return C.ps_exists(h, k, kl, c, &ok, e)
	})
	return bool(ok), err
}

// Delete deletes the piece under key; deleting a missing piece succeeds.
func (s *Store) Delete(ctx context.Context, key string) error {
	k, kl := str(key)
	return s.call(ctx, func(h *C.PsStore, c *C.PsCancel, e **C.PsError) C.PsStatus {
		return C.ps_delete(h, k, kl, c, e)
	})
}

// DeletePrefix deletes every piece whose key starts with prefix, on every shard. An empty
// prefix (everything) is refused with ErrInvalidKey: delete a store's pieces by prefix.
func (s *Store) DeletePrefix(ctx context.Context, prefix string) (DeleteSummary, error) {
	p, pl := str(prefix)
	var pieces, bytes C.uint64_t
	err := s.call(ctx, func(h *C.PsStore, c *C.PsCancel, e **C.PsError) C.PsStatus {
		return C.ps_delete_prefix(h, p, pl, c, &pieces, &bytes, e)
	})
	return DeleteSummary{Pieces: int64(pieces), Bytes: int64(bytes)}, err
}

// Flush writes every shard's open pack now and waits until it is durable. Puts already wait
// for their own pack; Flush is for a caller that wants the open packs out (before a snapshot).
func (s *Store) Flush(ctx context.Context) error {
	return s.call(ctx, func(h *C.PsStore, c *C.PsCancel, e **C.PsError) C.PsStatus {
		return C.ps_flush(h, c, e)
	})
}

// GcOptions tunes one garbage collection; the zero value takes the store's configuration.
type GcOptions struct {
	// Grace is how long compacted packs wait before they are deleted (readers that looked a
	// piece up before the compaction may still read the old pack). Nil: the store's
	// Pack.Grace. A pointer so that 0 (delete at once) can be asked for.
	Grace *time.Duration
	// GarbageRatio: compact packs with at least this share of garbage (0 to 1). Nil: the
	// store's Pack.GarbageRatio.
	GarbageRatio *float64
	// DryRun only reports what would be done.
	DryRun bool
	// Progress, when set, is called with the bytes processed and the bytes to process, one
	// call at a time, from a thread of the library while Gc runs.
	Progress func(done, total uint64)
}

// GcReport is what a garbage collection did, summed over shards (piecestore gc --json).
type GcReport struct {
	PacksBefore       uint64        `json:"packs_before"`       // packs before
	PacksAfter        uint64        `json:"packs_after"`        // packs after (live and doomed)
	PacksCompacted    uint64        `json:"packs_compacted"`    // packs whose live pieces were copied out
	PacksWritten      uint64        `json:"packs_written"`      // new packs written
	PacksDeleted      uint64        `json:"packs_deleted"`      // compacted packs deleted (grace over)
	PacksDoomed       uint64        `json:"packs_doomed"`       // compacted packs still in their grace period
	PiecesMoved       uint64        `json:"pieces_moved"`       // pieces copied into new packs
	BytesMoved        uint64        `json:"bytes_moved"`        // their bytes
	BytesReclaimed    uint64        `json:"bytes_reclaimed"`    // storage freed by deleting packs
	TombstonesDropped uint64        `json:"tombstones_dropped"` // tombstones no pack needs any more
	PacksDamaged      uint64        `json:"packs_damaged"`      // packs left alone because damaged (Fsck names them)
	Doomed            DoomedSummary `json:"doomed"`             // the compacted packs left after this run
}

// DoomedSummary describes the compacted packs that wait for their grace period.
type DoomedSummary struct {
	Packs uint64 `json:"packs"` // how many
	Bytes uint64 `json:"bytes"` // their bytes: what deleting them frees
	// FirstDueMs is when the first may be deleted, in Unix milliseconds; nil when none waits.
	FirstDueMs *uint64 `json:"first_due_ms"`
	// LastDueMs is when the last may be deleted, in Unix milliseconds; nil when none waits.
	LastDueMs *uint64 `json:"last_due_ms"`
	// GraceMs is the grace period these times were computed with, in milliseconds.
	GraceMs uint64 `json:"grace_ms"`
}

// Gc collects a packed store's garbage (piecestore gc): it deletes compacted packs whose grace
// period is over, rewrites packs whose garbage passed the ratio and merges undersized ones.
// It is safe while other goroutines and processes read and write the store. An unpacked store
// has nothing to collect (a zero report).
func (s *Store) Gc(ctx context.Context, opts GcOptions) (GcReport, error) {
	grace := C.int64_t(-1)
	if opts.Grace != nil {
		if *opts.Grace < 0 {
			return GcReport{}, &Error{Kind: ErrInvalidArgument, Message: "negative grace " + opts.Grace.String()}
		}
		grace = C.int64_t(opts.Grace.Milliseconds())
	}
	ratio := C.double(-1)
	if opts.GarbageRatio != nil {
		if r := *opts.GarbageRatio; !(r >= 0 && r <= 1) {
			return GcReport{}, &Error{Kind: ErrInvalidArgument, Message: "garbage ratio " +
				strconv.FormatFloat(r, 'g', -1, 64) + " is not between 0 and 1"}
		}
		ratio = C.double(*opts.GarbageRatio)
	}
	var b C.PsBytes
	p, done := withProgress(opts.Progress)
	err := s.call(ctx, func(h *C.PsStore, c *C.PsCancel, e **C.PsError) C.PsStatus {
		return C.ps_gc(h, grace, ratio, C.bool(opts.DryRun), p, c, &b, e)
	})
	done()
	var r GcReport
	if err != nil {
		return r, err
	}
	return r, report(&b, &r)
}

// FsckProblem is one thing Fsck found wrong.
type FsckProblem struct {
	Shard int     `json:"shard"` // the shard
	Pack  *string `json:"pack"`  // the pack object, when the problem is in or about a pack
	Key   *string `json:"key"`   // the piece key, when one piece is concerned
	What  string  `json:"what"`  // what is wrong
}

// FsckReport is what a check found, summed over shards (piecestore fsck --json).
type FsckReport struct {
	Packs             uint64        `json:"packs"`              // pack objects read
	Bytes             uint64        `json:"bytes"`              // their bytes
	Records           uint64        `json:"records"`            // records (pieces and tombstones) verified
	Entries           uint64        `json:"entries"`            // index entries checked
	PackedPieces      uint64        `json:"packed_pieces"`      // packed pieces checked against their packs
	Objects           uint64        `json:"objects"`            // pieces stored as objects of their own, verified
	ObjectBytes       uint64        `json:"object_bytes"`       // their bytes
	ObjectsUnverified uint64        `json:"objects_unverified"` // objects without a checksum anywhere
	Problems          []FsckProblem `json:"problems"`           // what is wrong (after the rebuild, when one ran)
	// ProblemsBeforeRebuild are the problems found before the rebuild (nil without one).
	ProblemsBeforeRebuild []FsckProblem `json:"problems_before_rebuild"`
	// RebuiltPieces counts the pieces the rebuild indexed (nil without one).
	RebuiltPieces *uint64 `json:"rebuilt_pieces"`
}

// Clean reports whether the check found nothing wrong.
func (r FsckReport) Clean() bool { return len(r.Problems) == 0 }

// FsckOptions tunes Fsck; the zero value checks and repairs nothing.
type FsckOptions struct {
	// RebuildIndex rebuilds each shard's index from its packs alone, then checks again.
	RebuildIndex bool
	// Progress, when set, is called with the bytes read so far as packs are read (total is
	// 0: unknown), one call at a time, from a thread of the library while Fsck runs.
	Progress func(done, total uint64)
}

// Fsck checks a packed store (piecestore fsck): every pack's records against their checksums,
// every index entry against its pack, orphan packs and dangling entries. With
// opts.RebuildIndex it then rebuilds each shard's index from the packs alone and checks again.
// Problems are the report's, not an error: the error says only that the check could not run.
func (s *Store) Fsck(ctx context.Context, opts FsckOptions) (FsckReport, error) {
	var b C.PsBytes
	p, done := withProgress(opts.Progress)
	err := s.call(ctx, func(h *C.PsStore, c *C.PsCancel, e **C.PsError) C.PsStatus {
		return C.ps_fsck(h, C.bool(opts.RebuildIndex), p, c, &b, e)
	})
	done()
	var r FsckReport
	if err != nil {
		return r, err
	}
	return r, report(&b, &r)
}

// withProgress gives f to one library call as a *C.PsProgress (nil when f is nil). The
// returned func, called once the library call has returned, lets go of f and re-raises in the
// calling goroutine a panic f raised.
func withProgress(f func(done, total uint64)) (*C.PsProgress, func()) {
	if f == nil {
		return nil, func() {}
	}
	sink := &progressSink{f: f}
	h := cgo.NewHandle(sink)
	p := &C.PsProgress{call: (*[0]byte)(C.psGoProgress), ctx: C.size_t(h)}
	return p, func() {
		h.Delete()
		sink.mu.Lock()
		r := sink.panicked
		sink.mu.Unlock()
		if r != nil {
			panic(r)
		}
	}
}

// report decodes a report the library encoded as JSON, and releases its bytes.
func report(b *C.PsBytes, into any) error {
	if err := json.Unmarshal(take(b), into); err != nil {
		return &Error{Kind: ErrInternal, Message: "undecodable report: " + err.Error()}
	}
	return nil
}

// Metrics returns the store's operation metrics in the Prometheus text exposition format
// (0.0.4): piecestore_operations_total, piecestore_operation_errors_total (by kind, the error
// codes), piecestore_operation_bytes_total and the histogram
// piecestore_operation_duration_seconds, each labelled backend, shard and op. It is a snapshot
// of in-memory counters (no I/O), to serve from an HTTP handler for Prometheus to scrape; with
// WithOption("metrics", "false") only the HELP and TYPE lines remain. ErrClosed after Close.
func (s *Store) Metrics() (string, error) {
	var b C.PsBytes
	err := s.call(context.Background(), func(h *C.PsStore, _ *C.PsCancel, e **C.PsError) C.PsStatus {
		return C.ps_metrics(h, &b, e)
	})
	if err != nil {
		return "", err
	}
	return string(take(&b)), nil
}

// MigrateOptions tunes MigrateTo; the zero value copies with 16 pieces in flight.
type MigrateOptions struct {
	DryRun      bool // only count: look each piece up at the destination, copy nothing
	Concurrency int  // pieces in flight at once (0: 16, at most 4096)
	// Progress, when set, is called after every piece with the pieces handled and the pieces
	// in the source, one call at a time, from a thread of the library while MigrateTo runs.
	Progress func(done, total uint64)
}

// MigrateReport is what MigrateTo did.
type MigrateReport struct {
	TotalPieces uint64           `json:"total_pieces"` // pieces in the source
	TotalBytes  uint64           `json:"total_bytes"`  // their bytes
	DonePieces  uint64           `json:"done_pieces"`  // pieces handled (copied, skipped or failed)
	DoneBytes   uint64           `json:"done_bytes"`   // their bytes
	Copied      uint64           `json:"copied"`       // pieces copied (or, dry, that would be)
	CopiedBytes uint64           `json:"copied_bytes"` // bytes copied (or that would be)
	Skipped     uint64           `json:"skipped"`      // pieces already at the destination, same size and checksum
	Failed      uint64           `json:"failed"`       // pieces that failed
	Failures    []MigrateFailure `json:"failures"`     // each failed piece
}

// MigrateFailure is one piece MigrateTo could not copy.
type MigrateFailure struct {
	Key     string `json:"key"`     // the piece key
	Code    string `json:"code"`    // the error's stable code (PIECE_NOT_FOUND, PIECE_EXISTS, ...)
	Message string `json:"message"` // what went wrong
}

// MigrateTo copies every piece of s into dest (piecestore migrate), verifying each: the source
// read against its CRC32C, and afterwards the destination's size and checksum. Pieces already
// at dest with the same size and checksum are skipped, so an interrupted run resumes by running
// again. A piece that fails is listed in the report and the run goes on; the error is for a
// source that cannot be listed (or a cancelled ctx).
func (s *Store) MigrateTo(ctx context.Context, dest *Store, opts MigrateOptions) (MigrateReport, error) {
	var r MigrateReport
	if opts.Concurrency < 0 {
		return r, &Error{Kind: ErrInvalidArgument, Message: "negative concurrency " + strconv.Itoa(opts.Concurrency)}
	}
	if dest == nil {
		return r, &Error{Kind: ErrInvalidArgument, Message: "dest is nil"}
	}
	d := dest.acquire()
	if d == nil {
		return r, errClosed
	}
	defer dest.release()
	var b C.PsBytes
	p, done := withProgress(opts.Progress)
	err := s.call(ctx, func(h *C.PsStore, c *C.PsCancel, e **C.PsError) C.PsStatus {
		return C.ps_migrate_to(h, d, C.bool(opts.DryRun), C.size_t(opts.Concurrency), p, c, &b, e)
	})
	done()
	if err != nil {
		return r, err
	}
	return r, report(&b, &r)
}

// Inventory is what a store holds (Store.Inventory; piecestore profile --json).
type Inventory struct {
	Pieces     uint64           `json:"pieces"`      // pieces on the shard their key belongs to (what Get reads)
	Bytes      uint64           `json:"bytes"`       // their bytes
	MinSize    uint64           `json:"min_size"`    // the smallest piece (0 without pieces)
	MaxSize    uint64           `json:"max_size"`    // the largest piece
	Sizes      []SizeBucket     `json:"sizes"`       // pieces by size, power-of-two buckets, non-empty ones, smallest first
	Shards     []ShardInventory `json:"shards"`      // each shard's share
	BytesSkew  float64          `json:"bytes_skew"`  // the fullest shard's bytes over the mean (1: balanced)
	PiecesSkew float64          `json:"pieces_skew"` // the fullest shard's piece count over the mean
	Orphans    Orphans          `json:"orphans"`     // objects no Get can reach
	Packs      *PackStats       `json:"packs"`       // pack fill and garbage; nil when the store does not pack
}

// SizeBucket counts the pieces of Min to Max bytes.
type SizeBucket struct {
	Min    uint64 `json:"min"`    // the smallest size in the bucket
	Max    uint64 `json:"max"`    // the largest (0 or a power of two)
	Pieces uint64 `json:"pieces"` // pieces in the bucket
	Bytes  uint64 `json:"bytes"`  // their bytes
}

// ShardInventory is one shard's share of a store.
type ShardInventory struct {
	Shard   int    `json:"shard"`   // the shard index
	Backend string `json:"backend"` // its backend, as a label without credentials
	Pieces  uint64 `json:"pieces"`  // pieces that belong here
	Bytes   uint64 `json:"bytes"`   // their bytes
	Orphans uint64 `json:"orphans"` // orphans found on this shard
}

// Orphans counts the objects no Get can reach, by why.
type Orphans struct {
	Misplaced      uint64         `json:"misplaced"`       // valid keys on a shard other than their own
	MisplacedBytes uint64         `json:"misplaced_bytes"` // their bytes
	Temp           uint64         `json:"temp"`            // temp files of writes that never finished
	Foreign        uint64         `json:"foreign"`         // objects whose names are no piece keys
	Internal       uint64         `json:"internal"`        // PieceStore's own leftovers under .piecestore/
	OtherBytes     uint64         `json:"other_bytes"`     // bytes of temp, foreign and internal objects
	Samples        []OrphanSample `json:"samples"`         // some of them
}

// OrphanSample names one orphan object.
type OrphanSample struct {
	Shard int    // the shard it is on
	Key   string // its key (object name)
	Why   string // why no Get reaches it
}

// UnmarshalJSON reads the report's [shard, key, why] triple.
func (o *OrphanSample) UnmarshalJSON(b []byte) error {
	var t [3]json.RawMessage
	if err := json.Unmarshal(b, &t); err != nil {
		return err
	}
	if err := json.Unmarshal(t[0], &o.Shard); err != nil {
		return err
	}
	if err := json.Unmarshal(t[1], &o.Key); err != nil {
		return err
	}
	return json.Unmarshal(t[2], &o.Why)
}

// PackStats is a packed store's pack fill and garbage.
type PackStats struct {
	Packs        uint64  `json:"packs"`         // pack objects
	Doomed       uint64  `json:"doomed"`        // of which compacted, waiting for their grace period
	Pieces       uint64  `json:"pieces"`        // pieces in packs
	Bytes        uint64  `json:"bytes"`         // pack bytes
	LiveBytes    uint64  `json:"live_bytes"`    // bytes of live pieces in packs
	Fill         float64 `json:"fill"`          // live bytes over pack bytes
	GarbageRatio float64 `json:"garbage_ratio"` // dead bytes over pack bytes
}

// InventoryOptions tunes Inventory; the zero value names up to 20 orphans.
type InventoryOptions struct {
	// MaxOrphanSamples is how many orphan objects are named (0: 20).
	MaxOrphanSamples int
	// Progress, when set, is called with the objects listed so far, every 1,000 (total is 0:
	// unknown), one call at a time, from a thread of the library while Inventory runs.
	Progress func(done, total uint64)
}

// Inventory says what the store holds (piecestore profile), from one listing of every shard:
// pieces, bytes and sizes, each shard's share, orphan objects (up to opts.MaxOrphanSamples
// named) and a packed store's fill and garbage.
func (s *Store) Inventory(ctx context.Context, opts InventoryOptions) (Inventory, error) {
	var inv Inventory
	if opts.MaxOrphanSamples < 0 {
		return inv, &Error{Kind: ErrInvalidArgument, Message: "negative MaxOrphanSamples " + strconv.Itoa(opts.MaxOrphanSamples)}
	}
	var b C.PsBytes
	p, done := withProgress(opts.Progress)
	err := s.call(ctx, func(h *C.PsStore, c *C.PsCancel, e **C.PsError) C.PsStatus {
		return C.ps_inventory(h, C.size_t(opts.MaxOrphanSamples), p, c, &b, e)
	})
	done()
	if err != nil {
		return inv, err
	}
	return inv, report(&b, &inv)
}

// Description is how a store is laid out (Describe).
type Description struct {
	ShardCount  int      `json:"shard_count"`  // number of shards (1 when not sharded)
	ShardLabels []string `json:"shard_labels"` // each shard's backend, without credentials
	Placement   string   `json:"placement"`    // how keys map to shards: "fnv-mod" (the original's) or "jump"
	Packing     string   `json:"packing"`      // whether and how small pieces are packed, in words
}

// Describe says how the store is laid out: its shards (each backend as a label without
// credentials), how keys are placed on them, and how small pieces are packed. No I/O.
func (s *Store) Describe() (Description, error) {
	var b C.PsBytes
	err := s.call(context.Background(), func(h *C.PsStore, _ *C.PsCancel, e **C.PsError) C.PsStatus {
		return C.ps_describe(h, &b, e)
	})
	var d Description
	if err != nil {
		return d, err
	}
	return d, report(&b, &d)
}

// ShardOf returns the shard (0-based) that holds key, by the store's placement. No I/O; any
// UTF-8 string is placed.
func (s *Store) ShardOf(key string) (int, error) {
	k, kl := str(key)
	var n C.size_t
	err := s.call(context.Background(), func(h *C.PsStore, _ *C.PsCancel, e **C.PsError) C.PsStatus {
		return C.ps_shard_of(h, k, kl, &n, e)
	})
	return int(n), err
}

// ClearCache empties the pieces cache's tiers (memory, and the disk tier's files), as
// `piecestore cache clear` does; the pieces stay in the store. It returns false when the store
// has no cache. Never needed for correctness: pieces are immutable, and deletes invalidate at
// once.
func (s *Store) ClearCache(ctx context.Context) (bool, error) {
	var had C.bool
	err := s.call(ctx, func(h *C.PsStore, c *C.PsCancel, e **C.PsError) C.PsStatus {
		return C.ps_clear_cache(h, c, &had, e)
	})
	return bool(had), err
}

// Walk calls fn for every piece whose key starts with prefix (empty: all), in no particular
// order across shards, and stops at fn's first error, which it returns.
func (s *Store) Walk(ctx context.Context, prefix string, fn func(PieceInfo) error) error {
	p, pl := str(prefix)
	var list *C.PsList
	err := s.call(ctx, func(h *C.PsStore, _ *C.PsCancel, e **C.PsError) C.PsStatus {
		return C.ps_list_open(h, p, pl, &list, e)
	})
	if err != nil {
		return err
	}
	// The listing holds its own reference to the store's backends: no lock is needed while
	// fn runs (fn may use the store, even close it).
	defer C.ps_list_free(list)
	for {
		var i C.PsPieceInfo
		var more C.bool
		err := s.call(ctx, func(_ *C.PsStore, c *C.PsCancel, e **C.PsError) C.PsStatus {
			return C.ps_list_next(list, c, &i, &more, e)
		})
		if err != nil {
			return err
		}
		if !more {
			return nil
		}
		key := C.GoStringN((*C.char)(unsafe.Pointer(i.key)), C.int(i.key_len))
		if err := fn(info(key, &i)); err != nil {
			return err
		}
	}
}

// List returns the pieces whose key starts with prefix as an iterator; an error ends it,
// yielded as the last pair:
//
//	for p, err := range s.List(ctx, "1_") { if err != nil { ... }; use(p) }
func (s *Store) List(ctx context.Context, prefix string) iter.Seq2[PieceInfo, error] {
	return func(yield func(PieceInfo, error) bool) {
		err := s.Walk(ctx, prefix, func(p PieceInfo) error {
			if !yield(p, nil) {
				return errStopped
			}
			return nil
		})
		if err != nil && err != errStopped {
			yield(PieceInfo{}, err)
		}
	}
}

// errStopped ends a Walk when the caller of List stops iterating; it never reaches the caller.
var errStopped = errors.New("piecestore: iteration stopped")
