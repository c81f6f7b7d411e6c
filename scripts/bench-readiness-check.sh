#!/usr/bin/env bash
# What the proven readiness check costs beside a plain test.ping, on one real guest (TCG
# here): a golden clone made with `virtseed profile` (key minted and pre-accepted), then, once
# its minion answers, N rounds of the two jobs one after the other, each timed as a whole
# `salt` CLI call:
#   ping    `salt NAME test.ping`
#   proof   `salt NAME slsutil.renderer string='{{ salt["hashutil.hmac_compute"](NONCE, ...) }}'`,
#           the check virtseed's readiness publishes (src/cloud/ready.rs), a fresh nonce
#           each time; the answer is checked against the minted key.
# Prints each median and the median of the per-round ratios proof/ping.
#
#   scripts/bench-readiness-check.sh [N]        (default 10; SALT_VERSION=3007.17)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd); root=$(dirname "$here")
N=${1:-10}
export SALT_VERSION=${SALT_VERSION:-3007.17}
CACHE=${VIRTSEED_CACHE:-$HOME/.cache/virtseed}
venv=$CACHE/salt-$SALT_VERSION
SALT_VERSIONS=$SALT_VERSION "$here/setup.sh" >/dev/null
(cd "$root" && cargo build --quiet)
vs=$root/target/debug/virtseed
"$here/build-golden-image.sh" >/dev/null
d=$(mktemp -d /tmp/virtseed-brc.XXXXXX); chmod 755 "$d"
name=brc$(basename "$d" | cut -d. -f2 | tr 'A-Z' 'a-z')
cleanup() {
    "$vs" -c "$d" --log warn destroy "$name" >/dev/null 2>&1 || true
    "$here/dev-master.sh" stop "$d" >/dev/null 2>&1 || true
    rm -rf "$d"
}
trap cleanup EXIT
"$here/dev-master.sh" start "$d" >/dev/null
printf "kvm:\n  driver: libvirt\n  url: qemu:///system\n" > "$d/cloud.providers"
printf "smbios:\n  provider: kvm\n  base_domain: virtseed-golden\n  minion: {master: 10.0.2.2}\n  seed: smbios\n" > "$d/cloud.profiles"
printf "id: virtseed\npki_dir: %s/pki/virtseed\nsalt_version: '%s'\n" "$d" "$SALT_VERSION" > "$d/virtseed"
"$vs" -c "$d" --log warn profile smbios "$name" >/dev/null
salt=("$venv/bin/salt" -c "$d" --out json -t 120)
for _ in $(seq 120); do
    "${salt[@]}" "$name" test.ping 2>/dev/null | grep -q true && break
    sleep 5
done
# The minted key, as the guest holds it (the seed's credential), for checking each answer.
pem=$(virsh -c qemu:///system dumpxml "$name" | python3 -c '
import base64, re, sys
for m in re.finditer(r"io.systemd.credential.binary:virtseed.minion.pem=([A-Za-z0-9+/=]+)", sys.stdin.read()):
    print(base64.b64decode(m.group(1)).decode().strip())')
python3 - "$N" "$name" "$pem" "${salt[@]}" <<'PY'
import hashlib, hmac, json, os, statistics, subprocess, sys, time
n, name, pem, salt = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4:]
def timed(args):
    t = time.monotonic()
    out = subprocess.run(salt + [name] + args, capture_output=True, text=True)
    return time.monotonic() - t, json.loads(out.stdout or "{}").get(name)
ping, proof, ratio = [], [], []
for _ in range(n):
    a, ok = timed(["test.ping"])
    assert ok is True, ok
    nonce = os.urandom(16).hex()
    tmpl = ('{{ salt["hashutil.hmac_compute"]("%s", salt["file.read"](salt["config.get"]("pki_dir")'
            ' ~ "/minion.pem") | trim) }}' % nonce)
    b, got = timed(["slsutil.renderer", f"string={tmpl}", "default_renderer=jinja"])
    want = hmac.new(pem.encode(), nonce.encode(), hashlib.sha256).hexdigest()
    assert isinstance(got, str) and got.strip() == want, got
    ping.append(a); proof.append(b); ratio.append(b / a)
med = statistics.median
print(f"{n} rounds on one TCG guest (salt CLI wall time, median):")
print(f"  ping   test.ping                      {med(ping):.2f} s  (min {min(ping):.2f}, max {max(ping):.2f})")
print(f"  proof  the readiness check (HMAC)     {med(proof):.2f} s  (min {min(proof):.2f}, max {max(proof):.2f})")
print(f"  proof/ping, median of the rounds' ratios: {med(ratio):.2f}")
PY
