//go:build race

package fleetsim

func init() { raceEnabled = true }
