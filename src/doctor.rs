//! `virtseed doctor`: checks a site in the order a clone needs it, and says what to do about
//! each failure: the master's config and `pki_dir`, the sidecar's key and the master's
//! request port, each provider's libvirt, each profile's base domain, virtseed's Salt modules
//! (loaded by Salt, of this release) and the sidecar they send to (running, answering).

use crate::salt_modules;
use anyhow::Result;
use serde::Serialize;
use std::path::Path;
use std::time::Duration;
use virtseed::config::cloud::CloudConfig;
use virtseed::config::master::MasterOpts;
use virtseed::config::settings::Settings;
use virtseed::libvirt::Hypervisor;

#[derive(Serialize, Clone, Copy, PartialEq)]
#[serde(rename_all = "lowercase")]
enum Status {
    Ok,
    Fail,
    Skip,
}

#[derive(Serialize)]
struct Check {
    check: String,
    status: Status,
    detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    fix: Option<String>,
}

#[derive(Default)]
struct Report(Vec<Check>);

impl Report {
    fn ok(&mut self, check: impl Into<String>, detail: impl Into<String>) {
        self.push(check.into(), Status::Ok, detail.into(), None);
    }

    fn fail(
        &mut self,
        check: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) {
        self.push(check.into(), Status::Fail, detail.into(), Some(fix.into()));
    }

    fn skip(&mut self, check: impl Into<String>, detail: impl Into<String>) {
        self.push(check.into(), Status::Skip, detail.into(), None);
    }

    fn push(&mut self, check: String, status: Status, detail: String, fix: Option<String>) {
        self.0.push(Check {
            check,
            status,
            detail,
            fix,
        });
    }

    fn failed(&self) -> bool {
        self.0.iter().any(|c| c.status == Status::Fail)
    }
}

/// Runs every check, prints them (text or `json`), fails if any failed.
pub fn run(config_dir: &Path, salt_python: Option<&Path>, json: bool) -> Result<()> {
    let mut r = Report::default();
    site(&mut r, config_dir, salt_python);
    if json {
        let v = serde_json::json!({ "ok": !r.failed(), "checks": r.0 });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        for c in &r.0 {
            let mark = match c.status {
                Status::Ok => "ok  ",
                Status::Fail => "FAIL",
                Status::Skip => "skip",
            };
            println!("{mark}  {:<28} {}", c.check, c.detail);
            if let Some(fix) = &c.fix {
                println!("      fix: {fix}");
            }
        }
    }
    if r.failed() {
        return Err(crate::commands::Failed.into());
    }
    Ok(())
}

fn site(r: &mut Report, dir: &Path, salt_python: Option<&Path>) {
    let loaded = MasterOpts::load(dir).and_then(|o| Ok((o, Settings::load(dir)?)));
    let (opts, settings) = match loaded {
        Ok(x) => x,
        Err(e) => {
            r.fail(
                "master config",
                e.to_string(),
                format!("virtseed reads the master's config in {}/master (pass -c DIR where it is) and its own settings in {}/virtseed", dir.display(), dir.display()),
            );
            return;
        }
    };
    r.ok(
        "master config",
        format!("{}/master; sidecar id {:?}", dir.display(), settings.id),
    );
    pki_dir(r, &opts);
    sidecar_key(r, &opts, &settings);
    master_port(r, &opts);
    syndic(r, &opts, &settings);
    peers(r, &opts, &settings);
    let clones = libvirt(r, dir);
    clone_keys(r, &opts, &settings, &clones);
    modules(r, dir, &settings, salt_python);
}

