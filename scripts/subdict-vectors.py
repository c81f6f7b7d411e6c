#!/usr/bin/env python3
"""Prints src/jobs/vectors/subdict.json: what Salt's own `subdict_match` (the function the
master runs over its cached grains and pillar for -G/-I/-P/-J targets) answers for a set of
expressions over one grains-and-pillar-like dict. Run with a Salt venv's python:

    ~/.cache/virtseed/salt-3007.17/bin/python scripts/subdict-vectors.py > src/jobs/vectors/subdict.json
"""
import json

import salt.utils.data

DATA = {
    "id": "virtseed",
    "os": "Debian",
    "kernel": "Linux",
    "osrelease": "12",
    "num_cpus": 2,
    "mem_total": 1.5,
    "virtual": None,
    "enabled": True,
    "roles": ["web", "db", "Cache"],
    "ipv4": ["127.0.0.1", "10.0.2.15"],
    "virtseed": {"version": "0.4.0", "role": "sidecar", "providers": ["local-kvm", "kvm-via-ssh"]},
    "nested": {"a": {"b": {"c": "deep"}}, "list": [{"x": "1"}, {"y": ["z", "w"]}], "colon": "a:b"},
    "url": "qemu+ssh://hv1/system",
    "empty": {},
    "tags": [["inner", "list"], 3],
}

EXPRS = [
    "os:Debian", "os:debian", "os:Deb*", "os:Windows", "os:*", "os", "kernel:Linux",
    "osrelease:12", "osrelease:1?", "num_cpus:2", "num_cpus:2*", "mem_total:1.5",
    "virtual:None", "virtual:none", "enabled:True", "enabled:true", "enabled:1",
    "roles:web", "roles:WEB", "roles:c*", "roles:nope", "roles:0", "roles:0:web",
    "ipv4:10.0.2.15", "ipv4:10.*", "ipv4:192.*",
    "virtseed:role:sidecar", "virtseed:role:*", "virtseed:*", "virtseed:version:0.4.0",
    "virtseed:version:0.4*", "virtseed:providers:local-kvm", "virtseed:providers:kvm*",
    "virtseed:role", "virtseed:sidecar", "virtseed:nope", "virtseed:*:sidecar",
    "*:sidecar", "*:Debian", "*:*", "*:web", "*:nope",
    "nested:a:b:c:deep", "nested:a:b:c", "nested:a:b", "nested:a:*:deep", "nested:*:deep",
    "nested:list:x:1", "nested:list:y:z", "nested:list:0:x:1", "nested:list:1:y:w",
    "nested:colon:a:b", "nested:colon:a:*", "nested:colon:a",
    "url:qemu+ssh://hv1/system", "url:qemu+ssh*", "url:qemu",
    "empty:x", "empty:*", "tags:inner", "tags:3", "tags:0:inner", "tags:*inner*",
    "missing:x", "missing:*", "id:virtseed", "id:virt*", "id:v[a-z]rtseed", "id:[!v]*",
    "os:D.*", "os:^deb", "os:(deb|rh)", "roles:we.", "os:debian$", "id:.*seed",
    "virtseed:role:side.*", "nested:a:b:c:d..p", "num_cpus:[0-9]",
]
DELIMS = {"virtseed|role|sidecar": "|", "os|Debian": "|", "nested|colon|a:b": "|", "roles;web": ";"}

cases = []
for expr in EXPRS:
    cases.append((expr, ":"))
for expr, d in DELIMS.items():
    cases.append((expr, d))
out = {"data": DATA, "cases": []}
for expr, d in cases:
    row = {"expr": expr, "delimiter": d}
    row["glob"] = bool(salt.utils.data.subdict_match(DATA, expr, delimiter=d))
    row["regex"] = bool(salt.utils.data.subdict_match(DATA, expr, delimiter=d, regex_match=True))
    row["exact"] = bool(salt.utils.data.subdict_match(DATA, expr, delimiter=d, exact_match=True))
    out["cases"].append(row)
print(json.dumps(out, indent=1))
