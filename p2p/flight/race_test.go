//go:build race

package flight

func init() { raceEnabled = true }
