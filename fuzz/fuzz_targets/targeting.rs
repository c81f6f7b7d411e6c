//! A publication's target, as any client of the master can write it: whatever the type and
//! the bytes, deciding whether the master counts the sidecar in ends, without a panic, for
//! every target type, with the cache on and off and on each Salt line.
#![no_main]
use libfuzzer_sys::fuzz_target;
use serde_json::json;
use virtseed::jobs::target::Seen;

const TYPES: [&str; 12] = [
    "glob",
    "pcre",
    "list",
    "grain",
    "grain_pcre",
    "pillar",
    "pillar_pcre",
    "pillar_exact",
    "ipcidr",
    "compound",
    "compound_pillar_exact",
    "nodegroup",
];

fuzz_target!(|data: &[u8]| {
    // A flags byte, a target type byte, the target.
    let [first, kind, rest @ ..] = data else {
        return;
    };
    let first = *first;
    let tgt_type = TYPES[usize::from(*kind) % TYPES.len()];
    // The target as text, or (flag 0x80) as msgpack (a list target).
    let tgt = if first & 0x80 != 0 {
        match salt_proto::msgpack::decode(rest) {
            Ok(v) => v,
            Err(_) => return,
        }
    } else {
        salt_proto::Value::from(String::from_utf8_lossy(rest).into_owned())
    };
    let grains = json!({"id": "virtseed", "virtseed": {"role": "sidecar", "providers": ["a"]}});
    let pillar = json!({"role": "infra", "l": [{"x": "1"}, ["y"]], "n": null});
    let groups = json!({"all": "*", "g": "N@h or virt*", "h": "N@g and G@a:b", "l": ["a", "b("]});
    let groups = groups.as_object().unwrap();
    // The master's settings from the byte's other bits: cache on/off, our data cached or
    // not, the Salt line, the delimiter.
    let seen = Seen {
        id: "virtseed",
        cache: first & 0x10 != 0,
        data: (first & 0x20 != 0).then_some((&grains, &pillar)),
        nodegroups: groups,
        salt_3008: first & 0x40 != 0,
    };
    let _ = seen.expects(&tgt, tgt_type, if first & 0x08 != 0 { "|" } else { ":" });
});
