package p2p

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"io"
	"testing"
	"testing/iotest"

	"github.com/ipfs/go-cid"

	"github.com/npu-agent/npu-agent/blobstore"
)

func testCID(s string) cid.Cid { return blobstore.DigestCID(sha256.Sum256([]byte(s))) }

func frame(t msgType, p []byte) []byte {
	b := make([]byte, frameHeaderLen+len(p))
	frameHeader(b, t, len(p))
	copy(b[frameHeaderLen:], p)
	return b
}

func TestRequestRoundTrip(t *testing.T) {
	t.Parallel()
	c := testCID("blob")
	rs := []chunkRange{{0, 4}, {10, 1}, {65535, 1}}
	for _, tc := range []struct {
		name string
		t    msgType
		p    []byte
		want request
	}{
		{"manifest", msgGetManifest, c.Bytes(), request{Type: msgGetManifest, Blob: c}},
		{"have", msgGetHave, c.Bytes(), request{Type: msgGetHave, Blob: c}},
		{"chunks", msgGetChunks, encodeGetChunks(c, rs), request{Type: msgGetChunks, Blob: c, Ranges: rs}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var buf bytes.Buffer
			if err := writeFrame(&buf, tc.t, tc.p); err != nil {
				t.Fatal(err)
			}
			mt, p, err := readFrame(&buf, nil)
			if err != nil {
				t.Fatal(err)
			}
			got, err := decodeRequest(mt, p)
			if err != nil {
				t.Fatal(err)
			}
			if got.Type != tc.want.Type || !got.Blob.Equals(tc.want.Blob) || len(got.Ranges) != len(tc.want.Ranges) {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
			for i := range got.Ranges {
				if got.Ranges[i] != tc.want.Ranges[i] {
					t.Fatalf("range %d: got %+v, want %+v", i, got.Ranges[i], tc.want.Ranges[i])
				}
			}
		})
	}
}

func TestDecodeRequestRejects(t *testing.T) {
	t.Parallel()
	c := testCID("blob")
	cidv0 := cid.NewCidV0(c.Hash())
	many := make([]chunkRange, maxRangesPerReq+1)
	for i := range many {
		many[i] = chunkRange{uint32(i), 1}
	}
	for _, tc := range []struct {
		name string
		t    msgType
		p    []byte
	}{
		{"empty cid", msgGetManifest, nil},
		{"garbage cid", msgGetHave, []byte{1, 2, 3}},
		{"cidv0", msgGetManifest, cidv0.Bytes()},
		{"trailing byte", msgGetManifest, append(c.Bytes(), 0)},
		{"response type", msgChunk, c.Bytes()},
		{"no ranges", msgGetChunks, encodeGetChunks(c, nil)},
		{"zero count", msgGetChunks, encodeGetChunks(c, []chunkRange{{0, 0}})},
		{"out of bounds", msgGetChunks, encodeGetChunks(c, []chunkRange{{maxChunks - 1, 2}})},
		{"overflow", msgGetChunks, encodeGetChunks(c, []chunkRange{{0xffffffff, 2}})},
		{"too many chunks", msgGetChunks, encodeGetChunks(c, []chunkRange{{0, maxChunksPerReq + 1}})},
		{"too many ranges", msgGetChunks, encodeGetChunks(c, many)},
		{"truncated ranges", msgGetChunks, encodeGetChunks(c, []chunkRange{{0, 1}})[:40]},
		{"cid length past end", msgGetChunks, []byte{200, 1, 2}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if _, err := decodeRequest(tc.t, tc.p); !errors.Is(err, ErrProtocol) {
				t.Fatalf("err = %v, want ErrProtocol", err)
			}
		})
	}
}

