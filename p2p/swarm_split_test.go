package p2p

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/npu-agent/npu-agent/blobstore"
	"github.com/npu-agent/npu-agent/internal/hostile"
)

func TestGetRangeDecode(t *testing.T) {
	t.Parallel()
	c := testCID("blob")
	for _, tc := range []struct {
		name         string
		p            []byte
		ok           bool
		i, off, size uint32
	}{
		{"whole chunk", encodeGetRange(c, 3, 0, blobstore.ChunkSize), true, 3, 0, blobstore.ChunkSize},
		{"tail", encodeGetRange(c, 0, 1000, 24), true, 0, 1000, 24},
		{"empty", encodeGetRange(c, 0, 0, 0), false, 0, 0, 0},
		{"past a chunk", encodeGetRange(c, 0, 1, blobstore.ChunkSize), false, 0, 0, 0},
		{"offset overflow", encodeGetRange(c, 0, 0xffffffff, 2), false, 0, 0, 0},
		{"index past a maximal blob", encodeGetRange(c, maxChunks, 0, 1), false, 0, 0, 0},
		{"truncated", encodeGetRange(c, 0, 0, 1)[:20], false, 0, 0, 0},
		{"trailing byte", append(encodeGetRange(c, 0, 0, 1), 0), false, 0, 0, 0},
		{"cid length past end", []byte{200, 1, 2}, false, 0, 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			req, err := decodeRequest(msgGetRange, tc.p)
			if !tc.ok {
				if !errors.Is(err, ErrProtocol) {
					t.Fatalf("err = %v, want ErrProtocol", err)
				}
				return
			}
			if err != nil || !req.Blob.Equals(c) || req.Index != tc.i || req.Off != tc.off || req.Len != tc.size {
				t.Fatalf("got %+v, %v", req, err)
			}
		})
	}
}

// FuzzDecodeGetRange: any payload decodes to a range within one chunk of a maximal blob, or to ErrProtocol.
func FuzzDecodeGetRange(f *testing.F) {
	c := testCID("blob")
	f.Add(encodeGetRange(c, 1, 100, 200))
	f.Add(encodeGetRange(c, 0, blobstore.ChunkSize-1, 2))
	f.Add([]byte{0})
	f.Fuzz(func(t *testing.T, p []byte) {
		req, err := decodeRequest(msgGetRange, p)
		if err != nil {
			if !errors.Is(err, ErrProtocol) {
				t.Fatalf("error %v is not ErrProtocol", err)
			}
			return
		}
		if req.Len == 0 || uint64(req.Off)+uint64(req.Len) > blobstore.ChunkSize || req.Index >= maxChunks {
			t.Fatalf("accepted %+v", req)
		}
		if !bytes.Equal(encodeGetRange(req.Blob, int(req.Index), int(req.Off), int(req.Len)), p) {
			t.Fatal("does not re-encode to its input")
		}
	})
}

// The server answers GET_RANGE with the bytes of a stored chunk, NO_CHUNK for one it lacks, and bad request for
// a range past the chunk's end; a seed with chunks not yet delivered answers NO_CHUNK.
func TestServeRange(t *testing.T) {
	t.Parallel()
	data := randomBlob(t, 2*blobstore.ChunkSize+1000)
	holder := startNode(t, "", nil)
	blob := put(t, holder, data)
	client := startNode(t, "", nil)
	connect(t, client, holder)
	ask := func(i, off, n int) (msgType, []byte, error) {
		st, done, err := rpc(context.Background(), client.h, holder.ID(), msgGetRange, encodeGetRange(blob, i, off, n), 5*time.Second)
		if err != nil {
			return 0, nil, err
		}
		defer done()
		return readResponse(st, nil, msgRange, msgNoChunk)
	}
	// A seed refuses ranges while chunks have not been delivered.
	if typ, _, err := ask(1, 0, 10); err != nil || typ != msgNoChunk {
		t.Fatalf("seed with unsent chunks: %s, %v", typ, err)
	}
	delivered(holder, blob)
	for _, tc := range []struct {
		name      string
		i, off, n int
		want      msgType
		err       error
	}{
		{"middle", 1, 5000, 70000, msgRange, nil},
		{"last short chunk", 2, 10, 990, msgRange, nil},
		{"past the short chunk", 2, 10, 991, 0, ErrBadRequest},
		{"past the blob", 3, 0, 10, msgNoChunk, nil},
	} {
		typ, p, err := ask(tc.i, tc.off, tc.n)
		if tc.err != nil {
			if !errors.Is(err, tc.err) {
				t.Errorf("%s: err %v, want %v", tc.name, err, tc.err)
			}
			continue
		}
		if err != nil || typ != tc.want {
			t.Errorf("%s: %s, %v", tc.name, typ, err)
			continue
		}
		if typ != msgRange {
			continue
		}
		at := tc.i*blobstore.ChunkSize + tc.off
		if int(binary.LittleEndian.Uint32(p)) != tc.i || int(binary.LittleEndian.Uint32(p[4:])) != tc.off ||
			!bytes.Equal(p[rangeFrameOverhead:], data[at:at+tc.n]) {
			t.Errorf("%s: wrong range", tc.name)
		}
	}
}

