#!/usr/bin/env bash
# Makes sure the tools the test suite runs are installed, from Debian's
# packages when one is missing: each argument is COMMAND:PACKAGE, e.g.
#   scripts/ensure-tools.sh promtool:prometheus haproxy:haproxy
# Non-interactive; as root it runs apt-get directly, otherwise through
# `sudo -n` (no password prompt). Prints one line per tool.
set -euo pipefail

missing_pkgs=()
for spec in "$@"; do
    cmd="${spec%%:*}"
    pkg="${spec#*:}"
    if command -v "$cmd" >/dev/null 2>&1 || [[ -x "/usr/sbin/$cmd" ]]; then
        echo "tools: $cmd present"
    else
        missing_pkgs+=("$pkg")
    fi
done
((${#missing_pkgs[@]} == 0)) && exit 0

if [[ "$(id -u)" -eq 0 ]]; then
    as_root=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    as_root=(sudo -n)
else
    echo "tools: missing ${missing_pkgs[*]} and cannot become root to apt-get install them" >&2
    exit 1
fi
command -v apt-get >/dev/null 2>&1 || {
    echo "tools: missing ${missing_pkgs[*]} and this is not a Debian-like system (no apt-get)" >&2
    exit 1
}
echo "tools: installing ${missing_pkgs[*]} (apt-get)"
export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" apt-get update -qq
"${as_root[@]}" apt-get install -y -qq --no-install-recommends "${missing_pkgs[@]}" >/dev/null
# The packages ship services (prometheus on :9090, haproxy on :80); the
# tests start their own, so do not leave the packaged ones running.
for pkg in "${missing_pkgs[@]}"; do
    if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$pkg" 2>/dev/null; then
        "${as_root[@]}" systemctl disable --now "$pkg" >/dev/null 2>&1 || true
    fi
done
echo "tools: installed ${missing_pkgs[*]}"
