#!/usr/bin/env bash
# Time to ping on real guests: from `salt-run cloud.profile` to the new minion's first
# successful test.ping, per seed channel, median of N runs (default 3), with the breakdown the
# sidecar records from the master's bus (domain started, first auth, minion start event, first
# ping) and the clone's serial console (the initramfs's line: kernel done, root mounted, eth0
# leased; the identity unit's line: seed applied).
# Three flows on the same golden image:
#   smbios      virtseed, `seed: smbios`, key minted and pre-accepted;
#   cloud-init  virtseed, `seed: cloud-init`, key minted and pre-accepted;
#   classic     the flow without virtseed's keys (`seed: smbios`, `accept: manual`): the
#               minion makes its own key, which waits pending until the reactor from Salt's
#               documentation (salt/auth with act: pend -> wheel.key.accept) accepts it.
#   warm        virtseed, `warm: true`: restored from the base's saved warm state (made once
#               by `virtseed warm` before the runs, timed apart), key minted and pre-accepted.
# And one on the plain template (build-golden-image.sh --plain: sshd, no seed channel):
#   ssh         `salt-cloud -p` (the SSH deploy runs in salt-cloud's process): the guide's
#               profile keys, no `seed:` (so `seed: ssh`), a forwarded loopback port,
#               Salt's bootstrap with scripts/deploy-preinstalled-minion.sh; its first ping
#               is the driver's (`timings_ms.first_ping`), its wall salt-cloud's; several
#               names (CLONES) are deployed one after another.
# Each row also gives the clone's QEMU resident memory (RSS) once its minion answered, and the
# CPU time its QEMU had used when the call returned.
#
#   scripts/bench-time-to-ping.sh [N]                  (SALT_VERSION=3007.17)
#   SEEDS="smbios classic" scripts/bench-time-to-ping.sh 3       some flows only
#   CLONES="5 10" SEEDS=smbios scripts/bench-time-to-ping.sh 1   several names in one call
#   CPUS=2 scripts/bench-time-to-ping.sh 3                       clones with 2 vCPUs
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd); root=$(dirname "$here")
N=${1:-3}
export SALT_VERSION=${SALT_VERSION:-3007.17}
CACHE=${VIRTSEED_CACHE:-$HOME/.cache/virtseed}
venv=$CACHE/salt-$SALT_VERSION
SALT_VERSIONS=$SALT_VERSION "$here/setup.sh" >/dev/null
(cd "$root" && cargo build --release --quiet)
vs=$root/target/release/virtseed
"$here/build-golden-image.sh" >/dev/null
case " ${SEEDS:-ssh} " in *" ssh "*) "$here/build-golden-image.sh" --plain >/dev/null ;; esac
d=$(mktemp -d /tmp/virtseed-bttp.XXXXXX); chmod 755 "$d"
cleanup() {
    [ -n "${vs_pid:-}" ] && kill "$vs_pid" 2>/dev/null || true
    "$here/dev-master.sh" stop "$d" >/dev/null 2>&1 || true
    rm -rf "$d"
}
trap cleanup EXIT
# The key auto-accept reactor from Salt's reactor documentation, for this bench's names.
mkdir -p "$d/reactor"
cat > "$d/reactor/auth-pending.sls" <<'SLS'
{# A minion is sending a new key: accept it. #}
{% if 'act' in data and data['act'] == 'pend' and data['id'].startswith('ttp') %}
minion_add:
  wheel.key.accept:
    - args:
      - match: {{ data['id'] }}
{% endif %}
SLS
MASTER_EXTRA_CONF="reactor:
  - 'salt/auth':
    - $d/reactor/auth-pending.sls" "$here/dev-master.sh" start "$d" >/dev/null
printf "kvm:\n  driver: libvirt\n  url: qemu:///system\n" > "$d/cloud.providers"
printf "cloud-init:\n  provider: kvm\n  base_domain: virtseed-golden\n  cpus: ${CPUS:-1}\n  minion: {master: 10.0.2.2}\n  minion_timeout: 900\nsmbios:\n  extends: cloud-init\n  seed: smbios\nclassic:\n  extends: smbios\n  accept: manual\nwarm:\n  extends: smbios\n  warm: true\n" > "$d/cloud.profiles"
printf "ssh:\n  provider: kvm\n  base_domain: virtseed-plain\n  cpus: ${CPUS:-1}\n  ssh_forward: true\n  ssh_username: root\n  password: plain\n  script: %s\n  minion: {master: 10.0.2.2}\n  minion_timeout: 400\n" "$root/scripts/deploy-preinstalled-minion.sh" >> "$d/cloud.profiles"
printf "id: virtseed\npki_dir: %s/pki/virtseed\nsalt_version: '%s'\n" "$d" "$SALT_VERSION" > "$d/virtseed"
"$vs" -c "$d" --log warn run 2>"$d/log/virtseed.log" & vs_pid=$!
sleep 2
"$vs" -c "$d" install-runner --salt-python "$venv/bin/python" >/dev/null
tag=$(basename "$d" | cut -d. -f2 | tr 'A-Z' 'a-z')
case " ${SEEDS:-warm} " in *" warm "*)
    t=$(date +%s.%N)
    "$vs" -c "$d" --log warn warm warm >/dev/null
    echo "warm state of virtseed-golden made in $(python3 -c "import time; print(round(time.time() - $t, 1))") s (once per base and shape; not in the rows below)" ;;
