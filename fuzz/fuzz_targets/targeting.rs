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
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let tgt_type = TYPES[usize::from(first) % TYPES.len()];
    // The target as text, or (second half of the byte) as msgpack (a list target).
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
    for (cache, cached, salt_3008) in [(true, true, false), (true, false, true), (false, false, false), (false, false, true)] {
        let seen = Seen {
            id: "virtseed",
            cache,
            data: cached.then_some((&grains, &pillar)),
            nodegroups: groups,
            salt_3008,
        };
        let _ = seen.expects(&tgt, tgt_type, ":");
        let _ = seen.expects(&tgt, tgt_type, "|");
    }
});
