#!/usr/bin/env bash
# End-to-end demo on loopback: builds both binaries, makes a device, writes
# sample logs in nested folders, starts a receiver on a free port, runs the
# sender, shows what arrived (and `sha256sum -c` passing), then publishes a
# script to the device and shows the next run installing it, then stops.
# Everything happens in a temporary folder; KEEP=1 keeps it for a look.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
# The test suite runs this script with the binaries it has just built
# (LOGFERRY_BIN_DIR), so that the README's first command is tested as written.
if [ -n "${LOGFERRY_BIN_DIR:-}" ]; then
    bin=$LOGFERRY_BIN_DIR
else
    echo "==> building (cargo build --bins)"
    cargo build --quiet --bins --manifest-path "$root/Cargo.toml"
    bin="$root/target/debug"
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/logferry-demo.XXXXXX")
receiver_pid=""
cleanup() {
    if [ -n "$receiver_pid" ] && kill -0 "$receiver_pid" 2>/dev/null; then
        kill -TERM "$receiver_pid"
        wait "$receiver_pid" 2>/dev/null || true
    fi
    if [ "${KEEP:-0}" = 1 ]; then echo "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
cd "$work"

echo "==> receiver add-device (the ID goes straight into the device's ID file)"
install -m 600 /dev/null ids.txt
"$bin/receiver" --ids ids.txt add-device --label demo-pi >device-id
chmod 600 device-id

echo "==> writing sample logs"
mkdir -p logs/2026-11-22 logs/events "logs/field notes"
printf 'time,celsius\n08:00,18.5\n08:10,18.7\n' >logs/2026-11-22/temperature.csv
printf 'time,percent\n08:00,61\n08:10,60\n' >logs/2026-11-22/humidity.csv
printf 'boot ok\nsensor online\n' >logs/events/boot.log
printf 'door opened twice\n' >"logs/field notes/visit 1.txt"
printf '{"station":"météo"}\n' >logs/météo.json
: >logs/events/empty.log
head -c 3000000 /dev/urandom >logs/events/camera.bin
find logs -type f | sort | sed 's/^/    /'

echo "==> starting the receiver on a free loopback port"
mkdir -p publish/all
"$bin/receiver" --bind 127.0.0.1 --port 0 --ids ids.txt --store received_files \
    --publish publish --publish-settle 1s 2>receiver.log &
receiver_pid=$!
address=""
for _ in $(seq 1 100); do
    address=$(sed -n 's/.* listening .*address=\([0-9.:]*\).*/\1/p' receiver.log | head -n 1)
    [ -n "$address" ] && break
    kill -0 "$receiver_pid" 2>/dev/null || { cat receiver.log; exit 1; }
    sleep 0.1
done
[ -n "$address" ] || { echo "receiver did not start"; cat receiver.log; exit 1; }
echo "    listening on $address"

# --min-age 0: the sample logs were written a moment ago; under cron the
# default (60 s) leaves files that are still being written for a later run.
echo "==> sender $address logs --id-file device-id --min-age 0"
status=0
"$bin/sender" "$address" logs --id-file device-id --min-age 0 || status=$?
echo "    sender exit code: $status"

echo "==> what arrived (the device folder is named by its secret ID, shown here as <DEVICE-ID>)"
device_dir=$(find received_files -mindepth 1 -maxdepth 1 -type d ! -name '.*')
find "$device_dir" -type f | sort | sed "s|$device_dir|received_files/<DEVICE-ID>|; s/^/    /"
echo "==> sha256sum -c in every received folder"
find "$device_dir" -name '*.sha256' -printf '%h\n' | sort -u | while read -r folder; do
    (cd "$folder" && sha256sum -c ./*.sha256) | sed 's/^/    /'
done
echo "==> left in logs/: nothing; every file was verified, then moved to sent_files/:"
find logs -type f | sed 's/^/    /'
find sent_files -type f | sort | sed 's/^/    /'

echo "==> running the sender again: nothing left to send"
"$bin/sender" "$address" logs --id-file device-id --min-age 0

echo "==> receiver publish main.py --to demo-pi (files for the devices labelled demo-pi)"
printf 'print("sensor script v2")\n' >main.py
"$bin/receiver" publish main.py --to demo-pi --publish publish
sleep 2 # the receiver publishes a folder once it has been still for --publish-settle
echo "==> sender ... --update-dir app --on-update HOOK: fetch, check, switch to it, run the hook"
update_status=0
"$bin/sender" "$address" logs --id-file device-id --min-age 0 --update-dir app \
    --on-update 'echo "    hook: switched to ${LOGFERRY_VERSION%${LOGFERRY_VERSION#????????????}}: $(cat "$LOGFERRY_RELEASE_DIR/main.py")"' ||
    update_status=$?
echo "    sender exit code: $update_status"
echo "    app/current -> $(readlink app/current)"
find app/current/ -type f | sed 's/^/    /'
[ "$update_status" -eq 0 ] || status=$update_status

echo "==> receiver log (IDs masked)"
sed 's/^/    /' receiver.log
[ "$status" -eq 0 ] && echo "==> demo OK"
exit "$status"
