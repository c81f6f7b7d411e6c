//! salt-cloud configuration files as users write them: any bytes in `cloud`,
//! `cloud.providers` and `cloud.profiles` give a config with errors, never a panic; every
//! profile that resolves can be masked and shown.
#![no_main]
use libfuzzer_sys::fuzz_target;
use virtseed::config::cloud::{masked, CloudConfig};

fuzz_target!(|data: &[u8]| {
    // Three files, split at NUL bytes.
    let mut parts = data.splitn(3, |b| *b == 0);
    let dir = tempfile::tempdir().unwrap();
    for file in ["cloud.profiles", "cloud.providers", "cloud"] {
        if let Some(p) = parts.next() {
            std::fs::write(dir.path().join(file), p).unwrap();
        }
    }
    let cfg = CloudConfig::load(dir.path());
    for e in &cfg.errors {
        let _ = e.to_string();
    }
    for name in cfg.profiles.keys() {
        if let Ok(p) = cfg.profile(name) {
            let _ = masked(&p.raw);
        }
    }
    let _ = cfg.adhoc("kvm", Default::default());
});
