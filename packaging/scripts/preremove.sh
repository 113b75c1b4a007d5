#!/bin/sh
# Stops the service before its files go away (not on upgrade: postinstall restarts it).
set -e

case "$1" in
remove | purge)
	if [ -d /run/systemd/system ]; then
		systemctl stop npu-agent.service || true
		systemctl disable npu-agent.service || true
	fi
	;;
esac
exit 0
