//! Test vectors produced by real Salt 3006.30, 3007.17 and 3008.5 (`scripts/gen-vectors.sh`):
//! byte-for-byte where the output is deterministic, decode-and-check where Salt's is random.

use salt_proto::auth::{AuthReply, SignIn};
use salt_proto::crypticle::{Crypticle, SerialGuard};
use salt_proto::event::EventStream;
use salt_proto::keys::{EncAlgo, PrivateKey, PublicKey, SigAlgo};
use salt_proto::msgpack;
use salt_proto::publish::Opener;
use salt_proto::version::SaltVersion;
use salt_proto::Error;
use serde_json::Value as J;

const VERSIONS: [&str; 3] = ["3006.30", "3007.17", "3008.5"];

fn load(kind: &str, ver: &str) -> J {
    let path = format!(
        "{}/tests/vectors/{kind}-salt-{ver}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap()
}

fn hexf(v: &J, field: &str) -> Vec<u8> {
    hex::decode(
        v[field]
            .as_str()
            .unwrap_or_else(|| panic!("{field} missing")),
    )
    .unwrap()
}

fn s<'a>(v: &'a J, field: &str) -> &'a str {
    v[field]
        .as_str()
        .unwrap_or_else(|| panic!("{field} missing"))
}

#[test]
fn crypticle_is_byte_exact() {
    for ver in VERSIONS {
        let v = load("crypticle", ver);
        let c = Crypticle::from_key_string(s(&v, "key_string").as_bytes()).unwrap();
        for case in v["cases"].as_array().unwrap() {
            let packed = hexf(case, "msgpack");
            let obj = msgpack::decode(&packed).unwrap();
            assert_eq!(
                msgpack::encode(&obj),
                packed,
                "{ver}: our msgpack differs from Salt's"
            );
            let iv: [u8; 16] = hexf(case, "iv").try_into().unwrap();
            let nonce = case["nonce"].as_str();
            let out = hexf(case, "out");
            assert_eq!(
                c.dumps_with_iv(&obj, nonce, &iv),
                out,
                "{ver}: dumps differs"
            );
            assert_eq!(c.loads(&out, nonce).unwrap(), obj, "{ver}: loads differs");
        }
        let a = &v["aes256"];
        let c256 = Crypticle::from_key_string(s(a, "key_string").as_bytes()).unwrap();
        let back = c256.loads(&hexf(a, "out"), None).unwrap();
        assert_eq!(msgpack::encode(&back), hexf(a, "msgpack"), "{ver}: AES-256");
    }
}

#[test]
fn rsa_matches_salt() {
    for ver in VERSIONS {
        let v = load("rsa", ver);
        let key = PrivateKey::from_pem(s(&v, "private_pem")).unwrap();
        assert_eq!(
            &*key.to_pem(),
            s(&v, "private_pem"),
            "{ver}: private PEM text"
        );
        assert_eq!(
            key.public_key().pem(),
            s(&v, "public_pem"),
            "{ver}: public PEM text"
        );
        assert_eq!(
            key.public_key().clean(),
            s(&v, "clean_key"),
            "{ver}: clean_key"
        );
        assert_eq!(
            key.x931_sign(b"salt").unwrap(),
            hexf(&v, "x931_salt"),
            "{ver}: X9.31 tok"
        );
        let msg = hexf(&v, "message");
        assert_eq!(
            key.sign(SigAlgo::Pkcs1v15Sha1, &msg),
            hexf(&v, "pkcs1_sha1"),
            "{ver}"
        );
        assert_eq!(
            key.sign(SigAlgo::Pkcs1v15Sha224, &msg),
            hexf(&v, "pkcs1_sha224"),
            "{ver}"
        );
        let plain = hexf(&v, "oaep_plain");
        assert_eq!(
            &key.oaep_decrypt(EncAlgo::OaepSha1, &hexf(&v, "oaep_sha1"))
                .unwrap()[..],
            &plain[..]
        );
        assert_eq!(
            &key.oaep_decrypt(EncAlgo::OaepSha224, &hexf(&v, "oaep_sha224"))
                .unwrap()[..],
            &plain[..]
        );
        assert!(key
            .oaep_decrypt(EncAlgo::OaepSha224, &hexf(&v, "oaep_sha1"))
            .is_err());
        assert_eq!(
            key.public_key().fingerprint(),
            s(&v, "pem_finger"),
            "{ver}: pem_finger(path)"
        );
        // pem_finger(key=...) hashes the body lines up to 3007 and the whole text in 3008.
        let by_key = if ver.starts_with("3008") {
            salt_proto::keys::pem_finger_whole(key.public_key().pem())
        } else {
            key.public_key().fingerprint()
        };
        assert_eq!(by_key, s(&v, "pem_finger_key"), "{ver}: pem_finger(key)");
        // The Salt-made signature verifies with our code, and ours with the same bytes.
        key.public_key()
            .x931_verify(b"salt", &hexf(&v, "x931_salt"))
            .unwrap();
    }
}

