#!/usr/bin/env bash
# Checks a built npu-agent .deb without installing it on this machine: control fields, the file list with modes
# and owners, conffiles, the shipped binary and config (config check), the unit (systemd-analyze verify when
# installed) and the maintainer scripts (test-scripts.sh, against stubs).
set -euo pipefail
deb=${1:?usage: test-deb.sh PACKAGE.deb}
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() { echo "test-deb: $*" >&2; exit 1; }

field() { dpkg-deb --field "$deb" "$1"; }
[ "$(field Package)" = npu-agent ] || fail "Package is $(field Package)"
[ "$(field Architecture)" = amd64 ] || fail "Architecture is $(field Architecture)"
[[ $(field Version) =~ ^[0-9][A-Za-z0-9.+~-]*$ ]] || fail "Version $(field Version) is not a Debian version"
# An untagged build carries its commit time, so that dpkg orders two builds of one day (version.sh).
if [[ $(field Version) == 0.0.0+git* ]]; then
	[[ $(field Version) =~ ^0\.0\.0\+git[0-9]{14}\.[0-9a-f]+$ ]] || fail "untagged Version $(field Version) lacks the commit time"
	dpkg --compare-versions "0.0.0+git20261204093000.fffffff" lt "0.0.0+git20261204180000.0000000" ||
		fail "dpkg does not order two builds of one day by time"
fi
[ -n "$(field Description)" ] || fail "no Description"

# Every file with its mode and owner; nothing else in the package.
# Man pages are checked below (one per command); the rest is listed here.
dpkg-deb --contents "$deb" | awk '{ sub(/^\.\//, "", $6); if ($6 != "") print $1, $2, $6 }' | sort -k3 > "$work/all"
grep -v ' usr/share/man/man1/.' "$work/all" > "$work/contents" || true
cat > "$work/want" <<'WANT'
drwxr-xr-x root/root etc/
drwxr-xr-x root/root etc/npu-agent/
-rw-r--r-- root/root etc/npu-agent/config.yaml
drwxr-xr-x root/root usr/
drwxr-xr-x root/root usr/bin/
-rwxr-xr-x root/root usr/bin/npu-agent
drwxr-xr-x root/root usr/lib/
drwxr-xr-x root/root usr/lib/systemd/
drwxr-xr-x root/root usr/lib/systemd/system/
-rw-r--r-- root/root usr/lib/systemd/system/npu-agent.service
drwxr-xr-x root/root usr/share/
drwxr-xr-x root/root usr/share/doc/
drwxr-xr-x root/root usr/share/doc/npu-agent/
-rw-r--r-- root/root usr/share/doc/npu-agent/README.md
-rw-r--r-- root/root usr/share/doc/npu-agent/copyright
-rw-r--r-- root/root usr/share/doc/npu-agent/design.md
-rw-r--r-- root/root usr/share/doc/npu-agent/operations.md
drwxr-xr-x root/root usr/share/bash-completion/
drwxr-xr-x root/root usr/share/bash-completion/completions/
-rw-r--r-- root/root usr/share/bash-completion/completions/npu-agent
drwxr-xr-x root/root usr/share/fish/
drwxr-xr-x root/root usr/share/fish/vendor_completions.d/
-rw-r--r-- root/root usr/share/fish/vendor_completions.d/npu-agent.fish
drwxr-xr-x root/root usr/share/man/
drwxr-xr-x root/root usr/share/man/man1/
drwxr-xr-x root/root usr/share/zsh/
drwxr-xr-x root/root usr/share/zsh/vendor-completions/
-rw-r--r-- root/root usr/share/zsh/vendor-completions/_npu-agent
drwxr-xr-x root/root usr/share/npu-agent/
drwxr-xr-x root/root usr/share/npu-agent/python/
-rw-r--r-- root/root usr/share/npu-agent/python/npu_agent.py
WANT
sort -k3 -o "$work/want" "$work/want"
diff -u "$work/want" "$work/contents" >&2 || fail "file list, modes or owners differ (- expected, + in package)"

