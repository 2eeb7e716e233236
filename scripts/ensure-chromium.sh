#!/usr/bin/env bash
# Makes sure Debian's chromium is installed at /usr/bin/chromium (the console's browser tests drive it
# through Playwright, pointed at that executable; Playwright's own browser downloads are not used).
# Does nothing when it is already there. Installs with apt-get (needs root).
set -eu

CHROMIUM=/usr/bin/chromium

if [ -x "$CHROMIUM" ]; then
	echo "ensure-chromium: $CHROMIUM is installed ($("$CHROMIUM" --version 2>/dev/null || echo 'version unknown'))"
	exit 0
fi
if [ "$(id -u)" != 0 ]; then
	echo "ensure-chromium: $CHROMIUM is missing; install Debian's chromium package as root" >&2
	exit 1
fi
export DEBIAN_FRONTEND=noninteractive
if ! apt-cache show chromium >/dev/null 2>&1; then
	echo "ensure-chromium: refreshing the package lists (apt-get update)"
	apt-get update -qq
fi
echo "ensure-chromium: installing chromium (apt-get install --no-install-recommends chromium)"
apt-get install -y -qq --no-install-recommends chromium >/dev/null
echo "ensure-chromium: installed $("$CHROMIUM" --version 2>/dev/null || echo "$CHROMIUM")"
