#!/usr/bin/env bash
# Fuzzes the parsers that face untrusted input: the path validator, the ids
# file parser and the Authorization header parser, each for a bounded time.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET]      (default 60)
#
# Not part of CI. A crash is saved under fuzz/artifacts/<target>/; turn it
# into a case of the hostile-input suite or a unit test, then fix it.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
# cargo-fuzz passes flags that only nightly compilers accept; this lets the
# machine's one (stable) toolchain accept them too.
export RUSTC_BOOTSTRAP=1
for target in rel_path ids_file auth_header; do
    mkdir -p "fuzz/corpus/$target"
    echo "==> fuzzing $target for ${seconds} s"
    cargo fuzz run --fuzz-dir fuzz "$target" "fuzz/corpus/$target" "fuzz/seeds/$target" -- \
        -max_total_time="$seconds" -print_final_stats=1 2>&1 | grep -E "^(==|Done|#[0-9]+ *DONE|stat::number_of_executed_units|SUMMARY|thread|panicked)" || true
    if [ -n "$(ls -A "fuzz/artifacts/$target" 2>/dev/null)" ]; then
        echo "fuzzing $target found a crash: fuzz/artifacts/$target/" >&2
        exit 1
    fi
done
echo "==> no crashes"
