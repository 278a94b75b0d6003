#!/usr/bin/env bash
# A single-node Garage (S3-compatible object store) on loopback, for the S3
# tests, the cluster demo and the S3 benchmark.
#
#   scripts/garage.sh start   installs Garage when missing (cargo install, about
#                             11 minutes on 2 cores, once per machine), starts it,
#                             applies a layout, creates a bucket and a key, and
#                             prints the variables to use (as `env` does)
#   scripts/garage.sh env     prints `export AWS_...` lines and the --store value
#   scripts/garage.sh stop    stops it and removes its data
#   scripts/garage.sh ls PREFIX   lists the keys under PREFIX in the bucket
#   scripts/garage.sh get KEY     prints an object
#
# Use as:  eval "$(scripts/garage.sh start)"
# Everything (RPC, S3 API, admin) listens on 127.0.0.1 only, on free ports.
# GARAGE_DIR (default /tmp/logferry-garage) holds config, data and state, so
# several instances can run side by side with different GARAGE_DIRs.
set -euo pipefail

dir=${GARAGE_DIR:-/tmp/logferry-garage}
bucket=${GARAGE_BUCKET:-logferry}
region=garage

garage_bin() {
    if command -v garage >/dev/null; then
        command -v garage
    elif [ -x "$HOME/.cargo/bin/garage" ]; then
        echo "$HOME/.cargo/bin/garage"
    else
        echo "Garage is not installed; installing it from crates.io (about 11 minutes on 2 cores, once)" >&2
        # Its build needs a C compiler and pkg-config, which a fresh Debian lacks.
        if ! command -v cc >/dev/null || ! command -v pkg-config >/dev/null; then
            apt-get update -qq >&2 && apt-get install -y -qq build-essential pkg-config >&2
        fi
        cargo install garage --locked >&2
        echo "$HOME/.cargo/bin/garage"
    fi
}

# A port nobody listens on yet (bash's /dev/tcp connect fails on a free one).
# Searched below Linux's ephemeral range (32768 and up), where an outgoing
# connection could hold the port without listening on it.
free_port() {
    local port
    for port in $(seq "$1" $(($1 + 200))); do
        if ! (: </dev/tcp/127.0.0.1/"$port") 2>/dev/null; then
            echo "$port"
            return
        fi
    done
    echo "no free port from $1" >&2
    return 1
}

print_env() {
    [ -f "$dir/env" ] || { echo "Garage is not running from $dir; run: $0 start" >&2; exit 1; }
    cat "$dir/env"
}

start() {
    if [ -f "$dir/pid" ] && kill -0 "$(cat "$dir/pid")" 2>/dev/null; then
        print_env
        return
    fi
    local garage s3_port rpc_port admin_port
    garage=$(garage_bin)
    rm -rf "$dir"
    mkdir -p "$dir/meta" "$dir/data"
    chmod 700 "$dir"
    s3_port=$(free_port 13900)
    rpc_port=$(free_port $((s3_port + 1)))
    admin_port=$(free_port $((rpc_port + 1)))
    cat >"$dir/garage.toml" <<EOF
metadata_dir = "$dir/meta"
data_dir = "$dir/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$rpc_port"
rpc_public_addr = "127.0.0.1:$rpc_port"
rpc_secret = "$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"

[s3_api]
s3_region = "$region"
api_bind_addr = "127.0.0.1:$s3_port"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:$admin_port"
admin_token = "$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
EOF
    chmod 600 "$dir/garage.toml"
    echo "$garage" >"$dir/bin"
    setsid "$garage" -c "$dir/garage.toml" server >"$dir/garage.log" 2>&1 &
    echo $! >"$dir/pid"
    local g=("$garage" -c "$dir/garage.toml")
    for _ in $(seq 100); do
        "${g[@]}" status >/dev/null 2>&1 && break
        kill -0 "$(cat "$dir/pid")" 2>/dev/null || { cat "$dir/garage.log" >&2; exit 1; }
        sleep 0.2
    done
    local node
    node=$("${g[@]}" node id -q 2>/dev/null | cut -d@ -f1)
    "${g[@]}" layout assign -z dc1 -c 10G "$node" >/dev/null
    "${g[@]}" layout apply --version 1 >/dev/null
    "${g[@]}" bucket create "$bucket" >/dev/null
    local key key_id secret
    key=$("${g[@]}" key create logferry-key)
    key_id=$(awk '/^Key ID:/ {print $3}' <<<"$key")
    secret=$(awk '/^Secret key:/ {print $3}' <<<"$key")
    [ -n "$key_id" ] && [ -n "$secret" ] || { echo "could not read the new key: $key" >&2; exit 1; }
    "${g[@]}" bucket allow --read --write --owner "$bucket" --key logferry-key >/dev/null
    cat >"$dir/env" <<EOF
export AWS_ENDPOINT_URL=http://127.0.0.1:$s3_port
export AWS_REGION=$region
export AWS_ACCESS_KEY_ID=$key_id
export AWS_SECRET_ACCESS_KEY=$secret
# then: receiver --store s3://$bucket/logs
EOF
    chmod 600 "$dir/env"
    echo "$("$garage" --version 2>/dev/null | head -1) is serving S3 on 127.0.0.1:$s3_port (data in $dir)" >&2
    print_env
}

# One signed request to the bucket (curl's SigV4; Garage wants the payload
# hash header, and curl 7.88 signs the query as written, so callers give it
# sorted and encoded).
request() {
    command -v curl >/dev/null || { apt-get update -qq && apt-get install -y -qq curl; } >&2
    # shellcheck disable=SC1091
    source "$dir/env"
    curl -sS --fail --aws-sigv4 "aws:amz:$AWS_REGION:s3" --user "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY" \
        -H "x-amz-content-sha256: UNSIGNED-PAYLOAD" "$AWS_ENDPOINT_URL/$bucket$1"
}

uri_encode() {
    local LC_ALL=C text=$1 out="" c i
    for ((i = 0; i < ${#text}; i++)); do
        c=${text:i:1}
        case $c in
        [a-zA-Z0-9.~_-]) out+=$c ;;
        *) out+=$(printf '%%%02X' "'$c") ;;
        esac
    done
    echo "$out"
}

list() {
    local token="" page query
    while :; do
        query="list-type=2&max-keys=1000&prefix=$(uri_encode "$1")"
        [ -z "$token" ] || query="continuation-token=$(uri_encode "$token")&$query"
        page=$(request "?$query")
        grep -o '<Key>[^<]*</Key>' <<<"$page" | sed 's:</\?Key>::g' || true
        token=$(sed -n 's:.*<NextContinuationToken>\(.*\)</NextContinuationToken>.*:\1:p' <<<"$page")
        [ -n "$token" ] || break
    done
}

stop() {
    if [ -f "$dir/pid" ]; then
        local pid
        pid=$(cat "$dir/pid")
        if kill "$pid" 2>/dev/null; then
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        fi
    fi
    rm -rf "$dir"
}

case "${1:-}" in
start) start ;;
stop) stop ;;
env) print_env ;;
ls) list "${2:-}" ;;
get) request "/$2" ;;
*)
    echo "usage: $0 start|stop|env|ls PREFIX|get KEY" >&2
    exit 2
    ;;
esac
