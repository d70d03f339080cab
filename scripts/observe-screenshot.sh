#!/usr/bin/env bash
# Render docs/dashboard.png: run the tutorial in-process while recording the controller's metrics
# and the kube-state-metrics series, then draw the dashboard's panels from Prometheus' answers to
# their queries (scripts/observe-screenshot.py). Not part of the test suite.
# Needs: prometheus and promtool (Debian: apt-get install prometheus), python3 with matplotlib.
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in prometheus promtool python3; do
  command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install prometheus python3)" >&2; exit 1; }
done
python3 -c 'import matplotlib' 2>/dev/null || { echo "missing matplotlib (pip install matplotlib)" >&2; exit 1; }
export PATH="$PWD/.tools/bin:$PATH"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
UAMI_OBSERVE_RECORD="$work/recording.om" \
  cargo test --test deploy_observe after_the_tutorial_every_metric_and_label_the_queries_use_exists
python3 scripts/observe-screenshot.py "$work/recording.om" \
  deploy/helm/uami-controller/files/dashboard.json docs/dashboard.png