esac
# Follows each clone's serial console log and stamps virtseed's lines (seconds since T0).
cat > "$d/console-watch.py" <<'PY'
import json, os, sys, time
t0 = float(sys.argv[1]); names = sys.argv[2:]; pos = {n: 0 for n in names}
while True:
    for n in names:
        p = f"/var/log/libvirt/qemu/{n}-console.log"
        try:
            with open(p, "rb") as f:
                f.seek(pos[n]); data = f.read()
        except OSError:
            continue
        end = data.rfind(b"\n") + 1
        pos[n] += end
        for line in data[:end].decode(errors="replace").splitlines():
            if "virtseed" in line:
                print(json.dumps({"name": n, "t": time.time() - t0, "line": line.strip()}), flush=True)
    time.sleep(0.02)
PY
# CLONES: names per call, e.g. CLONES="1 5 10" (default 1). SEEDS: default all four.
for n in ${CLONES:-1}; do
for i in $(seq "$N"); do
    for seed in ${SEEDS:-smbios cloud-init classic warm ssh}; do
        names=$(for k in $(seq "$n"); do printf "ttp%s%s%s%sx%s," "$tag" "$n" "$i" "${seed%%-*}" "$k"; done)
        names=${names%,}
        t0=$(date +%s.%N)
        python3 "$d/console-watch.py" "$t0" ${names//,/ } > "$d/console.jsonl" & watch_pid=$!
        if [ "$seed" = ssh ]; then
            # Without -P: salt-cloud's parallel mode returns before the deploys, without them.
            "$venv/bin/salt-cloud" -c "$d" --out json -y -p ssh ${names//,/ } > "$d/run.json" 2>/dev/null || true
        else
            "$venv/bin/salt-run" -c "$d" --out json cloud.profile "$seed" "$names" > "$d/run.json" 2>/dev/null || true
        fi
        t1=$(date +%s.%N)
        kill "$watch_pid" 2>/dev/null || true
        for name in ${names//,/ }; do
            qpid=$(pgrep -f "guest=$name," | head -1 || true)
            # CPU seconds QEMU used (user + system, all threads) when the call returned: for one
            # clone per call about what its boot or restore and its minion's start cost; with
            # several, it also holds the time idle until the last of them answered.
            cpu=$(awk -v hz="$(getconf CLK_TCK)" '{print ($14 + $15) / hz}' "/proc/${qpid:-0}/stat" 2>/dev/null || true)
            ping=$("$venv/bin/salt" -c "$d" -t 30 --out json "$name" test.ping 2>/dev/null | tr -d ' \n' || true)
            rss=$(awk '/^VmRSS:/ {print $2}' "/proc/${qpid:-0}/status" 2>/dev/null || true)
            "$venv/bin/python" - "$d/run.json" "$name" "$seed" "$n" "$t0" "$t1" "$ping" "$d/console.jsonl" "${rss:-0}" "${cpu:-}" >> "$d/results" <<'PY'
import json, sys
path, name, seed, n, t0, t1, ping, console, rss, cpu = sys.argv[1:11]
seen = [json.loads(l) for l in open(console) if l.strip()]
def at(marker):
    ts = [c["t"] for c in seen if c["name"] == name and marker in c["line"]]
    return round(min(ts) * 1000) if ts else None
text = open(path).read()
doc = None
for i in [0] + [k + 1 for k in range(len(text)) if text.startswith("\n{", k)]:
    try:
        doc = json.loads(text[i:])
    except ValueError:
        continue
v = (doc or {}).get(name, {})
t = v.get("timings_ms", {})
print(json.dumps({"seed": seed, "clones": int(n), "wall": float(t1) - float(t0),
                  "started": t.get("started", t.get("restored")), "rss_mib": int(rss) / 1024 or None,
                  "qemu_cpu": float(cpu) if cpu else None,
                  "initramfs": at("virtseed initramfs:"), "seed_applied": at("virtseed: installed the identity"),
                  "first_auth": t.get("first_auth"), "minion_start": t.get("minion_start"),
                  "first_ping": t.get("first_ping"),
                  "ok": v.get("minion_up") is True and "true" in ping}))
PY
            tail -1 "$d/results"
        done
        "$vs" -c "$d" destroy ${names//,/ } >/dev/null 2>&1 || true
    done
done
done
"$venv/bin/python" - "$d/results" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print("\n| seed | clones per call | runs ok | domain started (warm: restored) | root mounted, eth0 leased (console) | seed applied (console) | first auth | minion start | first ping (median) | vs smbios | last first ping | salt-run / salt-cloud wall | QEMU RSS | QEMU CPU |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
def median(rs, k, scale=1000.0, f=statistics.median):
    xs = [r[k] / scale for r in rs if r.get(k) is not None]
    return f(xs) if xs else None
for n in sorted({r["clones"] for r in rows}):
    base = median([r for r in rows if r["seed"] == "smbios" and r["clones"] == n], "first_ping")
    for seed in ["smbios", "cloud-init", "classic", "warm", "ssh"]:
        rs = [r for r in rows if r["seed"] == seed and r["clones"] == n]
        if not rs:
            continue
        def med(k, scale=1000.0, f=statistics.median):
            x = median(rs, k, scale, f)
            return f"{x:.1f} s" if x is not None else "n/a"
        ping = median(rs, "first_ping")
        ratio = f"{ping / base:.2f}x" if ping is not None and base else "n/a"
        print(f"| {seed} | {n} | {sum(r['ok'] for r in rs)}/{len(rs)} | {med('started')} | "
              f"{med('initramfs')} | {med('seed_applied')} | "
              f"{med('first_auth')} | {med('minion_start')} | {med('first_ping')} | {ratio} | {med('first_ping', f=max)} | {med('wall', 1.0)} | "
              + (f"{statistics.median(x['rss_mib'] for x in rs if x.get('rss_mib')):.0f} MiB | " if any(x.get('rss_mib') for x in rs) else "n/a | ")
              + f"{med('qemu_cpu', 1.0)} |")
PY
