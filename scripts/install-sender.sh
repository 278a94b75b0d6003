#!/usr/bin/env bash
# Installs the sender on a device: the binary, the device ID file (mode
# 0600, owned by the user who runs it), the man page and bash completion,
# and a crontab entry for that user. Running it again replaces the entry
# for the same folder (never adds a second) and keeps the ID file unless a
# new ID is given.
#
#   echo 'THE-16-HEX-ID' | sudo scripts/install-sender.sh 192.168.1.10 /home/pi/logs
#
# The ID is read from standard input (asked for on a terminal), never from
# the command line, where other users could see it.
#
#   SENDER_BIN    the binary to install     [target/release/sender, built if missing]
#   PREFIX        /usr/local                (bin/, share/man/man1/, share/bash-completion/)
#   ID_FILE       /etc/logferry/device-id
#   RUN_AS        the user whose crontab runs the sender   [$SUDO_USER, else the current user]
#   SCHEDULE      "*/15 * * * *"
#   SENDER_ARGS   more sender options, e.g. "--ca-cert /etc/logferry/ca.pem", or
#                 "--keep-sent 14d" to delete delivered files after two weeks
#                 (the sent folder otherwise grows forever; "--keep-sent 0"
#                 deletes each file once delivered instead of keeping it)
#   CRONTAB_FILE  edit this file instead of RUN_AS's crontab (for tests)
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
if [ $# -ne 2 ]; then
    echo "usage: install-sender.sh HOST FOLDER   (the device ID on standard input)" >&2
    exit 2
fi
host="$1"
folder="$2"
PREFIX="${PREFIX:-/usr/local}"
ID_FILE="${ID_FILE:-/etc/logferry/device-id}"
RUN_AS="${RUN_AS:-${SUDO_USER:-$(id -un)}}"
SCHEDULE="${SCHEDULE:-*/15 * * * *}"
SENDER_ARGS="${SENDER_ARGS:-}"

id=""
if [ -t 0 ]; then
    read -r -s -p "device ID (16 hex characters, from 'receiver add-device'; empty keeps $ID_FILE): " id || true
    echo
else
    read -r id || true
fi
id="$(printf '%s' "$id" | tr -d '[:space:]')"
if [ -n "$id" ] && ! [[ "$id" =~ ^[0-9A-Fa-f]{16}$ ]]; then
    echo "install-sender: a device ID is 16 hexadecimal characters" >&2
    exit 1
fi
if [ -z "$id" ] && [ ! -s "$ID_FILE" ]; then
    echo "install-sender: give the device ID on standard input ($ID_FILE does not exist yet)" >&2
    exit 1
fi

bin="${SENDER_BIN:-$repo/target/release/sender}"
if [ ! -x "$bin" ]; then
    [ -z "${SENDER_BIN:-}" ] || { echo "install-sender: $bin is not an executable" >&2; exit 1; }
    echo "building the sender (cargo build --release)"
    (cd "$repo" && cargo build --release -p logferry-sender)
fi
install -D -m 755 "$bin" "$PREFIX/bin/sender"
install -d -m 755 "$PREFIX/share/man/man1" "$PREFIX/share/bash-completion/completions"
"$PREFIX/bin/sender" man >"$PREFIX/share/man/man1/sender.1"
"$PREFIX/bin/sender" completions bash >"$PREFIX/share/bash-completion/completions/sender"

if [ -n "$id" ]; then
    install -d -m 755 "$(dirname "$ID_FILE")"
    # Written owner-only from the first byte, then moved into place whole.
    tmp="$(umask 077 && mktemp "$ID_FILE.XXXXXX")"
    printf '%s\n' "$id" >"$tmp"
    chown "$RUN_AS" "$tmp"
    mv "$tmp" "$ID_FILE"
    echo "wrote $ID_FILE (mode 0600, owner $RUN_AS)"
else
    echo "keeping the existing $ID_FILE"
fi

# One entry per folder, recognised by its trailing marker. --quiet: cron
# mails any output, so a run that delivered everything prints nothing.
marker="# logferry-sender $folder"
entry="$SCHEDULE $(printf '%q ' "$PREFIX/bin/sender" "$host" "$folder" --id-file "$ID_FILE" --quiet)${SENDER_ARGS:+$SENDER_ARGS }$marker"
if [ -n "${CRONTAB_FILE:-}" ]; then
    current="$(cat "$CRONTAB_FILE" 2>/dev/null || true)"
else
    current="$(crontab -u "$RUN_AS" -l 2>/dev/null || true)"
fi
# Every other line stays as it was; ours (ending in the marker) is replaced.
new="$(printf '%s' "$current" | awk -v m="$marker" 'length($0) < length(m) || substr($0, length($0) - length(m) + 1) != m')"
new="${new:+$new
}$entry"
if [ -n "${CRONTAB_FILE:-}" ]; then
    printf '%s\n' "$new" >"$CRONTAB_FILE"
else
    printf '%s\n' "$new" | crontab -u "$RUN_AS" -
fi
echo "crontab of $RUN_AS: $entry"
