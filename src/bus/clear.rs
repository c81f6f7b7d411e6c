//! The clear channel with the master's root key (`cachedir/.root_key`): publish jobs and
//! call wheel functions as salt-key or LocalClient would. The root key changes at every
//! master start, so it is read again for every call.

use super::transport::ReqPool;
use super::BusError;
use salt_proto::jid::Jid;
use salt_proto::msgpack::{self, map, text};
use salt_proto::request::{clear, decode_clear_reply};
use salt_proto::Value;
use std::path::PathBuf;
use std::time::Duration;

pub struct ClearChannel {
    req: ReqPool,
    root_key: PathBuf,
    user: String,
}

/// What `publish` answers.
#[derive(Debug, Clone)]
pub struct Published {
    pub jid: Jid,
    pub minions: Vec<String>,
}

impl ClearChannel {
    pub fn new(ret_endpoint: &str, cachedir: &std::path::Path, user: &str) -> Self {
        Self {
            req: ReqPool::new(ret_endpoint),
            root_key: cachedir.join(".root_key"),
            user: user.to_string(),
        }
    }

    fn key(&self) -> Result<Value, BusError> {
        let k = std::fs::read_to_string(&self.root_key).map_err(|source| BusError::Io {
            path: self.root_key.clone(),
            source,
        })?;
        Ok(text(k.trim()))
    }

    /// Publishes `fun` to `tgt`; the master allocates the jid.
    pub async fn publish(
        &self,
        tgt: &str,
        tgt_type: &str,
        fun: &str,
        arg: Vec<Value>,
    ) -> Result<Published, BusError> {
        let load = map([
            ("cmd", text("publish")),
            ("tgt", text(tgt)),
            ("fun", text(fun)),
            ("arg", Value::Array(arg)),
            ("tgt_type", text(tgt_type)),
            ("ret", text("")),
            ("jid", text("")),
            ("user", text(self.user.clone())),
            ("key", self.key()?),
            ("kwargs", map::<String>([])),
        ]);
        let reply = decode_clear_reply(
            &self
                .req
                .request(clear(load), Duration::from_secs(30))
                .await?,
        )?;
        if let Some(err) = msgpack::get(&reply, "error") {
            return Err(BusError::Auth(format!(
                "publish refused: {}",
                msgpack::to_json(err)
            )));
        }
        let jid = match msgpack::get(&reply, "jid") {
            Some(v) if msgpack::str_of(v).is_some() => {
                Jid::parse(msgpack::str_of(v).unwrap_or_default())?
            }
            _ => {
                return Err(BusError::Auth(format!(
                    "the master published nothing: {}",
                    msgpack::to_json(&reply)
                )))
            }
        };
        let minions = match msgpack::get(&reply, "minions") {
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(|m| msgpack::str_of(m).map(str::to_string))
                .collect(),
            _ => Vec::new(),
        };
        Ok(Published { jid, minions })
    }

    /// Calls a wheel function (`key.list_all`, `key.delete`, ...) and returns its `return`.
    pub async fn wheel(&self, fun: &str, kwarg: Vec<(&str, Value)>) -> Result<Value, BusError> {
        let load = map([
            ("cmd", text("wheel")),
            ("fun", text(fun)),
            ("key", self.key()?),
            ("arg", Value::Array(vec![])),
            ("kwarg", map(kwarg)),
        ]);
        let reply = decode_clear_reply(
            &self
                .req
                .request(clear(load), Duration::from_secs(30))
                .await?,
        )?;
        let data = msgpack::get(&reply, "data").ok_or_else(|| {
            BusError::Auth(format!(
                "wheel {fun}: unexpected reply {}",
                msgpack::to_json(&reply)
            ))
        })?;
        if msgpack::get(data, "success") == Some(&Value::Boolean(false)) {
            return Err(BusError::Auth(format!(
                "wheel {fun} failed: {}",
                msgpack::get(data, "return")
                    .map(msgpack::to_json)
                    .unwrap_or_default()
            )));
        }
        Ok(msgpack::get(data, "return").cloned().unwrap_or(Value::Nil))
    }
}
