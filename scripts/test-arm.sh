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
# Both run a subset, to keep CI's time on a fresh machine (which first
# builds Garage for 17 minutes) well under 30 minutes (BENCHMARKS.md, "On
# the Pis"): a full delivery and the move, a 50 MiB file, retries (an
# answer lost after commit, a busy receiver), an unreachable receiver, a
# signed refusal and HTTPS. ARM_FULL=1 runs every test but those that run
# the native binary by design (the demo and install scripts, the terminal
# run through `script`): about 95 s on aarch64, 75 s on armv7. Debug
# builds: the release ones take about 6x as long to build here.
set -euo pipefail
cd "$(dirname "$0")/.."
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf)
scripts/cross.sh --debug --sender "${targets[@]}"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
for target in "${targets[@]}"; do
    case "$target" in
        aarch64-unknown-linux-gnu) emulator="qemu-aarch64 -L /usr/aarch64-linux-gnu" ;;
        armv7-unknown-linux-gnueabihf) emulator="qemu-arm -L /usr/arm-linux-gnueabihf" ;;
    esac
    start=$SECONDS
    echo "test-arm: the sender's tests with $emulator target/$target/debug/sender"
    if [ "${ARM_FULL:-}" = 1 ]; then
        pick=(--skip demo:: --skip install:: --skip output::on_a_terminal)
    else
        pick=(
            runs::delivers_nested_empty_and_oddly_named_files_verified_and_moves_them_aside
            runs::a_50_mib_file_arrives_intact
            runs::a_receiver_that_stops_mid_run_leaves_unsent_files_in_place
            faults::an_answer_lost_after_commit_is_already_stored_on_retry_and_kept_once
            limits::a_busy_receiver_is_waited_for_and_retried
            refusals::a_signed_refusal_from_the_receiver_is_a_verdict_and_not_retried
            tls::delivers_over_https_when_the_receivers_ca_is_pinned
            updates::a_failing_hook_rolls_back_is_reported_and_that_version_is_not_tried_again
        )
    fi
    LOGFERRY_TEST_SENDER="$emulator target/$target/debug/sender" \
        cargo test -p logferry-sender --test it -- "${pick[@]}" 2>&1 | tee "$log"
    # A renamed test would silently drop out of the subset: count them.
    if [ "${pick[0]}" != --skip ] && ! grep -q "^test result: ok. ${#pick[@]} passed" "$log"; then
        echo "test-arm: expected ${#pick[@]} tests to run on $target; a test of the subset was renamed?" >&2
        exit 1
    fi
    echo "test-arm: $target $((SECONDS - start)) s"
done
