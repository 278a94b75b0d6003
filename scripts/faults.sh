#!/usr/bin/env bash
# The fault suite at full size, for RELIABILITY.md: the receiver killed with
# SIGKILL mid-upload 20 times, the sender killed mid-run 20 times, a flaky
# network over 100 files, 200 devices with 50 files each at once, and the
# other faults once each. CI runs the same tests with smaller counts.
#
#   scripts/faults.sh            (ROUNDS=20 DEVICES=200 FILES=50 FLAKY_FILES=100)
#
# Prints one FIGURE line per fault. Loopback only; every loop is bounded.
set -euo pipefail
cd "$(dirname "$0")/.."
export LOGFERRY_FAULT_ROUNDS=${ROUNDS:-20}
export LOGFERRY_LOAD_DEVICES=${DEVICES:-200}
export LOGFERRY_LOAD_FILES=${FILES:-50}
export LOGFERRY_FLAKY_FILES=${FLAKY_FILES:-100}
# Many sender processes at once need file descriptors for their sockets.
ulimit -n 65536 2>/dev/null || true
cargo build --quiet --workspace --bins --tests
log=$(mktemp)
status=0
cargo test --quiet -p logferry-sender --test it faults -- --nocapture --test-threads 1 >"$log" 2>&1 || status=$?
grep -oE "FIGURE.*|panicked.*|test result.*" "$log"
[ "$status" -eq 0 ] || { echo "fault suite failed; full output in $log" >&2; exit "$status"; }
rm -f "$log"
