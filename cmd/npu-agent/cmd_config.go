package main

import (
	"fmt"
	"io"

	"github.com/spf13/cobra"
	"gopkg.in/yaml.v3"
)

func (a *app) configCmd() *cobra.Command {
	c := &cobra.Command{Use: "config", Short: "Inspect the configuration"}
	c.AddCommand(&cobra.Command{
		Use:   "check",
		Short: "Load the config file, environment and flags; explain what is wrong or print the result",
		Args:  exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := a.loadConfig()
			if err != nil {
				return err
			}
			if err := checkDaemonConfig(cfg); err != nil {
				return err
			}
			// JSON keys are the YAML keys: round-trip through YAML.
			var asMap map[string]any
			raw, err := yaml.Marshal(cfg)
			if err == nil {
				err = yaml.Unmarshal(raw, &asMap)
			}
			if err != nil {
				return err
			}
			return a.print(asMap, func(w io.Writer) error {
				fmt.Fprintln(w, "# configuration is valid; effective values:")
				return yaml.NewEncoder(w).Encode(cfg)
			})
		},
	})
	return c
}
