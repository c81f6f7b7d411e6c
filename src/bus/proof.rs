//! Proofs that only the sidecar can make, for virtseed's own front ends.
//!
//! Nothing on the master's bus says who put it there: any accepted minion can fire events
//! under any tag (`_minion_event`), and write returns into the master's job cache under any
//! minion id (`_syndic_return`, which Salt 3006-3008 serve to every minion). So the front ends
//! (the `cloud` runner, the `libvirt` cloud driver) believe an answer or a progress event only
//! when it carries the sidecar's signature: PKCS#1 v1.5 with SHA-224, made with the sidecar's
//! minion key, checked against the key the master accepted for the sidecar's id.
//!
//! What is signed is a JSON text (`body`), carried as it was signed, so the front end checks
//! exactly the bytes the sidecar signed and reads the answer out of them:
//!
//! ```text
//! return: {"virtseed_signed": "return", "alg": "PKCS1v15-SHA224", "body": "{\"kind\":\"return\",
//!          \"id\":..,\"jid\":..,\"fun\":..,\"success\":..,\"retcode\":..,\"return\":..}", "sig": B64}
//! event:  data + {"virtseed_proof": {"alg": .., "body": "{\"kind\":\"event\",\"tag\":..,\"data\":..}",
//!          "sig": B64}}
//! ```
//! A return is bound to its jid, a progress event to its tag: neither can be replayed as
//! another.

use base64::Engine;
use salt_proto::keys::{PrivateKey, SigAlgo};
use serde_json::{json, Value};
use std::sync::Arc;

/// The signature scheme; Salt's `salt.crypt.verify_signature` checks it on every line.
pub const ALG: SigAlgo = SigAlgo::Pkcs1v15Sha224;

/// The event field that carries a proof.
pub const EVENT_FIELD: &str = "virtseed_proof";

/// The sidecar's minion key, shared by everything that signs.
#[derive(Clone)]
pub struct Signer(Arc<PrivateKey>);

impl Signer {
    pub fn new(key: PrivateKey) -> Self {
        Signer(Arc::new(key))
    }

    fn sign(&self, body: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.0.sign(ALG, body.as_bytes()))
    }

    /// A job's return for a front end: the answer inside a signed body bound to the job.
    pub fn signed_return(
        &self,
        id: &str,
        jid: &str,
        fun: &str,
        success: bool,
        retcode: i64,
        ret: Value,
    ) -> Value {
        let body = json!({
            "kind": "return",
            "id": id,
            "jid": jid,
            "fun": fun,
            "success": success,
            "retcode": retcode,
            "return": ret,
        })
        .to_string();
        json!({
            "virtseed_signed": "return",
            "alg": ALG.as_str(),
            "sig": self.sign(&body),
            "body": body,
        })
    }

    /// `body` signed as it is carried (`{"alg", "body": TEXT, "sig"}`): what sidecars send
    /// each other (`crate::peers`), checked with [`open`].
    pub fn signed(&self, body: &Value) -> Value {
        let body = body.to_string();
        json!({"alg": ALG.as_str(), "sig": self.sign(&body), "body": body})
    }

    /// The proof for an event (`data` as fired, without the proof): added to the data under
    /// [`EVENT_FIELD`], so reactors still read the plain fields.
    pub fn event_proof(&self, tag: &str, data: &Value) -> Value {
        let body = json!({"kind": "event", "tag": tag, "data": data}).to_string();
        json!({"alg": ALG.as_str(), "sig": self.sign(&body), "body": body})
    }
}

/// The body of `signed` (see [`Signer::signed`]) if `key` signed it.
pub fn open(key: &salt_proto::keys::PublicKey, signed: &Value) -> Result<Value, String> {
    if signed["alg"] != ALG.as_str() {
        return Err(format!("unknown signature scheme {}", signed["alg"]));
    }
    let (Some(body), Some(sig)) = (signed["body"].as_str(), signed["sig"].as_str()) else {
        return Err("no body or no signature".into());
    };
    let sig = base64::engine::general_purpose::STANDARD
        .decode(sig)
        .map_err(|_| "a signature that is not base64".to_string())?;
    key.verify(ALG, body.as_bytes(), &sig)
        .map_err(|_| "a signature that does not verify".to_string())?;
    serde_json::from_str(body).map_err(|e| format!("a body that is not JSON: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(key: &PrivateKey, proof: &Value) -> Result<Value, String> {
        let sig = base64::engine::general_purpose::STANDARD
            .decode(proof["sig"].as_str().unwrap())
            .unwrap();
        let body = proof["body"].as_str().unwrap();
        key.public_key()
            .verify(ALG, body.as_bytes(), &sig)
            .map_err(|e| e.to_string())?;
        Ok(serde_json::from_str(body).unwrap())
    }

    #[test]
    fn a_signed_return_verifies_and_carries_the_answer_bound_to_its_job() {
        let key = PrivateKey::generate(1024).unwrap();
        let s = Signer::new(PrivateKey::from_pem(&key.to_pem()).unwrap());
        let r = s.signed_return(
            "virtseed",
            "20261206000000000001",
            "cloud.profile",
            true,
            0,
            json!({"web1": {"state": "running"}}),
        );
        assert_eq!(r["virtseed_signed"], "return");
        assert_eq!(r["alg"], "PKCS1v15-SHA224");
        let body = check(&key, &r).unwrap();
        assert_eq!(body["jid"], "20261206000000000001");
        assert_eq!(body["id"], "virtseed");
        assert_eq!(body["fun"], "cloud.profile");
        assert_eq!(body["return"]["web1"]["state"], "running");

        // Another key, or one changed byte of the body, does not verify.
        let other = PrivateKey::generate(1024).unwrap();
        assert!(check(&other, &r).is_err());
        let mut forged = r.clone();
        forged["body"] = json!(r["body"].as_str().unwrap().replace("running", "runnin9"));
        assert!(check(&key, &forged).is_err());
    }

    #[test]
    fn a_signed_body_opens_only_with_its_key_and_unchanged() {
        let key = PrivateKey::generate(1024).unwrap();
        let pubk = key.public_key().clone();
        let s = Signer::new(key);
        let m = s.signed(&json!({"kind": "key_offer", "name": "web1"}));
        assert_eq!(open(&pubk, &m).unwrap()["name"], "web1");
        let other = PrivateKey::generate(1024).unwrap().public_key().clone();
        assert!(open(&other, &m).unwrap_err().contains("does not verify"));
        let mut forged = m.clone();
        forged["body"] = json!(m["body"].as_str().unwrap().replace("web1", "web2"));
        assert!(open(&pubk, &forged).is_err());
        let mut alg = m.clone();
        alg["alg"] = json!("none");
        assert!(open(&pubk, &alg).is_err());
        assert!(open(&pubk, &json!({"alg": ALG.as_str()})).is_err());
    }

    #[test]
    fn an_event_proof_binds_the_tag_and_the_data() {
        let key = PrivateKey::generate(1024).unwrap();
        let s = Signer::new(PrivateKey::from_pem(&key.to_pem()).unwrap());
        let data = json!({"name": "web1", "elapsed_ms": 1200});
        let p = s.event_proof("salt/cloud/web1/started", &data);
        let body = check(&key, &p).unwrap();
        assert_eq!(body["kind"], "event");
        assert_eq!(body["tag"], "salt/cloud/web1/started");
        assert_eq!(body["data"], data);
    }
}
