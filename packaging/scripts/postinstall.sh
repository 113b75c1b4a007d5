#!/bin/sh
# Gives the daemon the NPU (/dev/accel/* belongs to group render where the driver package sets it up), enables the
# service on first install and restarts a running one on upgrade.
set -e

case "$1" in
configure)
	if getent group render >/dev/null && ! id -nG npu-agent | tr ' ' '\n' | grep -qx render; then
		usermod --append --groups render npu-agent
	fi
	if [ -d /run/systemd/system ]; then
		systemctl daemon-reload
		marker="${DPKG_ROOT:-}/var/lib/npu-agent/.enabled-before-remove"
		if [ -e "$marker" ]; then
			# Installed again after `apt remove`, which disabled the unit: enable it as it was.
			systemctl enable npu-agent.service
			rm -f "$marker"
		elif [ -z "$2" ]; then
			# First install: enabled, not started. Set a fleet key first (docs/operations.md).
			systemctl enable npu-agent.service
			echo "npu-agent: configure /etc/npu-agent/config.yaml (p2p.fleet_key_file), then: systemctl start npu-agent"
		else
			systemctl try-restart npu-agent.service
		fi
	fi
	;;
esac
exit 0
