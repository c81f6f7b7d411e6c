//! Warm clones on real guests (TCG here): the golden image's warm state made by `virtseed
//! warm` (booted once, saved while its minion's Python waits on its channel), two clones
//! restored from it in one `salt-run cloud.profile` call, each answering `test.ping` with its
//! own key, id and grains, and each with its own clock (the host's), kernel entropy, Python
//! `random` state inside the minion, and MAC (in its domain). The save image the state holds, read and
//! rewritten by virtseed's parser. A failure injected after each step of a warm create
//! leaves nothing; destroy and `virtseed warm --drop` leave the pool as it was.

mod harness;

use harness::pool::virsh;
use harness::site::{golden_image, master_with_base, write_cloud};
use harness::{last_json, text, virtseed, Master, Sidecar};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use virtseed::libvirt::saveimage::SaveImage;

const PROFILES: &str = "warm:\n  provider: kvm\n  base_domain: virtseed-golden\n  warm: true\n  minion:\n    master: 10.0.2.2\n  minion_timeout: 300\n";

/// The tests that use the golden image run one at a time: they make, use and drop its warm
/// states, compare its pool's files, and each redefines its base domain.
static GOLDEN: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The files of the golden base's pool (where its warm states live).
fn pool_files() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(harness::site::golden_dir())
        .unwrap()
        .flatten()
        .map(|e| e.path().display().to_string())
        .collect();
    v.sort();
    v
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// One line of `cmd.run` output on minion `name`.
fn run(m: &Master, name: &str, cmd: &str) -> String {
    let (ok, v) = m.salt_json(name, &["cmd.run", cmd], 60);
    assert!(ok, "{name}: {cmd}: {v}");
    v[name].as_str().unwrap_or_default().trim().to_string()
}

fn nothing_of(m: &Master, name: &str) {
    harness::site::nothing_left(m, "virtseed-golden", name);
}

/// The state's save image, as libvirt wrote it, through virtseed's parser: its XML is the
/// warming domain's, and a rewrite with another name reads back, the rest unchanged.
fn check_real_image(pool_dir: &str, image: &str) {
    use std::io::Read;
    let mut head = vec![0u8; 1 << 20];
    let mut f = std::fs::File::open(format!("{pool_dir}/{image}")).unwrap();
    f.read_exact(&mut head).unwrap();
    let img = SaveImage::parse(&head).unwrap();
    assert!(img.was_running());
    assert!(
        img.xml.contains("<name>virtseed-golden-warm-"),
        "{}",
        img.xml
    );
    assert!(img.xml.contains("org.virtseed.warm.0"), "{}", img.xml);
    assert!(img.xml.contains("<genid>"), "{}", img.xml);
    let other = img.xml.replace("virtseed-golden-warm-", "another-name-");
    let new = img.with_xml(&other).unwrap();
    let need = SaveImage::needed(&head).unwrap();
    assert_eq!(new.len(), need);
    let mut copy = head.clone();
    copy[..need].copy_from_slice(&new);
    assert_eq!(SaveImage::parse(&copy).unwrap().xml, other);
    assert_eq!(
        copy[need..],
        head[need..],
        "the stream after the header changed"
    );
}

