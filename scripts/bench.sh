#!/usr/bin/env bash
# The benchmark: release builds, loopback only, bounded. Prints a table and
# writes it to BENCHMARKS.md with the machine and this command.
#
#   scripts/bench.sh
#
# Sizes can be lowered for a quick look (the defaults are the issue's):
# RUNS=3 SMALL_FILES=10000 LARGE_MIB=1024 MIXED_FILES=1000 SENDERS=50
# PER_SENDER=200 JOBS_SWEEP="1 2 4 8 16" BENCH_DIR=/var/tmp
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet --bins
ulimit -n 65536 2>/dev/null || true
BENCH_COMMAND="scripts/bench.sh" python3 scripts/bench.py
