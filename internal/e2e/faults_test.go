//go:build linux

package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Network fault scenarios among real daemons. Each ends with every surviving host holding the blob, byte for byte
// what the seed compiled, fetched from peers (never compiled: receivers' compiles take longer than the test).
// The compiling host killed during a fleet single flight is TestFleetCompilerKilled.
//
// `make test` runs the short versions; `make test-faults` sets NPU_TEST_FAULTS=long (as for the store's fault
// tests) for bigger blobs and fleets and the scenarios too slow for every run.
var longFaults = os.Getenv("NPU_TEST_FAULTS") == "long"

// faultScale sizes a fault scenario.
type faultScale struct {
	receivers int
	blob      int64
	rate      string // receivers' links; the seed's is set per scenario
	timeout   time.Duration
}

func scale() faultScale {
	if longFaults {
		return faultScale{receivers: 7, blob: 96 << 20, rate: "100mbit", timeout: 4 * time.Minute}
	}
	return faultScale{receivers: 3, blob: 24 << 20, rate: "50mbit", timeout: 90 * time.Second}
}

// never is the receivers' compile time: a receiver that compiles instead of fetching hangs the test until its
// deadline, which fails it, rather than passing with a blob nobody fetched.
const never = 24 * time.Hour

// faultFleet starts a seed (host 0, compiles quickly) and sc.receivers receivers, all of one class, plus extra lab
// hosts for helpers; the seed compiles the blob and every receiver learns its record. It returns the fleet and the
// seed's fetch result.
func faultFleet(ctx context.Context, t *testing.T, sc faultScale, extra int) (*testFleet, FetchResult) {
	t.Helper()
	members := make([]member, 1+sc.receivers)
	for i := range members {
		members[i] = member{"A", classA114}
	}
	f := startFleet(ctx, t, members, fleetOptions{
		compileTime: never, seedCompileTime: 100 * time.Millisecond, blobSize: sc.blob, rate: sc.rate, extraHosts: extra,
	})
	seed, err := f.daemons[0].Fetch(ctx, f.model, testShape)
	if err != nil {
		t.Fatal(err)
	}
	if seed.Source != "compiled" {
		t.Fatalf("seed: source %q, want compiled", seed.Source)
	}
	id := f.peerID(ctx, 0)
	for _, d := range f.daemons[1:] {
		if err := d.WaitPeerRecords(ctx, id, 1); err != nil {
			t.Fatal(err)
		}
	}
	return f, seed
}

func (f *testFleet) peerID(ctx context.Context, i int) string {
	f.t.Helper()
	st, err := f.daemons[i].API().Status(ctx)
	if err != nil {
		f.t.Fatal(err)
	}
	return st.PeerID
}

// p2pAddr is daemon i's libp2p address on the lab LAN.
func (f *testFleet) p2pAddr(ctx context.Context, i int) string {
	return fmt.Sprintf("/ip4/%s/tcp/%d/p2p/%s", f.lab.Hosts[i].IP, P2PPort, f.peerID(ctx, i))
}

// fetchEach starts `npu-agent fetch` on the given hosts at the same moment and returns one channel per host
// (indexed like hosts) that delivers its outcome.
func (f *testFleet) fetchEach(ctx context.Context, hosts []int) []chan outcome {
	out := make([]chan outcome, len(hosts))
	release := make(chan struct{})
	for k, i := range hosts {
		out[k] = make(chan outcome, 1)
		go func() {
			<-release
			var o outcome
			o.res, o.err = f.daemons[i].Fetch(ctx, f.model, testShape)
			out[k] <- o
		}()
	}
	close(release)
	return out
}

// checkFetched checks that host i's fetch succeeded from peers and that its file is the seed's blob.
func (f *testFleet) checkFetched(i int, o outcome, seed FetchResult) {
	t := f.t
	t.Helper()
	name := f.daemons[i].Name
	if o.err != nil {
		t.Errorf("%s: %v", name, o.err)
		return
	}
	if o.res.Source != "peer" || o.res.CID != seed.CID || o.res.SHA256 != seed.SHA256 {
		t.Errorf("%s: got %s blob %s sha256 %s, want peer blob %s sha256 %s", name, o.res.Source, o.res.CID, o.res.SHA256, seed.CID, seed.SHA256)
	}
	if got, err := fileSHA256(o.res.Path); err != nil {
		t.Errorf("%s: %v", name, err)
	} else if got != seed.SHA256 {
		t.Errorf("%s: %s hashes to %s, want %s", name, o.res.Path, got, seed.SHA256)
	}
	// A fetch that failed and was retried, or fell back to compiling, would also end well: rule both out.
	for _, msg := range []string{"fetch failed, trying the next record", "compiling"} {
		if n, err := f.daemons[i].CountLog(LogMsg(msg)); err != nil || n > 0 {
			t.Errorf("%s: %d %q log lines (%v), want none", name, n, msg, err)
		}
	}
}

// fetchProgress is host i's fetch job's bytes held and total, ok false while it has none.
func (f *testFleet) fetchProgress(ctx context.Context, i int) (done, total uint64, ok bool, err error) {
	cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	st, err := f.daemons[i].API().Status(cctx)
	if err != nil {
		return 0, 0, false, err
	}
	for _, j := range st.Jobs {
		if j.Kind == "fetch" && j.Total > 0 {
			return j.Done, j.Total, true, nil
		}
	}
	return 0, 0, false, nil
}

