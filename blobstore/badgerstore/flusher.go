package badgerstore

import (
	"sync"
	"sync/atomic"
)

// flushEvery is how much a long write lets pile up in the page cache before it starts a background sync.
const flushEvery = 64 << 20

// flusher runs sync in a background goroutine each time flushEvery more bytes were written, so that the disk
// writes while the pipeline reads and hashes, and the final, blocking sync finds little left to do. Without it a
// large write first fills the page cache at memory speed and then waits for all of it at disk speed.
type flusher struct {
	sync    func() error
	written atomic.Int64
	kick    chan struct{}
	done    chan struct{}
	once    sync.Once
	err     error // first sync error, read after close
}

func newFlusher(sync func() error) *flusher {
	f := &flusher{sync: sync, kick: make(chan struct{}, 1), done: make(chan struct{})}
	go func() {
		defer close(f.done)
		for range f.kick {
			if err := f.sync(); err != nil && f.err == nil {
				f.err = err
			}
		}
	}()
	return f
}

// add records n written bytes; safe for concurrent use.
func (f *flusher) add(n int) {
	if f.written.Add(int64(n)) >= flushEvery {
		f.written.Store(0)
		select {
		case f.kick <- struct{}{}:
		default: // a sync is pending already
		}
	}
}

// close waits for the background sync and returns its first error.
func (f *flusher) close() error {
	f.once.Do(func() { close(f.kick) })
	<-f.done
	return f.err
}
