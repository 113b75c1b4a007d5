package config

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func writeFile(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "npu-agent.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoad(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		body    string
		env     []string
		wantErr string
		check   func(t *testing.T, c Config)
	}{
		{name: "empty file keeps defaults", body: "", check: func(t *testing.T, c Config) {
			if c.DataDir != "/var/lib/npu-agent" || !c.P2P.MDNS || c.Flight.LeaseTTL != 15*time.Second {
				t.Errorf("defaults lost: %+v", c)
			}
		}},
		{name: "values override defaults", body: "data_dir: /srv/npu\nstore:\n  quota: 20GiB\nflight:\n  window: 50ms\np2p:\n  peers: [\"/ip4/10.0.0.2/tcp/4801/p2p/x\"]\n",
			check: func(t *testing.T, c Config) {
				if c.DataDir != "/srv/npu" || c.Store.Quota != 20<<30 || c.Flight.Window != 50*time.Millisecond || len(c.P2P.Peers) != 1 {
					t.Errorf("got %+v", c)
				}
			}},
		{name: "env overrides file", body: "log_level: info\n",
			env: []string{"NPU_AGENT_LOG_LEVEL=debug", "NPU_AGENT_P2P_MDNS=false", "NPU_AGENT_P2P_ALLOWLIST=a, b", "NPU_AGENT_STORE_QUOTA=1GiB", "PATH=/bin"},
			check: func(t *testing.T, c Config) {
				if c.LogLevel != "debug" || c.P2P.MDNS || len(c.P2P.Allowlist) != 2 || c.P2P.Allowlist[1] != "b" || c.Store.Quota != 1<<30 {
					t.Errorf("got %+v", c)
				}
			}},
		{name: "unknown key", body: "data_dri: /x\n", wantErr: "line 1: data_dri: no such key (did you mean data_dir?)"},
		{name: "unknown nested key", body: "store:\n  gc_intervall: 5m\n", wantErr: "line 2: store.gc_intervall: no such key (did you mean gc_interval?)"},
		{name: "key in another section", body: "quota: 5GiB\n", wantErr: "quota: no such key (did you mean store.quota?)"},
		{name: "wrong type", body: "p2p:\n  mdns: maybe\n", wantErr: `line 2: p2p.mdns: "maybe" is not true or false`},
		{name: "all problems at once, in line order", body: "store:\n  gc_interval: soon\n  quota: lots\n---\n", wantErr: "3 problems:\n  line 2: store.gc_interval"},
		{name: "validation names the line", body: "\nlog_level: loud\n", wantErr: "line 2: log_level"},
		{name: "negative interval", body: "store:\n  gc_interval: -1s\n", wantErr: "line 2: store.gc_interval: -1s: must be positive"},
		{name: "zero interval with a quota", body: "store:\n  quota: 1GiB\n  gc_interval: 0s\n", wantErr: "store.gc_interval"},
		{name: "second document", body: "log_level: info\n---\nlog_level: debug\n", wantErr: "line 2: (file): a second YAML document"},
		{name: "not a mapping", body: "p2p: yes\n", wantErr: "line 1: p2p: want a mapping"},
		{name: "list wanted", body: "p2p:\n  peers: /ip4/1.2.3.4\n", wantErr: "p2p.peers: want a list"},
		{name: "go type names never leak", body: "store:\n  quota: [1]\n", wantErr: "store.quota: want a single value"},
		{name: "env int", env: []string{"NPU_AGENT_ROLLOUT_THRESHOLD=0"}, check: func(t *testing.T, c Config) {}},
		{name: "env int bad", env: []string{"NPU_AGENT_ROLLOUT_THRESHOLD=two"}, wantErr: `NPU_AGENT_ROLLOUT_THRESHOLD: "two" is not a whole number`},
		{name: "env config is not an option", env: []string{"NPU_AGENT_CONFIG=/etc/x.yaml"}, check: func(t *testing.T, c Config) {}},
		{name: "env socket", env: []string{"NPU_AGENT_SOCKET=/tmp/s.sock"}, check: func(t *testing.T, c Config) {
			if c.SocketPath() != "/tmp/s.sock" {
				t.Errorf("socket %s", c.SocketPath())
			}
		}},
		{name: "env api socket wins", env: []string{"NPU_AGENT_SOCKET=/tmp/s.sock", "NPU_AGENT_API_SOCKET=/tmp/a.sock"}, check: func(t *testing.T, c Config) {
			if c.SocketPath() != "/tmp/a.sock" {
				t.Errorf("socket %s", c.SocketPath())
			}
		}},
		{name: "env typo suggests", env: []string{"NPU_AGENT_STORE_QUTA=1GiB"}, wantErr: "did you mean NPU_AGENT_STORE_QUOTA?"},
		{name: "bad level", body: "log_level: loud\n", wantErr: "log_level"},
		{name: "bad size", body: "store:\n  quota: lots\n", wantErr: `line 2: store.quota: "lots" is not a size`},
		{name: "api tcp not loopback", body: "api:\n  tcp: 0.0.0.0:4800\n", wantErr: "api.tcp"},
		{name: "command backend without argv", body: "compiler:\n  backend: command\n", wantErr: "compiler.command"},
		{name: "unknown backend", body: "compiler:\n  backend: magic\n", wantErr: "compiler.backend"},
		{name: "missing key file", body: "p2p:\n  fleet_key_file: /nonexistent/key\n", wantErr: "p2p.fleet_key_file"},
		{name: "unknown env option", env: []string{"NPU_AGENT_NOPE=1"}, wantErr: "NPU_AGENT_NOPE: no such option"},
		{name: "bad env bool", env: []string{"NPU_AGENT_P2P_MDNS=perhaps"}, wantErr: "NPU_AGENT_P2P_MDNS"},
		{name: "deadline below ttl", body: "flight:\n  deadline: 1s\n", wantErr: "flight.deadline"},
		{name: "connection bounds", body: "p2p:\n  conn_low: 4\n  conn_high: 12\n", check: func(t *testing.T, c Config) {
			if c.P2P.ConnLow != 4 || c.P2P.ConnHigh != 12 {
				t.Errorf("conn bounds %d, %d", c.P2P.ConnLow, c.P2P.ConnHigh)
			}
		}},
		{name: "conn low not below high", body: "p2p:\n  conn_low: 12\n  conn_high: 12\n", wantErr: "p2p.conn_low: 12: must be below p2p.conn_high (12)"},
		{name: "conn high too large", body: "p2p:\n  conn_high: 5000\n", wantErr: "p2p.conn_high: 5000: at most 1024"},
		{name: "conn negative", body: "p2p:\n  conn_low: -1\n", wantErr: "must not be negative"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, err := Load(writeFile(t, tt.body), tt.env)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want it to contain %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tt.check(t, c)
		})
	}
}

