package main

import "github.com/spf13/cobra"

func (a *app) commands() []*cobra.Command {
	return []*cobra.Command{
		a.fingerprintCmd(),
		a.inspectCmd(),
		a.fetchCmd(),
		a.putCmd(),
		a.lsCmd(),
		a.gcCmd(),
		a.verifyCmd(),
		a.rmCmd(),
		a.pinCmd(true),
		a.pinCmd(false),
		a.cacheCmd(),
		a.daemonCmd(),
		a.statusCmd(),
		a.peersCmd(),
		a.configCmd(),
		a.keygenCmd(),
		a.fleetKeyCmd(),
		a.publishCmd(),
		a.rolloutCmd(),
		a.gendocsCmd(),
	}
}
