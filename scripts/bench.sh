#!/usr/bin/env bash
# The benchmark: release builds, loopback only, bounded. Prints a table and
# writes it to BENCHMARKS.md with the machine, the date and this command.
#
#   scripts/bench.sh
#
# The defaults are the full sizes, 3 runs of each: on 2 cores a fresh clone
# takes about 2 minutes to build and 3.5 to measure. Sizes can be lowered for
# a quick look:
# RUNS=3 SMALL_FILES=10000 LARGE_MIB=1024 MIXED_FILES=1000 SENDERS=50
# PER_SENDER=200 JOBS_SWEEP="1 2 4 8 16" BENCH_DIR=/var/tmp
set -euo pipefail
cd "$(dirname "$0")/.."
# GNU time reports each sender's peak RSS.
if [ ! -x /usr/bin/time ]; then
    echo "installing time"
    apt-get update -qq && apt-get install -y -qq time
fi
build_started=$SECONDS
cargo build --release --quiet --bins
export BENCH_BUILD_SECONDS=$((SECONDS - build_started))
ulimit -n 65536 2>/dev/null || true
command="scripts/bench.sh"
for name in RUNS SMALL_FILES LARGE_MIB MIXED_FILES SENDERS PER_SENDER JOBS_SWEEP BENCH_DIR; do
    if [ -n "${!name:-}" ]; then command="$name=\"${!name}\" $command"; fi
done
# The S3 rows need Garage, whose first install (~17 min) would not fit the
# budget: they are measured when it is installed (scripts/garage.sh start
# installs it) and marked as skipped otherwise.
if command -v garage >/dev/null || [ -x "$HOME/.cargo/bin/garage" ]; then
    BENCH_S3_ROWS=$(BENCH_DIR=${BENCH_DIR:-/var/tmp} scripts/bench-s3.sh)
    export BENCH_S3_ROWS
else
    echo "Garage is not installed: the S3 rows are skipped (scripts/garage.sh start installs it)" >&2
fi
BENCH_COMMAND="$command" python3 scripts/bench.py
