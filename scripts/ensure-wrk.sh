#!/usr/bin/env bash
# Makes sure Debian's wrk (the HTTP load generator the benchmarks drive: C, one thread, cheap on CPU)
# is on the PATH. Does nothing when it is there; installs it with apt-get otherwise (needs root).
set -eu

if command -v wrk >/dev/null 2>&1; then
	echo "ensure-wrk: wrk is installed ($(command -v wrk))"
	exit 0
fi
if [ "$(id -u)" != 0 ]; then
	echo "ensure-wrk: wrk is missing; install Debian's wrk package as root (apt-get install wrk)" >&2
	exit 1
fi
export DEBIAN_FRONTEND=noninteractive
if ! apt-cache show wrk >/dev/null 2>&1; then
	echo "ensure-wrk: refreshing the package lists (apt-get update)"
	apt-get update -qq
fi
echo "ensure-wrk: installing wrk (apt-get install --no-install-recommends wrk)"
apt-get install -y -qq --no-install-recommends wrk >/dev/null
echo "ensure-wrk: installed $(command -v wrk)"
