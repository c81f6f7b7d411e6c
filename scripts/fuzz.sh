#!/usr/bin/env bash
# Bounded fuzz runs: every salt-proto decoder (proto/fuzz), and virtseed's config loader and
# domain-XML rewriter (fuzz/). scripts/fuzz.sh [SECONDS per target]
# cargo-fuzz needs nightly flags; RUSTC_BOOTSTRAP lets the stable toolchain accept them.
set -euo pipefail
secs=${1:-60}
root=$(cd "$(dirname "$0")/.." && pwd)
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --quiet
export RUSTC_BOOTSTRAP=1
for crate in "$root/proto" "$root"; do
    cd "$crate"
    targets=$(cargo fuzz list)
    cargo fuzz build -O $targets >/dev/null 2>&1 || cargo fuzz build -O
    for t in $targets; do
        mkdir -p "fuzz/corpus/$t"
        # Committed seeds (valid inputs the fuzzer mutates from), if any.
        [ -d "fuzz/seeds/$t" ] && cp -n "fuzz/seeds/$t"/* "fuzz/corpus/$t/" 2>/dev/null || true
        printf '    %-14s ' "$t"
        if ! out=$(cargo fuzz run -O "$t" "fuzz/corpus/$t" -- -max_total_time="$secs" -max_len=65536 -rss_limit_mb=2048 2>&1); then
            echo "FAILED"
            echo "$out" | tail -40
            exit 1
        fi
        echo "$out" | grep -E '^Done [0-9]+ runs' | tail -1
    done
done
