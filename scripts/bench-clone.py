"""Clone latency: virtseed against salt-cloud's own libvirt driver (Salt 3007), on the same
base domain, measured the same way for both: from the moment the command is launched to
libvirt's STARTED lifecycle event of each clone (a libvirt event listener records them).

Run by scripts/bench-clone.sh with the Salt 3007 venv's python (salt-cloud, libvirt-python).
"""
import json, os, statistics, subprocess, sys, threading, time
import libvirt

URI = "qemu:///system"
d, virtseed, salt_cloud = sys.argv[1], sys.argv[2], sys.argv[3]
sizes = [int(x) for x in sys.argv[4].split(",")]
rounds = int(sys.argv[5])
pool = os.environ["BENCH_POOL"]

libvirt.virEventRegisterDefaultImpl()
libvirt.registerErrorHandler(lambda *a: None, None)
conn = libvirt.open(URI)
started = {}
lock = threading.Lock()

def on_event(c, dom, event, detail, opaque):
    if event == libvirt.VIR_DOMAIN_EVENT_STARTED:
        with lock:
            started.setdefault(dom.name(), time.time())

conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, on_event, None)
def loop():
    while True:
        libvirt.virEventRunDefaultImpl()
threading.Thread(target=loop, daemon=True).start()

def cleanup(prefix):
    def drop(dom):
        try:
            dom.destroy()
        except libvirt.libvirtError:
            pass
        try:
            dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
        except libvirt.libvirtError:
            pass
    # Stopping a domain takes libvirt ~1.7 s here: do them side by side.
    ts = [threading.Thread(target=drop, args=(d,)) for d in conn.listAllDomains() if d.name().startswith(prefix)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    p = conn.storagePoolLookupByName(pool)
    p.refresh()
    for v in p.listAllVolumes():
        if not v.name().startswith("base"):
            v.delete()

def floor_start(names):
    """The floor: overlays made and domains defined beforehand (not timed), then every domain
    started at once from threads with their own connections: what libvirt and QEMU alone cost."""
    base = conn.lookupByName(pool + "base")
    p = conn.storagePoolLookupByName(pool)
    xml = base.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    for nm in names:
        v = p.createXML(f"<volume><name>{nm}.qcow2</name><capacity unit='MiB'>64</capacity><target><format type='qcow2'/></target>"
                        f"<backingStore><path>{d}/pool/base.qcow2</path><format type='qcow2'/></backingStore></volume>", 0)
        x = xml.replace(f"<name>{pool}base</name>", f"<name>{nm}</name>")
        x = x[:x.index("<uuid>")] + x[x.index("</uuid>") + 7:]
        x = x.replace(f"{d}/pool/base.qcow2", v.path()).replace("52:54:00:00:00:01", "52:54:00:%02x:%02x:%02x" % tuple(os.urandom(3)))
        conn.defineXML(x)
    def start(nm):
        c = libvirt.open(URI)
        c.lookupByName(nm).create()
        c.close()
    threads = [threading.Thread(target=start, args=(nm,)) for nm in names]
    t0 = time.time()
    for t in threads:
        t.start()
    return t0, threads

def run(tool, n, r):
    prefix = f"{ {'floor': 'fl', 'virtseed': 'vs', 'salt-cloud': 'sc', 'virtseed-run': 'vr'}[tool] }{n}r{r}x"
    names = [f"{prefix}{i}" for i in range(n)]
    if tool == "floor":
        t0, threads = floor_start(names)
        for t in threads:
            t.join()
        deadline = time.time() + 60
        while time.time() < deadline:
            with lock:
                got = [started[x] for x in names if x in started]
            if len(got) == n:
                break
            time.sleep(0.005)
        cleanup(prefix)
        lat = sorted(t - t0 for t in got)
        return {"first": lat[0], "median": statistics.median(lat), "last": lat[-1]} if len(lat) == n else None
    via = os.environ.get("BENCH_VIA", "")
    via_run = via == "salt-run"
    runner = os.path.join(d, "extmods", "runners", "cloud.py")
    # Salt's own libvirt driver only while virtseed's (same file name, loaded first) is aside.
    driver = os.path.join(d, "extmods", "clouds", "libvirt.py")
    ours = tool in ("virtseed", "virtseed-run")
    if ours and os.path.exists(driver + ".off"):
        os.rename(driver + ".off", driver)
    if not ours and os.path.exists(driver):
        os.rename(driver, driver + ".off")
    if via == "salt-cloud" and tool != "salt-cloud":
        # `salt-cloud -p` through virtseed's driver, or `salt-run cloud.profile` through its
        # runner: what the salt-cloud CLI path adds.
        if tool == "virtseed":
            cmd = [salt_cloud, "-c", d, "-l", "quiet", "-y", "-p", "bench", *names]
            if n > 1:
                cmd.insert(1, "-P")
        else:
            salt_run = os.path.join(os.path.dirname(salt_cloud), "salt-run")
            cmd = [salt_run, "-c", d, "-l", "quiet", "cloud.profile", "bench", ",".join(names), "wait_for_minion=False"]
    elif via_run:
        # `salt-run cloud.profile`: virtseed's runner (through the sidecar) or, with it moved
        # aside, Salt's own cloud runner (salt-cloud's libvirt driver, one name after another).
        salt_run = os.path.join(os.path.dirname(salt_cloud), "salt-run")
        if tool == "virtseed":
            if os.path.exists(runner + ".off"):
                os.rename(runner + ".off", runner)
            cmd = [salt_run, "-c", d, "-l", "quiet", "cloud.profile", "bench", ",".join(names), "wait_for_minion=False"]
        else:
            if os.path.exists(runner):
                os.rename(runner, runner + ".off")
            cmd = [salt_run, "-c", d, "-l", "quiet", "cloud.profile", "bench", ",".join(names)]
    elif tool == "virtseed":
        cmd = [virtseed, "-c", d, "--log", "warn", "profile", "bench", *names]
    else:
        cmd = [salt_cloud, "-c", d, "-l", "quiet", "-y", "-p", "bench", *names]
        if n > 1:
            cmd.insert(1, "-P")
    t0 = time.time()
    log = open(os.path.join(d, f"{prefix}.log"), "wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    deadline = t0 + 600
    while time.time() < deadline:
        with lock:
            got = [started[x] for x in names if x in started]
        if len(got) == n:
            break
        if proc.poll() is not None and len(got) < n:
            time.sleep(1)  # events may trail the exit
            with lock:
                got = [started[x] for x in names if x in started]
            if len(got) < n:
                break
        time.sleep(0.005)
    lat = sorted(t - t0 for t in got)
    try:
        proc.wait(timeout=300)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    wall = time.time() - t0
    cleanup(prefix)
    if len(lat) < n:
        print(f"  {tool}: {len(lat)} of {n} started; its output:", file=sys.stderr)
        sys.stderr.write(open(os.path.join(d, f"{prefix}.log"), errors="replace").read()[-3000:])
        return None
    return {"first": lat[0], "median": statistics.median(lat), "last": lat[-1], "wall": wall}

results = {}
for n in sizes:
    for r in range(rounds):
        # Alternate which tool goes first in each round.
        order = ["virtseed", "salt-cloud"] if r % 2 == 0 else ["salt-cloud", "virtseed"]
        order = ["floor"] + order + (["virtseed-run"] if os.environ.get("BENCH_VIA") == "salt-cloud" else [])
        order = [t for t in order if t in os.environ.get("BENCH_TOOLS", "floor,virtseed,salt-cloud,virtseed-run").split(",")]
        for tool in order:
            res = run(tool, n, r)
            results.setdefault(f"{tool} n={n}", []).append(res)
            print(f"  {tool:10} n={n:<3} round {r}: {res and {k: round(v, 3) for k, v in res.items()}}", flush=True)

print()
print("| clones | measure | libvirt floor | virtseed | salt-cloud libvirt | salt-cloud / virtseed |")
print("|---|---|---|---|---|---|")
for n in sizes:
    v = [x for x in results.get(f"virtseed n={n}", []) if x]
    s = [x for x in results.get(f"salt-cloud n={n}", []) if x]
    f = [x for x in results.get(f"floor n={n}", []) if x]
    for m in (["median", "last"] if n > 1 else ["last"]) + (["wall"] if os.environ.get("BENCH_VIA") == "salt-run" else []):
        med = lambda xs: statistics.median([x[m] for x in xs if m in x]) if any(m in x for x in xs) else None
        fm, vm, sm = med(f), med(v), med(s)
        fmt = lambda x: f"{x:.3f} s" if x is not None else "n/a"
        label = {"last": "all running", "median": "median clone running", "wall": "salt-run returned"}[m]
        ratio = f"{sm / vm:.1f}x" if vm and sm else ""
        print(f"| {n} | {label} | {fmt(fm)} | {fmt(vm)} | {fmt(sm)} | {ratio} |")
if os.environ.get("BENCH_VIA") == "salt-cloud":
    print()
    print("| clones | measure | salt-run cloud.profile (virtseed) | salt-cloud -p (virtseed) | salt-cloud -p / salt-run |")
    print("|---|---|---|---|---|")
    for n in sizes:
        v = [x for x in results.get(f"virtseed n={n}", []) if x]
        w = [x for x in results.get(f"virtseed-run n={n}", []) if x]
        for m in (["median", "last"] if n > 1 else ["last"]) + ["wall"]:
            med = lambda xs: statistics.median([x[m] for x in xs]) if xs else None
            vm, wm = med(v), med(w)
            fmt = lambda x: f"{x:.3f} s" if x is not None else "n/a"
            label = {"last": "all running", "median": "median clone running", "wall": "command returned"}[m]
            print(f"| {n} | {label} | {fmt(wm)} | {fmt(vm)} | {f'{vm / wm:.2f}x' if vm and wm else ''} |")
