#!/usr/bin/env bash
# The test command: installs the client tools the tests drive (kubectl, helm) into .tools/bin,
# finds the real control plane's binaries (KUBEBUILDER_ASSETS, from ../shared/envtest when it is
# there), then runs the whole suite: every test against the sandbox, and the tests that name a
# real API server against kube-apiserver too. Works on a fresh machine with a Rust toolchain and
# Python's pip; without the control plane's binaries it says plainly that the real-API-server
# layer did not run (under CI, where it must run, it fails instead).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -x scripts/install-tools.sh ]; then
  scripts/install-tools.sh
fi
export PATH="$PWD/.tools/bin:$PATH"
if [ -z "${KUBEBUILDER_ASSETS:-}" ] && assets=$(scripts/envtest-assets.sh); then
  export KUBEBUILDER_ASSETS="$assets"
fi
if [ -n "${KUBEBUILDER_ASSETS:-}" ]; then
  export UAMI_REAL_APISERVER_REQUIRED=1
  echo "real API server: kube-apiserver from KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS"
elif [ "${CI:-}" = true ]; then
  echo "CI needs the real control plane: no KUBEBUILDER_ASSETS and no ../shared/envtest" >&2
  exit 1
fi
status=0
cargo test --workspace --all-targets "$@" || status=$?
if [ -z "${KUBEBUILDER_ASSETS:-}" ]; then
  echo "NOTE: the real-API-server layer did NOT run (no KUBEBUILDER_ASSETS and no ../shared/envtest)."
  echo "      Turn it on with KUBEBUILDER_ASSETS=<folder with etcd, kube-apiserver, kube-controller-manager>."
fi
exit $status
