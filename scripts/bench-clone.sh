#!/usr/bin/env bash
# Clone latency, virtseed against salt-cloud's own libvirt driver (pip-installed Salt 3007),
# on the same base domain in a private dir pool, measured the same way (request to libvirt's
# domain STARTED event; see bench-clone.py). Domains boot no OS (they sit in the BIOS).
#
#   scripts/bench-clone.sh [SIZES] [ROUNDS]      default: SIZES=1,50 ROUNDS=3
#   BENCH_VIA=salt-run scripts/bench-clone.sh 1,10 2
#       the same through `salt-run cloud.profile`: virtseed's runner and sidecar against Salt
#       3007's own cloud runner; also reports when salt-run returned
#   BENCH_VIA=salt-cloud scripts/bench-clone.sh 1,10 2
#       `salt-cloud -p` through virtseed's libvirt driver against `salt-cloud -p` with Salt's
#       own libvirt driver, and against `salt-run cloud.profile` through virtseed
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd); root=$(dirname "$here")
SIZES=${1:-1,50}; ROUNDS=${2:-3}
export SALT_VERSION=3007.17
CACHE=${VIRTSEED_CACHE:-$HOME/.cache/virtseed}
venv=$CACHE/salt-$SALT_VERSION
"$here/setup.sh" >/dev/null
# salt-cloud's libvirt driver needs libvirt-python (built against the system libvirt).
"$venv/bin/python" -c "import libvirt" 2>/dev/null || "$venv/bin/pip" install -q libvirt-python
(cd "$root" && cargo build --release --quiet)

d=$(mktemp -d /tmp/virtseed-bclone.XXXXXX)
pool=vsbench-$(basename "$d" | cut -d. -f2)
cleanup() {
    virsh -q -c qemu:///system destroy "${pool}base" >/dev/null 2>&1 || true
    virsh -q -c qemu:///system undefine "${pool}base" >/dev/null 2>&1 || true
    virsh -q -c qemu:///system pool-destroy "$pool" >/dev/null 2>&1 || true
    virsh -q -c qemu:///system pool-undefine "$pool" >/dev/null 2>&1 || true
    "$here/dev-master.sh" stop "$d" >/dev/null 2>&1 || true
    rm -rf "$d"
}
trap cleanup EXIT
"$here/dev-master.sh" start "$d" >/dev/null
mkdir -p "$d/pool"
chmod 755 "$d"
# Persistent: salt-cloud's driver only looks in active persistent pools.
virsh -q -c qemu:///system pool-define-as "$pool" dir --target "$d/pool" >/dev/null
virsh -q -c qemu:///system pool-start "$pool" >/dev/null
qemu-img create -q -f qcow2 "$d/pool/base.qcow2" 64M
virsh -q -c qemu:///system pool-refresh "$pool" >/dev/null
cat > "$d/base.xml" <<XML
<domain type='qemu'><name>${pool}base</name><memory unit='MiB'>32</memory><vcpu>1</vcpu>
<os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
<features><tcg><tb-cache unit='MiB'>8</tb-cache></tcg></features>
<cpu mode='custom'><model>qemu64</model></cpu>
<devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='$d/pool/base.qcow2'/><target dev='vda' bus='virtio'/></disk>
<interface type='user'><mac address='52:54:00:00:00:01'/><model type='virtio'/></interface></devices></domain>
XML
virsh -q -c qemu:///system define "$d/base.xml" >/dev/null
cat > "$d/cloud.providers" <<CONF
kvm:
  driver: libvirt
  url: qemu:///system
CONF
# One profile both tools read. Both mint a key per clone and pre-accept it on the master
# (virtseed also builds and uploads the cloud-init seed). salt-cloud: no SSH deploy, give up waiting for an IP at once
# (user networking has no lease to find) -- we time only until the domain has started.
cat > "$d/cloud.profiles" <<CONF
bench:
  provider: kvm
  base_domain: ${pool}base
  clone_strategy: quick
  deploy: false
  wait_for_ip_timeout: 1
  wait_for_ip_interval: 1
  max_parallel: 50
  wait_for_minion: false
  minion:
    master: 10.0.2.2
CONF
if [ -n "${BENCH_VIA:-}" ]; then
    printf "id: virtseed\npki_dir: %s/pki/virtseed\nsalt_version: '%s'\n" "$d" "$SALT_VERSION" > "$d/virtseed"
    "$root/target/release/virtseed" -c "$d" --log warn run 2>"$d/log/virtseed.log" & vs_pid=$!
    trap 'kill $vs_pid 2>/dev/null || true; cleanup' EXIT
    sleep 2
fi
# virtseed's Salt modules: bench-clone.py moves its libvirt driver aside for Salt's own.
"$root/target/release/virtseed" -c "$d" install-runner --salt-python "$venv/bin/python" >/dev/null
echo "bench: $(nproc) CPUs, libvirt $(virsh -c qemu:///system version | awk '/Running hypervisor/{print $4}') ; sizes $SIZES, $ROUNDS rounds"
BENCH_POOL=$pool "$venv/bin/python" "$here/bench-clone.py" "$d" "$root/target/release/virtseed" "$venv/bin/salt-cloud" "$SIZES" "$ROUNDS"
