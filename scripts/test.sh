#!/usr/bin/env bash
# The test suite: unit tests, the in-process receiver tests and the
# black-box runs of both binaries. Needs cargo, coreutils' sha256sum (the
# tests check the checksum files with it), openssl (for make-cert.sh),
# Debian's chromium (the status page is checked in a real browser),
# prometheus and promtool (a real Prometheus scrapes /metrics),
# systemd-analyze (the installed unit is verified) and faketime (the sender
# runs with wrong clocks).
# The storage rules also run against a real S3 store: a Garage started here
# by scripts/garage.sh (which installs Garage the first time, ~11 min).
# Then, unless arguments pick tests: the sender's tests again with the
# sender cross-compiled for the Pis and run under qemu-user
# (scripts/test-arm.sh, which installs the cross toolchains and qemu-user),
# and the Debian packages installed into a throwaway root
# (scripts/test-packages.sh; lintian checks them).
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
command -v sha256sum >/dev/null || missing+=(coreutils)
command -v openssl >/dev/null || missing+=(openssl)
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ -x /usr/bin/prometheus ] && [ -x /usr/bin/promtool ] || missing+=(prometheus)
[ -x /usr/bin/systemd-analyze ] || missing+=(systemd)
command -v faketime >/dev/null || missing+=(faketime)
command -v curl >/dev/null || missing+=(curl)
command -v lintian >/dev/null || missing+=(lintian)
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# The fault tests run the receiver binary beside the sender's: build all
# binaries first, so a partial earlier build cannot leave it missing or stale.
cargo build --workspace --bins
export GARAGE_DIR=${TMPDIR:-/tmp}/logferry-test-garage-$$
trap 'scripts/garage.sh stop' EXIT
garage_env=$(scripts/garage.sh start)
eval "$garage_env"
export LOGFERRY_TEST_S3=s3://logferry/test LOGFERRY_REQUIRE_S3=1
cargo test --workspace --all-targets "$@"
if [ $# -eq 0 ]; then
    scripts/test-arm.sh
    scripts/test-packages.sh
fi