dpkg-deb --control "$deb" "$work/control"
grep -qx /etc/npu-agent/config.yaml "$work/control/conffiles" || fail "config.yaml is not a conffile"
for s in preinst postinst prerm postrm; do
	[ -x "$work/control/$s" ] || fail "maintainer script $s missing or not executable"
done
bash "$here/test-scripts.sh" "$work/control"

dpkg-deb -x "$deb" "$work/root"
root=$work/root
"$root/usr/bin/npu-agent" --help > /dev/null || fail "the packaged binary does not run"
"$root/usr/bin/npu-agent" config check --config "$root/etc/npu-agent/config.yaml" > /dev/null ||
	fail "the packaged config does not pass config check"
python3 -c 'import ast, sys; ast.parse(open(sys.argv[1]).read())' "$root/usr/share/npu-agent/python/npu_agent.py" 2>/dev/null ||
	! command -v python3 > /dev/null || fail "npu_agent.py does not parse"

# A man page per command, each a gzipped roff page that names its command; completions that load.
for c in "" -fetch -gc -ls -verify -pin -unpin -rm -put -inspect -status -peers -daemon -config-check -rollout-status; do
	page=$root/usr/share/man/man1/npu-agent$c.1.gz
	[ -f "$page" ] || fail "no man page npu-agent$c.1.gz"
	gzip -dc "$page" | grep -q '^\.TH "NPU-AGENT" "1"' || fail "npu-agent$c.1.gz is not a man page"
done
[ "$(grep -c ' usr/share/man/man1/npu-agent' "$work/all")" -eq "$(find "$root/usr/share/man/man1" -name 'npu-agent*.1.gz' | wc -l)" ] ||
	fail "man pages listed and unpacked differ"
bash -c "source '$root/usr/share/bash-completion/completions/npu-agent' && complete -p npu-agent" > /dev/null ||
	fail "the bash completion does not register"
grep -q '^#compdef npu-agent' "$root/usr/share/zsh/vendor-completions/_npu-agent" || fail "zsh completion lacks #compdef"
grep -q 'complete -c npu-agent' "$root/usr/share/fish/vendor_completions.d/npu-agent.fish" || fail "fish completion does not complete npu-agent"
grep -q '^Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/' "$root/usr/share/doc/npu-agent/copyright" ||
	fail "copyright is not in the Debian format"
for doc in README.md operations.md design.md; do
	[ -s "$root/usr/share/doc/npu-agent/$doc" ] || fail "doc $doc not shipped"
done

unit=$root/usr/lib/systemd/system/npu-agent.service
for d in User=npu-agent StateDirectory=npu-agent RuntimeDirectory=npu-agent NoNewPrivileges=yes ProtectSystem=strict \
	ProtectHome=read-only PrivateTmp=yes "DeviceAllow=char-accel rw" SystemCallFilter=@system-service \
	"RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK" \
	"ExecStart=/usr/bin/npu-agent daemon --config /etc/npu-agent/config.yaml"; do
	grep -qxF -- "$d" "$unit" || fail "unit lacks $d"
done
if command -v systemd-analyze > /dev/null; then
	# verify wants ExecStart's binary to exist: point it at the unpacked one.
	mkdir "$work/units"
	sed "s#^ExecStart=/usr/bin/npu-agent#ExecStart=$root/usr/bin/npu-agent#" "$unit" > "$work/units/npu-agent.service"
	out=$(systemd-analyze verify "$work/units/npu-agent.service" 2>&1) || fail "systemd-analyze verify: $out"
	if grep -v 'npu-agent.service:.*\(user\|User\)' <<< "$out" | grep -q .; then
		fail "systemd-analyze verify warns: $out"
	fi
fi
echo "test-deb: $deb ok ($(field Version))"
