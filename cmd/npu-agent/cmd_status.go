package main

import (
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/npu-agent/npu-agent/api"
)

// daemonClient connects to the running daemon or explains that none runs.
func (a *app) daemonClient(cmd *cobra.Command) (*api.Client, error) {
	cfg, err := a.loadConfig()
	if err != nil {
		return nil, err
	}
	c, err := api.Dial(cmd.Context(), cfg.SocketPath())
	if errors.Is(err, errNoDaemon) {
		return nil, fmt.Errorf("%w on %s: start it with `sudo systemctl start npu-agent` (or run `npu-agent daemon` with this config)", errNoDaemon, cfg.SocketPath())
	}
	if err != nil {
		return nil, err
	}
	return c, nil
}

func (a *app) statusCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "What the running daemon holds, what it is fetching or compiling, and who is connected",
		Args:  exactArgs(0),
		RunE: a.withStatus(func(st api.Status) error {
			return a.print(st, func(w io.Writer) error {
				peerID := st.PeerID
				if peerID == "" {
					peerID = "(fleet disabled)"
				}
				if err := table(w, []string{"AGENT", "VALUE"}, [][]string{
					{"version", st.Version}, {"hostname", orDash(st.Hostname)}, {"tags", orDash(strings.Join(st.Tags, ","))},
					{"peer id", peerID}, {"compiler", orNone(st.Compiler)},
					{"class", short(st.Class)}, {"serving", serving(st.PeerServing)},
					{"store", fmt.Sprintf("%d blobs, %d partial, %s of quota %s, %d records", st.Store.Blobs, st.Store.Partial,
						humanBytes(st.Store.Bytes), quota(st.Store.Quota), st.Store.Records)},
					{"peers", strconv.Itoa(len(st.Peers))},
				}); err != nil {
					return err
				}
				if len(st.Jobs) > 0 {
					fmt.Fprintln(w)
					var rows [][]string
					for _, j := range st.Jobs {
						prog := "-"
						if j.Total > 0 {
							prog = fmt.Sprintf("%s / %s, %s/s", humanBytes(j.Done), humanBytes(j.Total), humanBytes(j.Rate))
						}
						rows = append(rows, []string{jobPhase(j), short(j.ModelID), short(j.ProfileID), prog,
							time.Since(j.Started).Round(time.Second).String()})
					}
					return table(w, []string{"JOB", "MODEL", "PROFILE", "PROGRESS", "RUNNING"}, rows)
				}
				return nil
			})
		}),
	}
}

func (a *app) peersCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "peers",
		Short: "Fleet members the running daemon knows: hostname, class, tags, version, whether connected, when last heard",
		Args:  exactArgs(0),
		RunE: a.withStatus(func(st api.Status) error {
			if st.Peers == nil {
				st.Peers = []api.Peer{} // JSON [] when alone, never null
			}
			return a.print(st.Peers, func(w io.Writer) error {
				var rows [][]string
				for _, p := range st.Peers {
					seen := "-"
					if !p.Seen.IsZero() {
						seen = time.Since(p.Seen).Round(time.Second).String() + " ago"
					}
					connected := "no"
					if p.Connected {
						connected = "yes"
					}
					rows = append(rows, []string{p.ID, orDash(p.Hostname), short(p.Class), orDash(strings.Join(p.Tags, ",")),
						orDash(p.Version), connected, seen, strconv.Itoa(p.Records), strings.Join(p.Addrs, ",")})
				}
				return table(w, []string{"PEER", "HOSTNAME", "CLASS", "TAGS", "VERSION", "CONNECTED", "SEEN", "RECORDS",
					"ADDRS"}, rows)
			})
		}),
	}
}

// withStatus runs a command on the running daemon's status.
func (a *app) withStatus(run func(st api.Status) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, _ []string) error {
		c, err := a.daemonClient(cmd)
		if err != nil {
			return err
		}
		defer c.Close()
		st, err := c.Status(cmd.Context())
		if err != nil {
			return err
		}
		return run(st)
	}
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// serving says whether this daemon serves blobs to peers (api.Status.PeerServing).
func serving(s string) string {
	if s == "" {
		return "off: fleet disabled"
	}
	return s
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

func quota(q uint64) string {
	if q == 0 {
		return "unlimited"
	}
	return humanBytes(q)
}
