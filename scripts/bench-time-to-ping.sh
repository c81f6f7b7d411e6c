#!/usr/bin/env bash
# Time to ping on real guests: from `salt-run cloud.profile` to the new minion's first
# successful test.ping, per seed channel, median of N runs (default 3), with the breakdown the
# sidecar records (domain started, first auth, minion start event, first ping) and cloud-init's
# own "finished ... Up X seconds" from the clone's serial console.
#
#   scripts/bench-time-to-ping.sh [N]      (SALT_VERSION=3007.17)
#
# Not yet measured here: the classic pending-then-reactor flow, and 5/10 clones in one call.
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
d=$(mktemp -d /tmp/virtseed-bttp.XXXXXX); chmod 755 "$d"
cleanup() {
    [ -n "${vs_pid:-}" ] && kill "$vs_pid" 2>/dev/null || true
    "$here/dev-master.sh" stop "$d" >/dev/null 2>&1 || true
    rm -rf "$d"
}
trap cleanup EXIT
"$here/dev-master.sh" start "$d" >/dev/null
printf "kvm:\n  driver: libvirt\n  url: qemu:///system\n" > "$d/cloud.providers"
printf "cloud-init:\n  provider: kvm\n  base_domain: virtseed-golden\n  minion: {master: 10.0.2.2}\n  minion_timeout: 400\nsmbios:\n  extends: cloud-init\n  seed: smbios\n" > "$d/cloud.profiles"
printf "id: virtseed\npki_dir: %s/pki/virtseed\nsalt_version: '%s'\n" "$d" "$SALT_VERSION" > "$d/virtseed"
"$vs" -c "$d" --log warn run 2>"$d/log/virtseed.log" & vs_pid=$!
sleep 2
"$vs" -c "$d" install-runner >/dev/null
tag=$(basename "$d" | cut -d. -f2 | tr 'A-Z' 'a-z')
for i in $(seq "$N"); do
    for seed in smbios cloud-init; do
        name="ttp${tag}${i}${seed%%-*}"
        t0=$(date +%s.%N)
        "$venv/bin/salt-run" -c "$d" --out json cloud.profile "$seed" "$name" > "$d/$name.json" 2>/dev/null || true
        t1=$(date +%s.%N)
        ping=$("$venv/bin/salt" -c "$d" -t 30 --out json "$name" test.ping 2>/dev/null | tr -d ' \n')
        ci=$(sed -n 's/.*Cloud-init v\. .* finished at .*Up \([0-9.]*\) seconds.*/\1/p' "/var/log/libvirt/qemu/$name-console.log" 2>/dev/null | tail -1)
        "$venv/bin/python" - "$d/$name.json" "$seed" "$t0" "$t1" "${ci:-}" "$ping" >> "$d/results" <<'PY'
import json, sys
path, seed, t0, t1, ci, ping = sys.argv[1:7]
text = open(path).read()
doc = None
for i in [0] + [k + 1 for k in range(len(text)) if text.startswith("\n{", k)]:
    try:
        doc = json.loads(text[i:])
    except ValueError:
        continue
v = next(iter(x for k, x in (doc or {}).items() if k != "retcode"), {})
t = v.get("timings_ms", {})
print(json.dumps({"seed": seed, "wall": float(t1) - float(t0), "started": t.get("started"),
                  "first_auth": t.get("first_auth"), "minion_start": t.get("minion_start"),
                  "first_ping": t.get("first_ping"), "cloud_init_done": float(ci) if ci else None,
                  "ok": v.get("minion_up") is True and "true" in ping}))
PY
        "$vs" -c "$d" destroy "$name" >/dev/null 2>&1 || true
        tail -1 "$d/results"
    done
done
"$venv/bin/python" - "$d/results" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print("\n| seed | runs ok | domain started | cloud-init done (guest uptime) | first auth | minion start | first ping | salt-run wall |")
print("|---|---|---|---|---|---|---|---|")
for seed in ["smbios", "cloud-init"]:
    rs = [r for r in rows if r["seed"] == seed]
    def med(k, scale=1000.0):
        xs = [r[k] / scale for r in rs if r.get(k) is not None]
        return f"{statistics.median(xs):.1f} s" if xs else "n/a"
    print(f"| {seed} | {sum(r['ok'] for r in rs)}/{len(rs)} | {med('started')} | {med('cloud_init_done', 1.0)} | "
          f"{med('first_auth')} | {med('minion_start')} | {med('first_ping')} | {med('wall', 1.0)} |")
PY