/// The sidecars beside other masters (`peers:`): each one's key accepted here (its offers
/// are checked with it), and this sidecar's accepted on its master (signed in there once).
fn peers(r: &mut Report, opts: &MasterOpts, settings: &Settings) {
    if settings.peers.is_empty() {
        return;
    }
    let mut wrong = Vec::new();
    let mut fixes = Vec::new();
    for p in &settings.peers {
        if !opts.key_dir().join("minions").join(&p.id).exists() {
            wrong.push(format!("{}'s key is not accepted on this master", p.id));
            fixes.push(format!("`salt-key -a {}` here", p.id));
        }
        if !virtseed::peers::signed_in_once(&settings.pki_dir, p) {
            wrong.push(format!(
                "this sidecar has not signed in to {}'s master at {}",
                p.id,
                p.address()
            ));
            fixes.push(format!(
                "`salt-key -a {}` on that master (the sidecar signs in while it runs)",
                settings.id
            ));
        }
    }
    let names: Vec<_> = settings.peers.iter().map(|p| p.id.as_str()).collect();
    if wrong.is_empty() {
        r.ok(
            "peers",
            format!(
                "{}: each one's key accepted here, and this sidecar's on each one's master",
                names.join(", ")
            ),
        );
    } else {
        r.fail("peers", wrong.join("; "), fixes.join("; "));
    }
}

fn pki_dir(r: &mut Report, opts: &MasterOpts) {
    if let Some(why) = opts.key_store_problem() {
        r.fail(
            "key store",
            why,
            "virtseed writes accepted keys as files: keep `keys.cache_driver` at localfs_key",
        );
    }
    let minions = opts.key_dir().join("minions");
    let probe = minions.join(format!(".virtseed-doctor-{}", std::process::id()));
    match std::fs::write(&probe, b"") {
        Ok(()) => {
            let _ = std::fs::remove_file(&probe);
            r.ok("pki_dir", format!("{} writable", minions.display()));
        }
        Err(e) => r.fail(
            "pki_dir",
            format!("cannot write in {}: {e}", minions.display()),
            format!(
                "run virtseed as the master's user ({:?} in the master's config), who owns pki_dir; virtseed pre-accepts keys there",
                opts.user
            ),
        ),
    }
}

fn sidecar_key(r: &mut Report, opts: &MasterOpts, settings: &Settings) {
    let own = settings.pki_dir.join("minion.pub");
    let accepted = opts.key_dir().join("minions").join(&settings.id);
    let Ok(ours) = std::fs::read_to_string(&own) else {
        r.fail(
            "sidecar key",
            format!("no {}", own.display()),
            format!(
                "start the sidecar once (`virtseed -c {} run`, or `systemctl start virtseed`): it makes its key and pre-accepts it",
                opts.config_dir.display()
            ),
        );
        return;
    };
    match std::fs::read_to_string(&accepted) {
        Ok(theirs) if theirs.trim() == ours.trim() => {
            r.ok("sidecar key", format!("{} accepted", settings.id));
        }
        Ok(_) => r.fail(
            "sidecar key",
            format!("{} holds another key than {}", accepted.display(), own.display()),
            format!(
                "another minion has the id {:?}: give the sidecar its own `id:` in its settings, or `salt-key -d {}` if that key is stale",
                settings.id, settings.id
            ),
        ),
        Err(_) => r.fail(
            "sidecar key",
            format!("{:?} is not accepted ({} missing)", settings.id, accepted.display()),
            format!(
                "`salt-key -a {}` (the sidecar places its key itself when it may write pki_dir)",
                settings.id
            ),
        ),
    }
}

/// A syndic node: what the master of masters needs for its own front ends.
fn syndic(r: &mut Report, opts: &MasterOpts, settings: &Settings) {
    if let Some(top) = &opts.syndic_master {
        r.ok(
            "syndic",
            format!(
                "this master is a syndic node under {top}: clones sign in here and the top reaches them through salt-syndic; for `salt-run cloud.*` and `salt-cloud` on the top, copy {} to the top's pki_dir/virtseed_sidecars/{} (the top checks the sidecar's answers with it)",
                opts.key_dir().join("minions").join(&settings.id).display(),
                settings.id
            ),
        );
    }
}

fn master_port(r: &mut Report, opts: &MasterOpts) {
    use std::net::ToSocketAddrs;
    let addr = format!("{}:{}", opts.host, opts.ret_port);
    let up = addr
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .is_some_and(|a| std::net::TcpStream::connect_timeout(&a, Duration::from_secs(2)).is_ok());
    if up {
        r.ok("master reachable", format!("request server at {addr}"));
    } else {
        r.fail(
            "master reachable",
            format!("nothing answers at {addr} (ret_port)"),
            "start salt-master (`systemctl start salt-master`); check `interface` and `ret_port` in its config",
        );
    }
}

