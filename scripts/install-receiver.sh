#!/usr/bin/env bash
# Installs the receiver as a systemd service: the binary, a dedicated
# system user, an owner-only ids file, the store folder, the unit (from
# scripts/receiver.service, with the paths below filled in), the man page and
# bash completion; then enables and starts the service. Running it again
# updates the binary and the unit and keeps the ids file and the store.
#
#   sudo scripts/install-receiver.sh
#
# Every location can be changed, for packaging or a test in a temporary folder:
#   RECEIVER_BIN   the binary to install   [target/release/receiver, built if missing]
#   PREFIX         /usr/local              (bin/, share/man/man1/, share/bash-completion/)
#   CONFIG_DIR     /etc/logferry           (ids.txt)
#   STATE_DIR      /var/lib/logferry       (the store: received_files/)
#   UNIT_DIR       /etc/systemd/system
#   SERVICE_USER   logferry                (created as a system user if missing)
#   RECEIVER_ARGS  more receiver options for the unit, e.g. "--port 3500 --stale-after 6h"
#   SYSTEMCTL      systemctl               (empty: do not reload or start anything)
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
PREFIX="${PREFIX:-/usr/local}"
CONFIG_DIR="${CONFIG_DIR:-/etc/logferry}"
STATE_DIR="${STATE_DIR:-/var/lib/logferry}"
UNIT_DIR="${UNIT_DIR:-/etc/systemd/system}"
SERVICE_USER="${SERVICE_USER:-logferry}"
RECEIVER_ARGS="${RECEIVER_ARGS:-}"
SYSTEMCTL="${SYSTEMCTL-systemctl}"
unit_name=logferry-receiver.service

bin="${RECEIVER_BIN:-$repo/target/release/receiver}"
if [ ! -x "$bin" ]; then
    [ -z "${RECEIVER_BIN:-}" ] || { echo "install-receiver: $bin is not an executable" >&2; exit 1; }
    echo "building the receiver (cargo build --release)"
    (cd "$repo" && cargo build --release -p logferry-receiver)
fi

if ! id -u "$SERVICE_USER" >/dev/null 2>&1; then
    echo "creating the system user $SERVICE_USER"
    useradd --system --home-dir "$STATE_DIR" --no-create-home --shell /usr/sbin/nologin "$SERVICE_USER"
fi
group="$(id -gn "$SERVICE_USER")"

install -D -m 755 "$bin" "$PREFIX/bin/receiver"
install -d -m 755 "$CONFIG_DIR"
ids="$CONFIG_DIR/ids.txt"
if [ -e "$ids" ]; then
    echo "keeping the existing $ids"
else
    # The IDs are secrets: readable by the service's user only.
    (umask 077 && printf '# logferry devices: one per line, "<16 hex ID>  <label>"; add with `receiver add-device`\n' >"$ids")
    chown "$SERVICE_USER:$group" "$ids"
fi
install -d -m 750 -o "$SERVICE_USER" -g "$group" "$STATE_DIR"

exec_start="$PREFIX/bin/receiver --ids $ids --store $STATE_DIR/received_files${RECEIVER_ARGS:+ $RECEIVER_ARGS}"
install -d -m 755 "$UNIT_DIR"
sed -e "s|^ExecStart=.*|ExecStart=$exec_start|" \
    -e "s|^ReadWritePaths=.*|ReadWritePaths=$STATE_DIR|" \
    -e "s|^User=.*|User=$SERVICE_USER|" \
    -e "s|^Group=.*|Group=$group|" \
    "$repo/scripts/receiver.service" >"$UNIT_DIR/$unit_name.tmp"
chmod 644 "$UNIT_DIR/$unit_name.tmp"
mv "$UNIT_DIR/$unit_name.tmp" "$UNIT_DIR/$unit_name"

install -d -m 755 "$PREFIX/share/man/man1" "$PREFIX/share/bash-completion/completions"
"$PREFIX/bin/receiver" man >"$PREFIX/share/man/man1/receiver.1"
"$PREFIX/bin/receiver" completions bash >"$PREFIX/share/bash-completion/completions/receiver"

if [ -n "$SYSTEMCTL" ]; then
    "$SYSTEMCTL" daemon-reload
    "$SYSTEMCTL" enable --now "$unit_name"
    "$SYSTEMCTL" restart "$unit_name"
fi
cat <<DONE
Installed $PREFIX/bin/receiver and $UNIT_DIR/$unit_name (store: $STATE_DIR/received_files).
Add a device (prints its ID once):
    sudo -u $SERVICE_USER $PREFIX/bin/receiver --ids $ids add-device --label NAME
Status page: http://THIS-HOST:3500/   Logs: journalctl -u $unit_name
DONE
