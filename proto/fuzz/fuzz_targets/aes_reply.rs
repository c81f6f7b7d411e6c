#![no_main]
use libfuzzer_sys::fuzz_target;
use salt_proto::crypticle::Crypticle;
use salt_proto::keys::{EncAlgo, SigAlgo};
use salt_proto::request::{decode_clear_reply, AesPeer};

const KEY: &[u8] = b"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJygpKissLS4vMDEyMzQ1Njc=";

fuzz_target!(|data: &[u8]| {
    let session = Crypticle::from_key_string(KEY).unwrap();
    let peer = AesPeer {
        id: "fuzz",
        tok: b"tok",
        session: &session,
        enc_algo: EncAlgo::OaepSha1,
        sig_algo: SigAlgo::Pkcs1v15Sha1,
    };
    let _ = peer.decode_reply(data, "0123456789abcdef0123456789abcdef");
    let _ = decode_clear_reply(data);
});
