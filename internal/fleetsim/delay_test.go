package fleetsim

import (
	"bytes"
	"context"
	"io"
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
				s = newDelayStream(s, d)
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
