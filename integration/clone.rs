//! The clone engine on real libvirt: qemu:///system with a dir pool in a temp dir, real qcow2
//! and raw base volumes made by qemu-img, domains that run (in the BIOS, no OS); and the
//! pipeline in-process on test:///default.

mod harness;

use harness::pool::{qemu_img, virsh_ok, Pool};
use harness::{text, virtseed};
use serde_json::Value;
use std::process::{Command, Output};
use std::sync::Arc;

fn json_out(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\nstderr: {}",
            text(&out.stdout),
            text(&out.stderr)
        )
    })
}

fn img_info(path: &str) -> Value {
    serde_json::from_str(&qemu_img(&["info", "-U", "--output", "json", path])).unwrap()
}

/// A pool with a base domain `<prefix>base`: vda a 64 MiB qcow2 file disk, vdb a 16 MiB raw
/// volume disk.
fn pool_with_base(tag: &str) -> (Pool, String) {
    let p = Pool::new(tag);
    let vda = p.base_volume("base-vda.qcow2", "qcow2", 64);
    p.base_volume("base-vdb.img", "raw", 16);
    let base = format!("{}base", p.prefix);
    p.base_domain(
        &base,
        &[
            ("vda", "qcow2", Pool::file_source(&vda)),
            (
                "vdb",
                "raw",
                format!("<source pool='{}' volume='base-vdb.img'/>", p.name),
            ),
        ],
    );
    (p, base)
}

fn uuid_of(xml: &str) -> String {
    let s = xml.find("<uuid>").unwrap() + 6;
    xml[s..s + 36].to_string()
}

fn macs_of(xml: &str) -> Vec<String> {
    xml.match_indices("<mac address='")
        .map(|(i, _)| xml[i + 14..i + 31].to_string())
        .collect()
}