/// Each provider's libvirt, then each profile's base domain on it.
/// Each clone virtseed made (with the profiles known now): is its key accepted on every
/// master it signs in to (this one; those in `masters:` when its profile lists several)?
fn clone_keys(
    r: &mut Report,
    opts: &MasterOpts,
    settings: &Settings,
    clones: &[(
        virtseed::libvirt::Instance,
        Option<virtseed::config::cloud::Profile>,
    )],
) {
    if clones.is_empty() {
        return;
    }
    let mc = match virtseed::cloud::MasterCtx::from_opts(opts, settings) {
        Ok(mc) => mc,
        Err(e) => {
            r.skip(
                "clone keys",
                format!("cannot read the masters' key stores: {e}"),
            );
            return;
        }
    };
    let (mut lacking, mut ours, mut elsewhere) = (Vec::new(), 0, 0);
    for (i, prof) in clones {
        let own = &i.ownership;
        let finger = if own.fingerprint.is_empty() {
            virtseed::cloud::autoaccept::first_seen(&mc.state_dir, &i.name)
        } else {
            Some(own.fingerprint.clone())
        };
        let several = prof
            .as_ref()
            .is_some_and(|p| virtseed::cloud::MasterCtx::listed_masters(&p.minion) > 1);
        // No key at all under its name here: a clone another master made on a shared host
        // (the providers do not say which), or one whose key was deleted on purpose.
        if virtseed::pki::key_state(&mc.pki_dir, &i.name, finger.as_deref()) == "none" {
            elsewhere += 1;
            continue;
        }
        ours += 1;
        let mut stores = vec![(mc.config_dir.clone(), mc.pki_dir.clone())];
        if several {
            stores.extend(
                mc.peers
                    .iter()
                    .map(|p| (p.config_dir.clone(), p.key_dir.clone())),
            );
        }
        for (dir, keys) in stores {
            let state = virtseed::pki::key_state(&keys, &i.name, finger.as_deref());
            if state != "accepted" {
                lacking.push(format!("{} on {}: {state}", i.name, dir.display()));
            }
        }
        // Masters on hosts of their own, as their sidecars last confirmed (a clone another
        // sidecar made is that sidecar's to follow: `none` here).
        let remote = virtseed::peers::recorded_states(&mc.state_dir, &settings.peers, &i.name);
        for (master, state) in remote.into_iter().filter(|_| several) {
            if state != "accepted" && state != "none" {
                lacking.push(format!("{} on {master}: {state}", i.name));
            }
        }
    }
    if lacking.is_empty() {
        r.ok(
            "clone keys",
            format!(
                "{ours} clone(s), each one's key accepted on every master it signs in to{}",
                if elsewhere > 0 {
                    format!("; {elsewhere} other clone(s) on these hosts have no key here (made through another master, or their key was deleted)")
                } else {
                    String::new()
                }
            ),
        );
    } else {
        r.fail(
            "clone keys",
            lacking.join("; "),
            "a clone whose key is not accepted where it signs in does not answer there: accept it (`salt-key -f NAME` shows the key, `salt-cloud -F` its fingerprint), or destroy and make the clone again",
        );
    }
}

