#!/usr/bin/env bash
# Makes sure Debian's prometheus package is installed: `prometheus` and `promtool` on the PATH (the
# monitoring tests start a real Prometheus on a loopback port and check the alert rules and the
# services' /metrics with promtool). Does nothing when both are there. Installs with apt-get (needs
# root); the package's own service is not started (policy-rc.d forbids it during the install).
set -eu

if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
	echo "ensure-prometheus: prometheus and promtool are installed ($(prometheus --version 2>&1 | head -n 1))"
	exit 0
fi
if [ "$(id -u)" != 0 ]; then
	echo "ensure-prometheus: prometheus/promtool are missing; install Debian's prometheus package as root" >&2
	exit 1
fi
export DEBIAN_FRONTEND=noninteractive
if ! apt-cache show prometheus >/dev/null 2>&1; then
	echo "ensure-prometheus: refreshing the package lists (apt-get update)"
	apt-get update -qq
fi
# Keep the package's init scripts from starting a Prometheus of their own on :9090 during the install.
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
	printf '#!/bin/sh\nexit 101\n' >"$policy"
	chmod +x "$policy"
	created_policy=1
fi
cleanup() { if [ "$created_policy" = 1 ]; then rm -f "$policy"; fi; }
trap cleanup EXIT
echo "ensure-prometheus: installing prometheus (apt-get install --no-install-recommends prometheus)"
apt-get install -y -qq --no-install-recommends prometheus >/dev/null
echo "ensure-prometheus: installed $(prometheus --version 2>&1 | head -n 1)"
