#!/usr/bin/env bash
# The test suite: unit tests, the in-process receiver tests and the
# black-box runs of both binaries. Needs only cargo and coreutils'
# sha256sum, which the tests call to check the checksum files.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v sha256sum >/dev/null; then
    echo "installing coreutils (for sha256sum)"
    apt-get update -qq && apt-get install -y -qq coreutils
fi
cargo test --workspace --all-targets "$@"
