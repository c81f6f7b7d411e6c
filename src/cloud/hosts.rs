//! The hypervisor hosts: one kept connection per libvirt URI, and where each clone goes.
//!
//! A connection is opened once and kept, with libvirt's keepalive (so a remote host whose
//! SSH link died is noticed, and reopened on next use). Opening one never blocks the others:
//! a host that does not answer holds up only the calls that need it, for at most
//! [`OPEN_TIMEOUT`]. Placement follows Salt's virt runner (the host with the most free
//! memory) made batch-aware: the clones of one call count against the host they go to.

use crate::config::cloud::hosts::Host;
use crate::libvirt::{Hypervisor, LibvirtError};
use std::collections::HashMap;
use std::sync::{mpsc, Arc, Mutex, Once};
use std::time::Duration;

/// How long opening a connection may take (an SSH host that does not answer).
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(20);
/// libvirt keepalive: a probe every 5 s, the link given up after 3 unanswered.
const KEEPALIVE: (i32, u32) = (5, 3);

/// The kept connections, by URI.
#[derive(Default)]
pub struct Connections {
    open: Mutex<HashMap<String, Arc<Hypervisor>>>,
    /// One opener per URI at a time (the others wait for its result, not for other hosts).
    opening: Mutex<HashMap<String, Arc<Mutex<()>>>>,
}

