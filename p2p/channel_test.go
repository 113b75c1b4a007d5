package p2p

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/libp2p/go-libp2p/core/peer"
)

const (
	testTopic = "/npu-agent/test/docs/1"
	testSync  = "/npu-agent/test/docs/sync/1.0.0"
)

// docBox is a Handler and Snapshot over a set of documents: "ok:*" is accepted once (then ignored), "bad:*" is
// invalid.
type docBox struct {
	mu    sync.Mutex
	docs  []string
	froms []peer.ID
	seen  []string // every document handled, kept or not
}

func (b *docBox) handle(_ context.Context, from peer.ID, data []byte) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := string(data)
	b.seen = append(b.seen, s)
	switch {
	case !strings.HasPrefix(s, "ok:"):
		return fmt.Errorf("invalid document %q", s)
	case slices.Contains(b.docs, s):
		return fmt.Errorf("%w: have %q", ErrIgnore, s)
	}
	b.docs = append(b.docs, s)
	b.froms = append(b.froms, from)
	return nil
}

func (b *docBox) snapshot() [][]byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make([][]byte, len(b.docs))
	for i, d := range b.docs {
		out[i] = []byte(d)
	}
	return out
}

func (b *docBox) has(doc string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Contains(b.docs, doc)
}

func openBox(t *testing.T, n *testNode) (*Channel, *docBox) {
	t.Helper()
	box := &docBox{}
	ch, err := n.OpenChannel(ChannelConfig{
		Topic: testTopic, SyncProtocol: testSync, MaxMessage: 64, MaxSync: 10,
		Handle: box.handle, Snapshot: box.snapshot,
	})
	if err != nil {
		t.Fatal(err)
	}
	return ch, box
}

func waitChannel(t *testing.T, a, b *testNode) {
	t.Helper()
	eventually(t, "peers on the channel topic", func() bool {
		return slices.Contains(a.PubSub().ListPeers(testTopic), b.ID()) &&
			slices.Contains(b.PubSub().ListPeers(testTopic), a.ID())
	})
}

func TestChannelGossipAndLateJoiner(t *testing.T) {
	t.Parallel()
	a, b := startNode(t, "", nil), startNode(t, "", nil)
	cha, boxA := openBox(t, a)
	_, boxB := openBox(t, b)
	connect(t, a, b)
	waitChannel(t, a, b)

	// The publisher takes its own document itself; the channel does not hand it back.
	boxA.mu.Lock()
	boxA.docs = append(boxA.docs, "ok:one")
	boxA.mu.Unlock()
	if err := cha.Publish(context.Background(), []byte("ok:one")); err != nil {
		t.Fatal(err)
	}
	eventually(t, "b to get the gossiped document", func() bool { return boxB.has("ok:one") })

	if err := cha.Publish(context.Background(), bytes.Repeat([]byte("x"), 65)); err == nil {
		t.Error("published a document over MaxMessage")
	}

	// A late joiner connected only to b pulls what b holds, though b is not its author.
	c := startNode(t, "", nil)
	_, boxC := openBox(t, c)
	connect(t, c, b)
	eventually(t, "late joiner to pull the document", func() bool { return boxC.has("ok:one") })
	boxC.mu.Lock()
	if boxC.froms[0] != b.ID() {
		t.Errorf("document came from %s, want b %s", boxC.froms[0], b.ID())
	}
	boxC.mu.Unlock()
}

func TestChannelRejectsInvalidGossip(t *testing.T) {
	t.Parallel()
	a, b, c := startNode(t, "", nil), startNode(t, "", nil), startNode(t, "", nil)
	cha, _ := openBox(t, a)
	_, boxB := openBox(t, b)
	_, boxC := openBox(t, c)
	connect(t, a, b)
	connect(t, b, c)
	waitChannel(t, a, b)
	waitChannel(t, b, c)

	// An invalid document reaches b, which rejects it and does not relay it to c; a valid one behind it does.
	if err := cha.Publish(context.Background(), []byte("bad:x")); err != nil {
		t.Fatal(err)
	}
	if err := cha.Publish(context.Background(), []byte("ok:after")); err != nil {
		t.Fatal(err)
	}
	eventually(t, "c to get the valid document through b", func() bool { return boxC.has("ok:after") })
	if boxC.has("bad:x") || boxB.has("bad:x") {
		t.Error("an invalid document was kept")
	}
	boxC.mu.Lock()
	defer boxC.mu.Unlock()
	if slices.Contains(boxC.seen, "bad:x") {
		t.Error("b relayed the invalid document to c")
	}
}

