#![no_main]
use libfuzzer_sys::fuzz_target;
use salt_proto::auth::SignIn;
use salt_proto::keys::{EncAlgo, PrivateKey, SigAlgo};
use std::sync::OnceLock;

fn key() -> &'static PrivateKey {
    static K: OnceLock<PrivateKey> = OnceLock::new();
    K.get_or_init(|| PrivateKey::generate(1024).unwrap())
}

fuzz_target!(|data: &[u8]| {
    let k = key();
    for master in [None, Some(k.public_key())] {
        let si = SignIn {
            id: "fuzz",
            key: k,
            nonce: "0123456789abcdef0123456789abcdef",
            enc_algo: EncAlgo::OaepSha1,
            sig_algo: SigAlgo::Pkcs1v15Sha1,
            master,
            token: master.map(|_| &b"token"[..]),
        };
        let _ = si.decode_reply(data);
    }
});
