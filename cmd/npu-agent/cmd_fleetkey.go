package main

import (
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/spf13/cobra"

	"github.com/npu-agent/npu-agent/internal/atomicfile"
	"github.com/npu-agent/npu-agent/p2p"
	"github.com/npu-agent/npu-agent/rollout"
)

// fleetKeyCmd is `fleet-key new --out PATH`: the one way to make a fleet key (docs/design.md 6.2). Without one the
// daemon serves no blobs to peers.
func (a *app) fleetKeyCmd() *cobra.Command {
	c := &cobra.Command{Use: "fleet-key", Short: "Manage fleet membership: a pre-shared fleet key, or a fleet authority's member certificates"}
	var out string
	nc := &cobra.Command{
		Use:   "new --out PATH",
		Short: "Create a new random fleet key file (mode 0640; never replaces a file); copy it to every member",
		Args:  exactArgs(0),
		RunE: func(*cobra.Command, []string) error {
			if out == "" {
				return usageError{fmt.Errorf("--out is required")}
			}
			if err := p2p.WriteFleetKey(out); err != nil {
				return err
			}
			res := struct {
				File string `json:"file"`
			}{out}
			return a.print(res, func(w io.Writer) error {
				_, err := fmt.Fprintf(w, "# fleet key written to %s (mode 0640)\n"+
					"# copy it to every member, readable by the daemon's group, and set on each:\n"+
					"#   p2p:\n#     fleet_key_file: %s\n", out, out)
				return err
			})
		},
	}
	nc.Flags().StringVar(&out, "out", "", "file to write the key to")
	c.AddCommand(nc, a.authorityCmd(), a.issueCmd(), a.revokeCmd(), a.peerIDCmd())
	return c
}

// authorityCmd is `fleet-key authority --out FILE`: the fleet authority's key pair (docs/design.md 6.2).
func (a *app) authorityCmd() *cobra.Command {
	return a.operatorKeyCmd("authority --out FILE",
		"Create a fleet authority key (mode 0600, never replaced); prints the line for p2p.fleet_authority",
		"# fleet authority key %s (key id %s): keep it off the fleet, mode 0600\n"+
			"# set on every member, with its certificate from `fleet-key issue`:\n#   p2p:\n#     fleet_authority: %s\n")
}

// operatorKeyCmd makes a command that writes a new ed25519 key pair in the operator key formats (design 8.2) to
// --out, which must not exist, and prints advice (a format of the file, key ID and public key): rollout keys
// (keygen) and the fleet authority share them.
func (a *app) operatorKeyCmd(use, short, advice string) *cobra.Command {
	var out string
	c := &cobra.Command{
		Use: use, Short: short, Args: exactArgs(0),
		RunE: func(*cobra.Command, []string) error {
			if out == "" {
				return usageError{fmt.Errorf("--out is required")}
			}
			priv, pub := rollout.GenerateKey()
			if err := rollout.WritePrivateKeyFile(out, priv); err != nil {
				return err
			}
			res := struct {
				File      string `json:"file"`
				KeyID     string `json:"key_id"`
				PublicKey string `json:"public_key"`
			}{out, rollout.KeyID(pub), rollout.FormatPublicKey(pub)}
			return a.print(res, func(w io.Writer) error {
				_, err := fmt.Fprintf(w, advice, res.File, res.KeyID, res.PublicKey)
				return err
			})
		},
	}
	c.Flags().StringVar(&out, "out", "", "file to write the private key to (never replaced if it exists)")
	return c
}

// issueCmd is `fleet-key issue`: a member certificate for one host's peer ID.
func (a *app) issueCmd() *cobra.Command {
	var keyFile, id, out string
	var valid time.Duration
	c := &cobra.Command{
		Use:   "issue --authority FILE --peer ID --out FILE [--valid DURATION]",
		Short: "Issue a member certificate for a host's peer ID (see `fleet-key peer-id`); copy it to that host",
		Args:  exactArgs(0),
		RunE: func(*cobra.Command, []string) error {
			if keyFile == "" || id == "" || out == "" || valid <= 0 {
				return usageError{fmt.Errorf("--authority, --peer, --out and a positive --valid are required")}
			}
			p, err := peer.Decode(id)
			if err != nil {
				return usageError{fmt.Errorf("--peer: %w", err)}
			}
			priv, err := rollout.ReadPrivateKeyFile(keyFile)
			if err != nil {
				return err
			}
			now := time.Now()
			cert, err := p2p.IssueCert(priv, p, now.Add(-time.Minute), now.Add(valid))
			if err != nil {
				return err
			}
			if err := atomicfile.WriteFile(out, p2p.EncodePEM(cert, true), 0o644); err != nil {
				return err
			}
			res := struct {
				File     string    `json:"file"`
				Peer     string    `json:"peer"`
				NotAfter time.Time `json:"not_after"`
			}{out, p.String(), now.Add(valid).UTC().Truncate(time.Second)}
			return a.print(res, func(w io.Writer) error {
				_, err := fmt.Fprintf(w, "# certificate for %s, valid until %s, written to %s\n"+
					"# copy it to that host and set p2p.member_cert_file to its path\n", res.Peer, res.NotAfter.Format(time.RFC3339), out)
				return err
			})
		},
	}
	c.Flags().StringVar(&keyFile, "authority", "", "the fleet authority's private key file")
	c.Flags().StringVar(&id, "peer", "", "the member's peer ID")
	c.Flags().StringVar(&out, "out", "", "file to write the certificate to")
	c.Flags().DurationVar(&valid, "valid", 365*24*time.Hour, "how long the certificate is valid")
	return c
}

