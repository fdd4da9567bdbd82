#!/usr/bin/env bash
# Debian packages the test suite drives: Chromium (browser tests through playwright; never a downloaded
# browser), promtool and prometheus (metrics checks), docker-compose (validates docker-compose.yml), haproxy (the
# load balancer in front of two app nodes), redis-sentinel (the Sentinel group of the failover tests).
set -euo pipefail
need=()
command -v chromium >/dev/null || need+=(chromium)
command -v promtool >/dev/null || need+=(prometheus)
command -v docker-compose >/dev/null || need+=(docker-compose)
command -v haproxy >/dev/null || need+=(haproxy)
command -v redis-sentinel >/dev/null || need+=(redis-sentinel)
((${#need[@]})) || exit 0
sudo=""; [[ $EUID -eq 0 ]] || sudo="sudo"
echo "[test-tools] installing ${need[*]} (apt-get)" >&2
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
