package fleetsim

import (
	"bytes"
	"context"
	"io"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	mocknet "github.com/libp2p/go-libp2p/p2p/net/mock"
)

// TestDelayStreamPipelines writes many gossipsub-sized messages back to back on one stream: over a mocknet link
// of latency d they arrive about two per d (the mocknet holds each write until it arrives), over delayStream all
// arrive about d after they were written, in order, and a Close right after the writes still delivers them.
func TestDelayStreamPipelines(t *testing.T) {
	t.Parallel()
	const d, msgs, size = 50 * time.Millisecond, 40, 300
	for _, tc := range []struct {
		name string
		pipe bool
	}{{"mocknet latency", false}, {"delayStream", true}} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			mn := mocknet.New()
			defer mn.Close()
			if !tc.pipe {
				mn.SetLinkDefaults(mocknet.LinkOptions{Latency: d})
			}
			a, err := mn.GenPeer()
			if err != nil {
				t.Fatal(err)
			}
			b, err := mn.GenPeer()
			if err != nil {
				t.Fatal(err)
			}
			if err := mn.LinkAll(); err != nil {
				t.Fatal(err)
			}
			got := make(chan []byte, 1)
			b.SetStreamHandler("/t", func(s network.Stream) {
				all, _ := io.ReadAll(s)
				got <- all
			})
			if _, err := mn.ConnectPeers(a.ID(), b.ID()); err != nil {
				t.Fatal(err)
			}
			s, err := a.NewStream(ctx, b.ID(), "/t")
			if err != nil {
				t.Fatal(err)
			}
			if tc.pipe {
				var lat atomic.Int64
				lat.Store(int64(d))
				s = newDelayStream(s, &lat)
			}
			var want []byte
			t0 := time.Now()
			for i := range msgs {
				m := bytes.Repeat([]byte{byte(i)}, size)
				want = append(want, m...)
				if _, err := s.Write(m); err != nil {
					t.Fatal(err)
				}
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			var all []byte
			select {
			case all = <-got:
			case <-ctx.Done():
				t.Fatal("stream not read to its end")
			}
			took := time.Since(t0)
			if !bytes.Equal(all, want) {
				t.Fatalf("read %d bytes, not the %d written in order", len(all), len(want))
			}
			// Mocknet: about msgs/2 × d (1 s); delayStream: d plus scheduling.
			if tc.pipe && (took < d || took > 8*d) {
				t.Errorf("delayStream: %d messages arrived after %v, want about %v", msgs, took, d)
			}
			if !tc.pipe && took < 8*d {
				t.Errorf("mocknet: %d messages arrived after %v: does its latency no longer hold writes?", msgs, took)
			}
			t.Logf("%d messages of %d bytes, latency %v: all arrived after %v", msgs, size, d, took)
		})
	}
}

// stuckStream is a stream whose peer does not read: writes block until it is reset.
type stuckStream struct {
	network.Stream
	reset chan struct{}
}

func (s *stuckStream) Write(p []byte) (int, error) {
	<-s.reset
	return 0, network.ErrReset
}

func (s *stuckStream) Reset() error {
	close(s.reset)
	return nil
}

// TestDelayStreamWindow: towards a peer that does not read, a writer may queue pipeWindow bytes and then waits,
// so gossipsub's own bounded queue takes the backlog; a reset ends the wait with an error.
func TestDelayStreamWindow(t *testing.T) {
	t.Parallel()
	var lat atomic.Int64
	lat.Store(int64(time.Millisecond))
	s := newDelayStream(&stuckStream{reset: make(chan struct{})}, &lat)
	const size = 1 << 10
	var written atomic.Int64
	done := make(chan error, 1)
	go func() {
		for range 2 * pipeWindow / size {
			if _, err := s.Write(make([]byte, size)); err != nil {
				done <- err
				return
			}
			written.Add(1)
		}
		done <- nil
	}()
	time.Sleep(200 * time.Millisecond)
	// The window, plus the message the flush goroutine holds.
	if n := written.Load(); n > pipeWindow/size+1 {
		t.Errorf("%d messages of %d bytes queued towards a peer that does not read, want at most %d", n, size, pipeWindow/size+1)
	}
	if err := s.Reset(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err == nil {
			t.Error("writes past the window succeeded after a reset")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a writer waiting on the window was not released by the reset")
	}
}