#[test]
fn warm_clones_answer_test_ping_each_with_its_own_clock_entropy_and_mac() {
    let _one = GOLDEN.lock().unwrap_or_else(|p| p.into_inner());
    golden_image(&[]);
    let m = Master::start("3007.17");
    write_cloud(
        &m,
        &format!("{PROFILES}booted:\n  extends: warm\n  warm: false\n"),
    );
    let _sidecar = Sidecar::start(&m, "virtseed");
    m.install_modules();
    let drop = virtseed(&m.dir, &["warm", "--drop", "warm"]);
    assert!(drop.status.success(), "{}", text(&drop.stderr));
    let before = pool_files();

    let t = Instant::now();
    let out = virtseed(&m.dir, &["warm", "warm"]);
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{said}");
    assert!(said.contains("warm: warming"), "no progress: {said}");
    let st = last_json(&out)["warm"]["localhost"].clone();
    eprintln!("warm state made in {:?}: {st}", t.elapsed());
    let pool_dir = std::path::Path::new(st["disks"][0].as_str().unwrap())
        .parent()
        .unwrap()
        .display()
        .to_string();
    check_real_image(&pool_dir, st["image"].as_str().unwrap());
    // A second `virtseed warm` finds it.
    let again = virtseed(&m.dir, &["warm", "warm"]);
    assert!(
        !text(&again.stderr).contains("warming"),
        "{}",
        text(&again.stderr)
    );
    assert_eq!(last_json(&again)["warm"]["localhost"]["state"], st["state"]);

    let tag = &salt_proto::auth::new_nonce()[..6];
    let (a, b) = (format!("w{tag}a"), format!("w{tag}b"));
    let t = Instant::now();
    // A profile without `warm`, made warm by the call (a profile key given as an argument).
    let out = m.salt_run(&[
        "--out",
        "json",
        "cloud.profile",
        "booted",
        &format!("{a},{b}"),
        "warm=True",
    ]);
    let took = t.elapsed();
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let ret = last_json(&out);
    eprintln!("two warm clones answered in {took:?}: {ret}");
    let mut urandom = Vec::new();
    let mut macs = Vec::new();
    let mut randoms = Vec::new();
    for n in [&a, &b] {
        let r = &ret[n.as_str()];
        assert_eq!(r["minion_up"], true, "{ret}");
        assert!(r["timings_ms"]["restored"].is_u64(), "{r}");
        let (ok, v) = m.salt_json(n, &["test.ping"], 30);
        assert!(ok && v[n.as_str()] == true, "{v}");
        let (_, g) = m.salt_json(n, &["grains.item", "id", "virtseed", "host"], 30);
        let g = &g[n.as_str()];
        assert_eq!(g["id"], n.as_str(), "{g}");
        assert_eq!(g["host"], n.as_str(), "{g}");
        assert_eq!(g["virtseed"]["profile"], "booted", "{g}");
        // The accepted key is the one virtseed minted and sent.
        assert!(m.pki().join("minions").join(n).exists());
        // The host's clock, not the one saved with the state.
        let t0 = now();
        let guest: f64 = run(&m, n, "date +%s.%N").parse().unwrap();
        let t1 = now();
        assert!(
            guest > t0 - 2.0 && guest < t1 + 2.0,
            "{n}: guest clock {guest}, host {t0}..{t1}"
        );
        // Each clone has its own MAC in its domain; behind QEMU user networking (each VM its
        // own slirp, whose saved lease table would move the address) the guest's NIC keeps
        // the state's, and says so (docs/golden-images.md).
        let xml = text(&virsh(&["dumpxml", n]).stdout);
        assert!(xml.contains(r["macs"][0].as_str().unwrap()), "{xml}");
        macs.push(r["macs"][0].as_str().unwrap().to_string());
        urandom.push(run(
            &m,
            n,
            "head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'",
        ));
        // Python's own `random`, in the minion's process (jinja's `random` filter).
        let (ok, v) = m.salt_json(
            n,
            &[
                "slsutil.renderer",
                "string={% for i in range(4) %}{{ range(99999) | random }} {% endfor %}",
                "default_renderer=jinja",
            ],
            30,
        );
        assert!(ok, "{v}");
        randoms.push(v[n.as_str()].to_string());
        let said = run(&m, n, "journalctl -b -o cat -u virtseed-warm");
        assert!(
            said.contains(&format!("identity of {n} (warm")),
            "{n}: {said}"
        );
        assert!(
            said.contains("mac (kept: QEMU user networking)"),
            "{n}: {said}"
        );
    }
    assert_ne!(macs[0], macs[1]);
    assert_ne!(urandom[0], urandom[1], "the clones' kernel RNGs are one");
    assert_ne!(
        randoms[0], randoms[1],
        "the clones' Python random states are one"
    );

    let out = m.salt_run(&["--out", "json", "cloud.destroy", &format!("{a},{b}")]);
    assert!(out.status.success(), "{}", text(&out.stdout));
    std::thread::sleep(Duration::from_millis(200));
    nothing_of(&m, &a);
    nothing_of(&m, &b);
    let drop = virtseed(&m.dir, &["warm", "--drop", "warm"]);
    assert!(drop.status.success(), "{}", text(&drop.stderr));
    assert_eq!(pool_files(), before, "the warm state or a clone left files");
}

