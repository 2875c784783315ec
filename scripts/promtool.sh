#!/usr/bin/env bash
# Checks the Prometheus files under ops/prometheus: the config and the
# alert rules parse (`promtool check`), and every alert fires on its
# synthetic trouble and stays quiet when healthy (`promtool test rules`).
# Installs Debian's prometheus package (which has promtool) when missing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/ensure-tools.sh promtool:prometheus
promtool check config ops/prometheus/prometheus.yml
promtool check rules ops/prometheus/alerts.yml
promtool test rules ops/prometheus/alerts_test.yml
