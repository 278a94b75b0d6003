#!/usr/bin/env bash
# The sender's black-box tests (sender/tests/it) with the sender built for
# the Pis and run under qemu-user, against the native receiver (in-process
# or the binary): aarch64 (Pi 3/4/5, 64-bit OS) and armv7 (32-bit Raspberry
# Pi OS). Emulation checks that the cross-compiled code behaves the same
# (a full delivery, retries, the move, TLS through aws-lc-rs's ARM code,
# the faults); it says nothing about a Pi's speed.
#
#   scripts/test-arm.sh [TRIPLE...]    [aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf]
#
# Left out: the tests that run the native binary by design (the demo and
# install scripts, the terminal run through `script`), which the native
# suite covers. Debug builds: the release ones take about 6x as long to
# build here (BENCHMARKS.md, "On the Pis").
set -euo pipefail
cd "$(dirname "$0")/.."
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf)
scripts/cross.sh --debug --sender "${targets[@]}"
for target in "${targets[@]}"; do
    case "$target" in
        aarch64-unknown-linux-gnu) emulator="qemu-aarch64 -L /usr/aarch64-linux-gnu" ;;
        armv7-unknown-linux-gnueabihf) emulator="qemu-arm -L /usr/arm-linux-gnueabihf" ;;
    esac
    start=$SECONDS
    echo "test-arm: the sender's tests with $emulator target/$target/debug/sender"
    LOGFERRY_TEST_SENDER="$emulator target/$target/debug/sender" \
        cargo test -p logferry-sender --test it -- --skip demo:: --skip install:: --skip output::on_a_terminal
    echo "test-arm: $target $((SECONDS - start)) s"
done
