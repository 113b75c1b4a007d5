package main

import (
	"runtime"

	"github.com/prometheus/client_golang/prometheus"
)

// registerBuildInfo adds npu_agent_build_info{version, goversion} 1: which build each host of a fleet runs.
func registerBuildInfo(reg prometheus.Registerer) error {
	g := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "npu_agent_build_info",
		Help: "Always 1; its labels name the npu-agent version and the Go version it was built with.",
	}, []string{"version", "goversion"})
	g.WithLabelValues(version, runtime.Version()).Set(1)
	return reg.Register(g)
}
