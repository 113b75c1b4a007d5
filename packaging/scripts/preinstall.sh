#!/bin/sh
# Creates the npu-agent system user and group before the files are unpacked.
set -e

case "$1" in
install | upgrade)
	if ! getent group npu-agent >/dev/null; then
		groupadd --system npu-agent
	fi
	if ! getent passwd npu-agent >/dev/null; then
		useradd --system --gid npu-agent --home-dir /var/lib/npu-agent --no-create-home \
			--shell /usr/sbin/nologin --comment "npu-agent daemon" npu-agent
	fi
	;;
esac
exit 0
