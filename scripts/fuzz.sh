#!/usr/bin/env bash
# Fuzzing: every salt-proto decoder (proto/fuzz), and virtseed's config loader and domain-XML
# rewriter (fuzz/).
#
#   scripts/fuzz.sh [SECONDS]     explore for SECONDS per target (default 60), growing the
#                                 corpus in fuzz/corpus/ (crashes land in fuzz/artifacts/)
#   FUZZ_RUNS=N scripts/fuzz.sh   a reproducible run, as scripts/test.sh does: N inputs per
#                                 target from the committed seeds with a fixed random seed,
#                                 so a pass here is a pass on any machine
#
# cargo-fuzz needs nightly flags; RUSTC_BOOTSTRAP lets the stable toolchain accept them.
# Exploring builds with AddressSanitizer at full optimisation. The reproducible run builds
# without a sanitizer at opt-level 1, in one target dir for both crates: 2.5 minutes less
# on 2 cores, and the inputs it runs are the same (the code is safe Rust: a fault is a panic,
# caught either way).
set -euo pipefail
secs=${1:-60}
root=$(cd "$(dirname "$0")/.." && pwd)
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --quiet
export RUSTC_BOOTSTRAP=1
flags=(-O)
if [ -n "${FUZZ_RUNS:-}" ]; then
    flags=(-O -s none --target-dir "$root/target/fuzz-runs")
    export CARGO_PROFILE_RELEASE_OPT_LEVEL=1
fi
for crate in "$root/proto" "$root"; do
    cd "$crate"
    targets=$(cargo fuzz list)
    cargo fuzz build "${flags[@]}"
    for t in $targets; do
        if [ -n "${FUZZ_RUNS:-}" ]; then
            corpus=$(mktemp -d)
            limits=(-seed=1 -runs="$FUZZ_RUNS")
        else
            corpus=fuzz/corpus/$t
            mkdir -p "$corpus"
            limits=(-max_total_time="$secs")
        fi
        # Committed seeds (valid inputs the fuzzer mutates from), if any.
        [ -d "fuzz/seeds/$t" ] && cp -n "fuzz/seeds/$t"/* "$corpus/" 2>/dev/null || true
        printf '    %-14s ' "$t"
        if ! out=$(cargo fuzz run "${flags[@]}" "$t" "$corpus" -- "${limits[@]}" -max_len=65536 -rss_limit_mb=2048 2>&1); then
            echo "FAILED"
            echo "$out" | tail -40
            exit 1
        fi
        echo "$out" | grep -E '^Done [0-9]+ runs' | tail -1
        [ -n "${FUZZ_RUNS:-}" ] && rm -rf "$corpus"
    done
done