// A frame whose header announces more than its type's limit is rejected without reading (or allocating) the
// payload.
func TestReadFrameLimits(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		in   []byte
		want error
	}{
		{"eof", nil, io.EOF},
		{"short header", []byte{1, 0}, io.ErrUnexpectedEOF},
		{"type zero", frame(0, nil), ErrProtocol},
		{"unknown type", frame(msgTypeEnd, nil), ErrProtocol},
		{"chunk too big", []byte{byte(msgChunk), 0xff, 0xff, 0xff, 0xff}, ErrProtocol},
		{"manifest too big", binary.LittleEndian.AppendUint32([]byte{byte(msgManifest)}, maxManifestLen+1), ErrProtocol},
		{"request too big", binary.LittleEndian.AppendUint32([]byte{byte(msgGetHave)}, maxCIDLen+1), ErrProtocol},
		{"truncated payload", frame(msgGetHave, []byte{1, 2, 3})[:6], ErrProtocol},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, _, err := readFrame(bytes.NewReader(tc.in), nil)
			if !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
		})
	}
}

func TestWriteFrameLimit(t *testing.T) {
	t.Parallel()
	if err := writeFrame(io.Discard, msgNoChunk, make([]byte, 5)); !errors.Is(err, ErrProtocol) {
		t.Fatalf("err = %v, want ErrProtocol", err)
	}
}

func TestHaveRoundTrip(t *testing.T) {
	t.Parallel()
	for _, n := range []int{0, 1, 7, 8, 9, 1000} {
		have := make([]bool, n)
		for i := range have {
			have[i] = i%3 == 0
		}
		got, err := decodeHave(encodeHave(have), n)
		if err != nil {
			t.Fatalf("n=%d: %v", n, err)
		}
		for i := range have {
			if got[i] != have[i] {
				t.Fatalf("n=%d: bit %d = %v", n, i, got[i])
			}
		}
	}
	bad := encodeHave(make([]bool, 3))
	bad[4] = 0x80 // padding bit
	for _, tc := range []struct {
		name string
		p    []byte
		n    int
	}{
		{"truncated", []byte{1}, 1},
		{"wrong count", encodeHave(make([]bool, 9)), 8},
		{"padding set", bad, 3},
		{"short bitmap", encodeHave(make([]bool, 9))[:5], 9},
	} {
		if _, err := decodeHave(tc.p, tc.n); !errors.Is(err, ErrProtocol) {
			t.Errorf("%s: err = %v, want ErrProtocol", tc.name, err)
		}
	}
}

// Every sentinel a server may report survives the trip through an ERROR frame.
func TestErrorCodes(t *testing.T) {
	t.Parallel()
	for _, sentinel := range []error{blobstore.ErrNotFound, ErrBadRequest, ErrBusy, ErrUnsupported, ErrRemoteInternal} {
		var buf bytes.Buffer
		if err := writeFrame(&buf, msgError, encodeError(sentinel)); err != nil {
			t.Fatal(err)
		}
		_, _, err := readResponse(&buf, nil, msgManifest)
		if !errors.Is(err, sentinel) {
			t.Errorf("sent %v, got %v", sentinel, err)
		}
	}
	// A protocol violation by the client is reported as a bad request; unknown errors as internal ones.
	if c := wireCode(ErrProtocol); c != codeBadRequest {
		t.Errorf("ErrProtocol -> %d", c)
	}
	if err := decodeError([]byte{0xff, 0xff}); !errors.Is(err, ErrRemoteInternal) {
		t.Errorf("unknown code -> %v", err)
	}
	long := errors.New(string(bytes.Repeat([]byte("x"), 2*maxErrorMsgLen)))
	if err := writeFrame(io.Discard, msgError, encodeError(long)); err != nil {
		t.Errorf("long message: %v", err)
	}
}

// testBlob returns a manifest and chunks for size bytes of deterministic data.
func testBlob(size int) (*blobstore.Manifest, [][]byte) {
	data := make([]byte, size)
	for i := range data {
		data[i] = byte(i*7 + i/blobstore.ChunkSize)
	}
	m := &blobstore.Manifest{Size: uint64(size), ChunkSize: blobstore.ChunkSize, SHA256: sha256.Sum256(data)}
	var chunks [][]byte
	for off := 0; off < size; off += blobstore.ChunkSize {
		c := data[off:min(off+blobstore.ChunkSize, size)]
		chunks = append(chunks, c)
		m.Chunks = append(m.Chunks, sha256.Sum256(c))
	}
	return m, chunks
}

