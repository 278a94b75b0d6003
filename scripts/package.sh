#!/usr/bin/env bash
# Builds the Debian packages into target/debian/, each from a tree staged
# here and `dpkg-deb --build` (no cargo-deb):
#
#   logferry-sender_VERSION_{amd64,arm64,armhf}.deb     the sender, its man page and
#       bash completion, /etc/cron.d/logferry-sender and /etc/logferry/sender.env:
#       the cron entry does nothing until RECEIVER and LOG_FOLDER are set there
#   logferry-receiver_VERSION_{amd64,arm64}.deb         the receiver as a systemd
#       service: the unit, its system user (sysusers.d), /etc/logferry/ids.txt and
#       /var/lib/logferry (tmpfiles.d), man page and bash completion
#
#   scripts/package.sh                 every package, release binaries
#   scripts/package.sh amd64           only those of one or more architectures
#
#   PROFILE   release | debug                    [release]
#   OUT       where the packages go              [target/debian]
#   COMPRESS  dpkg-deb's compression             [xz; scripts/test-packages.sh: gzip, faster]
#
# Binaries missing under target/ are built first: amd64 with cargo (this
# machine is x86_64), arm64 and armhf with scripts/cross.sh (aarch64 and
# armv7 targets). armhf is ARMv7: Pi 2 and later on 32-bit Raspberry Pi OS,
# not the ARMv6 Pi 1 and Pi Zero (W).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
PROFILE="${PROFILE:-release}"
OUT="${OUT:-$repo/target/debian}"
COMPRESS="${COMPRESS:-xz}"
archs=("$@")
[ ${#archs[@]} -gt 0 ] || archs=(amd64 arm64 armhf)
version="$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)"
[ -n "$version" ] || { echo "package.sh: no version in Cargo.toml" >&2; exit 1; }
maintainer="logferry maintainers <logferry@example.invalid>"
homepage="$(sed -n '/^\[workspace.package\]/,/^\[/s/^repository = "\(.*\)"/\1/p' Cargo.toml)"

triple_of() {
    case "$1" in
        amd64) echo x86_64-unknown-linux-gnu ;;
        arm64) echo aarch64-unknown-linux-gnu ;;
        armhf) echo armv7-unknown-linux-gnueabihf ;;
        *) echo "package.sh: unknown architecture $1 (amd64, arm64, armhf)" >&2; return 1 ;;
    esac
}
# Where cargo puts a target's binaries: amd64 is the native build.
bin_dir() {
    if [ "$1" = amd64 ]; then echo "target/$PROFILE"; else echo "target/$(triple_of "$1")/$PROFILE"; fi
}
# How to run a binary of that architecture here (the man page and the
# completions come from the packaged binary itself).
runner() {
    case "$1" in
        amd64) ;;
        arm64) echo "qemu-aarch64 -L /usr/aarch64-linux-gnu" ;;
        armhf) echo "qemu-arm -L /usr/arm-linux-gnueabihf" ;;
    esac
}
ensure_built() { # ARCH BINARY...
    local arch="$1" missing=() bin
    shift
    for bin in "$@"; do [ -x "$(bin_dir "$arch")/$bin" ] || missing+=("-p" "logferry-$bin"); done
    [ ${#missing[@]} -gt 0 ] || return 0
    local flag=()
    [ "$PROFILE" = release ] && flag=(--release)
    if [ "$arch" = amd64 ]; then
        cargo build --locked "${flag[@]}" "${missing[@]}" --bins
    else
        local only=()
        [ "$*" = sender ] && only=(--sender)
        [ "$PROFILE" = debug ] && only+=(--debug)
        scripts/cross.sh "${only[@]}" "$(triple_of "$arch")"
    fi
}
# The lowest glibc the binary asks for, from its symbol versions.
glibc_needed() {
    readelf --version-info --wide "$1" | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -1
}
depends_of() { # BINARY
    local glibc deps
    glibc="$(glibc_needed "$1")"
    [ -n "$glibc" ] || { echo "package.sh: no glibc version found in $1" >&2; return 1; }
    deps="libc6 (>= $glibc)"
    readelf -d "$1" | grep -q 'NEEDED.*libgcc_s' && deps="$deps, libgcc-s1"
    echo "$deps"
}
# /usr/share/doc/PACKAGE: copyright and changelog, as Debian wants.
docs() { # STAGE PACKAGE NAME
    local doc="$1/usr/share/doc/$2"
    install -d -m 755 "$doc"
    cat >"$doc/copyright" <<EOF
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: logferry
Source: $homepage

Files: *
Copyright: 2026 the logferry authors
License: MIT or Apache-2.0
 On Debian systems the Apache License 2.0 is in
 /usr/share/common-licenses/Apache-2.0. The MIT license: Permission is
 hereby granted, free of charge, to any person obtaining a copy of this
 software, to deal in the Software without restriction, provided the
 copyright notice and this permission notice are included in all copies.
 THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND.
EOF
    # A native package (no Debian revision): changelog.gz. A fixed date
    # keeps the package reproducible.
    printf '%s (%s) unstable; urgency=medium\n\n  * Built from the logferry workspace by scripts/package.sh.\n\n -- %s  Wed, 02 Dec 2026 00:00:00 +0000\n' \
        "$2" "$version" "$maintainer" | gzip -9n >"$doc/changelog.gz"
    chmod 644 "$doc/copyright" "$doc/changelog.gz"
    if [ -f "scripts/debian/$3.lintian-overrides" ]; then
        install -D -m 644 "scripts/debian/$3.lintian-overrides" "$1/usr/share/lintian/overrides/$2"
    fi
}
# Installs a binary stripped as dh_strip would (the release profile
# strips symbols only; a debug build nothing).
install_binary() { # ARCH SOURCE DEST
    local strip=strip
    case "$1" in
        arm64) strip=aarch64-linux-gnu-strip ;;
        armhf) strip=arm-linux-gnueabihf-strip ;;
    esac
    install -m 755 "$2" "$3"
    "$strip" --strip-unneeded --remove-section=.comment --remove-section=.note "$3"
}
# Man page and bash completion, written by the binary itself.
man_and_completion() { # STAGE ARCH NAME
    local stage="$1" run bin
    run="$(runner "$2")"
    bin="$(bin_dir "$2")/$3"
    install -d -m 755 "$stage/usr/share/man/man1" "$stage/usr/share/bash-completion/completions"
    $run "$bin" man | gzip -9n >"$stage/usr/share/man/man1/$3.1.gz"
    $run "$bin" completions bash >"$stage/usr/share/bash-completion/completions/$3"
    chmod 644 "$stage/usr/share/man/man1/$3.1.gz" "$stage/usr/share/bash-completion/completions/$3"
}
finish() { # STAGE PACKAGE ARCH DEPENDS DESCRIPTION [EXTRA CONTROL LINES]
    local stage="$1" package="$2" arch="$3"
    (cd "$stage" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z | xargs -0 md5sum) >"$stage/DEBIAN/md5sums"
    {
        echo "Package: $package"
        echo "Version: $version"
        echo "Architecture: $arch"
        echo "Maintainer: $maintainer"
        echo "Installed-Size: $(du -sk --exclude=DEBIAN "$stage" | cut -f1)"
        echo "Depends: $4"
        [ -z "${6:-}" ] || echo "$6"
        echo "Section: admin"
        echo "Priority: optional"
        echo "Homepage: $homepage"
        echo "Description: $5"
    } >"$stage/DEBIAN/control"
    chmod 644 "$stage/DEBIAN/control" "$stage/DEBIAN/md5sums"
    install -d "$OUT"
    dpkg-deb --root-owner-group -Z"$COMPRESS" --build "$stage" "$OUT/${package}_${version}_${arch}.deb" >/dev/null
    echo "package: $OUT/${package}_${version}_${arch}.deb"
}

