#!/usr/bin/env python3
"""Prints src/jobs/vectors/target-VERSION.json: whether Salt's master (`CkMinions.check_minions`,
the code that decides which minions a job waits for) counts the minion `virtseed` in a
target, for target types and expressions operators use, with `minion_data_cache` on (the
sidecar's grains and pillar cached, or not yet) and off. Run with a Salt venv's python:

    for v in 3006.30 3007.17 3008.5; do
        ~/.cache/virtseed/salt-$v/bin/python scripts/target-vectors.py > src/jobs/vectors/target-$v.json
    done
"""
import json
import os
import tempfile

import salt.cache
import salt.config
import salt.utils.minions

GRAINS = {
    "id": "virtseed",
    "nodename": "hv1",
    "virtseed": {"version": "0.4.0", "role": "sidecar", "providers": ["local-kvm"], "profiles": ["web"]},
}
PILLAR = {"role": "infra", "dc": {"name": "fra1"}, "tags": ["a", "b"]}
NODEGROUPS = {
    "everyone": "*",
    "webs": "web*",
    "names": ["web1", "virtseed"],
    "others": ["web1", "db1"],
    "infra": "I@role:infra or G@virtseed:role:sidecar",
    "nested": "N@webs or N@infra",
    "notweb": "not N@webs",
    "listed": "L@web1,virtseed",
    "regexy": ["web[0-9]", "virt.*"],
}
CASES = [
    ("glob", "*"), ("glob", "virt*"), ("glob", "web*"), ("glob", "virtseed"),
    ("pcre", "virt.*"), ("pcre", "seed"), ("pcre", ".*seed$"),
    ("list", "web1,virtseed"), ("list", "web1"), ("list", "web1, virtseed"),
    ("grain", "virtseed:role:sidecar"), ("grain", "virtseed:*"), ("grain", "os:Debian"),
    ("grain", "kernel:Linux"), ("grain", "id:virtseed"), ("grain", "nodename:hv*"),
    ("grain_pcre", "virtseed:version:0\\..*"), ("grain_pcre", "os:.*"),
    ("pillar", "role:infra"), ("pillar", "dc:name:fra*"), ("pillar", "role:web"),
    ("pillar", "tags:a"), ("pillar_pcre", "role:inf.*"), ("pillar_exact", "role:infra"),
    ("pillar_exact", "role:infr*"),
    ("ipcidr", "10.0.0.0/8"), ("ipcidr", "127.0.0.1"), ("ipcidr", "not-an-ip"),
    ("compound", "*"), ("compound", "* and not G@os:Windows"), ("compound", "* and not G@virtseed:*"),
    ("compound", "G@virtseed:role:sidecar"), ("compound", "G@os:Debian or virt*"),
    ("compound", "web* or E@virt.*"), ("compound", "not web*"), ("compound", "not virtseed"),
    ("compound", "( web* or virt* ) and not I@role:web"), ("compound", "( web* or virt* ) and I@role:web"),
    ("compound", "L@web1,virtseed and G@virtseed:role:sidecar"), ("compound", "S@10.0.0.0/8 or web*"),
    ("compound", "not S@10.0.0.0/8"), ("compound", "I@dc:name:fra1 and J@role:^inf"),
    ("compound", "P@virtseed:role:side.* and not G@kernel:Windows"),
    ("compound", "G|@virtseed|role|sidecar"), ("compound", "and virtseed"), ("compound", "virtseed and"),
    ("compound", "( virtseed"), ("compound", "virtseed )"), ("compound", "virt* web*"),
    ("compound", "not not virtseed"), ("compound", "virtseed not web*"), ("compound", "( not web* )"),
    ("compound", "not ( web* or db* )"), ("compound", "not ( virt* ) or web*"),
    ("compound", "R@%cluster"), ("compound", "N@everyone"), ("compound", "N@webs"),
    ("compound", "N@infra and not G@os:Windows"), ("compound", "N@nested"), ("compound", "N@notweb"),
    ("compound", "N@names"), ("compound", "N@listed"), ("compound", "N@nope or virtseed"),
    ("compound", ["*", "and", "not", "G@os:Windows"]), ("compound", ["(", "web*", ")"]),
    ("nodegroup", "everyone"), ("nodegroup", "webs"), ("nodegroup", "names"), ("nodegroup", "others"),
    ("nodegroup", "infra"), ("nodegroup", "nested"), ("nodegroup", "notweb"), ("nodegroup", "regexy"),
    ("range", "%cluster"), ("data", "x"), ("compound", "T@x"), ("compound", "not M@x"),
]


def check(cache_on, cached):
    d = tempfile.mkdtemp()
    opts = salt.config.master_config(os.devnull)
    opts.update(
        pki_dir=os.path.join(d, "pki"), cachedir=os.path.join(d, "cache"),
        minion_data_cache=cache_on, nodegroups=NODEGROUPS, key_cache="",
    )
    for sub in ("minions", "minions_pre", "minions_rejected", "minions_denied"):
        os.makedirs(os.path.join(opts["pki_dir"], sub))
    for mid in ("virtseed", "web1"):
        with open(os.path.join(opts["pki_dir"], "minions", mid), "w") as f:
            f.write("key")
    if cached:
        cache = salt.cache.factory(opts)
        web1 = {"grains": {"id": "web1", "os": "Debian", "kernel": "Linux", "ipv4": ["10.1.2.3"]}, "pillar": {"role": "web"}}
        ours = {"grains": GRAINS, "pillar": PILLAR}
        for mid, data in (("web1", web1), ("virtseed", ours)):
            if hasattr(cache, "store") and salt.version.__version_info__ >= (3008,):
                cache.store("grains", mid, data["grains"])
                cache.store("pillar", mid, data["pillar"])
            else:
                cache.store(f"minions/{mid}", "data", data)
    ck = salt.utils.minions.CkMinions(opts)
    return [
        "virtseed" in ck.check_minions(expr, tgt_type).get("minions", [])
        for tgt_type, expr in CASES
    ]


import salt.version  # noqa: E402

rows = {"cache_cached": check(True, True), "cache_uncached": check(True, False), "no_cache": check(False, False)}
out = {
    "grains": GRAINS, "pillar": PILLAR, "nodegroups": NODEGROUPS,
    "cases": [
        {"tgt_type": t, "tgt": e, **{k: v[i] for k, v in rows.items()}}
        for i, (t, e) in enumerate(CASES)
    ],
}
print(json.dumps(out, indent=1))
