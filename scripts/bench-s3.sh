#!/usr/bin/env bash
# The S3 row of the benchmark: the release receiver storing into a Garage on
# loopback (started by scripts/garage.sh), one release sender. Measures many
# small files and one large file end to end, checks that every file left the
# device and is in the bucket, and prints markdown table rows in the format
# of BENCHMARKS.md (case | ours | floor | ratio | target).
#
#   scripts/bench-s3.sh            (defaults: SMALL_FILES=2000 LARGE_MIB=1024)
#
# Bounded: one sender run per case; sizes from SMALL_FILES and LARGE_MIB.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
small_files=${SMALL_FILES:-2000}
large_mib=${LARGE_MIB:-1024}
cargo build --release --quiet --bins --manifest-path "$root/Cargo.toml"
bin="$root/target/release"

work=$(mktemp -d "${BENCH_DIR:-/var/tmp}/logferry-bench-s3.XXXXXX")
export GARAGE_DIR="$work/garage"
receiver_pid=""
cleanup() {
    [ -n "$receiver_pid" ] && kill "$receiver_pid" 2>/dev/null && wait "$receiver_pid" 2>/dev/null
    "$root/scripts/garage.sh" stop
    rm -rf "$work"
}
trap cleanup EXIT
garage_env=$("$root/scripts/garage.sh" start)
eval "$garage_env"
cd "$work"
install -m 600 /dev/null ids.txt
"$bin/receiver" --ids ids.txt add-device --label bench >device-id 2>/dev/null
chmod 600 device-id

# One receiver per case, in its own prefix, so the peak memory is the case's.
start_receiver() {
    "$bin/receiver" --bind 127.0.0.1 --port 0 --ids ids.txt --store "s3://logferry/bench-$1" \
        --max-uploads 256 --max-uploads-per-device 64 2>"receiver-$1.log" &
    receiver_pid=$!
    address=""
    for _ in $(seq 100); do
        address=$(sed -n 's/.*listening.* address=\([0-9.:]*\).*/\1/p' "receiver-$1.log" | head -n 1)
        [ -n "$address" ] && return
        kill -0 "$receiver_pid" 2>/dev/null || { cat "receiver-$1.log" >&2; exit 1; }
        sleep 0.1
    done
    echo "the receiver did not start" >&2
    exit 1
}

stop_receiver() {
    peak_kib=$(awk '/^VmHWM:/ {print $2}' "/proc/$receiver_pid/status")
    kill "$receiver_pid"
    wait "$receiver_pid" 2>/dev/null || true
    receiver_pid=""
}

# Sends logs/ and prints the seconds it took; fails unless all was delivered.
send() {
    local started ended
    sync
    started=$(date +%s.%N)
    "$bin/sender" "$address" logs --id-file device-id --min-age 0 >/dev/null 2>sender.log ||
        { cat sender.log >&2; exit 1; }
    ended=$(date +%s.%N)
    left=$(find logs -type f | wc -l)
    [ "$left" -eq 0 ] || { echo "$left files were not delivered" >&2; exit 1; }
    echo "$ended - $started" | bc -l
}

# Counts the data objects of a case: not checksum objects, nor the
# receiver's own folders beside the device folders (claims, the summary).
count_stored() {
    "$root/scripts/garage.sh" ls "bench-$1/" | grep -v '\.sha256$' | grep -vc "^bench-$1/\." || true
}
command -v bc >/dev/null && command -v curl >/dev/null || { apt-get update -qq && apt-get install -y -qq bc curl; }

echo "small files: $small_files x 4 KiB" >&2
mkdir -p logs
for i in $(seq "$small_files"); do
    dir="logs/d$((i / 100))"
    [ -d "$dir" ] || mkdir -p "$dir"
    head -c 4096 /dev/urandom >"$dir/f$i.log"
done
start_receiver small
small_seconds=$(send)
stop_receiver
small_peak=$peak_kib
[ "$(count_stored small)" -eq "$small_files" ] || { echo "the bucket does not hold every small file" >&2; exit 1; }

echo "one large file: $large_mib MiB" >&2
head -c $((large_mib << 20)) /dev/urandom >logs/large.bin
start_receiver large
large_seconds=$(send)
stop_receiver
large_peak=$peak_kib
[ "$(count_stored large)" -eq 1 ] || { echo "the bucket does not hold the large file" >&2; exit 1; }

printf '| S3 (Garage on loopback), small files: %s × 4 KiB, one sender | %.0f files/s |  |  |  |\n' \
    "$small_files" "$(echo "$small_files / $small_seconds" | bc -l)"
printf '| S3 (Garage on loopback), one %s MiB file | %.0f MB/s |  |  |  |\n' \
    "$large_mib" "$(echo "$large_mib * 1.048576 / $large_seconds" | bc -l)"
printf '| S3 receiver peak RSS, small / large | %.1f / %.1f MiB |  |  |  |\n' \
    "$(echo "$small_peak / 1024" | bc -l)" "$(echo "$large_peak / 1024" | bc -l)"
