package fleetsim

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
)

// pipeWindow bounds the bytes written on a delayStream and not yet handed on, as TCP's window bounds what is in
// flight: a writer then waits, so gossipsub's bounded queues fill and drop when a receiver falls behind (as
// with the mocknet's own streams) instead of the backlog growing without bound (it took 16 GiB at 1,000
// members). 32 KiB at 250 ms is about 128 KiB/s per stream, some 100 gossipsub RPCs a second.
const pipeWindow = 32 << 10

// delayStream delays what is written on a stream by a latency without holding the writer: a link whose window
// keeps many messages in flight (Config.PipeLatency). The mocknet's own link latency holds each write of 256
// bytes or more until it has arrived, so one of its streams carries about two such messages per latency (one
// gossipsub RPC is one write): at 250 ms, 8 RPCs a second per peer, and a record queued behind others comes late
// by multiples of the latency (TestDelayStreamPipelines).
type delayStream struct {
	network.Stream
	d *atomic.Int64 // the latency in nanoseconds, read at each write (Config.SteadyLatency changes it)

	mu      sync.Mutex
	q       []delayed
	queued  int        // bytes in q
	running bool       // a flush goroutine runs while anything is queued
	cond    *sync.Cond // the queue shrank or emptied, or the stream failed
	err     error      // the first write error, or a reset: later writes fail with it
}

type delayed struct {
	b   []byte
	due time.Time
}

func newDelayStream(s network.Stream, d *atomic.Int64) *delayStream {
	ds := &delayStream{Stream: s, d: d}
	ds.cond = sync.NewCond(&ds.mu)
	return ds
}

func (s *delayStream) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for s.err == nil && s.queued > 0 && s.queued+len(p) > pipeWindow {
		s.cond.Wait()
	}
	if s.err != nil {
		return 0, s.err
	}
	s.q = append(s.q, delayed{b: append([]byte(nil), p...), due: time.Now().Add(time.Duration(s.d.Load()))})
	s.queued += len(p)
	if !s.running {
		s.running = true
		go s.flush()
	}
	return len(p), nil
}

// flush writes the queued messages in order, each when it is due, and returns once the queue is empty.
func (s *delayStream) flush() {
	for {
		s.mu.Lock()
		if len(s.q) == 0 || s.err != nil {
			s.q, s.queued, s.running = nil, 0, false
			s.cond.Broadcast()
			s.mu.Unlock()
			return
		}
		m := s.q[0]
		s.q = s.q[1:]
		s.mu.Unlock()
		time.Sleep(time.Until(m.due))
		_, err := s.Stream.Write(m.b)
		s.mu.Lock()
		s.queued -= len(m.b)
		if err != nil && s.err == nil {
			s.err = err
		}
		s.cond.Broadcast()
		s.mu.Unlock()
	}
}

// drain waits until what was written has been handed to the stream (or the stream failed).
func (s *delayStream) drain() {
	s.mu.Lock()
	for s.running {
		s.cond.Wait()
	}
	s.mu.Unlock()
}

func (s *delayStream) CloseWrite() error {
	s.drain()
	return s.Stream.CloseWrite()
}

func (s *delayStream) Close() error {
	s.drain()
	return s.Stream.Close()
}

func (s *delayStream) drop() {
	s.mu.Lock()
	if s.err == nil {
		s.err = network.ErrReset
	}
	s.q = nil
	s.cond.Broadcast()
	s.mu.Unlock()
}

func (s *delayStream) Reset() error {
	s.drop()
	return s.Stream.Reset()
}

func (s *delayStream) ResetWithError(code network.StreamErrorCode) error {
	s.drop()
	return s.Stream.ResetWithError(code)
}
