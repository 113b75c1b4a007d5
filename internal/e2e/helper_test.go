//go:build linux

package e2e

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/npu-agent/npu-agent/blobstore"
	"github.com/npu-agent/npu-agent/blobstore/badgerstore"
	"github.com/npu-agent/npu-agent/internal/netlab"
	"github.com/npu-agent/npu-agent/p2p"
)

// The fault tests run fleet members that no daemon configuration can make (a peer that corrupts what it serves, a
// probe that reads peers' chunk bitmaps) by re-executing the test binary inside a lab host in a helper mode:
// helperEnv names the mode, helperArgsEnv carries its helperArgs as JSON. A helper prints one JSON line
// (helperReport) on stdout when it is ready or done, and logs to stderr.
const (
	helperEnv     = "E2E_HELPER"
	helperArgsEnv = "E2E_HELPER_ARGS"

	helperEvil  = "evil"  // serve a blob with one byte of every chunk flipped, and announce a record for it
	helperProbe = "probe" // poll peers' HAVE bitmaps of a blob until together they hold every chunk
)

// helperArgs configures a helper.
type helperArgs struct {
	Dir      string `json:"dir"`       // the helper's own data directory
	FleetKey string `json:"fleet_key"` // fleet key file
	Blob     string `json:"blob"`      // CID of the blob concerned
	// Evil: the blob's file, imported into the helper's store.
	File string `json:"file,omitempty"`
	// Probe: the peers to poll, as /ip4/.../tcp/.../p2p/<id> addresses.
	Peers    []string      `json:"peers,omitempty"`
	Deadline time.Duration `json:"deadline"` // the helper gives up after this long
	// Stream (bench_fetch_test.go): the most bytes a stream may ask for, and the node's TCP port on 127.0.0.1.
	Size int64 `json:"size,omitempty"`
	Port int   `json:"port,omitempty"`
}

// helperReport is a helper's stdout line.
type helperReport struct {
	Peer string `json:"peer,omitempty"` // the helper's peer ID (evil, when ready)
	// Flipped counts the corrupted chunks the evil helper sent (when it exits).
	Flipped int64 `json:"flipped,omitempty"`
	// Probe: chunks each polled peer held when their union first covered the blob, by peer ID, and the blob's
	// chunk count.
	Have   map[string]int `json:"have,omitempty"`
	Chunks int            `json:"chunks,omitempty"`
}

