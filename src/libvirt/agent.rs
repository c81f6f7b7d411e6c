//! Files read from inside a guest through the QEMU guest agent, over libvirt
//! (`virDomainQemuAgentCommand`): `guest-file-open`, `guest-file-read` until `eof`,
//! `guest-file-close`. The agent's channel is a virtio-serial port between the VM and its
//! hypervisor: nothing on the Salt bus, no other host, can answer in the VM's place.

use base64::Engine;
use serde_json::{json, Value};
use zeroize::Zeroizing;

/// The most a file read this way may hold (minion keys are a few KiB).
const MAX_FILE: usize = 64 * 1024;
/// Seconds one agent command may take (a guest under TCG is slow, not gone).
const COMMAND_TIMEOUT: i32 = 10;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum AgentError {
    /// No agent answers (not installed, not started yet, or no channel for it).
    #[error("no QEMU guest agent answers in the VM ({0})")]
    NotAnswering(String),
    #[error("{path}: not in the VM ({msg})")]
    NoFile { path: String, msg: String },
    #[error("the QEMU guest agent: {0}")]
    Other(String),
}

/// Runs one agent command (`execute`, `arguments`) and returns its `return` value.
pub trait Agent {
    fn command(&self, cmd: &str) -> Result<String, AgentError>;
}

impl Agent for virt::domain::Domain {
    fn command(&self, cmd: &str) -> Result<String, AgentError> {
        self.qemu_agent_command(cmd, COMMAND_TIMEOUT, 0)
            .map_err(|e| classify(e.message()))
    }
}

/// libvirt says "not connected", "not responding" or "not configured" when there is no
/// agent to ask; the agent's own errors (a missing file) come back as `Other`, refined by
/// [`read_file`].
fn classify(msg: &str) -> AgentError {
    let m = msg.to_ascii_lowercase();
    if m.contains("agent is not")
        || m.contains("agent not")
        || m.contains("not responding")
        || m.contains("not configured")
        || m.contains("not connected")
    {
        AgentError::NotAnswering(msg.to_string())
    } else {
        AgentError::Other(msg.to_string())
    }
}

fn call(agent: &dyn Agent, execute: &str, arguments: Value) -> Result<Value, AgentError> {
    let text = agent.command(&json!({"execute": execute, "arguments": arguments}).to_string())?;
    let mut v: Value = serde_json::from_str(&text)
        .map_err(|e| AgentError::Other(format!("{execute}: not JSON ({e})")))?;
    match v.get_mut("return") {
        Some(r) => Ok(r.take()),
        None => Err(AgentError::Other(format!(
            "{execute}: no return in {}",
            v.get("error").unwrap_or(&v)
        ))),
    }
}

/// The whole of file `path` inside the VM.
pub fn read_file(agent: &dyn Agent, path: &str) -> Result<Zeroizing<Vec<u8>>, AgentError> {
    let handle = match call(agent, "guest-file-open", json!({"path": path, "mode": "r"})) {
        Ok(h) => h
            .as_i64()
            .ok_or_else(|| AgentError::Other(format!("guest-file-open: handle {h}")))?,
        Err(AgentError::Other(msg))
            if msg.contains("No such file") || msg.contains("failed to open") =>
        {
            return Err(AgentError::NoFile {
                path: path.into(),
                msg,
            })
        }
        Err(e) => return Err(e),
    };
    let mut out = Zeroizing::new(Vec::new());
    let read = (|| loop {
        let r = call(
            agent,
            "guest-file-read",
            json!({"handle": handle, "count": 4096}),
        )?;
        let b64 = r["buf-b64"].as_str().unwrap_or_default();
        let chunk = Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|e| AgentError::Other(format!("guest-file-read: {e}")))?,
        );
        out.extend_from_slice(&chunk);
        if out.len() > MAX_FILE {
            return Err(AgentError::Other(format!(
                "{path}: larger than {MAX_FILE} bytes"
            )));
        }
        if r["eof"].as_bool().unwrap_or(true) || chunk.is_empty() {
            return Ok(());
        }
    })();
    // Closed whatever the read did: an agent keeps open handles until it restarts.
    let closed = call(agent, "guest-file-close", json!({"handle": handle}));
    read?;
    closed?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// An agent answering from a script of replies, recording what it was asked.
    struct Scripted {
        replies: RefCell<Vec<Result<String, AgentError>>>,
        asked: RefCell<Vec<Value>>,
    }

    impl Agent for Scripted {
        fn command(&self, cmd: &str) -> Result<String, AgentError> {
            self.asked
                .borrow_mut()
                .push(serde_json::from_str(cmd).unwrap());
            self.replies.borrow_mut().remove(0)
        }
    }

    fn scripted(replies: Vec<Result<&str, AgentError>>) -> Scripted {
        Scripted {
            replies: RefCell::new(replies.into_iter().map(|r| r.map(str::to_string)).collect()),
            asked: RefCell::new(Vec::new()),
        }
    }

    #[test]
    fn a_file_is_read_in_chunks_and_closed() {
        let a = scripted(vec![
            Ok(r#"{"return": 7}"#),
            Ok(r#"{"return": {"count": 3, "buf-b64": "YWJj", "eof": false}}"#),
            Ok(r#"{"return": {"count": 2, "buf-b64": "ZGU=", "eof": true}}"#),
            Ok(r#"{"return": {}}"#),
        ]);
        assert_eq!(
            &read_file(&a, "/etc/salt/pki/minion/minion.pub").unwrap()[..],
            b"abcde"
        );
        let asked = a.asked.borrow();
        assert_eq!(asked[0]["execute"], "guest-file-open");
        assert_eq!(
            asked[0]["arguments"]["path"],
            "/etc/salt/pki/minion/minion.pub"
        );
        assert_eq!(asked[1]["arguments"]["handle"], 7);
        assert_eq!(asked[3]["execute"], "guest-file-close");
    }

    #[test]
    fn no_agent_no_file_and_nonsense_are_told_apart_and_a_handle_is_closed() {
        let none = scripted(vec![Err(classify(
            "Guest agent is not responding: QEMU guest agent is not connected",
        ))]);
        assert!(matches!(
            read_file(&none, "/x"),
            Err(AgentError::NotAnswering(_))
        ));
        let missing = scripted(vec![Err(classify(
            "internal error: unable to execute QEMU agent command 'guest-file-open': failed to open file '/x': No such file or directory",
        ))]);
        assert!(matches!(
            read_file(&missing, "/x"),
            Err(AgentError::NoFile { .. })
        ));
        let bad = scripted(vec![
            Ok(r#"{"return": 3}"#),
            Ok(r#"{"return": {"buf-b64": "%%%", "eof": true}}"#),
            Ok(r#"{"return": {}}"#),
        ]);
        assert!(matches!(read_file(&bad, "/x"), Err(AgentError::Other(_))));
        assert_eq!(bad.asked.borrow()[2]["execute"], "guest-file-close");
        let garbage = scripted(vec![Ok("not json")]);
        assert!(matches!(
            read_file(&garbage, "/x"),
            Err(AgentError::Other(_))
        ));
    }
}
