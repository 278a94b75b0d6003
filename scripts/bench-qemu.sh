#!/usr/bin/env bash
# The release sender built for the Pis, run under qemu-user, against the
# native release receiver on loopback: EMULATION on this machine, not a
# Pi. It tells how much slower the ARM code runs here than the x86 code,
# nothing about a Pi's own speed (BENCHMARKS.md, "On the Pis").
#
#   scripts/bench-qemu.sh [MIB] [ROUNDS]      [256 MiB, 3 rounds]
#
# For each sender (native x86_64, qemu-aarch64, qemu-arm), interleaved
# round by round:
#   hash: one file of MIB MiB to a receiver whose --max-file-size is 1 MiB:
#         the sender reads and hashes the whole file, then the upload is
#         refused at its head, so the run is the hash pass (and start-up)
#   send: the same file delivered, verified, stored and moved aside
# Prints the median wall time of each, and MB/s. Needs scripts/cross.sh's
# release builds and `cargo build --release`.
set -euo pipefail
cd "$(dirname "$0")/.."
mib="${1:-256}"
rounds="${2:-3}"
receiver=target/release/receiver
declare -A senders=(
    [x86_64]="target/release/sender"
    [aarch64]="qemu-aarch64 -L /usr/aarch64-linux-gnu target/aarch64-unknown-linux-gnu/release/sender"
    [armv7]="qemu-arm -L /usr/arm-linux-gnueabihf target/armv7-unknown-linux-gnueabihf/release/sender"
)
order=(x86_64 aarch64 armv7)
for name in "${order[@]}"; do
    bin="${senders[$name]##* }"
    [ -x "$bin" ] || { echo "bench-qemu: $bin missing (cargo build --release; scripts/cross.sh)" >&2; exit 1; }
done
tmp="$(mktemp -d)"
pids=()
# shellcheck disable=SC2154
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$tmp"' EXIT
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
start_receiver() { # DIR PORT EXTRA...
    local dir="$1" port="$2"
    shift 2
    mkdir -p "$dir"
    "$receiver" --ids "$dir/ids.txt" add-device >"$dir/id" 2>/dev/null
    chmod 600 "$dir/id"
    "$receiver" --ids "$dir/ids.txt" --store "$dir/store" --bind 127.0.0.1 --port "$port" "$@" 2>"$dir/log" &
    pids+=($!)
    for _ in $(seq 200); do curl -fsS "http://127.0.0.1:$port/v1/health" >/dev/null 2>&1 && return; sleep 0.05; done
    echo "bench-qemu: receiver did not start" >&2
    exit 1
}
hash_port="$(free_port)"
start_receiver "$tmp/hash" "$hash_port" --max-file-size 1MiB
send_port="$(free_port)"
start_receiver "$tmp/send" "$send_port"
mkdir -p "$tmp/logs"
head -c "$((mib << 20))" /dev/urandom >"$tmp/logs/big.bin"
cat "$tmp/logs/big.bin" >/dev/null
declare -A times
run() { # NAME KIND -> seconds
    local name="$1" kind="$2" port id start end
    if [ "$kind" = hash ]; then port=$hash_port; id="$tmp/hash/id"; else port=$send_port; id="$tmp/send/id"; fi
    start=$(date +%s.%N)
    # shellcheck disable=SC2086
    ${senders[$name]} "127.0.0.1:$port" "$tmp/logs" --id-file "$id" --min-age 0 --retries 0 --quiet >/dev/null 2>&1 || true
    end=$(date +%s.%N)
    if [ "$kind" = send ]; then
        [ -f "$tmp/sent_files/big.bin" ] || { echo "bench-qemu: $name did not deliver" >&2; exit 1; }
        mv "$tmp/sent_files/big.bin" "$tmp/logs/big.bin"
        rm -rf "$tmp/send/store"/*/
    else
        [ -f "$tmp/logs/big.bin" ] || { echo "bench-qemu: $name moved a refused file" >&2; exit 1; }
    fi
    echo "$end - $start" | bc
}
for round in $(seq "$rounds"); do
    for name in "${order[@]}"; do
        for kind in hash send; do
            t="$(run "$name" "$kind")"
            times[$name.$kind]="${times[$name.$kind]:-} $t"
            echo "round $round: $name $kind ${t} s"
        done
    done
done
median() { tr ' ' '\n' | grep . | sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
echo
printf '%-8s %-5s %10s %10s %s\n' sender pass median MB/s rounds
for kind in hash send; do
    for name in "${order[@]}"; do
        m="$(echo "${times[$name.$kind]}" | median)"
        printf '%-8s %-5s %9.2fs %10.0f %s\n' "$name" "$kind" "$m" "$(echo "$mib * 1048576 / $m / 1000000" | bc -l)" "${times[$name.$kind]}"
    done
done
