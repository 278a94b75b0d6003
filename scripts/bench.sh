#!/usr/bin/env bash
# The benchmark: release builds, loopback only, bounded. Prints tables and
# writes them to BENCHMARKS.md with the machine, the date and this command.
#
#   scripts/bench.sh
#
# Three sections: CASES="transfer keys slowlink" (the default) measures all;
# one or two of them rewrite their own sections of BENCHMARKS.md and keep the
# others. transfer: cases 1-5, delivering files; keys: cases 6-9, the device
# key's derivation and the receiver's start-up and reload with DEVICES
# devices; slowlink: case 10 (scripts/bench_slowlink.py), SLOW_FILES text
# logs of SLOW_MB MB in all over a 20 Mbit/s link (a network namespace of its
# own, lo shaped by tc tbf; needs root) against rsync -z zstd and rclone,
# and one RESUME_MIB MiB file cut off mid-upload and sent again.
# The defaults are the full sizes, 3 runs of each: on 2 cores a fresh clone
# takes about 2 minutes to build, 3.5 to measure the transfer section, 0.7
# the keys section and about 9 the slowlink section.
# Sizes can be lowered for a quick look:
# RUNS=3 SMALL_FILES=10000 LARGE_MIB=1024 MIXED_FILES=1000 SENDERS=50
# PER_SENDER=200 JOBS_SWEEP="1 2 4 8 16" DEVICES=1000 SLOW_FILES=200
# SLOW_MB=100 RESUME_MIB=64 BENCH_DIR=/var/tmp
set -euo pipefail
cd "$(dirname "$0")/.."
# GNU time reports each sender's peak RSS.
if [ ! -x /usr/bin/time ]; then
    echo "installing time"
    apt-get update -qq && apt-get install -y -qq time
fi
cases=" ${CASES:-transfer keys slowlink} "
# The slow link's tools: the namespace and its shaping, the peers, zstd for
# the logs' compression ratio.
if [[ $cases == *" slowlink "* ]]; then
    missing=()
    for tool in ip:iproute2 tc:iproute2 rsync:rsync rclone:rclone zstd:zstd; do
        command -v "${tool%%:*}" >/dev/null || missing+=("${tool#*:}")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "installing ${missing[*]}"
        apt-get update -qq && apt-get install -y -qq "${missing[@]}"
    fi
fi
# The keys cases sign requests from Python, which needs Argon2id.
if [[ $cases == *" keys "* ]] && ! python3 -c "import argon2.low_level" 2>/dev/null; then
    echo "installing argon2-cffi"
    python3 -m pip install --quiet argon2-cffi
fi
build_started=$SECONDS
cargo build --release --quiet --bins
cargo build --release --quiet -p logferry-common --example kdf_cost
export BENCH_BUILD_SECONDS=$((SECONDS - build_started))
ulimit -n 65536 2>/dev/null || true
command="scripts/bench.sh"
for name in RUNS SMALL_FILES LARGE_MIB MIXED_FILES SENDERS PER_SENDER JOBS_SWEEP DEVICES SLOW_FILES SLOW_MB RESUME_MIB \
    CASES BENCH_DIR; do
    if [ -n "${!name:-}" ]; then command="$name=\"${!name}\" $command"; fi
done
# The S3 rows need Garage, whose first install (~17 min) would not fit the
# budget: they are measured when it is installed (scripts/garage.sh start
# installs it) and marked as skipped otherwise.
if [[ $cases != *" transfer "* ]]; then
    true # no S3 rows without the transfer section
elif command -v garage >/dev/null || [ -x "$HOME/.cargo/bin/garage" ]; then
    BENCH_S3_ROWS=$(BENCH_DIR=${BENCH_DIR:-/var/tmp} scripts/bench-s3.sh)
    export BENCH_S3_ROWS
else
    echo "Garage is not installed: the S3 rows are skipped (scripts/garage.sh start installs it)" >&2
fi
BENCH_COMMAND="$command" python3 scripts/bench.py
