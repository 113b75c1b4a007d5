package main

import (
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/npu-agent/npu-agent/p2p"
)

// fleetKeyCmd is `fleet-key new --out PATH`: the one way to make a fleet key (docs/design.md 6.2). Without one the
// daemon serves no blobs to peers.
func (a *app) fleetKeyCmd() *cobra.Command {
	c := &cobra.Command{Use: "fleet-key", Short: "Manage the fleet key (the pre-shared key every member holds)"}
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
	c.AddCommand(nc)
	return c
}