/// Each provider's libvirt and each profile's base; returns the clones virtseed made on the
/// hosts that answered, each with its profile as configured now.
fn libvirt(
    r: &mut Report,
    dir: &Path,
) -> Vec<(
    virtseed::libvirt::Instance,
    Option<virtseed::config::cloud::Profile>,
)> {
    let cfg = CloudConfig::load(dir);
    for e in &cfg.errors {
        r.fail(
            "cloud config",
            e.to_string(),
            format!(
                "`virtseed -c {} check-config` shows every profile",
                dir.display()
            ),
        );
    }
    let mut hypervisors = std::collections::BTreeMap::new();
    for (alias, entries) in &cfg.providers {
        for p in entries.iter().filter(|p| p.driver == "libvirt") {
            let Some(url) = &p.url else { continue };
            let check = format!("provider {alias}");
            match Hypervisor::open(url) {
                Ok(hv) => {
                    r.ok(check, format!("{url} answers"));
                    hypervisors.insert(url.clone(), hv);
                }
                Err(e) => r.fail(
                    check,
                    format!("{url}: {e}"),
                    format!("check `url:` in its provider; `virsh -c {url} list --all` must work as virtseed's user (in the libvirt group for qemu:///system)"),
                ),
            }
        }
    }
    for (name, prof) in &cfg.profiles {
        let check = format!("profile {name}");
        let Some(hv) = hypervisors.get(&prof.url) else {
            r.skip(check, format!("{} is not reachable", prof.url));
            continue;
        };
        match hv.base(&prof.base_domain) {
            Ok(b)
                if prof.accept == virtseed::config::cloud::AcceptMode::OnFirstAuth
                    && !b.xml.has_agent_channel() =>
            {
                r.fail(
                    check,
                    format!("accept: on_first_auth reads each clone's own key through the QEMU guest agent, and base {} has no org.qemu.guest_agent.0 channel: no key would ever be accepted", prof.base_domain),
                    format!("add the channel to the base (`virsh edit {}`: <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>) and install qemu-guest-agent in its image", prof.base_domain),
                )
            }
            Ok(b) => r.ok(
                check,
                format!(
                    "base {} shut off, {} disk(s); {}; the guest's identity unit, which removes what a booted template left (minion id and key, SSH host keys, leases), is not checked (inside the image, docs/golden-images.md)",
                    prof.base_domain,
                    b.disks.len(),
                    if virtseed::libvirt::domain_xml::boots_kernel_directly(&b.xml) {
                        "each clone's machine-id is its UUID, on its kernel command line"
                    } else {
                        "boots through a bootloader: a booted template's /etc/machine-id reaches PID 1 and journald in every clone (virtseed's guest side replaces it before the network and the minion start; empty it in the template to have none)"
                    }
                ),
            ),
            Err(e) => r.fail(
                check,
                e.to_string(),
                format!("`virsh -c {} list --all` shows the domains; the base must exist and be shut off", prof.url),
            ),
        }
    }
    let mut clones = Vec::new();
    for hv in hypervisors.values() {
        for i in hv.list().unwrap_or_default() {
            let prof = cfg.profiles.get(&i.ownership.profile).cloned();
            clones.push((i, prof));
        }
    }
    clones
}

/// Asked of Salt: which runner and cloud driver it loads, their release, the sidecar id they
/// send to, and whether that sidecar answers `test.ping`.
const MODULES_PROBE: &str = r#"
import json, os, sys
import salt.client, salt.config, salt.loader, salt.version
conf = sys.argv[1]
opts = salt.config.master_config(os.path.join(conf, "master"))
out = {"salt": salt.version.__version__, "extension_modules": opts["extension_modules"],
       "clean_dynamic_modules": opts.get("clean_dynamic_modules", True)}
def find(what, loader, fun):
    try:
        f = loader[fun]
    except Exception as e:
        out[what] = {"error": "not loaded: %s" % (e,)}
        return None
    g = getattr(f, "func", f).__globals__
    vc = g.get("vc")
    out[what] = {"file": g.get("__file__"), "version": getattr(vc, "VERSION", None)}
    return vc
vc = find("runner", salt.loader.runner(opts, utils=salt.loader.utils(opts)), "cloud.profile")
find("cloud", salt.loader.clouds(salt.config.cloud_config(os.path.join(conf, "cloud"))), "libvirt.create")
if vc is not None and hasattr(vc, "default_sidecar"):
    sid = vc.default_sidecar(opts)
    out["sidecar"] = sid
    ids = vc.members(sid) if hasattr(vc, "members") else [sid]
    try:
        got = salt.client.LocalClient(mopts=opts).cmd(ids, "test.ping", tgt_type="list", timeout=5)
        out["pings"] = {i: got.get(i) is True for i in ids}
    except Exception as e:
        out["ping_error"] = str(e)
print(json.dumps(out))
"#;