// trickler is a hostile member claiming the whole blob that sends each requested chunk slowly (32 KiB per 25 ms),
// the first half's bytes flipped when corrupt; started is closed when its first bytes are out.
func trickler(t *testing.T, m *blobstore.Manifest, chunks [][]byte, corrupt bool) (*hostile.Peer, chan struct{}) {
	p := hostilePeers(t, 1, hostile.PeerOptions{})[0]
	started := make(chan struct{})
	var once atomic.Bool
	all := make([]bool, m.NumChunks())
	for i := range all {
		all[i] = true
	}
	serveChunkRequests(p, func(st network.Stream, req request) bool {
		switch req.Type {
		case msgGetManifest:
			writeFrame(st, msgManifest, m.Encode())
		case msgWatchHave2, msgWatchHave:
			writeFrame(st, msgHave, encodeHave(all))
			st.CloseWrite()
			return false
		case msgGetChunks:
			i := int(req.Ranges[0].First)
			c := bytes.Clone(chunks[i])
			if corrupt {
				for j := range len(c) / 2 {
					c[j] ^= 0xff
				}
			}
			h := make([]byte, frameHeaderLen+chunkFrameOverhead)
			frameHeader(h, msgChunk, chunkFrameOverhead+len(c))
			putIndex(h[frameHeaderLen:], i)
			if _, err := st.Write(h); err != nil {
				return false
			}
			for off := 0; off < len(c); off += 32 << 10 {
				if _, err := st.Write(c[off:min(off+32<<10, len(c))]); err != nil {
					return false
				}
				if once.CompareAndSwap(false, true) {
					close(started)
				}
				time.Sleep(25 * time.Millisecond)
			}
		default:
			writeFrame(st, msgError, encodeError(ErrUnsupported))
			return false
		}
		return true
	})
	return p, started
}

// rangeLiar is a hostile member claiming the whole blob that answers GET_CHUNKS with NO_CHUNK and GET_RANGE as
// lie says: "bytes" (a complete frame of wrong bytes), "oversize" (more bytes than asked), "offset" (another offset).
func rangeLiar(t *testing.T, m *blobstore.Manifest, chunks [][]byte, lie string) *hostile.Peer {
	p := hostilePeers(t, 1, hostile.PeerOptions{})[0]
	all := make([]bool, m.NumChunks())
	for i := range all {
		all[i] = true
	}
	serveChunkRequests(p, func(st network.Stream, req request) bool {
		switch req.Type {
		case msgWatchHave2, msgWatchHave:
			writeFrame(st, msgHave, encodeHave(all))
			st.CloseWrite()
			return false
		case msgGetChunks:
			b := make([]byte, chunkFrameOverhead)
			putIndex(b, int(req.Ranges[0].First))
			writeFrame(st, msgNoChunk, b)
		case msgGetRange:
			off, n := int(req.Off), int(req.Len)
			body := bytes.Clone(chunks[req.Index][off : off+n])
			switch lie {
			case "bytes":
				body[len(body)/2] ^= 1
			case "oversize":
				body = append(body, 0)
			case "offset":
				off++
			}
			b := binary.LittleEndian.AppendUint32(nil, req.Index)
			b = binary.LittleEndian.AppendUint32(b, uint32(off))
			writeFrame(st, msgRange, append(b, body...))
		default:
			writeFrame(st, msgError, encodeError(ErrUnsupported))
			return false
		}
		return true
	})
	return p
}

// splitFetch has r fetch blob from p, then, once p's first bytes are out, from q too (joining the transfer): q's
// workers find the one chunk requested from p and ask q for the rest of it.
func splitFetch(t *testing.T, r *testNode, blob cid.Cid, p, q peer.ID, started chan struct{}) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	first := make(chan error, 1)
	go func() { first <- r.Fetch(ctx, blob, []peer.ID{p}, nil) }()
	select {
	case <-started:
	case err := <-first:
		return err
	}
	// The chunk's frame has begun here (an arrival to split); else q's workers would copy it whole.
	eventually(t, "the chunk arriving", func() bool { return len(r.srv.arriving.indexes(blob)) > 0 })
	if err := r.Fetch(ctx, blob, []peer.ID{q}, nil); err != nil {
		return err
	}
	return <-first
}