// The client side of GET_MANIFEST and GET_CHUNKS over an io.Pipe against a scripted server.
func TestClientCodecOverPipe(t *testing.T) {
	t.Parallel()
	m, chunks := testBlob(2*blobstore.ChunkSize + 100)
	blob := m.CID()
	chunkFrame := func(i int, data []byte) []byte {
		return frame(msgChunk, append(binary.LittleEndian.AppendUint32(nil, uint32(i)), data...))
	}
	noChunk := func(i int) []byte { return frame(msgNoChunk, binary.LittleEndian.AppendUint32(nil, uint32(i))) }
	flipped := bytes.Clone(chunks[1])
	flipped[0] ^= 1
	rs := []chunkRange{{0, 2}, {2, 1}}
	for _, tc := range []struct {
		name    string
		frames  [][]byte
		want    error
		wantGot []int // indexes delivered with data
	}{
		{"all", [][]byte{chunkFrame(0, chunks[0]), chunkFrame(1, chunks[1]), chunkFrame(2, chunks[2])}, nil, []int{0, 1, 2}},
		{"missing one", [][]byte{chunkFrame(0, chunks[0]), noChunk(1), chunkFrame(2, chunks[2])}, nil, []int{0, 2}},
		{"out of order", [][]byte{chunkFrame(1, chunks[1])}, ErrProtocol, nil},
		{"short chunk", [][]byte{chunkFrame(0, chunks[0][:10])}, ErrProtocol, nil},
		{"last chunk too long", [][]byte{chunkFrame(0, chunks[0]), chunkFrame(1, chunks[1]), chunkFrame(2, chunks[1])}, ErrProtocol, []int{0, 1}},
		{"early end", [][]byte{chunkFrame(0, chunks[0])}, io.ErrUnexpectedEOF, []int{0}},
		{"error frame", [][]byte{frame(msgError, encodeError(blobstore.ErrNotFound))}, blobstore.ErrNotFound, nil},
		{"wrong type", [][]byte{frame(msgHave, encodeHave([]bool{true}))}, ErrProtocol, nil},
		// Refused from its header (below, not a truncation): the 2 MiB it claims are never waited for.
		{"wrong type, header only", [][]byte{frame(msgManifest, nil)[:1], binary.LittleEndian.AppendUint32(nil, maxManifestLen)}, ErrProtocol, nil},
		{"bad data passed on", [][]byte{chunkFrame(0, chunks[0]), chunkFrame(1, flipped), chunkFrame(2, chunks[2])}, blobstore.ErrInvalidData, []int{0}},
	} {
		// Over a pipe (a read gets at most one write), and one byte per read: the digest computed while the
		// bytes arrive must be the chunk's, wherever the reads split the frames.
		readers := map[string]func() io.Reader{
			"pipe": func() io.Reader {
				pr, pw := io.Pipe()
				go func() {
					for _, f := range tc.frames {
						if _, err := pw.Write(f); err != nil {
							return
						}
					}
					pw.Close()
				}()
				t.Cleanup(func() { pr.Close() })
				return pr
			},
			"one byte": func() io.Reader { return iotest.OneByteReader(bytes.NewReader(bytes.Join(tc.frames, nil))) },
		}
		for rname, reader := range readers {
			t.Run(tc.name+"/"+rname, func(t *testing.T) {
				t.Parallel()
				var got []int
				err := readChunksSummed(reader(), m, rs, nil, func(i int, data []byte, sum [32]byte) error {
					if data == nil {
						return nil
					}
					if sum != sha256.Sum256(data) {
						t.Errorf("chunk %d: digest computed while reading %x, of the bytes %x", i, sum, sha256.Sum256(data))
					}
					if sum != m.Chunks[i] {
						return blobstore.ErrInvalidData
					}
					got = append(got, i)
					return nil
				})
				if !errors.Is(err, tc.want) || (err == nil) != (tc.want == nil) || (tc.name == "wrong type, header only" && errors.Is(err, io.ErrUnexpectedEOF)) {
					t.Fatalf("err = %v, want %v", err, tc.want)
				}
				if len(got) != len(tc.wantGot) {
					t.Fatalf("delivered %v, want %v", got, tc.wantGot)
				}
			})
		}
	}

	t.Run("manifest", func(t *testing.T) {
		t.Parallel()
		for _, tc := range []struct {
			name string
			body []byte
			want error
		}{
			{"good", frame(msgManifest, m.Encode()), nil},
			{"other blob", frame(msgManifest, (&blobstore.Manifest{ChunkSize: blobstore.ChunkSize}).Encode()), blobstore.ErrInvalidData},
			{"not found", frame(msgError, encodeError(blobstore.ErrNotFound)), blobstore.ErrNotFound},
		} {
			pr, pw := io.Pipe()
			go func() { pw.Write(tc.body); pw.Close() }()
			got, err := readManifest(pr, blob)
			pr.Close()
			if !errors.Is(err, tc.want) || (err == nil) != (tc.want == nil) {
				t.Fatalf("%s: err = %v, want %v", tc.name, err, tc.want)
			}
			if err == nil && got.CID() != blob {
				t.Fatalf("%s: manifest CID %s", tc.name, got.CID())
			}
		}
	})
}

