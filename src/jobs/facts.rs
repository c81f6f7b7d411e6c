//! The sidecar among the minions: its grains, the pillar the master compiles for it, and
//! whether the master counts it in a job's target ([`super::target`]).
//!
//! The grains say what the sidecar is, not what the host under it is: `id`, `nodename` (the
//! machine it runs on), and `virtseed` (its version, its role, the cloud providers and
//! profiles it serves). No `os`, `kernel`, `os_family` or `ipv4`: a fleet-wide `-G
//! kernel:Linux pkg.upgrade` or `-S 10.0.0.0/8 cmd.run` is for hosts to configure, and the
//! sidecar runs neither. They reach the master as a minion's do, in a `_pillar` request at
//! start and on `saltutil.refresh_grains`/`refresh_pillar`; with `minion_data_cache` (Salt's
//! default) the master keeps them for targeting and `salt-run cache.grains`.

use super::target::Seen;
use crate::bus::channel::Channel;
use crate::config::master::MasterOpts;
use salt_proto::msgpack;
use salt_proto::publish::Publication;
use serde_json::{json, Map, Value as Json};
use std::sync::RwLock;
use tracing::{info, warn};

/// How long the sidecar waits for its first report before it serves jobs anyway.
const FIRST_REPORT_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
/// How often a report that failed is tried again.
const REPORT_RETRY: std::time::Duration = std::time::Duration::from_secs(30);

pub struct Facts {
    id: String,
    grains: Json,
    /// The pillar the master answered with; None until it has (then it holds our grains
    /// too, if its `minion_data_cache` is on).
    pillar: RwLock<Option<Json>>,
    cache: bool,
    nodegroups: Map<String, Json>,
    salt_3008: bool,
}

impl Facts {
    pub fn new(
        id: &str,
        master: &MasterOpts,
        salt: Option<salt_proto::version::SaltVersion>,
        cloud: Option<&crate::cloud::Cloud>,
    ) -> Self {
        let (providers, profiles): (Vec<&String>, Vec<&String>) = match cloud {
            Some(c) => (
                c.config.providers.keys().filter(|a| c.serves(a)).collect(),
                c.config.profiles.keys().collect(),
            ),
            None => (Vec::new(), Vec::new()),
        };
        let nodename = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default();
        Self {
            id: id.to_string(),
            grains: json!({
                "id": id,
                "nodename": nodename,
                "virtseed": {
                    "version": env!("CARGO_PKG_VERSION"),
                    "role": "sidecar",
                    "providers": providers,
                    "profiles": profiles,
                },
            }),
            pillar: RwLock::new(None),
            cache: master.minion_data_cache,
            nodegroups: master.nodegroups.clone(),
            salt_3008: salt.is_some_and(|v| v.major >= 3008),
        }
    }

    pub fn grains(&self) -> &Json {
        &self.grains
    }

    /// The pillar as the master last compiled it for us (empty before it answered).
    pub fn pillar(&self) -> Json {
        self.pillar
            .read()
            .expect("lock")
            .clone()
            .unwrap_or_else(|| json!({}))
    }

    /// Sends our grains to the master and takes the pillar it compiles for us.
    pub async fn report(&self, channel: &Channel) -> Result<(), crate::bus::BusError> {
        let pillar = channel.pillar(crate::bus::from_json(&self.grains)).await?;
        let pillar: Json = serde_json::from_str(&msgpack::to_json(&pillar)).unwrap_or_default();
        let keys = pillar.as_object().map_or(0, Map::len);
        *self.pillar.write().expect("lock") = Some(pillar);
        info!(
            pillar_keys = keys,
            "reported grains to the master{}",
            if self.cache {
                ""
            } else {
                " (its minion_data_cache is off: grain and compound targets count every minion)"
            }
        );
        Ok(())
    }

    /// Reports until the master has taken our grains: the first try is awaited (up to
    /// [`FIRST_REPORT_WAIT`]) before jobs are served, so the master's cache (which may hold a
    /// previous run's grains) and our own view agree from the first job; a failure is logged
    /// and retried every [`REPORT_RETRY`] in the background.
    pub async fn report_at_start(self: std::sync::Arc<Self>, channel: std::sync::Arc<Channel>) {
        let first = tokio::time::timeout(FIRST_REPORT_WAIT, self.report(&channel)).await;
        if matches!(first, Ok(Ok(()))) {
            return;
        }
        if let Ok(Err(e)) = &first {
            warn!("cannot report grains to the master (`_pillar`): {e}; grain and pillar targets will not count this sidecar until it can (retrying every {}s)", REPORT_RETRY.as_secs());
        }
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(REPORT_RETRY).await;
                if self.report(&channel).await.is_ok() {
                    return;
                }
            }
        });
    }

    /// Whether the master counts us among the minions of this publication.
    pub fn expects(&self, p: &Publication) -> bool {
        let pillar = self.pillar.read().expect("lock");
        let delimiter = msgpack::get(&p.load, "delimiter")
            .and_then(msgpack::str_of)
            .unwrap_or(":");
        Seen {
            id: &self.id,
            cache: self.cache,
            data: pillar.as_ref().map(|pl| (&self.grains, pl)),
            nodegroups: &self.nodegroups,
            salt_3008: self.salt_3008,
        }
        .expects(&p.tgt, &p.tgt_type, delimiter)
    }
}
