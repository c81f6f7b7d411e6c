#![no_main]
use libfuzzer_sys::fuzz_target;
use salt_proto::msgpack;

fuzz_target!(|data: &[u8]| {
    if let Ok(v) = msgpack::decode(data) {
        // What decodes re-encodes to bytes that decode to the same bytes again (compared as
        // bytes: NaN is not equal to itself).
        let bytes = msgpack::encode(&v);
        let again = msgpack::decode(&bytes).expect("re-encoded value decodes");
        assert_eq!(msgpack::encode(&again), bytes);
        let _ = msgpack::to_json(&v);
    }
    let _ = msgpack::decode_prefix(data);
});
