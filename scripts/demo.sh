#!/usr/bin/env bash
# The main job for a new user, on a fresh Debian 12 machine (as root): set up, build the
# golden image (a small Debian guest with salt-minion and cloud-init; cached after the first
# run), start a private loopback salt-master and the virtseed sidecar beside it, install
# virtseed's Salt modules, and clone a real VM with `salt-cloud -p demo demo1` that answers
# `salt demo1 test.ping` on its minion's first start: no SSH, no bootstrap, no pending key.
# Guests run under TCG on machines without working KVM (about a minute to the first ping).
# Everything it starts is stopped and removed on exit.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd); root=$(dirname "$here")
export SALT_VERSION=${SALT_VERSION:-3007.17}
CACHE=${VIRTSEED_CACHE:-$HOME/.cache/virtseed}
venv=$CACHE/salt-$SALT_VERSION
step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

step "setup (system packages, libvirtd, Salt $SALT_VERSION)"
SALT_VERSIONS=$SALT_VERSION "$here/setup.sh"

step "build virtseed"
(cd "$root" && cargo build --release --quiet)
vs="$root/target/release/virtseed"

d=$(mktemp -d /tmp/virtseed-demo.XXXXXX)
chmod 755 "$d"
cleanup() {
    "$vs" -c "$d" destroy demo1 >/dev/null 2>&1 || true
    [ -n "${vs_pid:-}" ] && kill "$vs_pid" 2>/dev/null || true
    "$here/dev-master.sh" stop "$d" >/dev/null 2>&1 || true
    rm -rf "$d"
}
trap cleanup EXIT

step "private salt-master on 127.0.0.1 (config in $d)"
"$here/dev-master.sh" start "$d"

step "golden image: the base domain virtseed-golden (built once, then cached)"
"$here/build-golden-image.sh"

step "salt-cloud's own config files: cloud.providers and cloud.profiles"
cat > "$d/cloud.providers" <<CONF
local-kvm:
  driver: libvirt
  url: qemu:///system
CONF
cat > "$d/cloud.profiles" <<CONF
demo:
  provider: local-kvm
  base_domain: virtseed-golden
  clone_strategy: quick
  minion:
    master: 10.0.2.2    # the host's loopback, as QEMU user networking shows it to the guest
  grains:
    role: demo
  minion_timeout: 400
CONF
sed 's/^/    /' "$d/cloud.profiles"
"$vs" -c "$d" check-config | sed 's/^/    /'

step "virtseed sidecar: joins the master's bus as minion id 'virtseed'"
printf "id: virtseed\npki_dir: %s/pki/virtseed\nsalt_version: '%s'\n" "$d" "$SALT_VERSION" > "$d/virtseed"
"$vs" -c "$d" run 2> >(sed 's/^/    [virtseed] /' >&2) & vs_pid=$!
for _ in $(seq 100); do
    [ -f "$d/pki/virtseed/minion_master.pub" ] && break
    sleep 0.1
done
"$venv/bin/salt" -c "$d" -t 10 virtseed test.ping

step "virtseed install-runner   (its libvirt cloud driver and cloud runner, into extension_modules)"
"$vs" -c "$d" install-runner --salt-python "$venv/bin/python"
printf 'log_file: %s/log/cloud\n' "$d" > "$d/cloud"

step "salt-cloud -p demo demo1   (as salt-cloud's libvirt guide says; returns when demo1 answers test.ping)"
time "$venv/bin/salt-cloud" -c "$d" -p demo demo1

step "salt demo1 test.ping"
"$venv/bin/salt" -c "$d" -t 30 demo1 test.ping
step "salt-key -L (demo1 was pre-accepted: it never sat in pending)"
"$venv/bin/salt-key" -c "$d" -L
step "salt-cloud -Q"
"$venv/bin/salt-cloud" -c "$d" -Q

step "salt-cloud -d demo1 (domain, volumes, key, the master's cache for it)"
"$venv/bin/salt-cloud" -c "$d" -y -d demo1
"$venv/bin/salt-key" -c "$d" -L
