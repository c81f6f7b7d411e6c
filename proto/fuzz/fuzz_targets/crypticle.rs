#![no_main]
use libfuzzer_sys::fuzz_target;
use salt_proto::crypticle::{Crypticle, SerialGuard};

const KEY: &[u8] = b"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJygpKissLS4vMDEyMzQ1Njc=";

fuzz_target!(|data: &[u8]| {
    let c = Crypticle::from_key_string(KEY).unwrap();
    let _ = c.decrypt(data);
    let _ = c.loads(data, Some("0123456789abcdef0123456789abcdef"));
    if let Ok(mut v) = c.loads(data, None) {
        let _ = SerialGuard::default().check(&mut v);
    }
    // Valid ciphertext around fuzzed plaintext must round-trip.
    assert_eq!(c.decrypt(&c.encrypt(data)).unwrap(), data);
    let _ = Crypticle::from_key_string(data);
});