// TestFaultSeedKilled: the only host with the blob is SIGKILLed once the receivers together hold every chunk but
// none holds all of them. The receivers must finish from each other, each serving the verified chunks of its
// partial blob, and end with the seed's exact bytes.
func TestFaultSeedKilled(t *testing.T) {
	requireLab(t)
	sc := scale()
	ctx, cancel := context.WithTimeout(context.Background(), sc.timeout)
	defer cancel()
	f, seed := faultFleet(ctx, t, sc, 1)
	// The seed's uplink is unshaped and the receivers' downlinks are not: the seed can hand out every chunk
	// long before any receiver can take in the whole blob.
	if err := f.lab.Shape(0, ""); err != nil {
		t.Fatal(err)
	}
	receivers := make([]int, sc.receivers)
	var addrs []string
	for k := range receivers {
		receivers[k] = k + 1
		addrs = append(addrs, f.p2pAddr(ctx, k+1))
	}
	probeHost := len(f.daemons)
	probe := startHelper(t, f.lab, probeHost, helperProbe, helperArgs{
		Dir: filepath.Join(f.dir, "probe"), FleetKey: f.fleetKey, Blob: seed.CID, Peers: addrs, Deadline: sc.timeout,
	})

	out := f.fetchEach(ctx, receivers)
	rep, err := probe.next(ctx)
	if err != nil {
		t.Fatal(err)
	}
	f.kill(0)
	t.Logf("seed killed when the receivers held %v of %d chunks", rep.Have, rep.Chunks)
	for k, i := range receivers {
		if rep.Have[f.peerID(ctx, i)] == rep.Chunks {
			t.Errorf("%s held the whole blob when the seed was killed: the scenario did not test partial peers", f.daemons[i].Name)
		}
		f.checkFetched(i, <-out[k], seed)
	}
}

// TestFaultPartitionHeals: one receiver is cut off the LAN (its cable pulled) a quarter into its fetch, stays
// off until every other receiver has the blob, and is reconnected. Its fetch must resume where it was and finish.
func TestFaultPartitionHeals(t *testing.T) {
	requireLab(t)
	sc := scale()
	ctx, cancel := context.WithTimeout(context.Background(), sc.timeout)
	defer cancel()
	f, seed := faultFleet(ctx, t, sc, 0)
	receivers := make([]int, sc.receivers)
	for k := range receivers {
		receivers[k] = k + 1
	}
	cut := receivers[len(receivers)-1]
	out := f.fetchEach(ctx, receivers)

	var atCut, total uint64
	err := f.daemons[cut].poll(ctx, "a quarter of the blob", func(ctx context.Context) (bool, error) {
		done, tot, ok, err := f.fetchProgress(ctx, cut)
		atCut, total = done, tot
		return ok && done >= tot/4, err
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := f.lab.Partition(cut); err != nil {
		t.Fatal(err)
	}
	for k, i := range receivers[:len(receivers)-1] {
		f.checkFetched(i, <-out[k], seed)
	}
	done, _, fetching, err := f.fetchProgress(ctx, cut)
	if err != nil {
		t.Fatal(err)
	}
	if !fetching || done >= total {
		t.Fatalf("%s finished while cut off (held %d of %d bytes when cut): the scenario did not test a resume", f.daemons[cut].Name, atCut, total)
	}
	t.Logf("%s cut off at %d of %d bytes, reconnected at %d", f.daemons[cut].Name, atCut, total, done)
	if err := f.lab.Heal(cut); err != nil {
		t.Fatal(err)
	}
	f.checkFetched(cut, <-out[len(out)-1], seed)
}

// TestFaultCorruptPeer: a fleet member serves the blob with a byte of every chunk flipped and announces a valid
// record of it. Every honest receiver must reject its chunks, drop it, and still end with the seed's exact blob.
// Only with NPU_TEST_FAULTS=long.
func TestFaultCorruptPeer(t *testing.T) {
	requireLab(t)
	if !longFaults {
		t.Skip("fault scenario run by make test-faults (NPU_TEST_FAULTS=long)")
	}
	sc := scale()
	ctx, cancel := context.WithTimeout(context.Background(), sc.timeout)
	defer cancel()
	f, seed := faultFleet(ctx, t, sc, 1)
	evilHost := len(f.daemons)
	evil := startHelper(t, f.lab, evilHost, helperEvil, helperArgs{
		Dir: filepath.Join(f.dir, "evil"), FleetKey: f.fleetKey, Blob: seed.CID, File: seed.Path, Deadline: sc.timeout,
	})
	ready, err := evil.next(ctx)
	if err != nil {
		t.Fatal(err)
	}
	receivers := make([]int, sc.receivers)
	for k := range receivers {
		receivers[k] = k + 1
		// Each receiver knows the corrupting peer and its record before fetching, so it is a source from the start.
		if err := f.daemons[k+1].WaitPeerRecords(ctx, ready.Peer, 1); err != nil {
			t.Fatal(err)
		}
	}
	out := f.fetchEach(ctx, receivers)
	dropped := 0
	for k, i := range receivers {
		f.checkFetched(i, <-out[k], seed)
		n, err := f.daemons[i].CountLog(func(line string) bool {
			return LogMsg("peer dropped from fetch")(line) && strings.Contains(line, "peer="+ready.Peer) &&
				strings.Contains(line, "does not match its hash")
		})
		if err != nil {
			t.Error(err)
		}
		dropped += n
	}
	last, err := evil.stop(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("the corrupting peer sent %d bad chunks; %d of %d receivers dropped it", last.Flipped, dropped, len(receivers))
	if last.Flipped == 0 || dropped == 0 {
		t.Errorf("the corrupting peer sent %d chunks and was dropped %d times: it was never tested", last.Flipped, dropped)
	}
	if dropped > len(receivers) {
		t.Errorf("the corrupting peer was dropped %d times by %d receivers, want at most once each", dropped, len(receivers))
	}
}