func TestChannelConfigChecked(t *testing.T) {
	t.Parallel()
	n := startNode(t, "", nil)
	ok := ChannelConfig{Topic: testTopic, SyncProtocol: testSync, MaxMessage: 10, MaxSync: 10,
		Handle: func(context.Context, peer.ID, []byte) error { return nil }, Snapshot: func() [][]byte { return nil }}
	for name, mod := range map[string]func(*ChannelConfig){
		"no topic":        func(c *ChannelConfig) { c.Topic = "" },
		"huge message":    func(c *ChannelConfig) { c.MaxMessage = MaxChannelMessage + 1 },
		"no sync bound":   func(c *ChannelConfig) { c.MaxSync = 0 },
		"no handler":      func(c *ChannelConfig) { c.Handle = nil },
		"no snapshot":     func(c *ChannelConfig) { c.Snapshot = nil },
		"negative bounds": func(c *ChannelConfig) { c.MaxMessage = -1 },
	} {
		cfg := ok
		mod(&cfg)
		if _, err := n.OpenChannel(cfg); err == nil {
			t.Errorf("%s: opened", name)
		}
	}
}

func TestReadChannelEntries(t *testing.T) {
	t.Parallel()
	entries := func(docs ...string) []byte {
		var b []byte
		for _, d := range docs {
			b = appendEntry(b, []byte(d))
		}
		return b
	}
	for _, tc := range []struct {
		name    string
		in      []byte
		want    []string
		wantErr bool
	}{
		{"empty", nil, nil, false},
		{"two", entries("a", "bc"), []string{"a", "bc"}, false},
		{"at limit", entries("12345678"), []string{"12345678"}, false},
		{"over limit", entries("123456789"), nil, true},
		{"zero length", []byte{0, 0, 0, 0}, nil, true},
		{"cut length", []byte{1, 0}, nil, true},
		{"cut body", append(entries("a"), 3, 0, 0, 0, 'x'), []string{"a"}, true},
	} {
		var got []string
		err := readEntries(bytes.NewReader(tc.in), 8, func(d []byte) bool {
			got = append(got, string(d))
			return true
		})
		if (err != nil) != tc.wantErr || !slices.Equal(got, tc.want) {
			t.Errorf("%s: got %q, %v; want %q, error %t", tc.name, got, err, tc.want, tc.wantErr)
		}
	}
}

func FuzzReadChannelEntries(f *testing.F) {
	f.Add(appendEntry(appendEntry(nil, []byte("doc")), []byte("x")))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff})
	f.Add([]byte{2, 0, 0, 0, 'a'})
	f.Fuzz(func(t *testing.T, in []byte) {
		total := 0
		_ = readEntries(bytes.NewReader(in), 1024, func(d []byte) bool {
			if len(d) == 0 || len(d) > 1024 {
				t.Fatalf("entry of %d bytes passed the bound", len(d))
			}
			total += entryLenPrefix + len(d)
			return true
		})
		if total > len(in) {
			t.Fatalf("read %d bytes of entries from %d bytes of input", total, len(in))
		}
	})
}

func TestSignAndVerifySignature(t *testing.T) {
	t.Parallel()
	a, b := startNode(t, "", nil), startNode(t, "", nil)
	msg := []byte("test/context\nhello")
	sig, err := a.Sign(msg)
	if err != nil {
		t.Fatal(err)
	}
	if err := VerifySignature(a.ID().String(), msg, sig); err != nil {
		t.Fatalf("own signature: %v", err)
	}
	for name, tc := range map[string]struct {
		id       string
		msg, sig []byte
	}{
		"other peer":  {b.ID().String(), msg, sig},
		"other msg":   {a.ID().String(), []byte("test/context\nhellO"), sig},
		"cut sig":     {a.ID().String(), msg, sig[:10]},
		"not an id":   {"not-a-peer-id", msg, sig},
		"empty sig":   {a.ID().String(), msg, nil},
		"empty id":    {"", msg, sig},
		"hashed id":   {"QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N", msg, sig},
		"garbage sig": {a.ID().String(), msg, bytes.Repeat([]byte{1}, 64)},
	} {
		if err := VerifySignature(tc.id, tc.msg, tc.sig); !errors.Is(err, ErrBadSignature) {
			t.Errorf("%s: %v, want ErrBadSignature", name, err)
		}
	}
}