// revokeCmd is `fleet-key revoke`: adds peers to the revocation list file, with the next seq.
func (a *app) revokeCmd() *cobra.Command {
	var keyFile, list string
	var ids, forget []string
	c := &cobra.Command{
		Use:   "revoke --authority FILE --list FILE [--peer ID ...] [--forget ID ...]",
		Short: "Revoke members: sign the revocation list FILE again with them added and the next sequence number",
		Long: "Revoke members: sign the revocation list FILE again with the --peer IDs added, the --forget IDs removed\n" +
			"(a revoked member whose certificate has expired needs no entry: the list holds at most 4096) and the next\n" +
			"sequence number.",
		Args: exactArgs(0),
		RunE: func(*cobra.Command, []string) error {
			if keyFile == "" || list == "" || len(ids)+len(forget) == 0 {
				return usageError{fmt.Errorf("--authority, --list and at least one --peer or --forget are required")}
			}
			peers, err := decodePeerIDs("--peer", ids)
			if err != nil {
				return err
			}
			gone, err := decodePeerIDs("--forget", forget)
			if err != nil {
				return err
			}
			priv, err := rollout.ReadPrivateKeyFile(keyFile)
			if err != nil {
				return err
			}
			seq := uint64(1)
			if b, err := p2p.ReadPEMFile(list, false); err == nil {
				old, err := p2p.DecodeRevocations(b, priv.Public().(ed25519.PublicKey))
				if err != nil {
					return fmt.Errorf("%s: %w", list, err)
				}
				seq, peers = old.Seq+1, append(peers, old.Peers...)
			} else if !errors.Is(err, os.ErrNotExist) {
				return err
			}
			for _, p := range gone {
				n := len(peers)
				if peers = slices.DeleteFunc(peers, func(q peer.ID) bool { return q == p }); len(peers) == n {
					return usageError{fmt.Errorf("--forget %s: not in %s", p, list)}
				}
			}
			b, err := p2p.IssueRevocations(priv, seq, time.Now(), peers)
			if err != nil {
				return err
			}
			if err := atomicfile.WriteFile(list, p2p.EncodePEM(b, false), 0o644); err != nil {
				return err
			}
			slices.Sort(peers)
			res := struct {
				File    string    `json:"file"`
				Seq     uint64    `json:"seq"`
				Revoked []peer.ID `json:"revoked"`
			}{list, seq, slices.Compact(peers)}
			return a.print(res, func(w io.Writer) error {
				_, err := fmt.Fprintf(w, "# revocation list %d (%d peers) written to %s\n"+
					"# put it at p2p.revocations_file on any member (at least one): members pass it on\n", seq, len(res.Revoked), list)
				return err
			})
		},
	}
	c.Flags().StringVar(&keyFile, "authority", "", "the fleet authority's private key file")
	c.Flags().StringVar(&list, "list", "", "the revocation list file (created when missing)")
	c.Flags().StringArrayVar(&ids, "peer", nil, "peer ID to revoke (repeat)")
	c.Flags().StringArrayVar(&forget, "forget", nil, "peer ID to take off the list once its certificate has expired (repeat)")
	return c
}

// decodePeerIDs parses the peer IDs given to flag.
func decodePeerIDs(flag string, ids []string) ([]peer.ID, error) {
	var ps []peer.ID
	for _, s := range ids {
		p, err := peer.Decode(s)
		if err != nil {
			return nil, usageError{fmt.Errorf("%s %q: %w", flag, s, err)}
		}
		ps = append(ps, p)
	}
	return ps, nil
}

// peerIDCmd is `fleet-key peer-id`: this host's peer ID, from the daemon's identity in the data directory.
func (a *app) peerIDCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "peer-id",
		Short: "Print this host's peer ID (the daemon creates its identity at first start)",
		Args:  exactArgs(0),
		RunE: func(*cobra.Command, []string) error {
			cfg, err := a.loadConfig()
			if err != nil {
				return err
			}
			id, err := p2p.ReadPeerID(cfg.DataDir)
			if errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("%w: no identity in %s yet: start the daemon once", err, cfg.DataDir)
			}
			if err != nil {
				return err
			}
			res := struct {
				Peer string `json:"peer"`
			}{id.String()}
			return a.print(res, func(w io.Writer) error {
				_, err := fmt.Fprintln(w, res.Peer)
				return err
			})
		},
	}
}