func FuzzReadFrame(f *testing.F) {
	c := testCID("blob")
	f.Add(frame(msgGetManifest, c.Bytes()))
	f.Add(frame(msgGetChunks, encodeGetChunks(c, []chunkRange{{0, 4}, {9, 2}})))
	f.Add(frame(msgHave, encodeHave([]bool{true, false, true})))
	f.Add(frame(msgChunk, []byte{1, 0, 0, 0, 'x'}))
	f.Add(frame(msgNoChunk, []byte{1, 0, 0, 0}))
	f.Add(frame(msgError, encodeError(blobstore.ErrNotFound)))
	f.Add(frame(msgManifest, (&blobstore.Manifest{ChunkSize: blobstore.ChunkSize}).Encode()))
	f.Add(frame(msgWatchHave2, c.Bytes()))
	f.Add(frame(msgArriving, encodeHaveAdd([]uint32{3, 1})))
	f.Fuzz(func(t *testing.T, in []byte) {
		r := bytes.NewReader(in)
		for range 8 {
			mt, p, err := readFrame(r, nil)
			if err != nil {
				return
			}
			if len(p) > maxPayload[mt] {
				t.Fatalf("%s payload of %d bytes passed the limit", mt, len(p))
			}
			switch mt {
			case msgGetManifest, msgGetHave, msgGetChunks, msgWatchHave2:
				req, err := decodeRequest(mt, p)
				if err != nil {
					continue
				}
				var again []byte
				if mt == msgGetChunks {
					again = encodeGetChunks(req.Blob, req.Ranges)
				} else {
					again = req.Blob.Bytes()
				}
				if !bytes.Equal(again, p) {
					t.Fatalf("request does not re-encode to its bytes")
				}
			case msgHave:
				if len(p) >= 4 {
					n := int(binary.LittleEndian.Uint32(p))
					if have, err := decodeHave(p, n); err == nil && !bytes.Equal(encodeHave(have), p) {
						t.Fatalf("HAVE does not re-encode to its bytes")
					}
				}
			case msgChunk, msgNoChunk:
				decodeChunkIndex(mt, p)
			case msgHaveAdd, msgArriving:
				if idx, err := decodeIndexes(mt, p, 1<<16); err == nil && len(idx) == 0 {
					t.Fatalf("%s without indexes accepted", mt)
				}
			case msgError:
				if err := decodeError(p); err != nil {
					_ = err.Error()
				}
			case msgManifest:
				blobstore.DecodeManifest(p)
			}
		}
	})
}
