package piecestore

// (No C definitions here: a file with //export may only declare.)

// #include <stddef.h>
// #include <stdint.h>
import "C"

import (
	"runtime/cgo"
	"sync"
)

// progressSink hands the library's progress reports to a caller's function: one call at a
// time (the library may report from two threads at once), and a panic in it is kept for the
// calling goroutine rather than unwound through the library's frames.
type progressSink struct {
	mu       sync.Mutex
	f        func(done, total uint64)
	panicked any
}

//export psGoProgress
func psGoProgress(ctx C.size_t, done, total C.uint64_t) {
	p := cgo.Handle(ctx).Value().(*progressSink)
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.panicked != nil {
		return
	}
	defer func() {
		if r := recover(); r != nil {
			p.panicked = r
		}
	}()
	p.f(uint64(done), uint64(total))
}
