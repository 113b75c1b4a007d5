package main

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"
	"github.com/spf13/cobra/doc"
)

// gendocsCmd writes the man pages and shell completions the Debian package installs (make deb). Hidden: it is
// for packagers, and `npu-agent completion` serves users who want a completion script by hand.
func (a *app) gendocsCmd() *cobra.Command {
	return &cobra.Command{
		Use:    "gendocs DIR",
		Short:  "Write man pages (DIR/man/man1) and bash, zsh and fish completions (DIR/completions)",
		Hidden: true,
		Args:   exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			root := cmd.Root()
			man := filepath.Join(args[0], "man", "man1")
			comp := filepath.Join(args[0], "completions")
			for _, d := range []string{man, comp} {
				if err := os.MkdirAll(d, 0o755); err != nil {
					return err
				}
			}
			root.DisableAutoGenTag = true
			hdr := &doc.GenManHeader{Title: "NPU-AGENT", Section: "1", Source: "npu-agent " + version, Manual: "npu-agent manual"}
			if err := doc.GenManTree(root, hdr, man); err != nil {
				return fmt.Errorf("man pages: %w", err)
			}
			for name, gen := range map[string]func(string) error{
				"npu-agent.bash": func(p string) error { return root.GenBashCompletionFileV2(p, true) },
				"_npu-agent":     root.GenZshCompletionFile,
				"npu-agent.fish": func(p string) error { return root.GenFishCompletionFile(p, true) },
			} {
				if err := gen(filepath.Join(comp, name)); err != nil {
					return fmt.Errorf("completion %s: %w", name, err)
				}
			}
			return nil
		},
	}
}
