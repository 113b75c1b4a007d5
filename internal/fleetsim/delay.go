package fleetsim

import (
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
)

// delayStream delays what is written on a stream by d without holding the writer: a link of latency d whose
// bandwidth keeps many messages in flight, as TCP's window does (Config.PipeLatency). The mocknet's own link
// latency holds each write of 256 bytes or more until it has arrived, so one of its streams carries about two
// such messages per latency (one gossipsub RPC is one write): at 250 ms, 8 RPCs a second per peer, and a record
// queued behind others comes late by multiples of the latency (TestDelayStreamPipelines).
type delayStream struct {
	network.Stream
	d time.Duration

	mu      sync.Mutex
	q       []delayed
	running bool       // a flush goroutine runs while anything is queued
	idle    *sync.Cond // signalled when the queue empties
	err     error      // the first write error, or a reset: later writes fail with it
}

type delayed struct {
	b   []byte
	due time.Time
}

func newDelayStream(s network.Stream, d time.Duration) *delayStream {
	ds := &delayStream{Stream: s, d: d}
	ds.idle = sync.NewCond(&ds.mu)
	return ds
}

func (s *delayStream) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return 0, s.err
	}
	s.q = append(s.q, delayed{b: append([]byte(nil), p...), due: time.Now().Add(s.d)})
	if !s.running {
		s.running = true
		go s.flush()
	}
	return len(p), nil
}

// flush writes the queued messages, each when it is due, in order, and returns once the queue is empty (the
// due times only grow, as every message waits the same d).
func (s *delayStream) flush() {
	for {
		s.mu.Lock()
		if len(s.q) == 0 || s.err != nil {
			s.q, s.running = nil, false
			s.idle.Broadcast()
			s.mu.Unlock()
			return
		}
		m := s.q[0]
		s.q = s.q[1:]
		s.mu.Unlock()
		time.Sleep(time.Until(m.due))
		if _, err := s.Stream.Write(m.b); err != nil {
			s.mu.Lock()
			if s.err == nil {
				s.err = err
			}
			s.mu.Unlock()
		}
	}
}

// drain waits until what was written has been handed to the stream (at most d, or until a reset).
func (s *delayStream) drain() {
	s.mu.Lock()
	for s.running {
		s.idle.Wait()
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
