#!/usr/bin/env bash
# The main job for a new user, on a fresh Debian 12 machine (as root): set up, start a private
# loopback salt-master, the virtseed sidecar beside it, install the `cloud` runner, and clone a
# VM with `salt-run cloud.profile` that answers `salt demo1 test.ping` on its minion's first
# start. Everything it starts is stopped and removed on exit.
#
# Honest scope today: the golden image (a bootable guest with salt-minion and cloud-init) is
# not built yet, so the clone here boots no OS, and the guest's part -- read the cloud-init
# seed virtseed attached, start salt-minion with exactly that identity -- is played by a
# salt-minion process on this host reading the seed volume (as cloud-init would, no mount).
# Everything else is the real path: runner, sidecar, libvirt clone, pre-accepted key, events,
# readiness, seed removal, destroy.
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
pool=vsdemo-$(basename "$d" | cut -d. -f2)
cleanup() {
    [ -n "${minion_pid:-}" ] && kill "$minion_pid" 2>/dev/null || true
    "$vs" -c "$d" destroy demo1 >/dev/null 2>&1 || true
    [ -n "${vs_pid:-}" ] && kill "$vs_pid" 2>/dev/null || true
    virsh -q -c qemu:///system undefine demo-base >/dev/null 2>&1 || true
    virsh -q -c qemu:///system pool-destroy "$pool" >/dev/null 2>&1 || true
    "$here/dev-master.sh" stop "$d" >/dev/null 2>&1 || true
    rm -rf "$d"
}
trap cleanup EXIT

step "private salt-master on 127.0.0.1 (config in $d)"
"$here/dev-master.sh" start "$d"
ret=$(awk '$1=="ret_port:"{print $2}' "$d/master")

step "a base domain to clone: demo-base (64 MiB qcow2 disk, TCG, user networking, shut off)"
mkdir -p "$d/pool"
virsh -q -c qemu:///system pool-create-as "$pool" dir --target "$d/pool" >/dev/null
qemu-img create -q -f qcow2 "$d/pool/demo-base.qcow2" 64M
virsh -q -c qemu:///system pool-refresh "$pool" >/dev/null
virsh -q -c qemu:///system undefine demo-base >/dev/null 2>&1 || true
cat > "$d/demo-base.xml" <<XML
<domain type='qemu'><name>demo-base</name><memory unit='MiB'>32</memory><vcpu>1</vcpu>
<os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
<features><tcg><tb-cache unit='MiB'>8</tb-cache></tcg></features><cpu mode='custom'><model>qemu64</model></cpu>
<devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='$d/pool/demo-base.qcow2'/><target dev='vda' bus='virtio'/></disk>
<interface type='user'><model type='virtio'/></interface></devices></domain>
XML
virsh -q -c qemu:///system define "$d/demo-base.xml" >/dev/null

step "salt-cloud's own config files: cloud.providers and cloud.profiles"
cat > "$d/cloud.providers" <<CONF
local-kvm:
  driver: libvirt
  url: qemu:///system
CONF
cat > "$d/cloud.profiles" <<CONF
demo:
  provider: local-kvm
  base_domain: demo-base
  clone_strategy: quick
  minion:
    master: 127.0.0.1   # a real guest under user networking would use 10.0.2.2
  grains:
    role: demo
  minion_timeout: 120
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

step "virtseed install-runner"
"$vs" -c "$d" install-runner

step "the guest's part (stand-in until the golden image): when the seed appears, start salt-minion from it"
(
    seed="$d/pool/demo1-seed.img"
    for _ in $(seq 300); do [ -f "$seed" ] && break; sleep 0.1; done
    g="$d/guest"; mkdir -p "$g/pki"
    mtype -i "$seed" ::user-data > "$g/user-data"
    "$venv/bin/python" - "$g" "$d" <<'PY'
import sys, yaml
g, d = sys.argv[1], sys.argv[2]
ud = yaml.safe_load(open(f"{g}/user-data"))
sm = ud["salt_minion"]
open(f"{g}/pki/minion.pem", "w").write(sm["private_key"])
open(f"{g}/pki/minion.pub", "w").write(sm["public_key"])
open(f"{g}/pki/minion_master.pub", "w").write(ud["write_files"][0]["content"])
conf = dict(sm["conf"], grains=sm.get("grains", {}), pki_dir=f"{g}/pki", cachedir=f"{g}/cache",
            sock_dir=f"{g}/sock", log_file=f"{g}/minion.log", pidfile=f"{g}/minion.pid",
            user="root", multiprocessing=False)
yaml.safe_dump(conf, open(f"{g}/minion", "w"))
PY
    exec "$venv/bin/salt-minion" -c "$g" >/dev/null 2>&1
) & minion_pid=$!

step "salt-run cloud.profile demo demo1   (returns when demo1 answers test.ping)"
time "$venv/bin/salt-run" -c "$d" cloud.profile demo demo1

step "salt demo1 test.ping"
"$venv/bin/salt" -c "$d" -t 30 demo1 test.ping
step "salt-key -L (demo1 was pre-accepted: it never sat in pending)"
"$venv/bin/salt-key" -c "$d" -L
step "salt-run cloud.list_nodes"
"$venv/bin/salt-run" -c "$d" cloud.list_nodes

step "salt-run cloud.destroy demo1 (domain, volumes, key, the master's cache for it)"
kill "$minion_pid" 2>/dev/null || true; minion_pid=
"$venv/bin/salt-run" -c "$d" cloud.destroy demo1
"$venv/bin/salt-key" -c "$d" -L
