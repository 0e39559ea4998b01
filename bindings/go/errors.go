package piecestore

// #include "piecestore.h"
import "C"

import (
	"context"
	"errors"
	"fmt"
	"strconv"
)

// Sentinel errors, one per kind of failure; test for them with errors.Is. Every error a Store
// returns (other than a context's) is an *Error that wraps one of them.
var (
	// ErrNotFound: no piece under that key.
	ErrNotFound = errors.New("piecestore: piece not found")
	// ErrExists: a different piece already exists under that key (put without Overwrite).
	ErrExists = errors.New("piecestore: a different piece exists under that key")
	// ErrInvalidKey: the key breaks the key rules (empty, too long, ".." segments, not UTF-8).
	ErrInvalidKey = errors.New("piecestore: invalid key")
	// ErrInvalidRange: the range lies (partly) outside the piece.
	ErrInvalidRange = errors.New("piecestore: invalid range")
	// ErrInvalidConfig: the store URL or an option is invalid.
	ErrInvalidConfig = errors.New("piecestore: invalid config")
	// ErrBucketNotFound: the bucket the store names does not exist (and the create_bucket
	// option is off, the default outside the original's config layout). It wraps
	// ErrInvalidConfig, so errors.Is(err, ErrInvalidConfig) holds for it too.
	ErrBucketNotFound = fmt.Errorf("piecestore: bucket not found (%w)", ErrInvalidConfig)
	// ErrCorrupt: the stored bytes do not match their checksum (they are never returned).
	ErrCorrupt = errors.New("piecestore: corrupt piece")
	// ErrUnauthorized: the backend refused the credentials.
	ErrUnauthorized = errors.New("piecestore: unauthorized")
	// ErrBackend: the backend failed; (*Error).Retryable says whether a retry may succeed.
	ErrBackend = errors.New("piecestore: backend error")
	// ErrClosed: the store was closed.
	ErrClosed = errors.New("piecestore: store is closed")
	// ErrInvalidArgument: an argument the library cannot take (a NUL byte in the URL or an
	// option, an option that is not UTF-8).
	ErrInvalidArgument = errors.New("piecestore: invalid argument")
	// ErrInternal: the library failed in a way it does not expect (a bug: please report it).
	ErrInternal = errors.New("piecestore: internal error")
)

// Error is a failed operation's details. errors.Is(err, ErrNotFound) and the other sentinels
// match it by kind; errors.As gives the details.
type Error struct {
	// Kind is the sentinel of this kind of failure (ErrNotFound, ErrCorrupt, ...).
	Kind error
	// Message is the library's message; it names the key and the backend, never a secret.
	Message string
	// Key is the piece key the failure concerns, if any.
	Key string
	// Backend is the backend (shard) the failure concerns, if any.
	Backend string
	// Retryable says whether repeating the operation may succeed (timeouts, throttling).
	Retryable bool
}

// Error returns the message, prefixed with "piecestore: ".
func (e *Error) Error() string { return "piecestore: " + e.Message }

// Unwrap returns Kind, so that errors.Is matches the sentinel.
func (e *Error) Unwrap() error { return e.Kind }

func kindOf(st C.PsStatus) error {
	switch st {
	case C.PS_NOT_FOUND:
		return ErrNotFound
	case C.PS_ALREADY_EXISTS:
		return ErrExists
	case C.PS_INVALID_KEY:
		return ErrInvalidKey
	case C.PS_INVALID_RANGE:
		return ErrInvalidRange
	case C.PS_INVALID_CONFIG:
		return ErrInvalidConfig
	case C.PS_CORRUPT:
		return ErrCorrupt
	case C.PS_UNAUTHORIZED:
		return ErrUnauthorized
	case C.PS_BACKEND:
		return ErrBackend
	case C.PS_CLOSED:
		return ErrClosed
	case C.PS_BUCKET_NOT_FOUND:
		return ErrBucketNotFound
	case C.PS_INVALID_ARGUMENT:
		return ErrInvalidArgument
	default:
		return ErrInternal
	}
}

func goString(p *C.char) string {
	if p == nil {
		return ""
	}
	return C.GoString(p)
}

// failure converts a call's status and error into a Go error (and frees the C error). A
// cancelled call reports its context's error.
func failure(ctx context.Context, st C.PsStatus, cerr *C.PsError) error {
	defer C.ps_error_free(cerr)
	if st == C.PS_CANCELLED {
		if err := ctx.Err(); err != nil {
			return err
		}
		return context.Canceled
	}
	e := &Error{Kind: kindOf(st), Message: "failed with status " + strconv.Itoa(int(st))}
	if cerr != nil {
		e.Message = goString(C.ps_error_message(cerr))
		e.Key = goString(C.ps_error_key(cerr))
		e.Backend = goString(C.ps_error_backend(cerr))
		e.Retryable = bool(C.ps_error_retryable(cerr))
	}
	return e
}

var errClosed = &Error{Kind: ErrClosed, Message: "store is closed"}
