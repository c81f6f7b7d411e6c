//! Identity on a real master (3006.30, 3007.17, 3008.5) and a real salt-minion, no VM: after
//! `virtseed profile`, the seed image is read as cloud-init would (mtools, no mount), a
//! salt-minion is built from it, and it answers test.ping on its first authentication.

mod harness;

use harness::pool::{virsh_ok, Pool};
use harness::site::{master_with_base, master_with_base_conf};
use harness::{mread, text, virtseed, wait_for, EventLog, Master, Minion};
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use yaml_serde::Value as Y;

fn body_lines(pem: &str) -> Vec<String> {
    pem.lines()
        .filter(|l| !l.starts_with("-----") && l.len() > 40)
        .map(str::to_string)
        .collect()
}

fn grep_tree(dir: &Path, needles: &[String]) -> Vec<String> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(bytes) = std::fs::read(&p) {
                let t = String::from_utf8_lossy(&bytes);
                if needles.iter().any(|n| t.contains(n.as_str())) {
                    hits.push(p.display().to_string());
                }
            }
        }
    }
    hits
}

/// The systemd credentials in a domain's SMBIOS OEM strings, decoded, by name.
fn smbios_credentials(domain: &str) -> std::collections::BTreeMap<String, Vec<u8>> {
    use base64::Engine;
    let xml = virsh_ok(&["dumpxml", "--security-info", domain]);
    let prefix = "<entry>io.systemd.credential.binary:";
    xml.match_indices(prefix)
        .map(|(i, _)| {
            let e = &xml[i + prefix.len()..];
            let (k, v) = e[..e.find('<').unwrap()].split_once('=').unwrap();
            let v = base64::engine::general_purpose::STANDARD.decode(v).unwrap();
            (k.to_string(), v)
        })
        .collect()
}

fn setup(version: &str, tag: &str) -> (Master, Pool, String) {
    let (m, p, base) = master_with_base(version, tag, |base| {
        format!(
            "web:\n  provider: kvm\n  base_domain: {base}\n  minion:\n    master: 127.0.0.1\n    log_level: info\n  grains:\n    role: web\nweb-smbios:\n  extends: web\n  seed: smbios\nweb-own:\n  extends: web\n  accept: on_first_auth\nweb-manual:\n  extends: web\n  accept: manual\n\
             web-guide:\n  extends: web\n  ssh_username: root\n  password: guide-secret\n"
        )
    });
    std::fs::write(
        m.dir.join("virtseed"),
        format!("salt_version: '{version}'\n"),
    )
    .unwrap();
    (m, p, base)
}

