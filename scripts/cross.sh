#!/usr/bin/env bash
# Cross-compiles the sender and the receiver for Raspberry Pis, installing
# what it needs when missing: the Rust targets (rustup) and Debian's cross
# C toolchains (apt; the TLS stack, aws-lc-rs, builds C code). The linkers
# and C compilers are set in .cargo/config.toml.
#
#   scripts/cross.sh                       release, both targets, both binaries
#   scripts/cross.sh --debug --sender aarch64-unknown-linux-gnu
#
#   aarch64-unknown-linux-gnu        Pi 3/4/5 (and Zero 2) with a 64-bit OS
#   armv7-unknown-linux-gnueabihf    32-bit Raspberry Pi OS on a Pi 2/3/4/5
#
# Options: --debug (the dev profile; default release), --sender (only the
# sender), --no-install (fail instead of installing). The binaries are
# target/TRIPLE/{release,debug}/{sender,receiver}. Each build's wall time
# is printed ("cross: TRIPLE release 212 s").
#
# Run one under emulation (Debian's qemu-user, which this script installs):
#   qemu-aarch64 -L /usr/aarch64-linux-gnu target/aarch64-unknown-linux-gnu/release/sender --version
#   qemu-arm -L /usr/arm-linux-gnueabihf target/armv7-unknown-linux-gnueabihf/release/sender --version
set -euo pipefail
cd "$(dirname "$0")/.."
profile=release
packages=(-p logferry-sender -p logferry-receiver)
install=1
targets=()
while [ $# -gt 0 ]; do
    case "$1" in
        --debug) profile=debug ;;
        --sender) packages=(-p logferry-sender) ;;
        --no-install) install=0 ;;
        -h|--help) sed -n '2,/^set -e/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0 ;;
        -*) echo "cross.sh: unknown option $1" >&2; exit 2 ;;
        *) targets+=("$1") ;;
    esac
    shift
done
[ ${#targets[@]} -gt 0 ] || targets=(aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf)

# What each target needs from Debian: the cross compiler, its C library,
# and qemu-user to run the result here.
debs=(qemu-user)
for target in "${targets[@]}"; do
    case "$target" in
        aarch64-unknown-linux-gnu) debs+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross) ;;
        armv7-unknown-linux-gnueabihf) debs+=(gcc-arm-linux-gnueabihf libc6-dev-armhf-cross) ;;
        *) echo "cross.sh: unsupported target $target (aarch64-unknown-linux-gnu or armv7-unknown-linux-gnueabihf)" >&2; exit 2 ;;
    esac
done
missing=()
for deb in "${debs[@]}"; do
    dpkg-query -W -f='${Status}' "$deb" 2>/dev/null | grep -q "install ok installed" || missing+=("$deb")
done
missing_targets=()
installed_targets="$(rustup target list --installed)"
for target in "${targets[@]}"; do
    grep -qx "$target" <<<"$installed_targets" || missing_targets+=("$target")
done
if [ ${#missing[@]} -gt 0 ] || [ ${#missing_targets[@]} -gt 0 ]; then
    if [ "$install" = 0 ]; then
        echo "cross.sh: missing ${missing[*]} ${missing_targets[*]}" >&2
        exit 1
    fi
fi
if [ ${#missing[@]} -gt 0 ]; then
    echo "cross: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if [ ${#missing_targets[@]} -gt 0 ]; then
    echo "cross: rustup target add ${missing_targets[*]}"
    rustup target add "${missing_targets[@]}"
fi

flag=()
[ "$profile" = release ] && flag=(--release)
for target in "${targets[@]}"; do
    start=$SECONDS
    cargo build --locked "${flag[@]}" --target "$target" "${packages[@]}" --bins
    echo "cross: $target $profile $((SECONDS - start)) s"
    for bin in sender receiver; do
        f="target/$target/$profile/$bin"
        if [ -x "$f" ]; then echo "cross:   $f $(stat -c %s "$f") bytes"; fi
    done
done
