package p2p

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/protocol"

	"github.com/npu-agent/npu-agent/blobstore"
)

// ChunkProtocol is the chunk-exchange stream protocol (docs/design.md 6.6). One request per stream: the client
// writes one request frame and closes its write side; the server answers with response frames and closes.
const ChunkProtocol protocol.ID = "/npu-agent/chunks/1.0.0"

// msgType is a frame's type byte. Values are append-only: never renumber or reuse one.
type msgType uint8

const (
	msgGetManifest msgType = 1  // cid
	msgManifest    msgType = 2  // encoded manifest (docs/design.md 3.2)
	msgGetHave     msgType = 3  // cid
	msgHave        msgType = 4  // u32 chunk count, bitmap
	msgGetChunks   msgType = 5  // cid, u16 range count, ranges (u32 first, u32 count)
	msgChunk       msgType = 6  // u32 index, chunk bytes
	msgNoChunk     msgType = 7  // u32 index: the server does not hold this chunk (any more)
	msgError       msgType = 8  // u16 code, message
	msgWatchHave   msgType = 9  // cid: HAVE now, then HAVE_ADD as chunks are stored (docs/design.md 6.7)
	msgHaveAdd     msgType = 10 // u16 count, count × u32 index: chunks stored since the last HAVE or HAVE_ADD
	msgWatchHave2  msgType = 11 // cid: WATCH_HAVE that also reports ARRIVING chunks (docs/design.md 6.7)
	msgArriving    msgType = 12 // u16 count, count × u32 index: chunks whose first bytes have arrived (cut-through)
	msgTypeEnd     msgType = 13 // first unassigned value
)

func (t msgType) String() string {
	names := [...]string{"", "GET_MANIFEST", "MANIFEST", "GET_HAVE", "HAVE", "GET_CHUNKS", "CHUNK", "NO_CHUNK", "ERROR", "WATCH_HAVE", "HAVE_ADD", "WATCH_HAVE2", "ARRIVING"}
	if t > 0 && t < msgTypeEnd {
		return names[t]
	}
	return fmt.Sprintf("type(%d)", uint8(t))
}

// Limits of the chunk protocol.
const (
	frameHeaderLen     = 5 // type u8, payload length u32 little-endian
	maxChunks          = blobstore.MaxBlobSize / blobstore.ChunkSize
	maxManifestLen     = blobstore.MaxManifestSize
	maxErrorMsgLen     = 256
	maxRangesPerReq    = 64
	maxChunksPerReq    = 64
	chunkFrameOverhead = 4
	maxHaveAdd         = 256 // indexes in one HAVE_ADD frame
)

// maxPayload is the largest payload each frame type may carry; a frame is rejected from its header alone.
var maxPayload = [msgTypeEnd]int{
	msgGetManifest: maxCIDLen,
	msgManifest:    maxManifestLen,
	msgGetHave:     maxCIDLen,
	msgHave:        4 + (maxChunks+7)/8,
	msgGetChunks:   1 + maxCIDLen + 2 + 8*maxRangesPerReq,
	msgChunk:       chunkFrameOverhead + blobstore.ChunkSize,
	msgNoChunk:     4,
	msgError:       2 + maxErrorMsgLen,
	msgWatchHave:   maxCIDLen,
	msgHaveAdd:     2 + 4*maxHaveAdd,
	msgWatchHave2:  maxCIDLen,
	msgArriving:    2 + 4*maxHaveAdd,
}

// ErrProtocol is a malformed or unexpected frame from a peer.
var ErrProtocol = errors.New("chunk protocol violation")

// frameHeader encodes a frame header into h.
func frameHeader(h []byte, t msgType, n int) {
	h[0] = byte(t)
	binary.LittleEndian.PutUint32(h[1:5], uint32(n))
}

// writeFrame writes one frame with a single Write call.
func writeFrame(w io.Writer, t msgType, payload []byte) error {
	if len(payload) > maxPayload[t] {
		return fmt.Errorf("%w: %s payload %d bytes above %d", ErrProtocol, t, len(payload), maxPayload[t])
	}
	_, err := w.Write(appendFrame(nil, t, payload))
	return err
}

// appendFrame appends one frame to b (payload within its type's limit: the caller checks).
func appendFrame(b []byte, t msgType, payload []byte) []byte {
	n := len(b)
	b = slices.Grow(b, frameHeaderLen+len(payload))[:n+frameHeaderLen]
	frameHeader(b[n:], t, len(payload))
	return append(b, payload...)
}