sender_package() { # ARCH
    local arch="$1" stage="$work/sender-$1"
    ensure_built "$arch" sender
    install -d -m 755 "$stage/DEBIAN" "$stage/usr/bin" "$stage/usr/lib/logferry" "$stage/etc/cron.d" "$stage/etc/logferry"
    install_binary "$arch" "$(bin_dir "$arch")/sender" "$stage/usr/bin/sender"
    man_and_completion "$stage" "$arch" sender
    docs "$stage" logferry-sender sender
    install -m 755 scripts/debian/sender-cron "$stage/usr/lib/logferry/sender-cron"
    install -m 644 scripts/debian/sender.cron "$stage/etc/cron.d/logferry-sender"
    install -m 644 scripts/debian/sender.env "$stage/etc/logferry/sender.env"
    printf '/etc/cron.d/logferry-sender\n/etc/logferry/sender.env\n' >"$stage/DEBIAN/conffiles"
    install -m 755 scripts/debian/sender.postinst "$stage/DEBIAN/postinst"
    chmod 644 "$stage/DEBIAN/conffiles"
    finish "$stage" logferry-sender "$arch" "$(depends_of "$stage/usr/bin/sender")" \
        "uploads a device's log files to a logferry receiver
 Run from cron every 15 minutes (/etc/cron.d/logferry-sender) once
 /etc/logferry/sender.env names the receiver and the log folder, it
 uploads each file with its SHA-256 and moves it aside only after the
 receiver has verified and durably stored exactly those bytes." "Recommends: cron"
}

