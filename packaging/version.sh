#!/bin/sh
# Prints the package version: the latest vX.Y.Z tag (plus commits since, as +N.gHASH), else
# 0.0.0+git<commit date>.<hash>. Debian versions must start with a digit.
set -e
if v=$(git describe --tags --match 'v[0-9]*' 2>/dev/null); then
	echo "$v" | sed -e 's/^v//' -e 's/-\([0-9]*\)-g/+\1.g/'
elif h=$(git rev-parse --short HEAD 2>/dev/null); then
	echo "0.0.0+git$(git log -1 --format=%cd --date=format:%Y%m%d).$h"
else
	echo "0.0.0"
fi