func TestLoadOversized(t *testing.T) {
	t.Parallel()
	_, err := Load(writeFile(t, "# "+strings.Repeat("x", MaxFileSize)), nil)
	if err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Fatalf("err = %v", err)
	}
}

func TestByteSize(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		in   string
		want ByteSize
		err  bool
	}{
		{"0", 0, false}, {"512", 512, false}, {"8MiB", 8 << 20, false}, {"1.5GiB", 3 << 29, false},
		{"2 GB", 2e9, false}, {"10B", 10, false}, {"-1", 0, true}, {"GiB", 0, true}, {"1e30TiB", 0, true}, {"NaN", 0, true},
	} {
		got, err := ParseByteSize(tt.in)
		if (err != nil) != tt.err || got != tt.want {
			t.Errorf("ParseByteSize(%q) = %v, %v; want %v, err %v", tt.in, got, err, tt.want, tt.err)
		}
		if err == nil && got != 0 {
			back, err := ParseByteSize(got.String())
			if err != nil || back != got {
				t.Errorf("round trip of %v via %q = %v, %v", got, got.String(), back, err)
			}
		}
	}
}

func FuzzParseByteSize(f *testing.F) {
	for _, s := range []string{"1GiB", "0", "1.5MB", "", "-3", "9999999999999TiB"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		b, err := ParseByteSize(s)
		if err != nil {
			return
		}
		if b2, err := ParseByteSize(b.String()); err != nil || b2 != b {
			t.Fatalf("%q -> %d -> %q -> %d, %v", s, b, b.String(), b2, err)
		}
	})
}

// TestEveryOptionFromEnv: every option can be set from its NPU_AGENT_<PATH> variable.
func TestEveryOptionFromEnv(t *testing.T) {
	t.Parallel()
	samples := map[string]string{"time.Duration": "3m", "config.ByteSize": "2MiB", "string": "x", "bool": "false",
		"[]string": "a,b", "int": "1"}
	c := Default()
	n := 0
	_ = walk(reflect.ValueOf(&c).Elem(), EnvPrefix, func(name string, v reflect.Value) error {
		n++
		s, ok := samples[v.Type().String()]
		if !ok {
			t.Errorf("%s: no sample for type %s", name, v.Type())
			return nil
		}
		if err := setString(v, s); err != nil {
			t.Errorf("%s=%s: %v", name, s, err)
		}
		return nil
	})
	fileOnly := []string{"ovcache.dirs"} // lists of sections are set in the file only
	if n != len(Keys())-len(fileOnly) {
		t.Errorf("%d variables, %d keys of which %d file-only", n, len(Keys()), len(fileOnly))
	}
}
