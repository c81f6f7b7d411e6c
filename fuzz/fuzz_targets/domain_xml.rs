//! The domain-XML rewriter on any base XML: it is refused with an error, or the clone's XML
//! parses again, names the clone (name, UUID) and carries virtseed's ownership record.
#![no_main]
use libfuzzer_sys::fuzz_target;
use virtseed::libvirt::dom;
use virtseed::libvirt::domain_xml::{
    clone_xml, read_base, CloneDisk, CloneSpec, DiskSource, Ownership,
};

fuzz_target!(|data: &[u8]| {
    let Ok(xml) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(base) = read_base("base", xml) else {
        return;
    };
    let spec = CloneSpec {
        name: "clone1".into(),
        uuid: "5d1a4a3c-4a4b-4c0e-9b1e-0a1b2c3d4e5f".into(),
        description: "cloned from base by virtseed".into(),
        disks: base
            .disks
            .iter()
            .map(|d| CloneDisk {
                target: d.target.clone(),
                source: DiskSource::File(format!("/pool/clone1-{}.qcow2", d.target)),
                format: "qcow2".into(),
            })
            .collect(),
        nvram: base.nvram.as_ref().map(|_| "/nvram/clone1_VARS.fd".into()),
        cpus: Some(2),
        cpu_shares: Some(1000),
        memory_mib: Some(512),
        macs: vec![],
        // The SSH-deploy rewrite (a forwarded port on the user network) too.
        ssh_forward_port: Some(2222),
        ownership: Ownership {
            profile: "p".into(),
            provider: "kvm".into(),
            base: "base".into(),
            fingerprint: "aa:bb".into(),
            created: 1,
            request: "r".into(),
            volumes: vec!["/pool/clone1-vda.qcow2".into()],
            files: vec![],
            accept: "preseed".into(),
            window: 600,
            ip_source: "ip-learning".into(),
            warm: "s1".into(),
            ssh_port: Some(2222),
        },
        extra_devices: vec![],
        oem_strings: vec!["io.systemd.credential:x=y".into()],
    };
    let Ok((out, _macs)) = clone_xml(&base, &spec) else {
        return;
    };
    let root = dom::parse(&out).expect("the clone's XML parses");
    assert_eq!(root.child("name").map(|n| n.text()).as_deref(), Some("clone1"));
    assert_eq!(
        root.child("uuid").map(|n| n.text()).as_deref(),
        Some("5d1a4a3c-4a4b-4c0e-9b1e-0a1b2c3d4e5f")
    );
    let again = read_base("clone1", &out).expect("the clone is itself a valid base");
    assert_eq!(again.disks.len(), base.disks.len());
});
