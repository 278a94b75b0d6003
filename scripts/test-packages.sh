#!/usr/bin/env bash
# Tests the amd64 Debian packages of scripts/package.sh: installs them with
# dpkg into a throwaway root (dpkg --root, maintainer scripts run
# chrootless with DPKG_ROOT set, as a bootstrap tool would), checks that
# the binaries, the unit, the user, the folders and the cron entry are
# where README.md says, that the installed receiver serves and the
# installed cron entry delivers to it, that installing again keeps the ids
# file, and what remove and purge leave. Then lintian, when installed.
#
#   scripts/test-packages.sh            (PROFILE=debug: the binaries cargo test built)
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
export PROFILE="${PROFILE:-debug}"
tmp="$(mktemp -d)"
receiver_pid=
cleanup() {
    [ -z "$receiver_pid" ] || kill "$receiver_pid" 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT
passed=0
failed=0
check() { # DESCRIPTION COMMAND...
    local what="$1"
    shift
    if "$@"; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1))
        echo "FAILED: $what" >&2
    fi
}

OUT="$tmp/debs" COMPRESS=gzip scripts/package.sh amd64
version="$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)"
sender_deb="$tmp/debs/logferry-sender_${version}_amd64.deb"
receiver_deb="$tmp/debs/logferry-receiver_${version}_amd64.deb"

root="$tmp/root"
mkdir -p "$root/var/lib/dpkg/info" "$root/var/lib/dpkg/updates" "$root/var/log" "$root/etc"
touch "$root/var/lib/dpkg/status" "$root/var/lib/dpkg/available"
# The throwaway root has no libc6, systemd or cron packages: --force-depends.
dpkg_root() { dpkg --root="$root" --force-not-root --force-script-chrootless --force-depends --log=/dev/null "$@"; }

dpkg_root -i "$sender_deb" "$receiver_deb" >"$tmp/install.log" 2>&1 || { cat "$tmp/install.log"; exit 1; }
unit="$root/usr/lib/systemd/system/logferry-receiver.service"
check "binaries in /usr/bin" test -x "$root/usr/bin/sender" -a -x "$root/usr/bin/receiver"
check "the installed sender runs" "$root/usr/bin/sender" --version
check "man pages" test -s "$root/usr/share/man/man1/sender.1.gz" -a -s "$root/usr/share/man/man1/receiver.1.gz"
check "bash completions" test -s "$root/usr/share/bash-completion/completions/sender" -a -s "$root/usr/share/bash-completion/completions/receiver"
check "the unit, with the package's binary" grep -qx 'ExecStart=/usr/bin/receiver --ids /etc/logferry/ids.txt --store /var/lib/logferry/received_files' "$unit"
check "the unit is hardened" grep -qx 'ProtectSystem=strict' "$unit"
check "the unit is enabled" test "$(readlink "$root/etc/systemd/system/multi-user.target.wants/logferry-receiver.service")" = /usr/lib/systemd/system/logferry-receiver.service
check "the system user" grep -q '^logferry:x:[0-9]*:[0-9]*:logferry receiver:/var/lib/logferry:/usr/sbin/nologin$' "$root/etc/passwd"
uid="$(awk -F: '$1 == "logferry" { print $3 }' "$root/etc/passwd")"
check "ids.txt: owner-only, the service's" test "$(stat -c '%a %u' "$root/etc/logferry/ids.txt")" = "600 $uid"
check "the state folder" test "$(stat -c '%a %u' "$root/var/lib/logferry")" = "750 $uid"
cron="$root/etc/cron.d/logferry-sender"
check "the cron entry" grep -qx '\*/15 \* \* \* \* root \[ -x /usr/lib/logferry/sender-cron \] && /usr/lib/logferry/sender-cron' "$cron"
check "sender.env, unconfigured" grep -qx 'RECEIVER=' "$root/etc/logferry/sender.env"
check "conffiles" grep -qx ' /etc/cron.d/logferry-sender [0-9a-f]*' <(dpkg_root -s logferry-sender)
if command -v systemd-analyze >/dev/null; then
    # A copy whose binary is the throwaway root's, which exists.
    sed "s|^ExecStart=/usr/bin/|ExecStart=$root/usr/bin/|" "$unit" >"$tmp/logferry-receiver.service"
    check "systemd-analyze verify" systemd-analyze verify --man=no "$tmp/logferry-receiver.service"
fi

