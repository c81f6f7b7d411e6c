#!/usr/bin/env bash
# Where a clone's time to first ping goes, from inside the guest: makes one clone of the
# golden image with `salt-run cloud.profile` (SEED=smbios|cloud-init), then asks its own
# minion for systemd-analyze (total, critical chain of salt-minion.service, blame) and the
# minion's log, and prints virtseed's timings. Everything is removed on exit.
#
#   SEED=smbios scripts/boot-analysis.sh
#   MINION_CONF='log_level_logfile: debug' EXTRA='head -50 /var/log/salt/minion' scripts/boot-analysis.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd); root=$(dirname "$here")
export SALT_VERSION=${SALT_VERSION:-3007.17}
SEED=${SEED:-smbios}
CACHE=${VIRTSEED_CACHE:-$HOME/.cache/virtseed}
venv=$CACHE/salt-$SALT_VERSION
(cd "$root" && cargo build --release --quiet)
vs="$root/target/release/virtseed"
"$here/build-golden-image.sh" >/dev/null
d=$(mktemp -d /tmp/virtseed-boot.XXXXXX); chmod 755 "$d"
name=boot$$
cleanup() {
    "$vs" -c "$d" destroy "$name" >/dev/null 2>&1 || true
    [ -n "${vs_pid:-}" ] && kill "$vs_pid" 2>/dev/null || true
    "$here/dev-master.sh" stop "$d" >/dev/null 2>&1 || true
    rm -rf "$d"
}
trap cleanup EXIT
"$here/dev-master.sh" start "$d" >/dev/null
cat > "$d/cloud.providers" <<CONF
kvm:
  driver: libvirt
  url: qemu:///system
CONF
cat > "$d/cloud.profiles" <<CONF
p:
  provider: kvm
  base_domain: virtseed-golden
  seed: $SEED
  cpus: ${CPUS:-1}
  minion: {master: 10.0.2.2${MINION_CONF:+, $MINION_CONF}}
  minion_timeout: 400
CONF
printf "id: virtseed\npki_dir: %s/pki/virtseed\nsalt_version: '%s'\n" "$d" "$SALT_VERSION" > "$d/virtseed"
"$vs" -c "$d" run 2>"$d/virtseed.log" & vs_pid=$!
for _ in $(seq 100); do [ -f "$d/pki/virtseed/minion_master.pub" ] && break; sleep 0.1; done
"$vs" -c "$d" install-runner --salt-python "$venv/bin/python" >/dev/null
salt() { "$venv/bin/salt" -c "$d" "$@"; }
echo "== salt-run cloud.profile p $name (seed: $SEED)"
"$venv/bin/salt-run" -c "$d" --out json cloud.profile p "$name" > "$d/ret.json"
python3 - "$d/ret.json" "$name" <<'PY'
import json, sys
text = open(sys.argv[1]).read()
# salt-run prints progress before the return: the return is the last top-level JSON object.
start = max(i for i, l in enumerate(text.splitlines()) if l.startswith("{"))
r = json.loads("\n".join(text.splitlines()[start:]))[sys.argv[2]]
print("timings_ms:", json.dumps(r.get("timings_ms"), sort_keys=True))
print("error:", r.get("Error"))
PY
run() { echo; echo "== $*"; salt -t 120 --out txt "$name" cmd.run "$*" 2>&1 | sed "s/^$name: //" || true; }
run "systemctl list-jobs; systemd-analyze"
run systemd-analyze critical-chain salt-minion.service
run "systemd-analyze blame | head -25"
run "journalctl -b -o short-monotonic -u salt-minion -u virtseed-credentials -u systemd-networkd-wait-online --no-pager | tail -30"
run "grep -h -E 'Started|Finished|Starting' /dev/null; journalctl -b -o short-monotonic --no-pager | grep -E 'Starting|Started|Finished|Reached target' | tail -40"
run "tail -25 /run/cloud-init/ds-identify.log; cat /proc/cmdline"
# More commands to run in the guest, one per line (e.g. EXTRA='time /opt/salt/bin/python -c "import salt.minion"').
while IFS= read -r c; do [ -n "$c" ] && run "$c"; done <<< "${EXTRA:-}"