// splitSetup starts a receiver r (counting the peers it blames) connected to a trickler p and to q, for a blob of
// one chunk.
func splitSetup(t *testing.T, data []byte, p *hostile.Peer, q peer.AddrInfo) (*testNode, *[]peer.ID) {
	t.Helper()
	var blamed []peer.ID
	r := startNode(t, "", func(c *Config) { c.OnBadChunk = func(id peer.ID) { blamed = append(blamed, id) } })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.Connect(ctx, peer.AddrInfo{ID: r.ID(), Addrs: r.Host().Addrs()}); err != nil {
		t.Fatal(err)
	}
	if err := r.Host().Connect(ctx, q); err != nil {
		t.Fatal(err)
	}
	return r, &blamed
}

// delivered makes tn's seed state of blob say that every chunk has been sent and delivered once.
func delivered(tn *testNode, blob cid.Cid) {
	ss := &tn.srv.seeds
	b := ss.state(context.Background(), tn.srv, blob)
	ss.mu.Lock()
	defer ss.mu.Unlock()
	for i := range b.sent {
		b.sent[i], b.delivered[i] = true, true
	}
	b.unsent, b.undelivered = 0, 0
}

// holderNode starts a node holding data whose chunks have all been delivered once (so that it serves ranges: a
// seed with undelivered chunks refuses them), and the old flag makes it a version without GET_RANGE.
func holderNode(t *testing.T, data []byte, old bool) (*testNode, cid.Cid) {
	t.Helper()
	q := startNode(t, "", nil)
	blob := put(t, q, data)
	delivered(q, blob)
	q.srv.noRange = old
	return q, blob
}

// A chunk requested from a peer whose forward lags is completed with the rest of what it lacks from a
// second holder, and an old second holder (no GET_RANGE) is left alone and not blamed.
func TestSplitCompletesLaggingChunk(t *testing.T) {
	t.Parallel()
	for _, old := range []bool{false, true} {
		t.Run(map[bool]string{false: "new holder", true: "old holder"}[old], func(t *testing.T) {
			t.Parallel()
			data := randomBlob(t, blobstore.ChunkSize)
			m, chunks := manifestOf(data)
			q, blob := holderNode(t, data, old)
			p, started := trickler(t, m, chunks, false)
			r, blamed := splitSetup(t, data, p, peer.AddrInfo{ID: q.ID(), Addrs: q.Host().Addrs()})
			if err := splitFetch(t, r, blob, p.ID(), q.ID(), started); err != nil {
				t.Fatal(err)
			}
			checkBlob(t, r, blob, data)
			if used := r.splitsUsed.Load(); (used == 0) != old {
				t.Errorf("splits used %d", used)
			}
			if len(*blamed) > 0 || r.score(q.ID()) < 0 {
				t.Errorf("blamed %v, second holder's score %d", *blamed, r.score(q.ID()))
			}
		})
	}
}

// Threat 9.2 "range lies": a second holder sends a complete RANGE of wrong bytes (blamed once a verified copy
// shows it, and only it), more bytes than asked or another offset (a protocol error: its request fails, the
// chunk completes from the first peer); a first peer whose bytes before the split were wrong does not get the
// honest second holder blamed. Nothing unverified is stored either way.
func TestThreatRangeLiar(t *testing.T) {
	t.Parallel()
	for _, lie := range []string{"bytes", "oversize", "offset", "prefix"} {
		t.Run(lie, func(t *testing.T) {
			t.Parallel()
			data := randomBlob(t, blobstore.ChunkSize)
			m, chunks := manifestOf(data)
			var (
				qi   peer.AddrInfo
				blob = m.CID()
			)
			if lie == "prefix" {
				q, _ := holderNode(t, data, false)
				qi = peer.AddrInfo{ID: q.ID(), Addrs: q.Host().Addrs()}
			} else {
				q := rangeLiar(t, m, chunks, lie)
				qi = peer.AddrInfo{ID: q.ID(), Addrs: q.Host.Addrs()}
			}
			p, started := trickler(t, m, chunks, lie == "prefix")
			// The honest peer of "prefix": the second holder serves the chunk whole once the liar is dropped.
			r, blamed := splitSetup(t, data, p, qi)
			if err := splitFetch(t, r, blob, p.ID(), qi.ID, started); err != nil {
				t.Fatal(err)
			}
			checkBlob(t, r, blob, data)
			switch lie {
			case "bytes":
				if len(*blamed) != 1 || (*blamed)[0] != qi.ID || r.score(p.ID()) < 0 {
					t.Errorf("blamed %v (the liar is %s), first peer's score %d", *blamed, qi.ID, r.score(p.ID()))
				}
			case "prefix":
				for _, id := range *blamed {
					if id == qi.ID {
						t.Errorf("the honest second holder was blamed")
					}
				}
			default:
				if len(*blamed) > 0 {
					t.Errorf("blamed %v", *blamed)
				}
			}
		})
	}
}
