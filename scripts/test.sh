#!/usr/bin/env bash
# Sets up a fresh Debian 12 machine (scripts/setup.sh) and runs every test: formatting and
# lints, unit tests, salt-proto's vectors, integration tests against real Salt masters
# 3006.30, 3007.17 and 3008.5 and a real libvirtd, then bounded fuzz runs.
#
#   scripts/test.sh                 everything
#   FUZZ_RUNS=0 scripts/test.sh     skip fuzzing
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cd "$(dirname "$here")"
export SALT_VERSIONS=${SALT_VERSIONS:-3006.30 3007.17 3008.5}
step() { printf '\033[1m==> %s\033[0m\n' "$*"; }

step "setup"
"$here/setup.sh"

step "cargo fmt --check"
cargo fmt --all -- --check
step "cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings

step "cargo test: unit, doc, salt-proto's vectors"
cargo test --workspace --lib --bins --no-fail-fast
cargo test --workspace --doc --no-fail-fast
cargo test -p salt-proto --tests --no-fail-fast

step "cargo test: integration"
# Integration tests start private salt-masters and guests; two at a time fit a 2-core
# machine. More where the tests mostly wait on Salt's CLIs and played guests, not on TCG
# guests (measured, 2 threads -> these: fleet 106 -> 52 s, forgery 118 -> 72 s, salt_cloud
# 213 -> 154 s, package 156 -> 101 s, topology 160 -> 113 s, bus 89 -> 66 s).
declare -A threads=([fleet]=4 [topology]=8 [runner]=4 [remote]=4 [identity]=4
    [salt_cloud]=3 [hypervisor_down]=3 [forgery]=3 [bus]=3 [package]=3)
cargo test -p virtseed --tests --no-run --quiet
# network.rs is one long test (~10 minutes of TCG guests) on a libvirtd of its own, in a lab
# namespace: it runs beside the binaries that mostly wait on Salt, its output shown when it
# ends. The binaries with TCG guests on the host's libvirtd follow them; chaos.rs restarts
# the host's libvirtd, so it runs last, alone.
net_bin=$(cargo test -p virtseed --test network --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "network" and m.get("executable"):
        print(m["executable"])')
net_log=$(mktemp)
("$net_bin" --test-threads 2 >"$net_log" 2>&1; echo $? >"$net_log.rc") &
net_pid=$!
late="ssh_deploy e2e warm topology"
failed=()
run() { cargo test -p virtseed --test "$1" -- --test-threads "${threads[$1]:-2}" || failed+=("$1"); }
for t in $(sed -n '/^\[\[test\]\]/{n;s/^name = "\(.*\)"/\1/p}' Cargo.toml); do
    case " network chaos $late " in *" $t "*) continue ;; esac
    run "$t"
done
for t in $late; do run "$t"; done
wait "$net_pid" || true
echo "---- integration/network.rs (ran beside the others) ----"
cat "$net_log"
[ "$(cat "$net_log.rc" 2>/dev/null)" = 0 ] || failed+=(network)
rm -f "$net_log" "$net_log.rc"
run chaos
if [ ${#failed[@]} -gt 0 ]; then
    echo "integration tests failed: ${failed[*]}" >&2
    exit 1
fi

step "pytest: virtseed's Salt modules, on each Salt"
for v in $SALT_VERSIONS; do
    venv=${VIRTSEED_CACHE:-$HOME/.cache/virtseed}/salt-$v
    "$venv/bin/pip" install -q pytest
    PYTHONPATH=python "$venv/bin/python" -m pytest -q -p no:cacheprovider python/tests
done

# Reproducible: the same inputs on every machine (scripts/fuzz.sh SECONDS explores further).
FUZZ_RUNS=${FUZZ_RUNS:-100000}
if [ "$FUZZ_RUNS" -gt 0 ]; then
    step "fuzz: $FUZZ_RUNS inputs per target, fixed seed"
    FUZZ_RUNS=$FUZZ_RUNS "$here/fuzz.sh"
fi
step "all tests passed"
