#!/usr/bin/env bash
# Fault and load scenarios on this machine (real masters, real libvirtd), one at a time, and
# the table of what happened: scenario, what was done, outcome, what was left behind.
#
#   scripts/chaos.sh            run them and print the table
#   scripts/chaos.sh --update   also write the table into RELIABILITY.md
#
# The scenarios are the integration tests crash, chaos, hostile and bus (the master
# restart); scripts/test.sh runs them too. It needs scripts/setup.sh to have run.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cd "$(dirname "$here")"
report=$(mktemp)
trap 'rm -f "$report"' EXIT
export CHAOS_REPORT=$report
# libvirtd is restarted by one scenario: nothing else may run beside them.
cargo test --quiet --test crash --test chaos --test hostile --test bus -- --test-threads 1 >&2

table() {
    echo "| scenario | what was done | outcome | left behind |"
    echo "|---|---|---|---|"
    awk -F'\t' '{printf "| %s | %s | %s | %s |\n", $1, $2, $3, $4}' "$report"
}
table
if [ "${1:-}" = "--update" ]; then
    {
        sed '/^<!-- chaos table -->$/q' RELIABILITY.md
        echo
        echo "Last run: $(date -u +%Y-%m-%d), $(nproc) cores, $(uname -r), \`scripts/chaos.sh --update\` ($(git rev-parse --short HEAD))."
        echo
        table
        echo
        sed -n '/^<!-- end of chaos table -->$/,$p' RELIABILITY.md
    } > RELIABILITY.md.new
    mv RELIABILITY.md.new RELIABILITY.md
    echo "RELIABILITY.md updated" >&2
fi
