#!/bin/sh
# Prints the package version: the latest vX.Y.Z tag (plus commits since, as +N.gHASH), else
# 0.0.0+git<commit time, UTC, to the second>.<hash>. Debian versions must start with a digit. The time orders two
# untagged builds of one day (dpkg compares the hash's leading digits as a number: an upgrade looked like a downgrade).
set -e
if v=$(git describe --tags --match 'v[0-9]*' 2>/dev/null); then
	echo "$v" | sed -e 's/^v//' -e 's/-\([0-9]*\)-g/+\1.g/'
elif h=$(git rev-parse --short HEAD 2>/dev/null); then
	echo "0.0.0+git$(TZ=UTC git log -1 --format=%cd --date=format-local:%Y%m%d%H%M%S).$h"
else
	echo "0.0.0"
fi