fn seeded_minion_answers_at_once(version: &str) {
    let (m, p, _base) = setup(version, &format!("id{}", &version[..4]));
    let events = EventLog::start(&m);
    let name = format!("{}w", p.prefix);

    let out = virtseed(&m.dir, &["profile", "web", &name]);
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let ret: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let finger = ret[&name]["fingerprint"].as_str().unwrap().to_string();
    assert_eq!(ret[&name]["seed"], "cloud-init");

    // Pre-accepted before the machine could ask, as the exact key minted.
    let accepted = std::fs::read_to_string(m.pki().join("minions").join(&name)).unwrap();
    assert_eq!(salt_proto::keys::pem_finger(&accepted), finger);

    // The seed, read as cloud-init reads it.
    let seed = p.dir.join(format!("{name}-seed.img"));
    let blkid = Command::new("blkid")
        .args(["-p", "-o", "export", seed.to_str().unwrap()])
        .output()
        .unwrap();
    let blkid = text(&blkid.stdout);
    assert!(
        blkid.contains("LABEL=cidata") && blkid.contains("TYPE=vfat"),
        "{blkid}"
    );
    let xml = virsh_ok(&["dumpxml", &name]);
    assert!(
        xml.contains(&format!("{name}-seed.img")) && xml.contains("<readonly/>"),
        "{xml}"
    );
    let meta: Y = yaml_serde::from_str(&mread(&seed, "meta-data")).unwrap();
    assert_eq!(
        meta["instance-id"].as_str().unwrap(),
        ret[&name]["id"].as_str().unwrap()
    );
    assert_eq!(meta["local-hostname"].as_str().unwrap(), name);
    let ud = mread(&seed, "user-data");
    assert!(ud.starts_with("#cloud-config\n"));
    let ud: Y = yaml_serde::from_str(&ud).unwrap();
    let sm = &ud["salt_minion"];
    assert_eq!(sm["public_key"].as_str().unwrap(), accepted);
    let master_pub = std::fs::read_to_string(m.pki().join("master.pub")).unwrap();
    assert_eq!(
        ud["write_files"][0]["content"].as_str().unwrap(),
        master_pub
    );
    assert_eq!(
        ud["write_files"][0]["path"].as_str().unwrap(),
        "/etc/salt/pki/minion/minion_master.pub"
    );
    let conf = &sm["conf"];
    assert_eq!(conf["id"].as_str().unwrap(), name);
    let ret_port = std::fs::read_to_string(m.dir.join("master")).unwrap();
    assert!(ret_port.contains(&format!(
        "ret_port: {}",
        conf["master_port"].as_u64().unwrap()
    )));
    assert_eq!(sm["grains"]["role"].as_str(), Some("web"));
    assert_eq!(sm["grains"]["virtseed"]["profile"].as_str(), Some("web"));
    let private = sm["private_key"].as_str().unwrap().to_string();

    // A real minion with exactly what the seed gives it.
    let mdir = m.dir.join(format!("guest-{name}"));
    std::fs::create_dir_all(mdir.join("pki")).unwrap();
    std::fs::write(mdir.join("pki/minion.pem"), &private).unwrap();
    std::fs::write(
        mdir.join("pki/minion.pub"),
        sm["public_key"].as_str().unwrap(),
    )
    .unwrap();
    std::fs::write(mdir.join("pki/minion_master.pub"), &master_pub).unwrap();
    let mut conf_text = yaml_serde::to_string(conf).unwrap();
    conf_text.push_str(&format!(
        "grains: {}\n",
        serde_json::to_string(&yaml_to_json(&sm["grains"])).unwrap()
    ));
    let minion = Minion::start(&m, &mdir, &conf_text);
    wait_for(
        "the seeded minion's start event",
        Duration::from_secs(90),
        || events.text().contains(&format!("salt/minion/{name}/start")),
    );
    let (ok, v) = m.salt_json(&name, &["test.ping"], 30);
    assert!(ok && v[&name] == true, "{v} {}", minion.log_text());
    let (_, g) = m.salt_json(&name, &["grains.get", "virtseed:base"], 30);
    assert!(g[&name].as_str().unwrap().ends_with("base"), "{g}");
    // The addresses the minion reported (its grains, in the master's data cache: 3006/3007
    // and 3008 keep them differently) are the clone's in `list`, loopback left out.
    let (_, ips) = m.salt_json(&name, &["grains.get", "ipv4"], 30);
    let ip = ips[&name]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a.as_str())
        .find(|a| !a.starts_with("127."))
        .unwrap_or_else(|| panic!("no address but loopback in the minion's grains: {ips}"))
        .to_string();
    let row = || {
        let out = virtseed(&m.dir, &["list"]);
        text(&out.stdout)
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_default()
            .to_string()
    };
    wait_for(
        "the minion's addresses in `list`",
        Duration::from_secs(30),
        || row().contains(&ip),
    );
    assert!(!row().contains("127.0.0.1"), "{}", row());
    // Never pending: the master went straight to accept.
    assert!(!m.pki().join("minions_pre").join(&name).exists());
    let auths: Vec<serde_json::Value> = events
        .events()
        .into_iter()
        .filter(|e| e["tag"] == "salt/auth" && e["data"]["id"] == name.as_str())
        .collect();
    assert!(!auths.is_empty());
    assert!(
        auths.iter().all(|e| e["data"]["act"] == "accept"),
        "{auths:?}"
    );
    let want_act = if version.starts_with("3008") {
        "accepted"
    } else {
        "accept"
    };
    assert!(
        events.events().iter().any(|e| e["tag"] == "salt/key"
            && e["data"]["id"] == name.as_str()
            && e["data"]["act"] == want_act),
        "no salt/key {want_act} event for {name}"
    );

    // An impostor with the same id and its own key is denied; the real one keeps answering.
    let idir = m.dir.join(format!("impostor-{name}"));
    let impostor = Minion::start(
        &m,
        &idir,
        &format!(
            "id: {name}\nmaster: 127.0.0.1\nmaster_port: {}\npublish_port: {}\n",
            conf["master_port"].as_u64().unwrap(),
            conf["publish_port"].as_u64().unwrap()
        ),
    );
    wait_for("the impostor to be denied", Duration::from_secs(90), || {
        m.pki().join("minions_denied").join(&name).exists()
    });
    drop(impostor);
    assert_eq!(
        std::fs::read_to_string(m.pki().join("minions").join(&name)).unwrap(),
        accepted
    );
    let (ok, v) = m.salt_json(&name, &["test.ping"], 30);
    assert!(ok && v[&name] == true, "{v}");

    // No private key material in virtseed's output, the events, the job cache or the logs.
    let needles = body_lines(&private);
    assert!(!needles.is_empty());
    let out_text = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(!needles.iter().any(|n| out_text.contains(n.as_str())));
    assert!(!needles.iter().any(|n| events.text().contains(n.as_str())));
    let hits = grep_tree(&m.dir.join("cache"), &needles);
    assert!(
        hits.is_empty(),
        "private key in the master's cache: {hits:?}"
    );
    let hits = grep_tree(&m.dir.join("log"), &needles);
    assert!(hits.is_empty(), "private key in logs: {hits:?}");

    // Destroy removes the key, the seed volume and the master's cache for the id.
    drop(minion);
    let cached = |m: &Master| {
        m.dir.join("cache/minions").join(&name).exists()
            || m.dir
                .join("cache/grains")
                .join(format!("{name}.p"))
                .exists()
    };
    assert!(cached(&m), "the master cached nothing for {name}?");
    let out = virtseed(&m.dir, &["destroy", &name]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!m.pki().join("minions").join(&name).exists());
    assert!(!cached(&m));
    assert!(!seed.exists());
    assert_eq!(p.files(), ["base-vda.qcow2"]);
    wait_for("salt/key delete", Duration::from_secs(10), || {
        events.events().iter().any(|e| {
            e["tag"] == "salt/key"
                && e["data"]["id"] == name.as_str()
                && e["data"]["act"] == "delete"
        })
    });
}