receiver_package() { # ARCH
    local arch="$1" stage="$work/receiver-$1"
    ensure_built "$arch" receiver
    install -d -m 755 "$stage/DEBIAN" "$stage/usr/bin" "$stage/usr/lib/systemd/system" \
        "$stage/usr/lib/sysusers.d" "$stage/usr/lib/tmpfiles.d" "$stage/etc/logferry"
    install_binary "$arch" "$(bin_dir "$arch")/receiver" "$stage/usr/bin/receiver"
    man_and_completion "$stage" "$arch" receiver
    docs "$stage" logferry-receiver receiver
    # The same hardened unit as scripts/install-receiver.sh installs, with
    # the package's paths (its comment header is for the script's users).
    sed -e '/^#/d' -e 's|^ExecStart=/usr/local/bin/receiver|ExecStart=/usr/bin/receiver|' \
        scripts/receiver.service >"$stage/usr/lib/systemd/system/logferry-receiver.service"
    grep -q '^ExecStart=/usr/bin/receiver ' "$stage/usr/lib/systemd/system/logferry-receiver.service"
    install -m 644 scripts/debian/receiver.sysusers "$stage/usr/lib/sysusers.d/logferry-receiver.conf"
    install -m 644 scripts/debian/receiver.tmpfiles "$stage/usr/lib/tmpfiles.d/logferry-receiver.conf"
    chmod 644 "$stage/usr/lib/systemd/system/logferry-receiver.service"
    for script in postinst prerm postrm; do
        install -m 755 "scripts/debian/receiver.$script" "$stage/DEBIAN/$script"
    done
    finish "$stage" logferry-receiver "$arch" "$(depends_of "$stage/usr/bin/receiver"), systemd" \
        "accepts verified log uploads from a logferry device fleet
 A small HTTP service (port 3500) run by systemd as the logferry user. It
 accepts the devices listed in /etc/logferry/ids.txt, checks every byte
 against the declared size and checksum, and stores each file with a
 sha256sum-compatible checksum file under /var/lib/logferry/received_files."
}

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
for arch in "${archs[@]}"; do
    triple_of "$arch" >/dev/null
    sender_package "$arch"
    # The receiver runs on a server, or a 64-bit Pi: no armhf package.
    [ "$arch" = armhf ] || receiver_package "$arch"
done