# What cron would run, with the throwaway root's paths.
cron_run() {
    local command
    command="$(grep -v '^#' "$cron" | grep sender-cron | cut -d' ' -f7- | sed "s|/usr/lib/logferry|$root/usr/lib/logferry|g")"
    LOGFERRY_SENDER_ENV="$root/etc/logferry/sender.env" sh -c "$command"
}
mkdir -p "$tmp/logs/2026"
printf 't,v\n1,2\n' >"$tmp/logs/2026/day.csv"
touch -d '5 minutes ago' "$tmp/logs/2026/day.csv"
out="$(cron_run 2>&1)" && code=0 || code=$?
check "unconfigured, the cron entry does nothing, silently" test "$code:$out" = "0:"
check "... and sends nothing" test -f "$tmp/logs/2026/day.csv"

# The installed receiver, with the unit's command line (on loopback, a free port).
id="$("$root/usr/bin/receiver" --ids "$root/etc/logferry/ids.txt" add-device --label pkg-test)"
port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
exec_start="$(sed -n 's/^ExecStart=//p' "$unit" | sed "s| /| $root/|g; s|^/|$root/|")"
# shellcheck disable=SC2086
$exec_start --bind 127.0.0.1 --port "$port" 2>"$tmp/receiver.log" &
receiver_pid=$!
for _ in $(seq 100); do
    curl -fsS "http://127.0.0.1:$port/v1/health" >/dev/null 2>&1 && break
    sleep 0.1
done
(umask 077 && printf '%s\n' "$id" >"$root/etc/logferry/device-id")
cat >>"$root/etc/logferry/sender.env" <<EOF
RECEIVER=127.0.0.1:$port
LOG_FOLDER=$tmp/logs
ID_FILE=$root/etc/logferry/device-id
SENDER=$root/usr/bin/sender
EOF
out="$(cron_run 2>&1)" && code=0 || code=$?
check "configured, the cron entry delivers and prints nothing ($code: $out)" test "$code:$out" = "0:"
stored="$(find "$root/var/lib/logferry/received_files" -name day.csv)"
check "stored in /var/lib/logferry/received_files/ID/" test -n "$stored"
check "its checksum file passes sha256sum -c" sh -c "cd '$(dirname "${stored:-/nonexistent}")' && sha256sum --quiet -c day.csv.sha256"
check "moved aside" test -f "$tmp/sent_files/2026/day.csv" -a ! -e "$tmp/logs/2026/day.csv"
kill "$receiver_pid"
wait "$receiver_pid" 2>/dev/null || true
receiver_pid=

# Installing again (an upgrade to the same version) keeps the ids file.
ids_before="$(cat "$root/etc/logferry/ids.txt")"
dpkg_root -i "$sender_deb" "$receiver_deb" >"$tmp/install.log" 2>&1 || { cat "$tmp/install.log"; exit 1; }
check "a second install keeps ids.txt" test "$(cat "$root/etc/logferry/ids.txt")" = "$ids_before"
check "... and its mode and owner" test "$(stat -c '%a %u' "$root/etc/logferry/ids.txt")" = "600 $uid"
check "... and adds no second user" test "$(grep -c '^logferry:' "$root/etc/passwd")" = 1
check "... and keeps the sender's settings" grep -q "^RECEIVER=127.0.0.1:$port$" "$root/etc/logferry/sender.env"

dpkg_root -r logferry-sender logferry-receiver >"$tmp/remove.log" 2>&1 || { cat "$tmp/remove.log"; exit 1; }
check "remove: the binaries go" test ! -e "$root/usr/bin/sender" -a ! -e "$root/usr/bin/receiver" -a ! -e "$unit"
check "remove: conffiles stay" test -f "$cron" -a -f "$root/etc/logferry/sender.env"
out="$(sh -c "$(grep sender-cron "$cron" | cut -d' ' -f7- | sed "s|/usr/lib/logferry|$root/usr/lib/logferry|g")" 2>&1)" || true
check "remove: the cron entry left behind is silent" test -z "$out"
dpkg_root -P logferry-sender logferry-receiver >"$tmp/purge.log" 2>&1 || { cat "$tmp/purge.log"; exit 1; }
check "purge: the cron entry and sender.env go" test ! -e "$cron" -a ! -e "$root/etc/logferry/sender.env"
check "purge: the service is no longer enabled" test ! -L "$root/etc/systemd/system/multi-user.target.wants/logferry-receiver.service"
check "purge: the ids and the store stay" test "$(cat "$root/etc/logferry/ids.txt")" = "$ids_before" -a -n "$(find "$root/var/lib/logferry/received_files" -name day.csv)"

if command -v lintian >/dev/null; then
    # Errors fail the test; warnings are shown.
    lintian --tag-display-limit 0 "$tmp"/debs/*.deb >"$tmp/lintian.log" 2>&1 || true
    cat "$tmp/lintian.log"
    check "lintian: no errors" test -z "$(grep '^E:' "$tmp/lintian.log")"
fi
echo "packages: $passed passed, $failed failed"
[ "$failed" = 0 ]
