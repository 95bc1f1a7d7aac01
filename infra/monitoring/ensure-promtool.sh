#!/usr/bin/env bash
# Makes sure `promtool` and `prometheus` are on PATH (Debian's `prometheus` package), for the
# tests of the shipped alerting rules. Installs the package when they are missing and this
# user may (root, as on CI); otherwise says what to install.
set -euo pipefail
if command -v promtool >/dev/null && command -v prometheus >/dev/null; then
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "ensure-promtool: install Debian's prometheus package (promtool and prometheus) to run the alert tests" >&2
  exit 1
fi
echo "ensure-promtool: installing Debian's prometheus package..." >&2
export DEBIAN_FRONTEND=noninteractive
apt-get install -y --no-install-recommends prometheus >/dev/null 2>&1 || {
  apt-get update >/dev/null
  apt-get install -y --no-install-recommends prometheus >/dev/null
}
# The package starts a server where an init system runs; the tests run their own.
if command -v systemctl >/dev/null && systemctl is-active --quiet prometheus 2>/dev/null; then
  systemctl stop prometheus || true
fi
command -v promtool >/dev/null