/// libvirt's keepalive needs its event loop running: started once per process.
fn event_loop() {
    static START: Once = Once::new();
    START.call_once(|| {
        if let Err(e) = virt::event::event_register_default_impl() {
            tracing::warn!("libvirt event loop: {e}; no keepalive on connections");
            return;
        }
        std::thread::Builder::new()
            .name("libvirt-events".into())
            .spawn(|| loop {
                if virt::event::event_run_default_impl().is_err() {
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
            .expect("spawn the libvirt event loop");
    });
}

impl Connections {
    fn alive(&self, uri: &str) -> Option<Arc<Hypervisor>> {
        let map = self.open.lock().expect("connections");
        map.get(uri).filter(|h| h.is_alive()).cloned()
    }

    /// The connection to `uri`: the kept one while it lives, else a new one.
    pub fn get(&self, uri: &str) -> Result<Arc<Hypervisor>, LibvirtError> {
        if let Some(h) = self.alive(uri) {
            return Ok(h);
        }
        let gate = self
            .opening
            .lock()
            .expect("openers")
            .entry(uri.to_string())
            .or_default()
            .clone();
        let _one_opener = gate.lock().expect("opener");
        if let Some(h) = self.alive(uri) {
            return Ok(h);
        }
        let h = Arc::new(open(uri, OPEN_TIMEOUT)?);
        self.open
            .lock()
            .expect("connections")
            .insert(uri.to_string(), h.clone());
        Ok(h)
    }
}

/// Opens `uri` in a thread of its own, given up after `limit` (the thread ends by itself).
fn open(uri: &str, limit: Duration) -> Result<Hypervisor, LibvirtError> {
    event_loop();
    let (tx, rx) = mpsc::channel();
    let u = uri.to_string();
    std::thread::spawn(move || {
        let _ = tx.send(Hypervisor::open(&u));
    });
    let h = rx.recv_timeout(limit).map_err(|_| LibvirtError::Call {
        uri: uri.into(),
        op: "connect".into(),
        msg: format!(
            "no answer within {} s (is the host up and its SSH reachable?)",
            limit.as_secs()
        ),
        code: virt::sys::VIR_ERR_NO_CONNECT as i32,
    })??;
    if let Err(e) = h.keep_alive(KEEPALIVE.0, KEEPALIVE.1) {
        tracing::debug!(uri, "no keepalive on this connection: {e}");
    }
    Ok(h)
}

/// What virtseed says of a provider's host it could not reach or list (a listing leaves its
/// VMs or bases out and lists the other hosts'; a create or destroy that needs it fails):
/// which host of which provider, its URI (without a password), and libvirt's reason.
pub fn unreachable(alias: &str, host: &Host, e: &LibvirtError) -> String {
    let why = match e {
        LibvirtError::Call { op, msg, .. } if op == "connect" => {
            format!("is unreachable: {msg}")
        }
        LibvirtError::Call { op, msg, .. } => format!("did not answer ({op}): {msg}"),
        other => format!("failed: {other}"),
    };
    format!(
        "provider {alias}: host {} ({}) {why}",
        host.name,
        crate::config::cloud::hosts::shown_uri(&host.uri)
    )
}

/// What placement knows of one host.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub host: Host,
    pub free_mib: u64,
    /// The profile's base domain is there, shut off.
    pub has_base: bool,
}

/// Picks a host for each of `n` clones of `need_mib` MiB: each time the one with the most
/// free memory that has the base, counting the clones already placed by this call (ties: the
/// first listed). An index into `cands` per clone.
pub fn place(cands: &[Candidate], need_mib: u64, n: usize) -> Result<Vec<usize>, String> {
    let mut free: Vec<u64> = cands.iter().map(|c| c.free_mib).collect();
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let best = (0..cands.len())
            .filter(|&i| cands[i].has_base)
            .max_by(|&a, &b| free[a].cmp(&free[b]).then(b.cmp(&a)))
            .ok_or_else(|| "no reachable host of the provider has the base domain".to_string())?;
        free[best] = free[best].saturating_sub(need_mib);
        out.push(best);
    }
    Ok(out)
}

impl super::Cloud {
    /// The served libvirt providers (`provider`: one alias, or `all`) with a host at `uri`,
    /// each with that host: whom a host that cannot be listed concerns.
    pub fn providers_at(&self, uri: &str, provider: &str) -> Vec<(String, Host)> {
        self.config
            .providers
            .values()
            .flatten()
            .filter(|p| p.driver == "libvirt" && (provider == "all" || p.alias == provider))
            .filter(|p| self.serves(&p.alias))
            .filter_map(|p| {
                let h = p.hosts.iter().find(|h| h.uri == uri)?;
                Some((p.alias.clone(), h.clone()))
            })
            .collect()
    }

    /// Where each of `names` goes among the profile's hosts (by URI), or why it cannot be
    /// made: its name is taken on one of them, or no host can take it. Blocking.
    pub fn place_clones(
        &self,
        prof: &crate::config::cloud::Profile,
        names: &[String],
    ) -> HashMap<String, Result<String, String>> {
        // Each host at once: free memory, the base, and the names already there.
        let seen: Vec<_> = std::thread::scope(|s| {
            let tasks: Vec<_> = prof
                .hosts
                .iter()
                .map(|h| {
                    s.spawn(move || {
                        let hv = self.hypervisor(&h.uri)?;
                        let free = hv.host_info()?.free_memory_mib;
                        let base = hv.bases()?.into_iter().find(|b| b.name == prof.base_domain);
                        Ok::<_, LibvirtError>((h.clone(), free, base, hv.all_domain_names()?))
                    })
                })
                .collect();
            tasks.into_iter().map(|t| t.join()).collect()
        });
        let mut cands = Vec::new();
        let mut down = Vec::new();
        let mut taken: HashMap<String, String> = HashMap::new();
        let mut need_mib = prof.memory_mib;
        for (h, r) in prof.hosts.iter().zip(seen) {
            match r {
                Ok(Ok((host, free_mib, base, domains))) => {
                    for d in domains {
                        taken.insert(d, host.name.clone());
                    }
                    need_mib = need_mib.or(base.as_ref().map(|b| b.memory_mib));
                    cands.push(Candidate {
                        host,
                        free_mib,
                        has_base: base.is_some(),
                    });
                }
                Ok(Err(e)) => down.push(unreachable(&prof.provider, h, &e)),
                Err(_) => down.push(format!("{}: the query failed", h.name)),
            }
        }
        if !down.is_empty() {
            tracing::warn!(provider = %prof.provider, "hosts left out of placement: {}", down.join("; "));
        }
        let free: Vec<&String> = names.iter().filter(|n| !taken.contains_key(*n)).collect();
        let placed = place(&cands, need_mib.unwrap_or(0), free.len()).map_err(|e| {
            let mut e = format!("{e} {:?}", prof.base_domain);
            if !down.is_empty() {
                e.push_str(&format!(" ({})", down.join("; ")));
            }
            e
        });
        let mut out = HashMap::new();
        for n in names {
            if let Some(host) = taken.get(n) {
                out.insert(
                    n.clone(),
                    Err(format!(
                        "a domain named {n:?} already exists on host {host} of provider {:?}",
                        prof.provider
                    )),
                );
            }
        }
        for (i, n) in free.into_iter().enumerate() {
            let r = match &placed {
                Ok(p) => Ok(cands[p[i]].host.uri.clone()),
                Err(e) => Err(e.clone()),
            };
            out.insert(n.clone(), r);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(name: &str, free_mib: u64, has_base: bool) -> Candidate {
        Candidate {
            host: Host {
                name: name.into(),
                uri: format!("qemu+ssh://{name}/system"),
            },
            free_mib,
            has_base,
        }
    }

    #[test]
    fn most_free_memory_first_counting_this_calls_clones() {
        let c = [
            cand("a", 4096, true),
            cand("b", 3072, true),
            cand("c", 9999, false),
        ];
        // a (4096) -> a (3072, tie with b: a listed first) -> b (3072) -> a (2048)...
        assert_eq!(place(&c, 1024, 5).unwrap(), [0, 0, 1, 0, 1]);
        // One host alone takes all.
        assert_eq!(place(&c[1..], 1024, 3).unwrap(), [0, 0, 0]);
        // The base only on c.
        let only_c = [cand("a", 4096, false), cand("c", 100, true)];
        assert_eq!(place(&only_c, 1024, 2).unwrap(), [1, 1]);
        let none = [cand("a", 4096, false)];
        assert!(place(&none, 1, 1).unwrap_err().contains("base domain"));
    }

    #[test]
    fn an_unreachable_host_is_named_with_its_provider() {
        let h = Host {
            name: "kvm1".into(),
            uri: "qemu+ssh://salt:pw@127.0.0.1:1/system".into(),
        };
        let e = LibvirtError::Call {
            uri: h.uri.clone(),
            op: "connect".into(),
            msg: "Cannot recv data: ssh: connect to host 127.0.0.1 port 1: Connection refused"
                .into(),
            code: virt::sys::VIR_ERR_SYSTEM_ERROR as i32,
        };
        let msg = unreachable("kvm-via-ssh", &h, &e);
        assert_eq!(
            msg,
            "provider kvm-via-ssh: host kvm1 (qemu+ssh://salt:***@127.0.0.1:1/system) is \
             unreachable: Cannot recv data: ssh: connect to host 127.0.0.1 port 1: Connection refused"
        );
    }
}