#[test]
fn a_failure_after_each_warm_step_leaves_nothing() {
    let _one = GOLDEN.lock().unwrap_or_else(|p| p.into_inner());
    golden_image(&[]);
    let m = Master::start("3007.17");
    write_cloud(&m, PROFILES);
    let warmed = virtseed(&m.dir, &["warm", "warm"]);
    assert!(warmed.status.success(), "{}", text(&warmed.stderr));
    let before = pool_files();
    let tag = &salt_proto::auth::new_nonce()[..6];
    for step in [
        "disks",
        "nvram",
        "seeded",
        "defined",
        "key_accepted",
        "restored",
    ] {
        let name = format!("wf{tag}{}", &step[..3]);
        let out = virtseed(&m.dir, &["profile", "warm", &name, "--fail-after", step]);
        let said = text(&out.stdout);
        assert!(!out.status.success(), "{step}: {said}");
        assert!(
            said.contains(&format!("injected failure after step {step}")),
            "{said}"
        );
        nothing_of(&m, &name);
        assert_eq!(pool_files(), before, "after {step}");
    }
    // The sidecar killed while a clone's image copy is made: the next one rolls it back.
    m.install_modules();
    let name = format!("wf{tag}kill");
    let mut sidecar = Sidecar::start_with(
        &m,
        "virtseed",
        &[("VIRTSEED_TEST_PAUSE_AFTER", "image_copied")],
        "-paused",
    );
    sidecar.wait_log("serving cloud.* jobs", Duration::from_secs(10));
    let waiting = std::process::Command::new(m.venv.join("bin/salt-run"))
        .arg("-c")
        .arg(&m.dir)
        .args(["--out", "json", "cloud.profile", "warm", &name])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    sidecar.wait_log("paused after step image_copied", Duration::from_secs(120));
    let vols = text(&virsh(&["vol-list", "virtseed-golden"]).stdout);
    assert!(vols.contains(&format!("{name}.restore.save")), "{vols}");
    sidecar.kill9();
    let sidecar = Sidecar::start_with(&m, "virtseed", &[], "-after");
    sidecar.wait_log(
        "reconcile: an interrupted create was rolled back",
        Duration::from_secs(60),
    );
    let out = harness::site::wait_exit(waiting, Duration::from_secs(120));
    assert!(
        text(&out.stdout).contains("rolled back"),
        "{}",
        text(&out.stdout)
    );
    nothing_of(&m, &name);
    assert_eq!(pool_files(), before, "after the reconcile");
    drop(sidecar);

    // And the whole create, through the CLI, then its destroy.
    let name = format!("wf{tag}ok");
    let out = virtseed(&m.dir, &["profile", "warm", &name]);
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let out = virtseed(&m.dir, &["destroy", &name]);
    assert!(out.status.success(), "{}", text(&out.stdout));
    nothing_of(&m, &name);
    assert_eq!(pool_files(), before);
}

#[test]
fn profile_keys_a_warm_state_cannot_honour_are_refused_by_name() {
    let _one = GOLDEN.lock().unwrap_or_else(|p| p.into_inner());
    golden_image(&[]);
    let m = Master::start("3007.17");
    write_cloud(
        &m,
        &format!("{PROFILES}warm-disk:\n  extends: warm\n  disk: 40\nwarm-ssh:\n  extends: warm\n  ssh_forward: true\n"),
    );
    for (p, key) in [("warm-disk", "`disk`"), ("warm-ssh", "`ssh_forward`")] {
        let name = format!("wr{}", &salt_proto::auth::new_nonce()[..6]);
        let out = virtseed(&m.dir, &["profile", p, &name]);
        let said = text(&out.stdout);
        assert!(!out.status.success(), "{said}");
        assert!(said.contains(key) && said.contains("warm: true"), "{said}");
        nothing_of(&m, &name);
    }
}

#[test]
fn a_base_without_the_warm_guest_side_is_a_clear_error_and_leaves_nothing() {
    // A base whose disk holds no system: it never says ready on the channel.
    let tag = &salt_proto::auth::new_nonce()[..6];
    let (m, p, _base) = master_with_base("3007.17", tag, |base| {
        format!("bare:\n  provider: kvm\n  base_domain: {base}\n  warm: true\n  minion:\n    master: 10.0.2.2\n")
    });
    let name = format!("{}c1", p.prefix);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_virtseed"))
        .arg("-c")
        .arg(&m.dir)
        .args(["profile", "bare", &name])
        .env(virtseed::cloud::warm::READY_WAIT_ENV, "8")
        .output()
        .unwrap();
    let said = text(&out.stdout);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("no virtseed warm guest side") && said.contains("docs/golden-images.md"),
        "{said}"
    );
    let vols = text(&virsh(&["vol-list", &p.name]).stdout);
    assert!(!vols.contains(".warm-") && !vols.contains(&name), "{vols}");
    let doms = text(&virsh(&["list", "--all", "--name"]).stdout);
    assert!(
        !doms.contains(&format!("{}base-warm-", p.prefix)) && !doms.contains(&name),
        "{doms}"
    );
}
