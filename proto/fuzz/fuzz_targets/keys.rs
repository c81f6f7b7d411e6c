#![no_main]
use libfuzzer_sys::fuzz_target;
use salt_proto::keys::{pem_finger, PrivateKey, PublicKey};
use std::sync::OnceLock;

fn key() -> &'static PrivateKey {
    static K: OnceLock<PrivateKey> = OnceLock::new();
    K.get_or_init(|| PrivateKey::generate(1024).unwrap())
}

fuzz_target!(|data: &[u8]| {
    let pk = key().public_key();
    let _ = pk.x931_recover(data);
    let _ = pk.verify(Default::default(), b"m", data);
    let _ = key().oaep_decrypt(Default::default(), data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = PublicKey::from_pem(text);
        let _ = PrivateKey::from_pem(text);
        let _ = pem_finger(text);
    }
});