/// A copy in `extension_modules` (from `install-runner`) is deleted by the next
/// `salt-run saltutil.sync_all` (or `sync_runners`/`sync_clouds`) while Salt's
/// `clean_dynamic_modules` is on: Salt then loads its own runner and driver again.
fn swept_note(probe: &serde_json::Value, file: &str) -> String {
    let ext = probe["extension_modules"].as_str().unwrap_or_default();
    let swept = probe["clean_dynamic_modules"].as_bool().unwrap_or(true);
    if swept && !ext.is_empty() && Path::new(file).starts_with(ext) {
        "; a copy in extension_modules: `salt-run saltutil.sync_all` deletes it (clean_dynamic_modules), install the wheel or the Debian package instead".into()
    } else {
        String::new()
    }
}

fn modules(r: &mut Report, dir: &Path, settings: &Settings, salt_python: Option<&Path>) {
    let Some(py) = salt_modules::salt_python(salt_python) else {
        r.fail(
            "salt modules",
            "no Salt found (salt-master, salt-run or salt-cloud on PATH)",
            "pass --salt-python with the Python that runs Salt",
        );
        return;
    };
    let v = match salt_modules::run_probe(&py, MODULES_PROBE, dir) {
        Ok(v) => v,
        Err(e) => {
            r.fail(
                "salt modules",
                format!("{e:#}"),
                "check that Salt runs: `salt-run --versions-report`",
            );
            return;
        }
    };
    let ours = env!("CARGO_PKG_VERSION");
    let mut all_ok = true;
    for (what, label) in [
        ("runner", "cloud runner"),
        ("cloud", "libvirt cloud driver"),
    ] {
        let m = &v[what];
        let file = m["file"].as_str().unwrap_or_default();
        let check = format!("salt {label}");
        match m["version"].as_str() {
            Some(theirs) if theirs == ours => r.ok(
                check,
                format!("{file}, virtseed {theirs}{}", swept_note(&v, file)),
            ),
            Some(theirs) => {
                all_ok = false;
                r.fail(
                    check,
                    format!("{file} is virtseed {theirs}, this binary is {ours}"),
                    format!("install one release of both: `pip install virtseed=={ours}`, or `virtseed -c {} install-runner` (a copy in extension_modules wins over the pip package)", dir.display()),
                );
            }
            None => {
                all_ok = false;
                let found = m["error"].as_str().map_or_else(
                    || {
                        format!(
                            "Salt {} loads {file}, not virtseed's",
                            v["salt"].as_str().unwrap_or("?")
                        )
                    },
                    str::to_string,
                );
                r.fail(
                    check,
                    found,
                    format!("`pip install virtseed` in Salt's Python (`salt-pip install virtseed` on a onedir), or `virtseed -c {} install-runner`", dir.display()),
                );
            }
        }
    }
    if !all_ok {
        r.skip("sidecar running", "needs virtseed's runner");
        return;
    }
    sidecar_running(r, &v, settings);
}

fn sidecar_running(r: &mut Report, v: &serde_json::Value, settings: &Settings) {
    let sid = v["sidecar"].as_str().unwrap_or_default();
    // Several ids (a group beside a cluster's or a multi-master set's masters): any serves.
    let group: Vec<&str> = sid.split(',').map(str::trim).collect();
    let others: Vec<&str> = group
        .iter()
        .copied()
        .filter(|g| *g != settings.id)
        .collect();
    let sid = settings.id.as_str();
    let also = if others.is_empty() {
        String::new()
    } else {
        format!(" (the front ends also reach {})", others.join(", "))
    };
    if !group.contains(&sid) {
        let sid = v["sidecar"].as_str().unwrap_or_default();
        r.fail(
            "sidecar running",
            format!(
                "the runner sends jobs to {sid:?}, this sidecar's id is {:?}",
                settings.id
            ),
            format!(
                "set `virtseed_sidecar: {}` in the master's config (or a provider's `sidecar:`)",
                settings.id
            ),
        );
    } else if v["pings"][sid].as_bool() == Some(true) {
        r.ok("sidecar running", format!("{sid} answers test.ping{also}"));
    } else {
        let why = v["ping_error"]
            .as_str()
            .map(|e| format!(": {e}"))
            .unwrap_or_default();
        r.fail(
            "sidecar running",
            format!("{sid} does not answer test.ping{why}"),
            "start it as the master's user: `systemctl start virtseed`, or `virtseed -c DIR run`",
        );
    }
}