// readFrame reads one frame, checking the type and length before allocating. The payload is read into buf when
// it fits (buf's capacity), so callers can reuse one chunk-sized buffer across frames.
func readFrame(r io.Reader, buf []byte) (msgType, []byte, error) {
	t, n, err := readHeader(r)
	if err != nil {
		return 0, nil, err
	}
	return readPayload(r, t, n, buf)
}

// readHeader reads a frame header and checks its type and its length against the type's limit.
func readHeader(r io.Reader) (msgType, int, error) {
	var h [frameHeaderLen]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return 0, 0, err // io.EOF at a frame boundary is a clean end
	}
	t, n := msgType(h[0]), binary.LittleEndian.Uint32(h[1:])
	if t == 0 || t >= msgTypeEnd {
		return 0, 0, fmt.Errorf("%w: unknown frame type %d", ErrProtocol, h[0])
	}
	if int64(n) > int64(maxPayload[t]) {
		return 0, 0, fmt.Errorf("%w: %s frame of %d bytes, limit %d", ErrProtocol, t, n, maxPayload[t])
	}
	return t, int(n), nil
}

// readPayload reads the n bytes of a frame of type t whose header readHeader has checked, into buf if it fits.
func readPayload(r io.Reader, t msgType, n int, buf []byte) (msgType, []byte, error) {
	if cap(buf) < int(n) {
		buf = make([]byte, n)
	}
	buf = buf[:n]
	if _, err := io.ReadFull(r, buf); err != nil {
		return 0, nil, fmt.Errorf("%w: %s frame truncated: %w", ErrProtocol, t, noEOF(err))
	}
	return t, buf, nil
}

// isRequest reports whether t is a frame type a client may send to the server.
func isRequest(t msgType) bool {
	return t == msgGetManifest || t == msgGetHave || t == msgGetChunks || t == msgWatchHave || t == msgWatchHave2
}

// maxRequestLen is the largest request payload (GET_CHUNKS with every range): a server reads requests into a
// buffer of this size and allocates nothing from a frame header.
const maxRequestLen = 1 + maxCIDLen + 2 + 8*maxRangesPerReq

// readRequestHeader reads a request frame's header and checks that its type is a request and its length within
// that type's limit, before anything else is read: a response type or an oversized length is refused from the
// header alone.
func readRequestHeader(r io.Reader) (msgType, int, error) {
	t, n, err := readHeader(r)
	if err == nil && !isRequest(t) {
		return 0, 0, fmt.Errorf("%w: %s is not a request", ErrProtocol, t)
	}
	return t, n, err
}

func noEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// chunkRange is Count consecutive chunk indexes from First.
type chunkRange struct{ First, Count uint32 }

// request is a decoded client request.
type request struct {
	Type   msgType
	Blob   cid.Cid
	Ranges []chunkRange // GET_CHUNKS only
}

func encodeGetChunks(c cid.Cid, rs []chunkRange) []byte {
	cb := c.Bytes()
	b := make([]byte, 0, 1+len(cb)+2+8*len(rs))
	b = append(b, byte(len(cb)))
	b = append(b, cb...)
	b = binary.LittleEndian.AppendUint16(b, uint16(len(rs)))
	for _, r := range rs {
		b = binary.LittleEndian.AppendUint32(b, r.First)
		b = binary.LittleEndian.AppendUint32(b, r.Count)
	}
	return b
}

// decodeRequest parses a request frame. Ranges must be non-empty, in bounds of a maximal blob, and ask for at
// most maxChunksPerReq chunks in total.
func decodeRequest(t msgType, p []byte) (request, error) {
	req := request{Type: t}
	switch t {
	case msgGetManifest, msgGetHave, msgWatchHave, msgWatchHave2:
		c, err := castBlobCID(p)
		if err != nil {
			return req, err
		}
		req.Blob = c
		return req, nil
	case msgGetChunks:
		if len(p) < 1 || len(p) < 1+int(p[0])+2 {
			return req, fmt.Errorf("%w: GET_CHUNKS truncated", ErrProtocol)
		}
		c, err := castBlobCID(p[1 : 1+int(p[0])])
		if err != nil {
			return req, err
		}
		req.Blob = c
		p = p[1+int(p[0]):]
		n := int(binary.LittleEndian.Uint16(p))
		p = p[2:]
		if n == 0 || n > maxRangesPerReq || len(p) != 8*n {
			return req, fmt.Errorf("%w: GET_CHUNKS with %d ranges in %d bytes", ErrProtocol, n, len(p))
		}
		total := 0
		req.Ranges = make([]chunkRange, n)
		for i := range req.Ranges {
			r := chunkRange{binary.LittleEndian.Uint32(p[8*i:]), binary.LittleEndian.Uint32(p[8*i+4:])}
			if r.Count == 0 || uint64(r.First)+uint64(r.Count) > maxChunks {
				return req, fmt.Errorf("%w: GET_CHUNKS range %d+%d out of bounds", ErrProtocol, r.First, r.Count)
			}
			total += int(r.Count)
			req.Ranges[i] = r
		}
		if total > maxChunksPerReq {
			return req, fmt.Errorf("%w: GET_CHUNKS asks for %d chunks, limit %d", ErrProtocol, total, maxChunksPerReq)
		}
		return req, nil
	default:
		return req, fmt.Errorf("%w: %s is not a request", ErrProtocol, t)
	}
}

