#!/bin/sh
# On purge, removes the blob store and identity (a cache: peers or a compile rebuild it). The npu-agent user
# stays, as Debian policy asks, so files it may still own elsewhere keep a name.
set -e

case "$1" in
purge)
	rm -rf /var/lib/npu-agent
	;;
esac
if [ -d /run/systemd/system ]; then
	systemctl daemon-reload || true
fi
exit 0
