#!/usr/bin/env bash
# test.ping round trip and resident memory: the virtseed sidecar against a real Python
# salt-minion on the same private master, measured alternately in one run.
#
#   scripts/bench-ping.sh [N]          (SALT_VERSION=3008.5 by default, N=40 pings each)
#
# The round trip is timed inside one Python process with Salt's LocalClient (publish until
# the return is gathered), so CLI start-up does not blur it; the CLI wall time is shown too.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd); root=$(dirname "$here")
N=${1:-40}
export SALT_VERSION=${SALT_VERSION:-3008.5}
CACHE=${VIRTSEED_CACHE:-$HOME/.cache/virtseed}
venv=$CACHE/salt-$SALT_VERSION
SALT_VERSIONS=$SALT_VERSION "$here/setup.sh" --salt-only >/dev/null
(cd "$root" && cargo build --release --quiet)
d=$(mktemp -d /tmp/virtseed-bench.XXXXXX)
cleanup() {
    [ -n "${vs_pid:-}" ] && kill "$vs_pid" 2>/dev/null || true
    pkill -f "salt-minion -c $d/minion" 2>/dev/null || true
    "$here/dev-master.sh" stop "$d" >/dev/null 2>&1 || true
    rm -rf "$d"
}
trap cleanup EXIT
"$here/dev-master.sh" start "$d" >/dev/null
ret=$(awk '$1=="ret_port:"{print $2}' "$d/master"); pub=$(awk '$1=="publish_port:"{print $2}' "$d/master")

printf "id: virtseed\npki_dir: %s/pki/virtseed\nsalt_version: '%s'\n" "$d" "$SALT_VERSION" > "$d/virtseed"
"$root/target/release/virtseed" -c "$d" --log warn run 2>"$d/log/virtseed.log" & vs_pid=$!

mkdir -p "$d/minion"
cat > "$d/minion/minion" <<CONF
id: pyminion
master: 127.0.0.1
master_port: $ret
publish_port: $pub
pki_dir: $d/minion/pki
cachedir: $d/minion/cache
sock_dir: $d/minion/sock
log_file: $d/minion/log
pidfile: $d/minion/pid
user: $(id -un)
multiprocessing: false
CONF
"$venv/bin/salt-minion" -c "$d/minion" -d
for _ in $(seq 100); do [ -f "$d/pki/master/minions_pre/pyminion" ] && break; sleep 0.2; done
"$venv/bin/salt-key" -c "$d" -y -a pyminion >/dev/null
# Wait until both answer.
for id in virtseed pyminion; do
    for _ in $(seq 60); do
        "$venv/bin/salt" -c "$d" -t 3 --out txt "$id" test.ping 2>/dev/null | grep -q True && break
        sleep 1
    done
done

MASTER_DIR=$d N=$N "$venv/bin/python" - <<'PY'
import os, statistics, subprocess, time, salt.client, salt.config
d = os.environ["MASTER_DIR"]; n = int(os.environ["N"])
opts = salt.config.master_config(os.path.join(d, "master"))
import salt.version
lc = salt.client.LocalClient(mopts=opts)
times = {"virtseed": [], "pyminion": []}
for i in range(n):
    for mid in ("virtseed", "pyminion") if i % 2 else ("pyminion", "virtseed"):
        t = time.perf_counter()
        r = lc.cmd(mid, "test.ping", timeout=10)
        times[mid].append(time.perf_counter() - t)
        assert r == {mid: True}, r
cli = {}
for mid in ("virtseed", "pyminion"):
    ts = []
    for _ in range(5):
        t = time.perf_counter()
        subprocess.run(["salt", "-c", d, "-t", "10", "--out", "txt", mid, "test.ping"], check=True,
                       capture_output=True, env=dict(os.environ, PATH=os.path.dirname(__import__("sys").executable) + ":" + os.environ["PATH"]))
        ts.append(time.perf_counter() - t)
    cli[mid] = statistics.median(ts)
def rss_kb(pattern):
    out = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.split()
    total = 0
    for pid in out:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except FileNotFoundError:
            pass
    return total, len(out)
vs_rss, vs_n = rss_kb(f"virtseed -c {d} ")
py_rss, py_n = rss_kb(f"salt-minion -c {d}/minion")
mv = statistics.median(times["virtseed"]) * 1e3
mp = statistics.median(times["pyminion"]) * 1e3
print(f"salt {salt.version.__version__}, {n} pings each, alternating")
print(f"{'':24}{'virtseed':>12}{'salt-minion':>14}{'ratio':>8}")
print(f"{'ping p50 (LocalClient)':24}{mv:>10.1f}ms{mp:>12.1f}ms{mv/mp:>8.2f}")
print(f"{'ping p90 (LocalClient)':24}{statistics.quantiles(times['virtseed'], n=10)[8]*1e3:>10.1f}ms{statistics.quantiles(times['pyminion'], n=10)[8]*1e3:>12.1f}ms")
print(f"{'salt CLI wall, median':24}{cli['virtseed']*1e3:>10.0f}ms{cli['pyminion']*1e3:>12.0f}ms{cli['virtseed']/cli['pyminion']:>8.2f}")
print(f"{'resident memory':24}{vs_rss/1024:>10.1f}MB{py_rss/1024:>12.1f}MB{vs_rss/py_rss:>8.2f}   ({vs_n} vs {py_n} processes)")
PY