fn sign_in<'a>(
    key: &'a PrivateKey,
    case: &'a J,
    master: Option<&'a PublicKey>,
    token: Option<&'a [u8]>,
) -> SignIn<'a> {
    SignIn {
        id: s(case, "id"),
        key,
        nonce: s(case, "nonce"),
        enc_algo: EncAlgo::OaepSha1,
        sig_algo: SigAlgo::Pkcs1v15Sha1,
        master,
        token,
    }
}

#[test]
fn auth_replies_from_real_masters() {
    for ver in VERSIONS {
        let v = load("auth", ver);
        let master = PublicKey::from_pem(s(&v, "master_pub")).unwrap();
        let cases = &v["cases"];
        let acc = &cases["accepted"];
        let key = PrivateKey::from_pem(s(acc, "private_pem")).unwrap();
        let token = hexf(acc, "token");
        let reply = hexf(acc, "reply");

        // Pinned master and token: every check on.
        let si = sign_in(&key, acc, Some(&master), Some(&token));
        let AuthReply::Accepted(a) = si.decode_reply(&reply).unwrap() else {
            panic!("{ver}: not accepted")
        };
        assert_eq!(a.aes.as_str(), s(acc, "aes"));
        assert_eq!(
            a.session.as_deref().map(String::as_str),
            Some(s(acc, "session"))
        );
        assert_eq!(a.master, master);
        assert_eq!(
            u64::from(a.publish_port.unwrap()),
            acc["publish_port"].as_u64().unwrap()
        );

        // First contact: trust on first use.
        let si = sign_in(&key, acc, None, None);
        assert!(matches!(
            si.decode_reply(&reply).unwrap(),
            AuthReply::Accepted(_)
        ));

        // Wrong nonce, wrong token, another pinned master, a flipped byte: all refused.
        let mut bad = acc.clone();
        bad["nonce"] = J::from("ffffffffffffffffffffffffffffffff");
        assert_eq!(
            sign_in(&key, &bad, Some(&master), None)
                .decode_reply(&reply)
                .unwrap_err(),
            Error::Nonce
        );
        let wrong_token = vec![b'B'; token.len()];
        assert!(sign_in(&key, acc, Some(&master), Some(&wrong_token))
            .decode_reply(&reply)
            .is_err());
        let other = PrivateKey::generate(1024).unwrap();
        assert!(sign_in(&key, acc, Some(other.public_key()), None)
            .decode_reply(&reply)
            .is_err());
        for i in [reply.len() / 2, reply.len() - 5] {
            let mut r = reply.clone();
            r[i] ^= 0x40;
            assert!(
                sign_in(&key, acc, Some(&master), None)
                    .decode_reply(&r)
                    .is_err(),
                "{ver}: flip at {i}"
            );
        }

        let c224 = &cases["accepted_sha224"];
        let mut si = sign_in(&key, c224, Some(&master), None);
        si.enc_algo = EncAlgo::OaepSha224;
        si.sig_algo = SigAlgo::Pkcs1v15Sha224;
        let AuthReply::Accepted(a) = si.decode_reply(&hexf(c224, "reply")).unwrap() else {
            panic!("{ver}: sha224 not accepted")
        };
        assert_eq!(a.aes.as_str(), s(acc, "aes"));

        let pend = &cases["pending"];
        let pkey = PrivateKey::from_pem(s(pend, "private_pem")).unwrap();
        assert!(matches!(
            sign_in(&pkey, pend, Some(&master), None)
                .decode_reply(&hexf(pend, "reply"))
                .unwrap(),
            AuthReply::Pending
        ));
        let den = &cases["denied"];
        assert!(matches!(
            sign_in(&pkey, den, Some(&master), None)
                .decode_reply(&hexf(den, "reply"))
                .unwrap(),
            AuthReply::Rejected
        ));
        // 3008 answers an unknown algorithm with a bare error string; 3006/3007 never answer.
        if let Some(r) = cases["bad_enc_algo"]["reply"].as_str() {
            let r = hex::decode(r).unwrap();
            assert!(matches!(
                sign_in(&key, acc, None, None).decode_reply(&r),
                Err(Error::Master(_))
            ));
        }

        // Our request carries what Salt expects.
        let req = sign_in(&key, acc, Some(&master), Some(&token))
            .request(None)
            .unwrap();
        let env = msgpack::decode(&req).unwrap();
        let l = msgpack::get(&env, "load").unwrap();
        assert_eq!(
            msgpack::req_str(l, "pub").unwrap(),
            key.public_key().clean()
        );
        assert_eq!(msgpack::req_str(l, "cmd").unwrap(), "_auth");
    }
}

