#!/usr/bin/env bash
# Runs the maintainer scripts in DIR (preinst/postinst/prerm/postrm, or the *.sh sources) against stub
# getent, groupadd, useradd, usermod, id, systemctl and rm that record their arguments, and checks what they did.
# Nothing on this machine changes.
set -euo pipefail
dir=${1:?usage: test-scripts.sh DIR}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() { echo "test-scripts: $*" >&2; exit 1; }

script() {
	for f in "$dir/$1" "$dir/$2.sh"; do
		if [ -f "$f" ]; then echo "$f"; return; fi
	done
	fail "no $1 in $dir"
}
preinst=$(script preinst preinstall)
postinst=$(script postinst postinstall)
prerm=$(script prerm preremove)
postrm=$(script postrm postremove)
for f in "$preinst" "$postinst" "$prerm" "$postrm"; do
	sh -n "$f" || fail "$f: syntax error"
done

mkdir "$work/bin"
for cmd in groupadd useradd usermod systemctl rm; do
	printf '#!/bin/sh\necho "%s $*" >> "$STUB_CALLS"\n' "$cmd" > "$work/bin/$cmd"
done
# getent answers from $STUB_GROUPS and $STUB_USERS (space-separated names).
cat > "$work/bin/getent" <<'STUB'
#!/bin/sh
case "$1" in
group) list=$STUB_GROUPS ;;
passwd) list=$STUB_USERS ;;
*) exit 2 ;;
esac
for n in $list; do [ "$n" = "$2" ] && { echo "$2:x:999:"; exit 0; }; done
exit 2
STUB
# id -nG prints $STUB_USER_GROUPS.
printf '#!/bin/sh\necho "$STUB_USER_GROUPS"\n' > "$work/bin/id"
chmod 0755 "$work/bin"/*

systemd=no
[ -d /run/systemd/system ] && systemd=yes

# run NAME SCRIPT ARGS...: runs SCRIPT with the stubs under the current STUB_* variables; calls in $work/NAME.
run() {
	local name=$1 f=$2
	shift 2
	: > "$work/$name"
	STUB_CALLS="$work/$name" PATH="$work/bin:$PATH" sh "$f" "$@" > "$work/$name.out" ||
		fail "$name: $f $* exited with $?"
}
# expect NAME PATTERN: some recorded call matches the extended regex.
expect() { grep -Eq -- "$2" "$work/$1" || fail "$1: no call matching '$2'; calls: $(tr '\n' ';' < "$work/$1")"; }
refuse() { ! grep -Eq -- "$2" "$work/$1" || fail "$1: unexpected call matching '$2'; calls: $(tr '\n' ';' < "$work/$1")"; }

# Fresh install on a host without the user, the group or render.
export STUB_GROUPS="" STUB_USERS="" STUB_USER_GROUPS="npu-agent"
run fresh-preinst "$preinst" install
expect fresh-preinst '^groupadd --system npu-agent$'
expect fresh-preinst '^useradd --system --gid npu-agent .*--shell /usr/sbin/nologin .*npu-agent$'
export STUB_GROUPS="npu-agent" STUB_USERS="npu-agent"
run fresh-postinst "$postinst" configure ""
refuse fresh-postinst '^usermod'
if [ $systemd = yes ]; then
	expect fresh-postinst '^systemctl enable npu-agent.service$'
	refuse fresh-postinst '^systemctl (start|restart|try-restart)'
else
	refuse fresh-postinst '^systemctl'
fi

# The NPU driver's render group exists: the daemon joins it, once.
export STUB_GROUPS="npu-agent render"
run render-postinst "$postinst" configure ""
expect render-postinst '^usermod --append --groups render npu-agent$'
export STUB_USER_GROUPS="npu-agent render"
run render-again "$postinst" configure "0.1.0"
refuse render-again '^usermod'

# Upgrade: nothing is created again, a running daemon is restarted.
run upgrade-preinst "$preinst" upgrade "0.1.0"
refuse upgrade-preinst '^(groupadd|useradd)'
run upgrade-postinst "$postinst" configure "0.1.0"
if [ $systemd = yes ]; then
	expect upgrade-postinst '^systemctl try-restart npu-agent.service$'
	refuse upgrade-postinst '^systemctl enable'
fi

# Remove keeps the data; purge deletes the store, never the user.
run remove-prerm "$prerm" remove
if [ $systemd = yes ]; then expect remove-prerm '^systemctl stop npu-agent.service$'; fi
run upgrade-prerm "$prerm" upgrade "0.2.0"
refuse upgrade-prerm '^systemctl (stop|disable)'
# Installed again after remove: the unit is enabled again (prerm remembered it was), not started.
if [ $systemd = yes ]; then
	mkdir -p "$work/root/var/lib/npu-agent"
	DPKG_ROOT="$work/root" run remove-marker "$prerm" remove
	[ -e "$work/root/var/lib/npu-agent/.enabled-before-remove" ] || fail "prerm remove did not remember the enabled unit"
	DPKG_ROOT="$work/root" run reinstall-postinst "$postinst" configure "0.1.0"
	expect reinstall-postinst '^systemctl enable npu-agent.service$'
	expect reinstall-postinst '^rm -f .*/var/lib/npu-agent/.enabled-before-remove$'
	refuse reinstall-postinst '^systemctl (start|restart)'
fi
run remove-postrm "$postrm" remove
refuse remove-postrm '^rm'
run purge-postrm "$postrm" purge
expect purge-postrm '^rm -rf /var/lib/npu-agent$'
refuse purge-postrm '^(userdel|groupdel)'

echo "test-scripts: maintainer scripts in $dir ok"
