//! Step `restored` (warm clones, in place of `started`): the clone resumed from its copy of
//! the warm state's image ([`super::image`]): restored (the persistent domain takes the
//! running state), the copy deleted (QEMU has read it all), then the clone's identity sent
//! to the guest, which waits for it on the channel [`warm::CHANNEL`], and its answer
//! awaited. Nothing new is made here: undoing the domain ([`super::define::undo`]) stops the
//! restored clone, and the copy's own undo deletes it if it is still there.

use super::runner::{Action, Intents};
use super::{Made, Step, Vm};
use crate::cloud::warm;
use crate::cloud::CloudError;
use base64::Engine;
use serde_json::json;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use zeroize::Zeroizing;

/// How long the guest has to install its identity and say so.
const APPLY_WAIT: Duration = Duration::from_secs(60);

pub struct Restore<'a> {
    pub vm: Vm<'a>,
    pub uuid: &'a str,
}

impl Action<Made> for Restore<'_> {
    fn make(&self, made: &mut Made, _: &mut Intents<'_>) -> Result<(), CloudError> {
        let Vm { hv, name, .. } = self.vm;
        let (pool, copy, path) = made
            .image_copy
            .clone()
            .ok_or_else(|| CloudError::Internal("a warm clone without its image".into()))?;
        let restored = hv.restore(&path);
        if let Err(e) = hv.delete_volume_named(&pool, &copy) {
            tracing::warn!(name, "deleting {copy}: {e}");
        }
        restored?;
        if !made.identity_files.is_empty() {
            self.hand_over(made)?;
        }
        Ok(())
    }

    fn step(&self) -> Step {
        Step::Restored
    }
}

impl Restore<'_> {
    /// Sends the identity to the restored guest and waits for it to be installed.
    fn hand_over(&self, made: &Made) -> Result<(), CloudError> {
        let Vm { hv, name, .. } = self.vm;
        let line = identity_line(made, self.uuid);
        let mut ch = hv.open_channel(name, warm::CHANNEL)?;
        let fail = |e: String| CloudError::Internal(format!("warm clone {name}: {e}"));
        ch.send(line.as_bytes(), APPLY_WAIT).map_err(fail)?;
        let answer = ch.recv_line(APPLY_WAIT).map_err(fail)?;
        warm::check_answer(&answer, "applied")
            .map_err(|e| fail(format!("the guest did not take its identity: {e}")))
    }
}

/// The one line the guest reads after a restore: the identity files (as the cold seed
/// carries them), the host's time, fresh entropy, the clone's MACs and UUID. It holds the
/// minion's private key: it is never logged, and zeroed once sent.
fn identity_line(made: &Made, uuid: &str) -> Zeroizing<String> {
    let files: serde_json::Map<String, serde_json::Value> = made
        .identity_files
        .iter()
        .map(|(k, v)| ((*k).to_string(), json!(v.as_str())))
        .collect();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let entropy: [u8; 64] = std::array::from_fn(|_| rand::random());
    let v = json!({
        "virtseed_warm": 1,
        "files": files,
        "time": now,
        "entropy": base64::engine::general_purpose::STANDARD.encode(entropy),
        "macs": made.macs,
        "uuid": uuid,
    });
    let mut s = Zeroizing::new(v.to_string());
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_identity_line_carries_files_time_entropy_and_macs() {
        let made = Made {
            identity_files: vec![("virtseed.minion_id", Zeroizing::new("web1".into()))],
            macs: vec!["52:54:00:01:02:03".into()],
            ..Default::default()
        };
        let a = identity_line(&made, "u-1");
        let b = identity_line(&made, "u-1");
        assert!(a.ends_with('\n') && !a[..a.len() - 1].contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&a).unwrap();
        assert_eq!(v["files"]["virtseed.minion_id"], "web1");
        assert_eq!(v["macs"][0], "52:54:00:01:02:03");
        assert_eq!(v["uuid"], "u-1");
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!((v["time"].as_f64().unwrap() - now).abs() < 5.0);
        let w: serde_json::Value = serde_json::from_str(&b).unwrap();
        let e = base64::engine::general_purpose::STANDARD
            .decode(v["entropy"].as_str().unwrap())
            .unwrap();
        assert_eq!(e.len(), 64);
        assert_ne!(v["entropy"], w["entropy"], "fresh entropy per clone");
    }
}