func castBlobCID(b []byte) (cid.Cid, error) {
	c, err := cid.Cast(b)
	if err != nil {
		return cid.Undef, fmt.Errorf("%w: bad CID: %w", ErrProtocol, err)
	}
	if err := checkBlobCID(c); err != nil {
		return cid.Undef, fmt.Errorf("%w: %w", ErrProtocol, err)
	}
	return c, nil
}

// encodeHave packs have into a HAVE payload: chunk count, then one bit per chunk (LSB first).
func encodeHave(have []bool) []byte {
	b := make([]byte, 4+(len(have)+7)/8)
	binary.LittleEndian.PutUint32(b, uint32(len(have)))
	for i, h := range have {
		if h {
			b[4+i/8] |= 1 << (i % 8)
		}
	}
	return b
}

// decodeHave unpacks a HAVE payload for a blob of want chunks; padding bits must be zero.
func decodeHave(p []byte, want int) ([]bool, error) {
	if len(p) < 4 {
		return nil, fmt.Errorf("%w: HAVE truncated", ErrProtocol)
	}
	n := int(binary.LittleEndian.Uint32(p))
	if n != want || len(p) != 4+(n+7)/8 {
		return nil, fmt.Errorf("%w: HAVE for %d chunks in %d bytes, want %d chunks", ErrProtocol, n, len(p), want)
	}
	have := make([]bool, n)
	for i := range have {
		have[i] = p[4+i/8]&(1<<(i%8)) != 0
	}
	if n%8 != 0 && p[len(p)-1]>>(n%8) != 0 {
		return nil, fmt.Errorf("%w: HAVE padding bits set", ErrProtocol)
	}
	return have, nil
}

// decodeChunkIndex splits a CHUNK or NO_CHUNK payload into the index and the rest.
func decodeChunkIndex(t msgType, p []byte) (int, []byte, error) {
	if len(p) < 4 || (t == msgNoChunk && len(p) != 4) {
		return 0, nil, fmt.Errorf("%w: %s of %d bytes", ErrProtocol, t, len(p))
	}
	i := binary.LittleEndian.Uint32(p)
	if i > math.MaxInt32 {
		return 0, nil, fmt.Errorf("%w: %s index %d", ErrProtocol, t, i)
	}
	return int(i), p[4:], nil
}

// encodeHaveAdd packs chunk indexes (1..maxHaveAdd) into a HAVE_ADD payload.
func encodeHaveAdd(idx []uint32) []byte {
	b := make([]byte, 2, 2+4*len(idx))
	binary.LittleEndian.PutUint16(b, uint16(len(idx)))
	for _, i := range idx {
		b = binary.LittleEndian.AppendUint32(b, i)
	}
	return b
}

// decodeHaveAdd unpacks a HAVE_ADD payload for a blob of n chunks: 1..maxHaveAdd indexes, each below n.
func decodeHaveAdd(p []byte, n int) ([]int, error) { return decodeIndexes(msgHaveAdd, p, n) }

// decodeArriving unpacks an ARRIVING payload, laid out as HAVE_ADD's.
func decodeArriving(p []byte, n int) ([]int, error) { return decodeIndexes(msgArriving, p, n) }

// decodeIndexes unpacks an index list of frame type t for a blob of n chunks: 1..maxHaveAdd indexes, each below n.
func decodeIndexes(t msgType, p []byte, n int) ([]int, error) {
	if len(p) < 2 {
		return nil, fmt.Errorf("%w: %s truncated", ErrProtocol, t)
	}
	k := int(binary.LittleEndian.Uint16(p))
	if k == 0 || k > maxHaveAdd || len(p) != 2+4*k {
		return nil, fmt.Errorf("%w: %s with %d indexes in %d bytes", ErrProtocol, t, k, len(p))
	}
	idx := make([]int, k)
	for j := range idx {
		i := binary.LittleEndian.Uint32(p[2+4*j:])
		if int64(i) >= int64(n) {
			return nil, fmt.Errorf("%w: %s index %d of %d chunks", ErrProtocol, t, i, n)
		}
		idx[j] = int(i)
	}
	return idx, nil
}
