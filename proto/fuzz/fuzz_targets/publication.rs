#![no_main]
use libfuzzer_sys::fuzz_target;
use salt_proto::crypticle::{Crypticle, SerialGuard};
use salt_proto::msgpack;
use salt_proto::publish::Opener;

const KEY: &[u8] = b"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJygpKissLS4vMDEyMzQ1Njc=";

fuzz_target!(|data: &[u8]| {
    let aes = Crypticle::from_key_string(KEY).unwrap();
    let opener = Opener { aes: &aes, require_signature_from: None };
    let mut g = SerialGuard::default();
    // As raw frames (1 and 2 of them).
    let (a, b) = data.split_at(data.len() / 2);
    let _ = opener.open(&[data], &mut g);
    let _ = opener.open(&[a, b], &mut g);
    // As a well-encrypted load of fuzzed contents, to reach the load parser.
    if let Ok(load) = msgpack::decode(data) {
        let frame = msgpack::encode(&msgpack::map([
            ("enc", msgpack::text("aes")),
            ("load", msgpack::bin(aes.dumps(&load, None))),
        ]));
        let _ = opener.open(&[&frame], &mut SerialGuard::default());
    }
});
