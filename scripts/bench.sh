#!/usr/bin/env bash
# The benchmark: release builds, loopback only, bounded. Prints tables and
# writes them to BENCHMARKS.md with the machine, the date and this command.
#
#   scripts/bench.sh
#
# Four sections: CASES="transfer keys slowlink history" (the default) measures all;
# one or two of them rewrite their own sections of BENCHMARKS.md and keep the
# others. transfer: cases 1-5 and 11, delivering files: 1. SMALL_FILES files
# of 4 KiB, 2. one LARGE_MIB MiB file, each against a floor (a sequential
# durable copy loop; cp + sync) and real peers installed and started on
# loopback by the run (rsync --fsync --remove-source-files to an rsync
# daemon and over ssh to an sshd of its own, rclone move to rclone serve
# webdav); 3. MIXED_FILES files of 1 KiB-8 MiB; 4. SENDERS senders at once x
# PER_SENDER files; 5. peak RSS; 11. FLEET_DEVICES devices at once (200
# sender processes, each its own device) x FLEET_FILES files of 4 KiB,
# against its figure before issue 15's work. keys: cases 6-9, the device
# key's derivation and the receiver's start-up and reload with DEVICES
# devices; slowlink: case 10 (scripts/bench_slowlink.py), SLOW_FILES text
# logs of SLOW_MB MB in all over a 20 Mbit/s link (a network namespace of its
# own, lo shaped by tc tbf; needs root) against rsync -z zstd and rclone,
# and one RESUME_MIB MiB file cut off mid-upload and sent again; history
# (scripts/bench_history.py): disk stores of HISTORY_SIZES files over
# HISTORY_DEVICES devices, each rebuilt by `receiver reindex` (time, peak
# RSS), then a receiver started on it (ready time) and refreshed every second
# HISTORY_REFRESHES times (CPU per refresh, RSS).
# The defaults are the full sizes, 3 runs of each: on 2 cores a fresh clone
# takes about 2 minutes to build, about 11 to measure the transfer section
# (rclone's case 1 run, paced by its WebDAV backend at about 30 files/s,
# takes some 5.5 minutes and runs in the first round only), 0.7 the keys
# section and about 9 the slowlink section.
# Sizes can be lowered for a quick look:
# RUNS=3 SMALL_FILES=10000 LARGE_MIB=1024 MIXED_FILES=1000 SENDERS=50
# PER_SENDER=200 FLEET_DEVICES=200 FLEET_FILES=50 JOBS_SWEEP="1 2 4 8 16"
# DEVICES=1000 SLOW_FILES=200 SLOW_MB=100 RESUME_MIB=64 BENCH_DIR=/var/tmp
# S3=0 skips the S3 rows even when Garage is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
# GNU time reports each sender's peak RSS.
if [ ! -x /usr/bin/time ]; then
    echo "installing time"
    apt-get update -qq && apt-get install -y -qq time
fi
cases=" ${CASES:-transfer keys slowlink history} "
# The transfer section's peers: rsync (to its daemon and over ssh, to an
# sshd of the run's own) and rclone. The slow link's tools: the namespace
# and its shaping, the peers, zstd for the logs' compression ratio.
tools=()
if [[ $cases == *" transfer "* ]]; then
    tools+=(rsync:rsync rclone:rclone ssh:openssh-client ssh-keygen:openssh-client /usr/sbin/sshd:openssh-server)
fi
if [[ $cases == *" slowlink "* ]]; then
    tools+=(ip:iproute2 tc:iproute2 rsync:rsync rclone:rclone zstd:zstd)
fi
missing=()
for tool in "${tools[@]}"; do
    command -v "${tool%%:*}" >/dev/null || [[ " ${missing[*]} " == *" ${tool#*:} "* ]] || missing+=("${tool#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]}"
    apt-get update -qq && apt-get install -y -qq "${missing[@]}"
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
# Case 11 runs 200 senders and a receiver with thousands of connections.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
command="scripts/bench.sh"
for name in RUNS SMALL_FILES LARGE_MIB MIXED_FILES SENDERS PER_SENDER FLEET_DEVICES FLEET_FILES JOBS_SWEEP DEVICES \
    SLOW_FILES SLOW_MB RESUME_MIB HISTORY_SIZES HISTORY_DEVICES HISTORY_REFRESHES CASES BENCH_DIR S3; do
    if [ -n "${!name:-}" ]; then command="$name=\"${!name}\" $command"; fi
done
# The S3 rows need Garage, whose first install (~17 min) would not fit the
# budget: they are measured when it is installed (scripts/garage.sh start
# installs it) and marked as skipped otherwise.
if [[ $cases != *" transfer "* ]]; then
    true # no S3 rows without the transfer section
elif [ "${S3:-}" = 0 ]; then
    echo "S3=0: the S3 rows are skipped" >&2
elif command -v garage >/dev/null || [ -x "$HOME/.cargo/bin/garage" ]; then
    BENCH_S3_ROWS=$(BENCH_DIR=${BENCH_DIR:-/var/tmp} scripts/bench-s3.sh)
    export BENCH_S3_ROWS
else
    echo "Garage is not installed: the S3 rows are skipped (scripts/garage.sh start installs it)" >&2
fi
BENCH_COMMAND="$command" python3 scripts/bench.py
