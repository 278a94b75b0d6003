#!/usr/bin/env bash
# Scaling out, on loopback: a Garage (scripts/garage.sh), two receivers
# storing into the same bucket, and Debian's nginx sharing requests between
# them round-robin. nginx forwards each client's address in X-Forwarded-For,
# and the receivers trust it from nginx (--trusted-proxies 127.0.0.1).
# Twenty devices upload through nginx; the script then prints how many
# uploads each receiver handled, checks that a request from another address
# (127.0.0.2) is logged with that address rather than nginx's, and verifies
# the bucket: every file once, each next to a checksum object that matches
# its bytes.
# Installs nginx and curl (and Garage, through garage.sh) when missing. Everything
# lives in a temporary folder; KEEP=1 keeps it for a look.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
devices=${DEVICES:-20}
files_per_device=${FILES_PER_DEVICE:-5}

if ! command -v nginx >/dev/null; then
    echo "==> installing nginx (Debian's package)"
    # Keep the package from starting its own server on port 80: this demo
    # runs one on loopback only. policy-rc.d is Debian's switch for that.
    own_policy=""
    [ -e /usr/sbin/policy-rc.d ] || { printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && own_policy=1; }
    apt-get update -qq && apt-get install -y -qq nginx >/dev/null
    [ -z "$own_policy" ] || rm -f /usr/sbin/policy-rc.d
fi
command -v curl >/dev/null || { apt-get update -qq && apt-get install -y -qq curl >/dev/null; }

echo "==> building (cargo build --bins)"
cargo build --quiet --bins --manifest-path "$root/Cargo.toml"
bin="$root/target/debug"
work=$(mktemp -d "${TMPDIR:-/tmp}/logferry-cluster.XXXXXX")
export GARAGE_DIR="$work/garage"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    "$root/scripts/garage.sh" stop
    if [ "${KEEP:-0}" = 1 ]; then echo "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
cd "$work"

echo "==> starting Garage"
garage_env=$("$root/scripts/garage.sh" start)
eval "$garage_env"
store=s3://logferry/cluster-demo

echo "==> $devices devices"
install -m 600 /dev/null ids.txt
for d in $(seq "$devices"); do
    mkdir -p "device-$d/logs/day"
    "$bin/receiver" --ids ids.txt add-device --label "pi-$d" >"device-$d/id" 2>/dev/null
    chmod 600 "device-$d/id"
    for f in $(seq "$files_per_device"); do
        head -c $((RANDOM * 8 + 100)) /dev/urandom >"device-$d/logs/day/sample-$f.log"
    done
    printf 'boot ok\n' >"device-$d/logs/boot.log"
    # Text, which goes compressed (zstd, in a chunked body through nginx).
    seq 1 20000 | sed "s/.*/2026-11-30T12:00:&Z pi-$d soil=4&/" >"device-$d/logs/day/sensors.log"
done
expected=$((devices * (files_per_device + 2)))

# Starts receiver $1 and sets $address (not through $(...): the receiver
# would hold the substitution's pipe open and it would never end).
start_receiver() {
    "$bin/receiver" --bind 127.0.0.1 --port 0 --ids ids.txt --store "$store" --trusted-proxies 127.0.0.1 \
        >/dev/null 2>"receiver-$1.log" &
    pids+=($!)
    address=""
    for _ in $(seq 100); do
        address=$(sed -n 's/.*listening.* address=\([0-9.:]*\).*/\1/p' "receiver-$1.log" | head -n 1)
        [ -n "$address" ] && return
        sleep 0.1
    done
    cat "receiver-$1.log" >&2
    exit 1
}
echo "==> two receivers, both with --store $store"
start_receiver a
a=$address
start_receiver b
b=$address
echo "    receiver a on $a, receiver b on $b"