#[test]
fn publications_from_real_masters() {
    for ver in VERSIONS {
        let v = load("publish", ver);
        let aes = Crypticle::from_key_string(s(&v, "aes").as_bytes()).unwrap();
        let master = PublicKey::from_pem(s(&v, "master_pub")).unwrap();
        let frames: Vec<Vec<u8>> = v["frames"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| hex::decode(f.as_str().unwrap()).unwrap())
            .collect();
        let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
        let opener = Opener {
            aes: &aes,
            require_signature_from: Some(&master),
        };
        let mut g = SerialGuard::default();
        let p = opener.open(&refs, &mut g).unwrap();
        assert_eq!(p.fun, "test.arg");
        assert_eq!(p.jid.as_str(), s(&v, "jid"));
        assert_eq!(p.args, vec![msgpack::text("a"), salt_proto::Value::from(1)]);
        assert_eq!(p.kwarg("k").and_then(msgpack::str_of), Some("v"));
        assert_eq!(msgpack::str_of(&p.tgt), Some(s(&v, "id")));
        assert!(p.serial.is_some());
        // The same publication again is a replay.
        assert!(matches!(
            opener.open(&refs, &mut g),
            Err(Error::Replay { .. })
        ));
        // A signature check against another key fails.
        let other = PrivateKey::generate(1024).unwrap();
        let strict = Opener {
            aes: &aes,
            require_signature_from: Some(other.public_key()),
        };
        assert!(strict.open(&refs, &mut SerialGuard::default()).is_err());
    }
}

#[test]
fn event_bus_bytes_of_real_masters() {
    for ver in VERSIONS {
        let v = load("event", ver);
        let version: SaltVersion = ver.parse().unwrap();
        let tag = s(&v, "tag");
        let want = msgpack::decode(&hexf(&v, "data_msgpack")).unwrap();

        // What a subscriber reads from the master's publisher.
        let mut stream = EventStream::new(version.subscribe_framing());
        stream.push(&hexf(&v, "subscribed_stream"));
        let mut seen = None;
        while let Some(ev) = stream.next_event().unwrap() {
            if ev.tag == tag {
                seen = Some(ev);
            }
        }
        let ev = seen.unwrap_or_else(|| panic!("{ver}: tag not found in the subscribed stream"));
        // The firer writes `_stamp` into the caller's dict, so the recorded data has a later one.
        for (k, val) in want
            .as_map()
            .unwrap()
            .iter()
            .filter(|(k, _)| msgpack::str_of(k) != Some("_stamp"))
        {
            assert_eq!(
                msgpack::get(&ev.data, msgpack::str_of(k).unwrap()),
                Some(val),
                "{ver}"
            );
        }
        assert!(msgpack::get(&ev.data, "_stamp").is_some());

        // What Salt's own firer writes: decoded with our framing, re-encoded byte for byte.
        let fired = hexf(&v, "fired");
        let mut stream = EventStream::new(version.fire_framing());
        stream.push(&fired);
        let ev = stream.next_event().unwrap().expect("a fired event");
        assert_eq!(ev.tag, tag);
        assert_eq!(
            ev.encode_frame(version.fire_framing()),
            fired,
            "{ver}: fire framing"
        );
    }
}
