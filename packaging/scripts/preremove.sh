#!/bin/sh
# Stops the service before its files go away (not on upgrade: postinstall restarts it).
set -e

case "$1" in
remove | purge)
	if [ -d /run/systemd/system ]; then
		# Remembered so that installing the package again enables the unit again (postinstall).
		if [ "$1" = remove ] && [ -d "${DPKG_ROOT:-}/var/lib/npu-agent" ] && systemctl is-enabled --quiet npu-agent.service; then
			: > "${DPKG_ROOT:-}/var/lib/npu-agent/.enabled-before-remove" || true
		fi
		systemctl stop npu-agent.service || true
		systemctl disable npu-agent.service || true
	fi
	;;
esac
exit 0
