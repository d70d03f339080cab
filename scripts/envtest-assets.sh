#!/usr/bin/env bash
# Prints the folder of the real control plane's binaries (etcd, kube-apiserver,
# kube-controller-manager) in controller-runtime's KUBEBUILDER_ASSETS layout, unpacking them once
# from ENVTEST_SOURCE (default: ../shared/envtest beside the project, which holds them as .xz)
# into .tools/envtest/<checksum>. Prints nothing and exits 1 when there is no such source.
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=${ENVTEST_SOURCE:-../shared/envtest}
for b in etcd kube-apiserver kube-controller-manager; do
  [ -f "$SRC/$b.xz" ] || [ -x "$SRC/$b" ] || exit 1
done
if [ -x "$SRC/kube-apiserver" ]; then
  cd "$SRC" && pwd
  exit 0
fi
sum=$(cat "$SRC"/*.xz | sha256sum | cut -c1-16)
OUT="$PWD/.tools/envtest/$sum"
if [ ! -x "$OUT/kube-apiserver" ] || [ ! -x "$OUT/etcd" ] || [ ! -x "$OUT/kube-controller-manager" ]; then
  tmp="$OUT.tmp.$$"
  mkdir -p "$tmp"
  for b in etcd kube-apiserver kube-controller-manager; do
    xz -dc "$SRC/$b.xz" > "$tmp/$b"
    chmod +x "$tmp/$b"
  done
  rm -rf "$OUT"
  mv "$tmp" "$OUT"
fi
echo "$OUT"
