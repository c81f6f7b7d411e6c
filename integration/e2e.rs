//! The whole path on real guests (TCG here): the golden image (scripts/build-golden-image.sh,
//! cached), `salt-run cloud.profile` through the sidecar for both seed channels (cloud-init
//! and SMBIOS credentials), `salt <name> test.ping` True, the guest unit having installed the
//! identity from that channel, cloud-init run to the end on the cloud-init clone, and destroy
//! leaving nothing.

mod harness;

use harness::site::{golden_files, golden_image, write_cloud};
use harness::{last_json, text, Master, Sidecar};
use std::process::Command;
use std::time::Duration;

#[test]
fn real_guests_answer_test_ping_for_both_seed_channels() {
    golden_image(&[]);
    let m = Master::start("3007.17");
    write_cloud(
        &m,
        "golden:\n  provider: kvm\n  base_domain: virtseed-golden\n  minion:\n    master: 10.0.2.2\n  minion_timeout: 400\ngolden-smbios:\n  extends: golden\n  seed: smbios\n",
    );
    let _sidecar = Sidecar::start(&m, "virtseed");
    m.install_modules();
    let tag = &salt_proto::auth::new_nonce()[..6];
    let (a, b) = (format!("e2e{tag}c"), format!("e2e{tag}s"));
    let before = golden_files();

    for (profile, name, channel) in [
        ("golden", &a, "cloud-init"),
        ("golden-smbios", &b, "smbios"),
    ] {
        let out = m.salt_run(&["--out", "json", "cloud.profile", profile, name]);
        let stdout = text(&out.stdout);
        assert!(
            out.status.success(),
            "{profile}: {stdout}\n{}",
            text(&out.stderr)
        );
        let ret = last_json(&out);
        assert_eq!(ret[name.as_str()]["minion_up"], true, "{ret}");
        eprintln!("{profile}: timings {}", ret[name.as_str()]["timings_ms"]);
        let (ok, v) = m.salt_json(name, &["test.ping"], 60);
        assert!(ok && v[name.as_str()] == true, "{v}");
        let (_, g) = m.salt_json(name, &["grains.get", "virtseed:profile"], 60);
        assert_eq!(g[name.as_str()], profile, "{g}");
        assert!(!m.pki().join("minions_pre").join(name).exists());
        // The guest unit installed the identity, from this channel, with virtseed's key.
        let (_, j) = m.salt_json(
            name,
            &["cmd.run", "journalctl -b -o cat -u virtseed-credentials"],
            60,
        );
        let said = j[name.as_str()].as_str().unwrap_or_default().to_string();
        assert!(
            said.contains(&format!("identity of {name} ({channel}, its key)")),
            "{said}"
        );
    }
    // The cloud-init clone's cloud-init still runs to the end, from the unit's copy of the seed
    // (the volume is detached after the first ping), and the copy is gone afterwards.
    let (_, st) = m.salt_json(
        &a,
        &[
            "cmd.run",
            "cloud-init status --wait --long; ls -A /var/lib/cloud/seed/",
        ],
        240,
    );
    let st = st[a.as_str()].as_str().unwrap_or_default().to_string();
    assert!(
        st.contains("status: done") && st.contains("seed=/var/lib/cloud/seed/nocloud"),
        "{st}"
    );
    assert_ne!(
        st.lines().last(),
        Some("nocloud"),
        "the seed copy is left: {st}"
    );

    let out = m.salt_run(&["--out", "json", "cloud.destroy", &format!("{a},{b}")]);
    assert!(out.status.success(), "{}", text(&out.stdout));
    for n in [&a, &b] {
        assert!(!m.pki().join("minions").join(n).exists());
        let st = Command::new("virsh")
            .args(["-c", "qemu:///system", "domstate", n])
            .output()
            .unwrap();
        assert!(!st.status.success(), "{n} still defined");
    }
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(golden_files(), before, "destroy left files behind");
}