port=$(for p in $(seq 18080 18280); do (: </dev/tcp/127.0.0.1/"$p") 2>/dev/null || { echo "$p"; break; }; done)
mkdir -p nginx
# nginx workers run as an unprivileged user: let them reach their folders.
chmod 711 "$work"
cat >nginx/nginx.conf <<EOF
worker_processes 1;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log;
events { worker_connections 256; }
http {
    access_log $work/nginx/access.log;
    client_body_temp_path $work/nginx/body;
    proxy_temp_path $work/nginx/proxy;
    fastcgi_temp_path $work/nginx/fastcgi;
    uwsgi_temp_path $work/nginx/uwsgi;
    scgi_temp_path $work/nginx/scgi;
    upstream receivers {
        server $a;
        server $b;
    }
    server {
        listen 127.0.0.1:$port;
        # Stream bodies straight through: the receivers verify them.
        client_max_body_size 0;
        proxy_request_buffering off;
        location / {
            proxy_pass http://receivers;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            # The client's address for the receivers' throttle, logs and
            # status page; they read only this header, so a Forwarded header
            # a client adds itself (the check below sends one) is ignored.
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
        }
    }
}
EOF
echo "==> nginx round-robin on 127.0.0.1:$port"
nginx -c "$work/nginx/nginx.conf" -g 'daemon off;' 2>nginx/stderr.log &
pids+=($!)
for _ in $(seq 50); do (: </dev/tcp/127.0.0.1/"$port") 2>/dev/null && break; sleep 0.1; done

echo "==> $devices senders at once, all through nginx"
sender_pids=()
for d in $(seq "$devices"); do
    "$bin/sender" "127.0.0.1:$port" "device-$d/logs" --id-file "device-$d/id" --min-age 0 \
        >"device-$d/sender.out" 2>"device-$d/sender.err" &
    sender_pids+=($!)
done
failed=0
for pid in "${sender_pids[@]}"; do wait "$pid" || failed=$((failed + 1)); done
left=$(find device-*/logs -type f | wc -l)
echo "    senders failed: $failed; files left on the devices: $left"

echo "==> what each receiver handled"
for r in a b; do
    echo "    receiver $r: $(grep -c ': upload ' "receiver-$r.log" || true) uploads"
done

echo "==> a request from 127.0.0.2 through nginx, with a forged X-Forwarded-For"
curl -s -o /dev/null --interface 127.0.0.2 -H 'X-Forwarded-For: 192.0.2.66' -H 'Forwarded: for=192.0.2.67' \
    "http://127.0.0.1:$port/v1/auth-check"
forwarded=$(grep -h 'authentication failed' receiver-a.log receiver-b.log | grep -c 'client="127.0.0.2"' || true)
echo "    logged as client 127.0.0.2 (not nginx's 127.0.0.1, nor the forged ones): $forwarded"

echo "==> verifying the bucket"
garage="$root/scripts/garage.sh"
data=$("$garage" ls cluster-demo/ | grep -v '\.sha256$' | grep -v '^cluster-demo/\.claims/' || true)
stored=$(grep -c . <<<"$data" || true)
bad=0
while read -r key; do
    [ -n "$key" ] || continue
    want=$("$garage" get "$key.sha256" | cut -d' ' -f1)
    got=$("$garage" get "$key" | sha256sum | cut -d' ' -f1)
    [ "$want" = "$got" ] || { echo "    MISMATCH: ${key##*/}"; bad=$((bad + 1)); }
done <<<"$data"
conflicts=$(grep -c 'conflict-' <<<"$data" || true)
echo "    $stored of $expected files in the bucket, $bad checksum mismatches, $conflicts conflict names"
if [ "$forwarded" -eq 1 ] && [ "$failed" -eq 0 ] && [ "$left" -eq 0 ] && [ "$stored" -eq "$expected" ] && [ "$bad" -eq 0 ] && [ "$conflicts" -eq 0 ]; then
    echo "==> OK: every file stored exactly once and verified; client addresses forwarded"
else
    echo "==> FAILED" >&2
    exit 1
fi
