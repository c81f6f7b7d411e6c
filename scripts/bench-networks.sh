#!/usr/bin/env bash
# Time to ping on each network, cold and warm, side by side in one run: one clone at a time
# of the golden image on QEMU user networking, on a libvirt NAT network (dnsmasq) and on a
# plain bridge with its own DHCP server, in the lab namespace of integration/harness/lab.rs
# (nothing leaves the machine). Each figure is a whole `salt-run cloud.profile` call, to the
# clone's proven readiness answer. Prints a table with the medians and the ratio to user
# networking (what a real DHCP exchange adds).
#
#   scripts/bench-networks.sh [ROUNDS]        (default 3)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd); root=$(dirname "$here")
SALT_VERSIONS=3007.17 "$here/setup.sh" >/dev/null
cd "$root"
BENCH_ROUNDS=${1:-3} cargo test --quiet --test network -- --ignored --nocapture \
    --test-threads 1 bench_time_to_ping_per_network
