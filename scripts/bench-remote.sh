#!/usr/bin/env bash
# What libvirt's SSH transport adds to a create: `virtseed profile` of N clones on the same
# base and pool, through qemu:///system and through qemu+ssh://root@127.0.0.1:PORT/system (a
# private sshd on loopback, key-only), alternating, ROUNDS rounds each; whole-command wall
# time (the connection is opened, the clones made and started). Domains boot no OS.
#
#   scripts/bench-remote.sh [SIZES] [ROUNDS]      default: SIZES=1,20 ROUNDS=5
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd); root=$(dirname "$here")
SIZES=${1:-1,20}; ROUNDS=${2:-5}
"$here/setup.sh" >/dev/null
(cd "$root" && cargo build --release --quiet)
vs=$root/target/release/virtseed

d=$(mktemp -d /tmp/virtseed-bremote.XXXXXX)
chmod 755 "$d"
pool=vsbr-$(basename "$d" | cut -d. -f2)
sshd_pid=""
cleanup() {
    [ -z "$sshd_pid" ] || kill "$sshd_pid" 2>/dev/null || true
    for dom in $(virsh -q -c qemu:///system list --all --name | grep "^${pool}" || true); do
        virsh -q -c qemu:///system destroy "$dom" >/dev/null 2>&1 || true
        virsh -q -c qemu:///system undefine "$dom" >/dev/null 2>&1 || true
    done
    virsh -q -c qemu:///system pool-destroy "$pool" >/dev/null 2>&1 || true
    rm -rf "$d"
}
trap cleanup EXIT

mkdir -p "$d/pool" "$d/ssh" "$d/local" "$d/remote" /run/sshd
virsh -q -c qemu:///system pool-create-as "$pool" dir --target "$d/pool" >/dev/null
qemu-img create -q -f qcow2 "$d/pool/base.qcow2" 64M
virsh -q -c qemu:///system pool-refresh "$pool" >/dev/null
cat > "$d/base.xml" <<XML
<domain type='qemu'><name>${pool}base</name><memory unit='MiB'>32</memory><vcpu>1</vcpu>
<os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
<features><tcg><tb-cache unit='MiB'>8</tb-cache></tcg></features>
<cpu mode='custom'><model>qemu64</model></cpu>
<devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='$d/pool/base.qcow2'/><target dev='vda' bus='virtio'/></disk>
<interface type='user'><model type='virtio'/></interface></devices></domain>
XML
virsh -q -c qemu:///system define "$d/base.xml" >/dev/null

ssh-keygen -q -t ed25519 -N '' -f "$d/ssh/hostkey"
ssh-keygen -q -t ed25519 -N '' -f "$d/ssh/client"
cp "$d/ssh/client.pub" "$d/ssh/authorized_keys"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$d/ssh/sshd_config" <<CONF
Port $port
ListenAddress 127.0.0.1
HostKey $d/ssh/hostkey
AuthorizedKeysFile $d/ssh/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
PidFile $d/ssh/sshd.pid
CONF
/usr/sbin/sshd -D -f "$d/ssh/sshd_config" -E "$d/ssh/log" & sshd_pid=$!
sleep 0.5

for mode in local remote; do
    if [ $mode = local ]; then url=qemu:///system; else
        url="qemu+ssh://root@127.0.0.1:$port/system?keyfile=$d/ssh/client&no_verify=1"; fi
    printf 'kvm:\n  driver: libvirt\n  url: %s\n' "$url" > "$d/$mode/cloud.providers"
    printf 'bench:\n  provider: kvm\n  base_domain: %sbase\n  max_parallel: 20\n' "$pool" > "$d/$mode/cloud.profiles"
done

echo "bench: $(nproc) CPUs, QEMU $(virsh -c qemu:///system version | awk '/Running hypervisor/{print $4}'); sizes $SIZES, $ROUNDS rounds"
results=$d/results
for n in ${SIZES//,/ }; do
    for r in $(seq "$ROUNDS"); do
        order="local remote"; [ $((r % 2)) = 0 ] && order="remote local"
        for mode in $order; do
            names=$(for i in $(seq "$n"); do printf '%s%s%sr%si%s ' "$pool" "${mode:0:1}" "$n" "$r" "$i"; done)
            t0=$(date +%s.%N)
            # shellcheck disable=SC2086
            "$vs" -c "$d/$mode" --log warn profile bench $names >/dev/null 2>"$d/err" || { cat "$d/err"; exit 1; }
            t1=$(date +%s.%N)
            echo "$n $mode $(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.3f", b-a}')" >> "$results"
            # shellcheck disable=SC2086
            "$vs" -c "$d/local" --log warn destroy $names >/dev/null 2>&1
        done
    done
done
python3 - "$results" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
print("| clones | qemu:///system | qemu+ssh:// (loopback sshd) | ssh / local |")
print("|---|---|---|---|")
for n in sorted({int(r[0]) for r in rows}):
    med = lambda m: statistics.median(float(r[2]) for r in rows if int(r[0]) == n and r[1] == m)
    lo, re = med("local"), med("remote")
    print(f"| {n} | {lo:.3f} s | {re:.3f} s | {re / lo:.2f}x |")
PY