fn yaml_to_json(v: &Y) -> serde_json::Value {
    serde_json::to_value(v).unwrap()
}

#[test]
fn seeded_minion_answers_at_once_3006() {
    seeded_minion_answers_at_once("3006.30");
}

#[test]
fn seeded_minion_answers_at_once_3007() {
    seeded_minion_answers_at_once("3007.17");
}

#[test]
fn seeded_minion_answers_at_once_3008() {
    seeded_minion_answers_at_once("3008.5");
}

#[test]
fn smbios_seed_and_refusals() {
    let (m, p, _base) = setup("3007.17", "smb");
    let name = format!("{}s", p.prefix);
    let out = virtseed(&m.dir, &["profile", "web-smbios", &name]);
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let xml = virsh_ok(&["dumpxml", "--security-info", &name]);
    assert!(xml.contains("<smbios mode='sysinfo'/>"), "{xml}");
    let creds = smbios_credentials(&name);
    let get = |k: &str| String::from_utf8(creds[k].clone()).unwrap();
    assert_eq!(get("virtseed.minion_id"), name);
    let accepted = std::fs::read_to_string(m.pki().join("minions").join(&name)).unwrap();
    assert_eq!(get("virtseed.minion.pub"), accepted);
    assert_eq!(
        get("virtseed.minion_master.pub"),
        std::fs::read_to_string(m.pki().join("master.pub")).unwrap()
    );
    assert!(get("virtseed.minion.pem").contains("PRIVATE KEY"));
    assert!(get("virtseed.minion.conf").contains("master: 127.0.0.1"));
    assert!(
        !p.dir.join(format!("{name}-seed.img")).exists(),
        "smbios needs no seed volume"
    );

    // Another machine's accepted key under a new name is never replaced.
    let other = format!("{}o", p.prefix);
    let theirs = salt_proto::keys::PrivateKey::generate(2048).unwrap();
    std::fs::write(
        m.pki().join("minions").join(&other),
        theirs.public_key().pem(),
    )
    .unwrap();
    let out = virtseed(&m.dir, &["profile", "web", &other]);
    assert!(!out.status.success());
    assert!(
        text(&out.stdout).contains("already has an accepted key"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(
        std::fs::read_to_string(m.pki().join("minions").join(&other)).unwrap(),
        theirs.public_key().pem()
    );
    assert_eq!(p.domains().len(), 2, "nothing made for {other}");

    // The guide's deploy keys without `seed:` mean `seed: ssh`, which only virtseed's
    // salt-cloud driver deploys: check-config says so and why, `virtseed profile` refuses
    // it, naming the rule and the way out, and makes nothing.
    let out = virtseed(&m.dir, &["check-config"]);
    let cc = text(&out.stdout);
    assert!(
        cc.contains("seed: ssh (from ssh_username + password)")
            && cc.contains("seed: smbios (as written)")
            && cc.contains("seed: cloud-init (the default)")
            && !cc.contains("guide-secret"),
        "{cc}"
    );
    let g = format!("{}g", p.prefix);
    let out = virtseed(&m.dir, &["profile", "web-guide", &g]);
    let said = text(&out.stdout) + &text(&out.stderr);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("`seed: ssh` (from ssh_username + password)")
            && said.contains("salt-cloud -p web-guide NAME")
            && !said.contains("guide-secret"),
        "{said}"
    );
    assert!(!m.pki().join("minions").join(&g).exists());
    assert_eq!(p.domains().len(), 2, "nothing made for {g}");

    // Rollback after the key step removes the key again.
    let r = format!("{}k", p.prefix);
    let out = virtseed(
        &m.dir,
        &["profile", "web", &r, "--fail-after", "key_accepted"],
    );
    assert!(!out.status.success());
    assert!(!m.pki().join("minions").join(&r).exists());
    assert!(!p.dir.join(format!("{r}-seed.img")).exists());

    let out = virtseed(&m.dir, &["destroy", &name]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!m.pki().join("minions").join(&name).exists());
    assert_eq!(p.files(), ["base-vda.qcow2"]);
}

/// Runs guest/virtseed-credentials.sh (the golden image's unit) into a scratch root, with the
/// identity from `creds` (systemd credentials) or `seed` (the NoCloud volume's files).
/// The machine is the one with UUID `GUEST_UUID` unless `guest_unit_as` says otherwise.
fn guest_unit(root: &Path, creds: Option<&Path>, seed: Option<&Path>) -> String {
    guest_unit_as(root, creds, seed, GUEST_UUID, None)
}

const GUEST_UUID: &str = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";

/// `guest_unit` on the machine with `uuid`, with the warm-state port at `warm_port` (a
/// path that exists plays the port being there).
fn guest_unit_as(
    root: &Path,
    creds: Option<&Path>,
    seed: Option<&Path>,
    uuid: &str,
    warm_port: Option<&Path>,
) -> String {
    let mut c = Command::new("sh");
    c.arg(harness::repo().join("guest/virtseed-credentials.sh"))
        .env("VIRTSEED_ROOT", root)
        .env("VIRTSEED_UUID", uuid)
        .env(
            "VIRTSEED_WARM_PORT",
            warm_port.unwrap_or(Path::new("/nonexistent/org.virtseed.warm.0")),
        )
        .env_remove("CREDENTIALS_DIRECTORY")
        .env_remove("VIRTSEED_SEED");
    if let Some(d) = creds {
        c.env("CREDENTIALS_DIRECTORY", d);
    }
    if let Some(d) = seed {
        c.env("VIRTSEED_SEED", d);
    }
    let out = c.output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
}

/// Makes `name` with `profile` and copies every file of its NoCloud volume into `dir`, as the
/// guest unit finds them (mtools, no mount).
fn profile_and_volume(m: &Master, p: &Pool, profile: &str, name: &str, dir: &Path) {
    let out = virtseed(&m.dir, &["profile", profile, name]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    std::fs::create_dir_all(dir).unwrap();
    let img = p.dir.join(format!("{name}-seed.img"));
    let out = Command::new("mcopy")
        .args([
            "-n",
            "-i",
            img.to_str().unwrap(),
            "::*",
            dir.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "mcopy: {}", text(&out.stderr));
}

fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn guest_unit_installs_the_identity_from_either_seed_channel() {
    let (m, p, _base) = setup("3007.17", "gu");
    let scratch = m.dir.join("guest-unit");
    let master_pub = std::fs::read_to_string(m.pki().join("master.pub")).unwrap();

    // seed: cloud-init, read from the volume's files (as the unit reads them in the guest).
    let name = format!("{}c", p.prefix);
    let vol = scratch.join("volume");
    profile_and_volume(&m, &p, "web", &name, &vol);
    let img = p.dir.join(format!("{name}-seed.img"));
    let root = scratch.join("root-cloud-init");
    let said = guest_unit(&root, None, Some(&vol));
    assert!(
        said.contains(&format!("identity of {name} (cloud-init, its key)")),
        "{said}"
    );
    let ud: Y = yaml_serde::from_str(&mread(&img, "user-data")).unwrap();
    let pki = root.join("etc/salt/pki/minion");
    // Exactly the key the master accepted, and the private key cloud-init would have written.
    let accepted = std::fs::read_to_string(m.pki().join("minions").join(&name)).unwrap();
    assert_eq!(
        std::fs::read_to_string(pki.join("minion.pub")).unwrap(),
        accepted
    );
    assert_eq!(
        std::fs::read_to_string(pki.join("minion.pem")).unwrap(),
        ud["salt_minion"]["private_key"].as_str().unwrap()
    );
    assert_eq!(mode(&pki.join("minion.pem")), 0o400);
    assert_eq!(
        std::fs::read_to_string(pki.join("minion_master.pub")).unwrap(),
        master_pub
    );
    assert_eq!(
        std::fs::read_to_string(root.join("etc/salt/minion_id")).unwrap(),
        name
    );
    let conf: Y = yaml_serde::from_str(
        &std::fs::read_to_string(root.join("etc/salt/minion.d/virtseed.conf")).unwrap(),
    )
    .unwrap();
    assert_eq!(conf["id"].as_str(), Some(name.as_str()));
    assert_eq!(conf["grains"]["role"].as_str(), Some("web"));
    // cloud-init gets its own copy of the seed, root-only, so it no longer needs the volume.
    let nocloud = root.join("var/lib/cloud/seed/nocloud");
    for f in ["meta-data", "user-data"] {
        assert_eq!(
            std::fs::read_to_string(nocloud.join(f)).unwrap(),
            mread(&img, f),
            "{f}"
        );
        assert_eq!(mode(&nocloud.join(f)), 0o600, "{f}");
    }

    // seed: smbios, from the credentials systemd imports (decoded from the domain's OEM strings).
    let sname = format!("{}s", p.prefix);
    let out = virtseed(&m.dir, &["profile", "web-smbios", &sname]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let creds = scratch.join("credentials");
    std::fs::create_dir_all(&creds).unwrap();
    for (k, v) in smbios_credentials(&sname) {
        std::fs::write(creds.join(k), v).unwrap();
    }
    let sroot = scratch.join("root-smbios");
    let said = guest_unit(&sroot, Some(&creds), None);
    assert!(said.contains("(smbios, its key)"), "{said}");
    let accepted = std::fs::read_to_string(m.pki().join("minions").join(&sname)).unwrap();
    assert_eq!(
        std::fs::read_to_string(sroot.join("etc/salt/pki/minion/minion.pub")).unwrap(),
        accepted
    );
    assert_eq!(
        std::fs::read_to_string(sroot.join("etc/salt/minion_id")).unwrap(),
        sname
    );
    assert!(
        !sroot.join("var/lib/cloud").exists(),
        "smbios leaves cloud-init alone"
    );

    // accept: on_first_auth sends no key: the unit installs the id (so the minion starts) and
    // no key (so it makes its own).
    let oname = format!("{}o", p.prefix);
    let ovol = scratch.join("volume-own");
    profile_and_volume(&m, &p, "web-own", &oname, &ovol);
    for f in ["virtseed.minion.pem", "virtseed.minion.pub"] {
        assert!(!ovol.join(f).exists(), "{f} on an on_first_auth volume");
    }
    let oroot = scratch.join("root-own");
    let said = guest_unit(&oroot, None, Some(&ovol));
    assert!(said.contains("no key (the minion makes its own)"), "{said}");
    assert!(oroot.join("etc/salt/minion_id").exists());
    assert!(!oroot.join("etc/salt/pki/minion/minion.pem").exists());
    assert!(!oroot.join("etc/salt/pki/minion/minion.pub").exists());

    // No identity from virtseed: nothing is installed, so the image's minion never starts.
    let empty = scratch.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let nroot = scratch.join("root-none");
    let said = guest_unit(&nroot, Some(&empty), Some(&empty));
    assert!(said.contains("nothing to do"), "{said}");
    assert!(!nroot.join("etc").exists());

    // A reboot of the same machine changes nothing, not even the key the minion made.
    let made = oroot.join("etc/salt/pki/minion/minion.pem");
    std::fs::write(&made, "the key this clone's minion made").unwrap();
    let said = guest_unit(&oroot, None, Some(&ovol));
    assert!(said.contains("installed already"), "{said}");
    assert_eq!(
        std::fs::read_to_string(&made).unwrap(),
        "the key this clone's minion made"
    );

    // A template that was booted before: its state never reaches a clone.
    let droot = scratch.join("root-dirty");
    let template_pem = dirty_template(&droot);
    let hostkey = droot.join("etc/ssh/ssh_host_ed25519_key");
    let uuid2 = "11112222-3333-4444-5555-666677778888";
    let said = guest_unit_as(&droot, Some(&creds), None, uuid2, None);
    assert!(
        said.contains("a new clone: removed the template's"),
        "{said}"
    );
    assert!(said.contains("(smbios, its key)"), "{said}");
    assert_template_state_gone(&droot, &template_pem, "11112222333344445555666677778888");
    assert_eq!(
        std::fs::read_to_string(droot.join("etc/salt/pki/minion/minion.pub")).unwrap(),
        std::fs::read_to_string(m.pki().join("minions").join(&sname)).unwrap(),
        "the clone's own key, installed after the template's went"
    );
    assert_eq!(
        std::fs::read_to_string(droot.join("etc/salt/minion_id")).unwrap(),
        sname
    );
    let newkey = std::fs::read_to_string(&hostkey).unwrap();
    assert!(newkey.contains("OPENSSH PRIVATE KEY") && !newkey.contains("template's"));
    // The new id's journal directory points at the one journald still writes to.
    assert_eq!(
        std::fs::read_link(droot.join("var/log/journal/11112222333344445555666677778888")).unwrap(),
        Path::new("aaaabbbbccccddddeeeeffff00001111")
    );
    // The same clone rebooted keeps its new host key.
    let said = guest_unit_as(&droot, Some(&creds), None, uuid2, None);
    assert!(said.contains("installed already"), "{said}");
    assert_eq!(std::fs::read_to_string(&hostkey).unwrap(), newkey);

    // The domain virtseed boots to save a warm state (the port, no seed): the template's
    // state goes, nothing is installed (virtseed-warm waits for an identity).
    let wroot = scratch.join("root-warm");
    let template_pem = dirty_template(&wroot);
    let port = scratch.join("warm-port");
    std::fs::write(&port, "").unwrap();
    let said = guest_unit_as(&wroot, None, None, uuid2, Some(&port));
    assert!(said.contains("warm-state boot"), "{said}");
    assert_template_state_gone(&wroot, &template_pem, "11112222333344445555666677778888");
    assert!(!wroot.join("etc/salt/minion_id").exists());
    assert!(!wroot.join("var/lib/virtseed/instance").exists());

    for n in [&name, &sname, &oname] {
        let out = virtseed(&m.dir, &["destroy", n]);
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
}

/// What a template booted once with a minion of its own leaves on its disk. Returns its
/// minion's private key.
fn dirty_template(root: &Path) -> String {
    let pem = "-----BEGIN RSA PRIVATE KEY-----\nthe template's\n-----END RSA PRIVATE KEY-----\n";
    let files: &[(&str, &str)] = &[
        ("etc/machine-id", "aaaabbbbccccddddeeeeffff00001111\n"),
        ("etc/salt/minion_id", "template\n"),
        ("etc/salt/pki/minion/minion.pem", pem),
        (
            "etc/salt/pki/minion/minion.pub",
            "the template's public key",
        ),
        (
            "etc/salt/pki/minion/minion_master.pub",
            "the master it knew",
        ),
        ("var/cache/salt/minion/grains.cache.p", "template grains"),
        ("var/lib/cloud/instances/iid-template/sem/done", ""),
        ("var/lib/cloud/data/instance-id", "iid-template"),
        (
            "var/lib/cloud/seed/nocloud/user-data",
            "#cloud-config\n# virtseed\n",
        ),
        (
            "var/lib/dhcp/dhclient.eth0.leases",
            "lease { fixed-address 192.168.122.50; }",
        ),
        ("etc/ssh/ssh_host_ed25519_key", "the template's host key"),
        (
            "etc/ssh/ssh_host_ed25519_key.pub",
            "the template's host key",
        ),
        (
            "var/log/journal/aaaabbbbccccddddeeeeffff00001111/system.journal",
            "",
        ),
    ];
    for (f, body) in files {
        let p = root.join(f);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, body).unwrap();
    }
    std::os::unix::fs::symlink(
        "instances/iid-template",
        root.join("var/lib/cloud/instance"),
    )
    .unwrap();
    pem.to_string()
}

fn assert_template_state_gone(root: &Path, template_pem: &str, machine_id: &str) {
    for f in [
        "var/cache/salt/minion",
        "var/lib/cloud/instance",
        "var/lib/cloud/instances",
        "var/lib/cloud/data",
        "var/lib/cloud/seed/nocloud",
        "var/lib/dhcp/dhclient.eth0.leases",
    ] {
        assert!(!root.join(f).exists(), "{f} left");
    }
    let pki = root.join("etc/salt/pki/minion");
    for f in ["minion.pem", "minion_master.pub"] {
        let body = std::fs::read_to_string(pki.join(f)).unwrap_or_default();
        assert!(
            body != template_pem && !body.contains("the master it knew"),
            "{f} is the template's"
        );
    }
    assert_ne!(
        std::fs::read_to_string(root.join("etc/salt/minion_id")).unwrap_or_default(),
        "template\n"
    );
    assert_eq!(
        std::fs::read_to_string(root.join("etc/machine-id")).unwrap(),
        format!("{machine_id}\n")
    );
    let hostkey = std::fs::read_to_string(root.join("etc/ssh/ssh_host_ed25519_key")).unwrap();
    assert!(
        !hostkey.contains("template's"),
        "the template's SSH host key"
    );
}

/// `accept: manual`: virtseed accepts nothing (the key waits for salt-key or a reactor), and
/// destroy removes whatever key the VM made for its id, accepted or still pending.
#[test]
fn manual_accept_leaves_the_key_to_the_operator_and_destroy_removes_it() {
    let (m, p, base) = setup("3007.17", "man");
    let a = format!("{}a", p.prefix);
    let b = format!("{}b", p.prefix);
    let out = virtseed(&m.dir, &["profile", "web-manual", &a, &b]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let ret: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for n in [&a, &b] {
        assert!(
            !m.pki().join("minions").join(n).exists(),
            "nothing accepted for {n}"
        );
        let img = p.dir.join(format!("{n}-seed.img"));
        let ud = mread(&img, "user-data");
        assert!(
            !ud.contains("private_key") && !ud.contains("PRIVATE KEY"),
            "no key sent"
        );
        assert_eq!(ret[n.as_str()]["fingerprint"].as_str().unwrap_or(""), "");
    }
    // As if the VMs had made their keys: a's accepted by a reactor, b's still pending.
    let ka = salt_proto::keys::PrivateKey::generate(2048).unwrap();
    let kb = salt_proto::keys::PrivateKey::generate(2048).unwrap();
    std::fs::create_dir_all(m.pki().join("minions_pre")).unwrap();
    std::fs::write(m.pki().join("minions").join(&a), ka.public_key().pem()).unwrap();
    std::fs::write(m.pki().join("minions_pre").join(&b), kb.public_key().pem()).unwrap();
    // Someone else's key stays.
    let other = format!("{}z", p.prefix);
    std::fs::write(m.pki().join("minions").join(&other), kb.public_key().pem()).unwrap();
    let out = virtseed(&m.dir, &["destroy", &a, &b]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let ret: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for n in [&a, &b] {
        assert_eq!(ret[n.as_str()]["key_removed"], true, "{ret}");
    }
    assert!(!m.pki().join("minions").join(&a).exists());
    assert!(!m.pki().join("minions_pre").join(&b).exists());
    assert!(m.pki().join("minions").join(&other).exists());
    assert_eq!(p.domains(), [base], "only the base is left");
}

/// The guide's `nameserver` and `swap`, and `userdata_file`, through either seed channel: in
/// the NoCloud volume as cloud-init reads it (user-data `swap:` and the user's keys,
/// `network-config` matching the clone's MACs) and as the guest unit installs them
/// (/etc/resolv.conf, a real swap file in /etc/fstab), and in the SMBIOS credentials.
#[test]
fn resolvers_swap_and_user_data_reach_the_guest() {
    let (m, p, base) = setup("3007.17", "opt");
    let ud = m.dir.join("userdata.yaml");
    std::fs::write(
        &ud,
        "#cloud-config\npackages: [htop]\nsalt_minion: {conf: {master: elsewhere}}\nwrite_files:\n- {path: /etc/motd, content: hello}\n",
    )
    .unwrap();
    harness::site::write_cloud(
        &m,
        &format!(
            "opts:\n  provider: kvm\n  image: {base}\n  minion: {{master: 127.0.0.1}}\n  nameserver: 192.0.2.53 2001:db8::53\n  swap: 8\n  userdata_file: {}\nopts-smbios:\n  extends: opts\n  seed: smbios\n",
            ud.display()
        ),
    );
    let out = virtseed(&m.dir, &["check-config"]);
    let cc = text(&out.stdout);
    assert!(out.status.success(), "{cc}{}", text(&out.stderr));
    assert!(
        cc.contains("nameserver: 192.0.2.53 2001:db8::53, swap: 8 MiB swap file at first boot"),
        "{cc}"
    );
    assert!(
        cc.contains("userdata_file conflict: `salt_minion` is virtseed's"),
        "{cc}"
    );
    assert!(
        cc.contains(&format!(
            "userdata_file: {}: unused (seed: smbios",
            ud.display()
        )),
        "{cc}"
    );

    // seed: cloud-init.
    let scratch = m.dir.join("guest-unit");
    let name = format!("{}c", p.prefix);
    let vol = scratch.join("volume");
    profile_and_volume(&m, &p, "opts", &name, &vol);
    let img = p.dir.join(format!("{name}-seed.img"));
    let user: Y = yaml_serde::from_str(&mread(&img, "user-data")).unwrap();
    assert_eq!(user["swap"]["filename"].as_str(), Some("/swapfile"));
    assert_eq!(user["swap"]["size"].as_u64(), Some(8 << 20));
    assert_eq!(user["packages"][0].as_str(), Some("htop"));
    assert_eq!(
        user["salt_minion"]["conf"]["master"].as_str(),
        Some("127.0.0.1"),
        "virtseed's salt_minion wins"
    );
    let wf = user["write_files"].as_sequence().unwrap();
    assert_eq!(wf[0]["path"].as_str(), Some("/etc/motd"));
    assert_eq!(
        wf[1]["path"].as_str(),
        Some("/etc/salt/pki/minion/minion_master.pub")
    );
    let net: Y = yaml_serde::from_str(&mread(&img, "network-config")).unwrap();
    let xml = virsh_ok(&["dumpxml", &name]);
    for (i, eth) in ["virtseed0", "virtseed1"].iter().enumerate() {
        let mac = net["ethernets"][*eth]["match"]["macaddress"]
            .as_str()
            .unwrap();
        assert!(
            xml.contains(&format!("<mac address='{mac}'/>")),
            "{mac}: {xml}"
        );
        assert_eq!(
            net["ethernets"][*eth]["nameservers"]["addresses"][1].as_str(),
            Some("2001:db8::53"),
            "{i}"
        );
    }
    let root = scratch.join("root-cloud-init");
    guest_unit(&root, None, Some(&vol));
    assert_resolvers_and_swap(&root);
    assert_eq!(
        std::fs::read_to_string(root.join("var/lib/cloud/seed/nocloud/network-config")).unwrap(),
        mread(&img, "network-config")
    );

    // seed: smbios: the same two, as credentials; no user-data.
    let sname = format!("{}s", p.prefix);
    let out = virtseed(&m.dir, &["profile", "opts-smbios", &sname]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let creds = scratch.join("credentials");
    std::fs::create_dir_all(&creds).unwrap();
    let all = smbios_credentials(&sname);
    assert_eq!(all["virtseed.swap_mib"], b"8");
    for (k, v) in all {
        std::fs::write(creds.join(k), v).unwrap();
    }
    let sroot = scratch.join("root-smbios");
    guest_unit(&sroot, Some(&creds), None);
    assert_resolvers_and_swap(&sroot);

    // A userdata_file gone by create time is a clear error, and nothing is left.
    std::fs::remove_file(&ud).unwrap();
    let gone = format!("{}g", p.prefix);
    let out = virtseed(&m.dir, &["profile", "opts", &gone]);
    assert!(!out.status.success());
    let said = text(&out.stdout) + &text(&out.stderr);
    assert!(
        said.contains("userdata_file") && said.contains("cannot read"),
        "{said}"
    );
    let out = virtseed(&m.dir, &["check-config"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("`opts.userdata_file`"));
    assert!(!p.domains().contains(&gone));

    std::fs::write(&ud, "#cloud-config\n").unwrap();
    for n in [&name, &sname] {
        let out = virtseed(&m.dir, &["destroy", n]);
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
}

fn assert_resolvers_and_swap(root: &Path) {
    let resolv = std::fs::read_to_string(root.join("etc/resolv.conf")).unwrap();
    assert!(
        resolv.contains("nameserver 192.0.2.53\nnameserver 2001:db8::53\n"),
        "{resolv}"
    );
    let swap = std::fs::read(root.join("swapfile")).unwrap();
    assert_eq!(swap.len(), 8 << 20);
    // mkswap's signature at the end of the first page.
    assert_eq!(&swap[4096 - 10..4096], b"SWAPSPACE2");
    assert_eq!(mode(&root.join("swapfile")), 0o600);
    let fstab = std::fs::read_to_string(root.join("etc/fstab")).unwrap();
    assert_eq!(fstab, "/swapfile none swap sw 0 0\n");
}

/// A master that signs its key (`master_sign_pubkey`): a clone that did not verify it would be
/// refused at sign-in, so each seed channel carries the signing key, and the guest unit puts
/// it where the minion verifies by it, with the config saying to.
#[test]
fn a_signing_masters_clones_verify_its_key() {
    let (m, p, _base) =
        master_with_base_conf("3007.17", "master_sign_pubkey: True\n", "sg", |base| {
            format!(
                "web:\n  provider: kvm\n  base_domain: {base}\n  minion:\n    master: 127.0.0.1\n\
             web-smbios:\n  extends: web\n  seed: smbios\n"
            )
        });
    let sign = std::fs::read_to_string(m.pki().join("master_sign.pub")).unwrap();
    let scratch = m.dir.join("guest-unit");
    let name = format!("{}c", p.prefix);
    let vol = scratch.join("volume");
    profile_and_volume(&m, &p, "web", &name, &vol);
    let sname = format!("{}s", p.prefix);
    let out = virtseed(&m.dir, &["profile", "web-smbios", &sname]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let creds = scratch.join("credentials");
    std::fs::create_dir_all(&creds).unwrap();
    for (k, v) in smbios_credentials(&sname) {
        std::fs::write(creds.join(k), v).unwrap();
    }
    for (root, creds, seed) in [
        (scratch.join("root-cloud-init"), None, Some(vol.as_path())),
        (scratch.join("root-smbios"), Some(creds.as_path()), None),
    ] {
        guest_unit(&root, creds, seed);
        assert_eq!(
            std::fs::read_to_string(root.join("etc/salt/pki/minion/master_sign.pub")).unwrap(),
            sign,
            "{}",
            root.display()
        );
        let conf: Y = yaml_serde::from_str(
            &std::fs::read_to_string(root.join("etc/salt/minion.d/virtseed.conf")).unwrap(),
        )
        .unwrap();
        assert_eq!(conf["verify_master_pubkey_sign"].as_bool(), Some(true));
        assert_eq!(conf["master_sign_key_name"].as_str(), Some("master_sign"));
    }
    // cloud-init images without the guest unit: user-data writes it.
    let ud: Y =
        yaml_serde::from_str(&mread(&p.dir.join(format!("{name}-seed.img")), "user-data")).unwrap();
    let files = ud["write_files"].as_sequence().unwrap();
    assert!(
        files.iter().any(
            |f| f["path"].as_str() == Some("/etc/salt/pki/minion/master_sign.pub")
                && f["content"].as_str() == Some(sign.as_str())
        ),
        "{files:?}"
    );
    let out = virtseed(&m.dir, &["destroy", &name, &sname]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}