#[test]
fn quick_clones_run_sized_and_destroy_leaves_nothing() {
    let (p, base) = pool_with_base("quick");
    // `seed:` written: salt-cloud's deploy keys alone would make it `seed: ssh`; beside a
    // seed they are the unused keys check-config reports (and masks).
    let cfg = p.config_dir(&format!(
        "small:\n  provider: kvm\n  base_domain: {base}\n  cpus: 2\n  memory: 64\n  disk: 1\n  onboot: yes\n  seed: cloud-init\n  ssh_username: root\n  password: hunter2\n"
    ));
    let (a, b) = (format!("{}a", p.prefix), format!("{}b", p.prefix));

    let out = virtseed(&cfg, &["check-config"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let cc = text(&out.stdout);
    assert!(cc.contains("unused (salt-cloud SSH deploy options"), "{cc}");
    assert!(
        cc.contains("password: '********'") && !cc.contains("hunter2"),
        "{cc}"
    );

    let out = virtseed(&cfg, &["profile", "small", &a, &b]);
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let ret = json_out(&out);
    let progress = text(&out.stderr);
    for step in ["disks", "defined", "started"] {
        assert!(progress.contains(&format!("{a}: {step}")), "{progress}");
    }

    let base_xml = p.dumpxml(&base);
    let base_macs = macs_of(&base_xml);
    let mut all_macs = base_macs.clone();
    for n in [&a, &b] {
        assert_eq!(p.state(n), "running");
        assert_eq!(ret[n.as_str()]["state"], "running");
        let xml = p.dumpxml(n);
        assert_ne!(uuid_of(&xml), uuid_of(&base_xml));
        assert_eq!(ret[n.as_str()]["id"], uuid_of(&xml));
        let macs = macs_of(&xml);
        assert_eq!(macs.len(), 2);
        for m in macs {
            assert!(!all_macs.contains(&m), "MAC {m} reused");
            all_macs.push(m);
        }
        assert!(xml.contains("<vcpu placement='static'>2</vcpu>"), "{xml}");
        assert!(xml.contains("<memory unit='KiB'>65536</memory>"), "{xml}");
        assert!(!xml.contains("device='cdrom'"), "cdrom kept: {xml}");
        assert!(xml.contains(&format!("cloned from {base} by virtseed")));
        assert!(xml.contains("https://virtseed.dev/xmlns/instance/1"));
        assert!(virsh_ok(&["dominfo", n]).contains("Autostart:      enable"));

        // vda: a qcow2 overlay over the qcow2 base, grown to 1 GiB.
        let vda = p.dir.join(format!("{n}-vda.qcow2"));
        let info = img_info(vda.to_str().unwrap());
        assert_eq!(info["format"], "qcow2");
        assert_eq!(
            info["backing-filename"],
            p.dir.join("base-vda.qcow2").to_str().unwrap()
        );
        assert_eq!(info["backing-filename-format"], "qcow2");
        assert_eq!(info["virtual-size"], 1u64 << 30);
        // vdb: an overlay over the raw volume, same size, still referenced by pool/volume.
        let vdb = p.dir.join(format!("{n}-vdb.qcow2"));
        let info = img_info(vdb.to_str().unwrap());
        assert_eq!(info["backing-filename-format"], "raw");
        assert_eq!(info["virtual-size"], 16u64 << 20);
        assert!(xml.contains(&format!("volume='{n}-vdb.qcow2'")), "{xml}");
    }
    // The base is untouched.
    assert_eq!(p.state(&base), "shut off");
    assert_eq!(p.dumpxml(&base), base_xml);

    let out = virtseed(&cfg, &["list"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let list = text(&out.stdout);
    assert!(list.contains(&a) && list.contains(&b), "{list}");
    assert!(
        !list.contains(&base),
        "list shows a domain virtseed did not make: {list}"
    );

    let out = virtseed(&cfg, &["destroy", &a, &b]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(p.domains(), vec![base.clone()]);
    assert_eq!(p.volumes(), ["base-vda.qcow2", "base-vdb.img"]);
    assert_eq!(p.files(), ["base-vda.qcow2", "base-vdb.img"]);
}

#[test]
fn full_clones_copy_raw_and_qcow2() {
    let (p, base) = pool_with_base("full");
    let cfg = p.config_dir(&format!(
        "big:\n  provider: kvm\n  base_domain: {base}\n  clone_strategy: full\n  disk: 1\n"
    ));
    let n = format!("{}c", p.prefix);
    let out = virtseed(&cfg, &["profile", "big", &n]);
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let vda = img_info(p.dir.join(format!("{n}-vda.qcow2")).to_str().unwrap());
    assert_eq!(vda["format"], "qcow2");
    assert!(
        vda.get("backing-filename").is_none(),
        "a full copy has no backing file: {vda}"
    );
    assert_eq!(vda["virtual-size"], 1u64 << 30);
    let vdb = img_info(p.dir.join(format!("{n}-vdb.img")).to_str().unwrap());
    assert_eq!(vdb["format"], "raw");
    assert_eq!(vdb["virtual-size"], 16u64 << 20);
    let out = virtseed(&cfg, &["destroy", &n]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(p.files(), ["base-vda.qcow2", "base-vdb.img"]);
}

#[test]
fn a_failure_after_any_step_leaves_nothing() {
    let (p, base) = pool_with_base("undo");
    let cfg = p.config_dir(&format!(
        "p:\n  provider: kvm\n  base_domain: {base}\n  onboot: true\n"
    ));
    for step in ["disks", "nvram", "defined", "started"] {
        let n = format!("{}{step}", p.prefix);
        let out = virtseed(&cfg, &["profile", "p", &n, "--fail-after", step]);
        assert!(!out.status.success(), "{step}: {}", text(&out.stdout));
        let ret = json_out(&out);
        let err = ret[n.as_str()]["Error"].as_str().unwrap();
        assert!(
            err.contains(&format!("injected failure after step {step}")),
            "{err}"
        );
        assert_eq!(p.domains(), vec![base.clone()], "after {step}");
        assert_eq!(
            p.volumes(),
            ["base-vda.qcow2", "base-vdb.img"],
            "after {step}"
        );
        assert_eq!(
            p.files(),
            ["base-vda.qcow2", "base-vdb.img"],
            "after {step}"
        );
    }
}

#[test]
fn refusals_change_nothing() {
    let (p, base) = pool_with_base("bad");
    let cfg = p.config_dir(&format!(
        "p:\n  provider: kvm\n  base_domain: {base}\nshrink:\n  provider: kvm\n  base_domain: {base}\n  disk: 0\nnobase:\n  provider: kvm\n  base_domain: {}nope\n",
        p.prefix
    ));
    let unchanged = |what: &str| {
        assert_eq!(p.domains(), vec![base.clone()], "{what}");
        assert_eq!(p.files(), ["base-vda.qcow2", "base-vdb.img"], "{what}");
    };
    let long = "x".repeat(300);
    for bad in [
        "../x",
        "a/b",
        "",
        long.as_str(),
        "web*",
        "w[1]",
        "wéb",
        "a b",
    ] {
        let out = virtseed(&cfg, &["profile", "p", bad]);
        assert!(!out.status.success(), "{bad:?} accepted");
        assert!(
            text(&out.stderr).contains("instance name"),
            "{bad:?}: {}",
            text(&out.stderr)
        );
        unchanged(bad);
    }
    // The base itself is a domain virtseed did not make.
    let out = virtseed(&cfg, &["profile", "p", &base]);
    let e = json_out(&out)[base.as_str()]["Error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        e.contains("already exists") && e.contains("not made by virtseed"),
        "{e}"
    );
    let out = virtseed(&cfg, &["destroy", &base]);
    assert!(!out.status.success());
    assert!(
        text(&out.stdout).contains("was not made by virtseed"),
        "{}",
        text(&out.stdout)
    );
    unchanged("destroy of a foreign domain");

    let n = format!("{}n", p.prefix);
    let out = virtseed(&cfg, &["profile", "nobase", &n]);
    assert!(json_out(&out)[n.as_str()]["Error"]
        .as_str()
        .unwrap()
        .contains("does not exist"));
    let out = virtseed(&cfg, &["profile", "nope", &n]);
    assert!(
        text(&out.stderr).contains("no profile \"nope\""),
        "{}",
        text(&out.stderr)
    );
    let out = virtseed(&cfg, &["profile", "shrink", &n]);
    assert!(!out.status.success());
    unchanged("config errors");

    // A running base would corrupt overlays.
    virsh_ok(&["start", &base]);
    let out = virtseed(&cfg, &["profile", "p", &n]);
    let e = json_out(&out)[n.as_str()]["Error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(e.contains("is running") && e.contains("shut it off"), "{e}");
    virsh_ok(&["destroy", &base]);
    unchanged("running base");
}

#[test]
fn two_creates_of_one_name_one_wins() {
    let (p, base) = pool_with_base("race");
    let cfg = p.config_dir(&format!("p:\n  provider: kvm\n  base_domain: {base}\n"));
    let n = format!("{}r", p.prefix);
    let spawn = || {
        Command::new(env!("CARGO_BIN_EXE_virtseed"))
            .arg("-c")
            .arg(&cfg)
            .args(["profile", "p", &n])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (c1, c2) = (spawn(), spawn());
    let (o1, o2) = (
        c1.wait_with_output().unwrap(),
        c2.wait_with_output().unwrap(),
    );
    assert_eq!(
        [o1.status.success(), o2.status.success()]
            .iter()
            .filter(|s| **s)
            .count(),
        1,
        "{}\n{}",
        text(&o1.stdout),
        text(&o2.stdout)
    );
    let loser = if o1.status.success() { &o2 } else { &o1 };
    let e = json_out(loser)[n.as_str()]["Error"]
        .as_str()
        .unwrap()
        .to_string();
    // It lost on the name lock both processes take, or, had the winner finished first, on the
    // winner's domain.
    assert!(
        e.contains("already in progress") || e.contains("already exists"),
        "{e}"
    );
    // The winner's VM is intact: the loser's rollback removed only what the loser made.
    assert_eq!(p.state(&n), "running");
    assert!(p.dir.join(format!("{n}-vda.qcow2")).exists());
    let out = virtseed(&cfg, &["destroy", &n]);
    assert!(out.status.success());
    assert_eq!(p.files(), ["base-vda.qcow2", "base-vdb.img"]);
}

/// A volume that was there before the create, made by someone else, stops the create and is
/// never deleted by its rollback (the step that found it made nothing).
#[test]
fn rollback_never_deletes_a_volume_it_did_not_make() {
    let (p, base) = pool_with_base("prevol");
    let cfg = p.config_dir(&format!("p:\n  provider: kvm\n  base_domain: {base}\n"));
    let n = format!("{}v", p.prefix);
    let theirs = format!("{n}-vda.qcow2");
    virsh_ok(&["vol-create-as", &p.name, &theirs, "1M", "--format", "qcow2"]);
    let out = virtseed(&cfg, &["profile", "p", &n]);
    assert!(!out.status.success());
    let e = json_out(&out)[n.as_str()]["Error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        e.contains("already exists") && e.contains("never overwrites"),
        "{e}"
    );
    assert!(
        p.dir.join(&theirs).exists(),
        "the volume that was there is kept"
    );
    assert!(!p.domains().contains(&n));
    virsh_ok(&["vol-delete", "--pool", &p.name, &theirs]);
    assert_eq!(p.files(), ["base-vda.qcow2", "base-vdb.img"]);
}

/// The pipeline in-process on libvirt's test driver: concurrency within one sidecar.
#[test]
fn same_name_in_one_process_is_refused_while_busy() {
    use virtseed::cloud::{Cloud, CreateOptions, Quiet};
    use virtseed::config::cloud::CloudConfig;
    let d = tempfile::tempdir().unwrap();
    std::fs::write(
        d.path().join("cloud.providers"),
        "t:\n  driver: libvirt\n  url: test:///default\n",
    )
    .unwrap();
    std::fs::write(
        d.path().join("cloud.profiles"),
        "p:\n  provider: t\n  base_domain: tbase\n  cpus: 3\n",
    )
    .unwrap();
    let cloud = Cloud::new(CloudConfig::load(d.path()), None, 8);
    let hv = cloud.hypervisor("test:///default").unwrap();
    let path = hv
        .create_volume("default-pool", "tbase.img", "raw", 1 << 20)
        .unwrap();
    hv.define(
        &format!("<domain type='test'><name>tbase</name><memory>65536</memory><os><type>hvm</type></os><devices><disk type='file' device='disk'><source file='{path}'/><target dev='vda'/></disk><interface type='user'><mac address='52:54:00:00:00:09'/></interface></devices></domain>"),
        false,
    )
    .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let names: Vec<String> = (0..20).map(|i| format!("t{i}")).collect();
    let res = rt
        .block_on(cloud.profile("p", &names, CreateOptions::default(), Arc::new(Quiet)))
        .unwrap();
    assert!(res.values().all(|r| r.is_ok()), "{res:?}");
    assert_eq!(hv.list().unwrap().len(), 20);
    assert_eq!(hv.show("t3").unwrap().vcpus, 3);
    // Two creates of one name at once, in one process: one wins, one is refused cleanly.
    let prof = cloud.config.profile("p").unwrap().clone();
    let (c1, c2) = (cloud.clone(), cloud.clone());
    let (p1, p2) = (prof.clone(), prof);
    let t1 =
        std::thread::spawn(move || c1.create_one(&p1, "dup", &CreateOptions::default(), &Quiet));
    let t2 =
        std::thread::spawn(move || c2.create_one(&p2, "dup", &CreateOptions::default(), &Quiet));
    let (r1, r2) = (t1.join().unwrap(), t2.join().unwrap());
    assert!(r1.is_ok() != r2.is_ok(), "{r1:?} {r2:?}");
    let e = r1.err().or(r2.err()).unwrap().to_string();
    assert!(
        e.contains("already in progress") || e.contains("already exists"),
        "{e}"
    );
    for n in names.iter().chain(std::iter::once(&"dup".to_string())) {
        cloud.destroy_one(n, &Quiet).unwrap();
    }
    assert!(hv.list().unwrap().is_empty());
}

/// A UEFI base: its NVRAM (a file in libvirt's nvram dir, not in a pool) is copied for each
/// clone, and the copy goes with rollback and destroy.
#[test]
fn uefi_nvram_is_copied_and_removed() {
    let p = Pool::new("uefi");
    let vda = p.base_volume("base-vda.qcow2", "qcow2", 64);
    let base = format!("{}base", p.prefix);
    let nvdir = std::path::Path::new("/var/lib/libvirt/qemu/nvram");
    std::fs::create_dir_all(nvdir).unwrap();
    let base_nv = nvdir.join(format!("{base}_VARS.fd"));
    let mut vars = std::fs::read("/usr/share/OVMF/OVMF_VARS_4M.fd").unwrap();
    let last = vars.len() - 1;
    vars[last] ^= 0x5a; // this base's own variables, not the template's
    std::fs::write(&base_nv, &vars).unwrap();
    let xml = format!(
        "<domain type='qemu'><name>{base}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>\
         <os><type arch='x86_64' machine='q35'>hvm</type>\
         <loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE_4M.fd</loader>\
         <nvram template='/usr/share/OVMF/OVMF_VARS_4M.fd'>{}</nvram></os>\
         <features><acpi/><tcg><tb-cache unit='MiB'>8</tb-cache></tcg></features>\
         <devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='{}'/>\
         <target dev='vda' bus='virtio'/></disk></devices></domain>",
        base_nv.display(),
        vda.display()
    );
    let f = p.dir.with_extension("uefi.xml");
    std::fs::write(&f, xml).unwrap();
    virsh_ok(&["define", f.to_str().unwrap()]);
    std::fs::remove_file(&f).ok();
    let cfg = p.config_dir(&format!("p:\n  provider: kvm\n  base_domain: {base}\n"));

    let n = format!("{}u", p.prefix);
    let clone_nv = nvdir.join(format!("{n}_VARS.fd"));
    let out = virtseed(&cfg, &["profile", "p", &n, "--fail-after", "defined"]);
    assert!(!out.status.success());
    assert!(!clone_nv.exists(), "rollback left the NVRAM copy");

    let out = virtseed(&cfg, &["profile", "p", &n]);
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert_eq!(p.state(&n), "running");
    assert!(p
        .dumpxml(&n)
        .contains(&format!("{}</nvram>", clone_nv.display())));
    // A copy of the base's variables (not a fresh template), taken before the guest ran.
    let copied = std::fs::read(&clone_nv).unwrap();
    assert_eq!(copied.len(), vars.len());
    assert_eq!(copied[last], vars[last]);

    let out = virtseed(&cfg, &["destroy", &n]);
    assert!(out.status.success(), "{}", text(&out.stdout));
    assert!(!clone_nv.exists(), "destroy left the NVRAM copy");
    assert!(base_nv.exists());
    virsh_ok(&["undefine", "--nvram", &base]);
    assert!(!base_nv.exists());
}

/// The guide's profile options on real, running domains: `cpuunits` (the CPU weight libvirt
/// gives the domain's cgroup), `image` for `base_domain`, `onboot: 1`/`0`, `ip_source`
/// recorded for list; check-config's account of each, and a Proxmox provider's options named
/// in its "not served" message.
#[test]
fn the_guides_profile_options_on_real_domains() {
    let (p, base) = pool_with_base("opts");
    let cfg = p.config_dir(&format!(
        "weighty:\n  provider: kvm\n  image: {base}\n  cpuunits: 1000\n  onboot: 1\n  ip_source: qemu-agent\n  desc: a weighty clone\n  memory: 64\n\
         heaviest:\n  provider: kvm\n  base_domain: {base}\n  image: {base}\n  cpuunits: 10000\n  onboot: 0\n  memory: 64\n\
         ct:\n  provider: pve\n  technology: lxc\n  host: pve1\n  clone_from: 100\n  password: s3cret\n"
    ));
    let providers = cfg.join("cloud.providers");
    let mut text_p = std::fs::read_to_string(&providers).unwrap();
    text_p.push_str("pve:\n  driver: proxmox\n  url: pve.example.com\n  user: root@pam\n  password: hunter2\n  verify_ssl: false\n");
    std::fs::write(&providers, text_p).unwrap();

    let out = virtseed(&cfg, &["check-config"]);
    let cc = text(&out.stdout);
    assert!(out.status.success(), "{cc}{}", text(&out.stderr));
    assert!(
        cc.contains("cpuunits: 1000 (cputune shares), memory: 64 MiB, disk: as base, onboot: true"),
        "{cc}"
    );
    assert!(cc.contains("ip_source: qemu-agent"), "{cc}");
    assert!(cc.contains("onboot: false"), "{cc}");
    assert!(
        cc.contains("Proxmox options recognised: url=pve.example.com, user=root@pam, password=********, verify_ssl=false, technology=lxc, host=pve1, clone_from=100"),
        "{cc}"
    );
    assert!(!cc.contains("hunter2") && !cc.contains("s3cret"), "{cc}");
    let out = virtseed(&cfg, &["profile", "ct", "x"]);
    let said = text(&out.stdout) + &text(&out.stderr);
    assert!(
        !out.status.success() && said.contains("Proxmox options recognised"),
        "{said}"
    );

    let (a, b) = (format!("{}a", p.prefix), format!("{}b", p.prefix));
    for (prof, n) in [("weighty", &a), ("heaviest", &b)] {
        let out = virtseed(&cfg, &["profile", prof, n]);
        assert!(
            out.status.success(),
            "{}\n{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        assert_eq!(p.state(n), "running", "{n} starts with its CPU weight");
    }
    let xml = p.dumpxml(&a);
    assert!(xml.contains("<shares>1000</shares>"), "{xml}");
    assert!(xml.contains("a weighty clone"), "{xml}");
    assert!(xml.contains("ip_source>qemu-agent<"), "{xml}");
    assert!(p.dumpxml(&b).contains("<shares>10000</shares>"));
    // What the running domain's cgroup got, as libvirt reads it back.
    assert!(
        virsh_ok(&["schedinfo", &a]).contains("cpu_shares     : 1000"),
        "{}",
        virsh_ok(&["schedinfo", &a])
    );
    assert!(virsh_ok(&["schedinfo", &b]).contains("cpu_shares     : 10000"));
    assert!(virsh_ok(&["dominfo", &a]).contains("Autostart:      enable"));
    assert!(virsh_ok(&["dominfo", &b]).contains("Autostart:      disable"));
    // No agent in a guest without an OS: list says so without failing.
    let out = virtseed(&cfg, &["list"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains(&a));

    // Both names, different domains: an error naming both; the profile is not used.
    std::fs::write(
        cfg.join("cloud.profiles.d/test.conf"),
        format!("both:\n  provider: kvm\n  base_domain: {base}\n  image: other\n"),
    )
    .unwrap();
    let out = virtseed(&cfg, &["check-config"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("`both.base_domain`")
            && err.contains(&format!("{base:?}"))
            && err.contains("`image` is \"other\""),
        "{err}"
    );
    let out = virtseed(&cfg, &["destroy", &a, &b]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(p.files(), ["base-vda.qcow2", "base-vdb.img"]);
}