// runHelper runs the helper mode named by the environment and returns the process's exit code.
func runHelper(mode string) int {
	log := slog.New(slog.NewTextHandler(os.Stderr, nil)).With("helper", mode)
	var a helperArgs
	if err := json.Unmarshal([]byte(os.Getenv(helperArgsEnv)), &a); err != nil {
		log.Error("bad arguments", "err", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, a.Deadline)
	defer cancel()
	var err error
	switch mode {
	case helperEvil:
		err = runEvil(ctx, a, log)
	case helperProbe:
		err = runProbe(ctx, a, log)
	case helperStream:
		err = runStreamSource(ctx, a, log)
	default:
		err = fmt.Errorf("unknown helper mode %q", mode)
	}
	if err != nil {
		log.Error("helper failed", "err", err)
		return 1
	}
	return 0
}

func report(r helperReport) {
	b, _ := json.Marshal(r)
	fmt.Println(string(b))
}

// helperNode starts a fleet member on the lab host's P2PPort.
func helperNode(ctx context.Context, a helperArgs, store blobstore.Store, mdns bool, static []ma.Multiaddr, log *slog.Logger) (*p2p.Node, error) {
	cfg := p2p.DefaultConfig(filepath.Join(a.Dir, "p2p"))
	cfg.ListenAddrs = []ma.Multiaddr{ma.StringCast(fmt.Sprintf("/ip4/0.0.0.0/tcp/%d", P2PPort))}
	cfg.MDNS, cfg.StaticPeers = mdns, static
	key, err := p2p.ReadFleetKey(a.FleetKey)
	if err != nil {
		return nil, err
	}
	cfg.FleetKey = key
	return p2p.New(ctx, cfg, store, log)
}

// flipStore corrupts every chunk it reads for a peer or for itself: one byte in the middle flipped, so the chunk
// no longer matches the manifest's hash. HAVE answers stay truthful, so honest peers ask it for everything.
type flipStore struct {
	blobstore.Store
	flipped atomic.Int64
}

func (s *flipStore) ServeChunk(ctx context.Context, blob cid.Cid, i int, dst []byte) ([]byte, error) {
	b, err := s.Store.ServeChunk(ctx, blob, i, dst)
	return s.corrupt(b, len(dst), err)
}

func (s *flipStore) ReadChunk(ctx context.Context, blob cid.Cid, i int, dst []byte) ([]byte, error) {
	b, err := s.Store.ReadChunk(ctx, blob, i, dst)
	return s.corrupt(b, len(dst), err)
}

// corrupt flips a byte in the middle of the chunk that starts at b[off].
func (s *flipStore) corrupt(b []byte, off int, err error) ([]byte, error) {
	if err != nil {
		return b, err
	}
	if n := len(b) - off; n > 0 {
		b[off+n/2] ^= 0x40
		s.flipped.Add(1)
	}
	return b, nil
}

// runEvil imports the blob, joins the fleet by mDNS, waits for an honest record of the blob and announces a copy
// of it signed by itself (a real, valid record), then serves corrupted chunks until it is told to stop.
func runEvil(ctx context.Context, a helperArgs, log *slog.Logger) error {
	want, err := cid.Decode(a.Blob)
	if err != nil {
		return err
	}
	st, err := badgerstore.Open(filepath.Join(a.Dir, "store"), badgerstore.Options{Logger: log})
	if err != nil {
		return err
	}
	defer st.Close()
	f, err := os.Open(a.File)
	if err != nil {
		return err
	}
	m, err := st.Put(ctx, f)
	f.Close()
	if err != nil {
		return err
	}
	if !m.CID().Equals(want) {
		return fmt.Errorf("imported %s is %s, want %s", a.File, m.CID(), want)
	}
	fs := &flipStore{Store: st}
	n, err := helperNode(ctx, a, fs, true, nil, log)
	if err != nil {
		return err
	}
	defer n.Close()
	rec, err := awaitRecord(ctx, n, want)
	if err != nil {
		return err
	}
	rec.Producer = "" // Publish signs it as this node
	if _, err := n.Publish(ctx, rec); err != nil {
		return err
	}
	report(helperReport{Peer: n.ID().String()})
	<-ctx.Done()
	report(helperReport{Flipped: fs.flipped.Load()})
	return nil
}

func awaitRecord(ctx context.Context, n *p2p.Node, blob cid.Cid) (blobstore.Record, error) {
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	for {
		for _, sr := range n.Records("", "") {
			if sr.Blob.Equals(blob) {
				return sr.Record, nil
			}
		}
		select {
		case <-ctx.Done():
			return blobstore.Record{}, fmt.Errorf("no record of %s: %w", blob, ctx.Err())
		case <-tick.C:
		}
	}
}

// runProbe connects to the given peers and asks each for its HAVE bitmap of the blob every pollInterval, until
// their union holds every chunk; then it reports what each held and exits.
func runProbe(ctx context.Context, a helperArgs, log *slog.Logger) error {
	blob, err := cid.Decode(a.Blob)
	if err != nil {
		return err
	}
	var addrs []ma.Multiaddr
	var ids []peer.ID
	for _, s := range a.Peers {
		addr, err := ma.NewMultiaddr(s)
		if err != nil {
			return err
		}
		ai, err := peer.AddrInfoFromP2pAddr(addr)
		if err != nil {
			return err
		}
		addrs, ids = append(addrs, addr), append(ids, ai.ID)
	}
	st, err := badgerstore.Open(filepath.Join(a.Dir, "store"), badgerstore.Options{Logger: log})
	if err != nil {
		return err
	}
	defer st.Close()
	n, err := helperNode(ctx, a, st, false, addrs, log) // its store stays empty: it never serves anything
	if err != nil {
		return err
	}
	defer n.Close()
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	for {
		var union []bool
		have := map[string]int{}
		for _, id := range ids {
			bits, err := probeHave(ctx, n, id, blob)
			if err != nil {
				log.Debug("HAVE failed", "peer", id, "err", err)
				continue
			}
			if union == nil {
				union = make([]bool, len(bits))
			}
			if len(bits) != len(union) {
				return fmt.Errorf("peer %s has %d chunks, others %d", id, len(bits), len(union))
			}
			for i, b := range bits {
				union[i] = union[i] || b
				if b {
					have[id.String()]++
				}
			}
		}
		if union != nil && !slices.Contains(union, false) {
			report(helperReport{Have: have, Chunks: len(union)})
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the peers never held every chunk together: %w", ctx.Err())
		case <-tick.C:
		}
	}
}

// probeHave asks p for its HAVE bitmap of blob over the chunk protocol (docs/design.md 6.7), written here from
// the specification rather than with the p2p package's client so that the wire format is checked too. A peer
// that does not hold the blob yet has nothing.
func probeHave(ctx context.Context, n *p2p.Node, p peer.ID, blob cid.Cid) ([]bool, error) {
	const (
		msgGetHave   = 3
		msgHave      = 4
		msgError     = 8
		codeNotFound = 2
		maxHave      = 4 + 8<<10
	)
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	st, err := n.Host().NewStream(ctx, p, p2p.ChunkProtocol)
	if err != nil {
		return nil, err
	}
	defer st.Close()
	if d, ok := ctx.Deadline(); ok {
		st.SetDeadline(d)
	}
	req := binary.LittleEndian.AppendUint32([]byte{msgGetHave}, uint32(len(blob.Bytes())))
	if _, err := st.Write(append(req, blob.Bytes()...)); err != nil {
		return nil, err
	}
	if err := st.CloseWrite(); err != nil {
		return nil, err
	}
	var hdr [5]byte
	if _, err := io.ReadFull(st, hdr[:]); err != nil {
		return nil, err
	}
	size := binary.LittleEndian.Uint32(hdr[1:])
	if size > maxHave {
		return nil, fmt.Errorf("response of %d bytes", size)
	}
	payload := make([]byte, size)
	if _, err := io.ReadFull(st, payload); err != nil {
		return nil, err
	}
	switch {
	case hdr[0] == msgError && size >= 2 && binary.LittleEndian.Uint16(payload) == codeNotFound:
		return nil, nil
	case hdr[0] != msgHave || size < 4:
		return nil, fmt.Errorf("unexpected frame type %d, %d bytes", hdr[0], size)
	}
	count := int(binary.LittleEndian.Uint32(payload))
	if len(payload) != 4+(count+7)/8 {
		return nil, fmt.Errorf("HAVE of %d chunks in %d bytes", count, len(payload))
	}
	bits := make([]bool, count)
	for i := range bits {
		bits[i] = payload[4+i/8]&(1<<(i%8)) != 0
	}
	return bits, nil
}

// helper is a running helper process in a lab host.
type helper struct {
	cmd    *exec.Cmd
	lines  chan helperReport
	stderr *limitedBuffer
	done   chan struct{}
}

// startHelper runs the test binary in helper mode in host i of lab.
func startHelper(t *testing.T, lab *netlab.Lab, i int, mode string, a helperArgs) *helper {
	t.Helper()
	args, err := json.Marshal(a)
	if err != nil {
		t.Fatal(err)
	}
	cmd := lab.Command(context.Background(), i, os.Args[0], "-test.run=^$")
	cmd.Env = append(daemonEnv(), helperEnv+"="+mode, helperArgsEnv+"="+string(args))
	h := &helper{cmd: cmd, lines: make(chan helperReport, 4), stderr: &limitedBuffer{max: maxOutput}, done: make(chan struct{})}
	cmd.Stderr = h.stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(h.done)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			var r helperReport
			if json.Unmarshal(sc.Bytes(), &r) == nil {
				h.lines <- r
			}
		}
		close(h.lines)
		cmd.Wait()
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-h.done
		if t.Failed() {
			t.Logf("=== %s helper's log:\n%s", mode, h.stderr.Bytes())
		}
	})
	return h
}

// next waits for the helper's next report line.
func (h *helper) next(ctx context.Context) (helperReport, error) {
	select {
	case r, ok := <-h.lines:
		if !ok {
			return r, fmt.Errorf("helper exited (%v) without a report: %s", h.cmd.ProcessState, h.stderr.Bytes())
		}
		return r, nil
	case <-ctx.Done():
		return helperReport{}, fmt.Errorf("waiting for the helper: %w", ctx.Err())
	}
}

// stop asks the helper to finish (SIGTERM) and returns its last report.
func (h *helper) stop(ctx context.Context) (helperReport, error) {
	if err := h.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return helperReport{}, err
	}
	return h.next(ctx)
}
