//! Step `seeded`: the clone's identity, when there is a master: a fresh RSA key (with
//! `accept: preseed`), the minion config (id forced to the name) and grains, carried into
//! the guest by the seed. Without a master it makes nothing.
//!
//! - `seed: cloud-init`: a NoCloud image (vfat, label `cidata`) uploaded as the volume
//!   `<name>-seed.img` and attached read-only: an [`Intent::Volume`], undone by deleting it
//!   ([`super::volume::undo`]). One already there was not made here and is left alone.
//! - `seed: smbios`: the same identity as SMBIOS OEM strings in the domain's XML; nothing is
//!   made that needs undoing.
//! - `warm: true`: the same identity files, kept for the `restored` step, which sends them
//!   over the guest's channel; nothing is made here.

use super::runner::{Action, Intents};
use super::{volume, Made, Step, Vm};
use crate::cloud::{CloudError, MasterCtx};
use crate::config::cloud::{Profile, SeedKind};
use crate::libvirt::dom::Element;
use crate::libvirt::domain_xml;
use crate::libvirt::Base;
use crate::pki::KeyPool;
use crate::seed::userdata::UserData;

pub struct Seed<'a> {
    pub vm: Vm<'a>,
    pub uuid: &'a str,
    pub master: Option<&'a MasterCtx>,
    /// Where the key comes from, when this create mints one (`accept: preseed`).
    pub keys: Option<&'a KeyPool>,
    /// The caller's public key (`seed: ssh`): no seed is made, only this key accepted.
    pub given_pub: Option<&'a salt_proto::keys::PublicKey>,
}

impl Action<Made> for Seed<'_> {
    fn make(&self, made: &mut Made, intents: &mut Intents<'_>) -> Result<(), CloudError> {
        let Vm {
            hv,
            base,
            prof,
            name,
        } = self.vm;
        // The MACs are chosen here, before the domain's XML, so cloud-init's network config
        // (profile `nameserver`) can match them.
        made.macs = (0..domain_xml::interface_count(&base.xml))
            .map(|_| domain_xml::random_mac())
            .collect();
        let Some(mc) = self.master else {
            return Ok(());
        };
        if prof.seed == SeedKind::Ssh {
            made.given_pub = self.given_pub.cloned();
            return Ok(());
        }
        let key = self
            .keys
            .map(|pool| pool.take(prof.keysize))
            .transpose()
            .map_err(|e| CloudError::Internal(format!("minting a key: {e}")))?;
        let mut ident = identity(prof, name, self.uuid, mc, key.as_ref());
        ident.macs = made.macs.clone();
        if prof.warm {
            // No seed device: the restored guest gets the same files over its channel.
            made.identity_files = ident
                .files()
                .map_err(|e| CloudError::Internal(e.to_string()))?;
            made.key = key;
            return Ok(());
        }
        if prof.seed == SeedKind::CloudInit {
            // Read again: the file may have changed since the config was loaded.
            ident.userdata = prof
                .userdata
                .as_ref()
                .map(|u| UserData::load(&u.path))
                .transpose()
                .map_err(|e| CloudError::Config(e.to_string()))?;
        }
        match prof.seed {
            SeedKind::CloudInit => {
                let img = ident
                    .nocloud_image()
                    .map_err(|e| CloudError::Internal(e.to_string()))?;
                let pool = prof
                    .pool
                    .clone()
                    .unwrap_or_else(|| base.disks[0].pool.clone());
                let vol = format!("{name}-seed.img");
                let path = volume::make(intents, &pool, &vol, || {
                    hv.upload_volume(&pool, &vol, "raw", &img)
                })?;
                made.volumes.push(path.clone());
                made.extra_devices
                    .push(seed_disk(&path, &free_virtio_target(base)));
            }
            SeedKind::Ssh => {}
            SeedKind::Smbios => {
                made.oem_strings = ident
                    .smbios_strings()
                    .map_err(|e| CloudError::Internal(e.to_string()))?
                    .iter()
                    .map(|s| s.to_string())
                    .collect();
            }
        }
        made.key = key;
        Ok(())
    }

    fn step(&self) -> Step {
        Step::Seeded
    }
}

/// The identity of clone `name`: minion config from the profile's `minion:` (id forced to
/// the name; master ports defaulting to the master's), grains with virtseed's own.
fn identity(
    prof: &Profile,
    name: &str,
    uuid: &str,
    mc: &MasterCtx,
    key: Option<&salt_proto::keys::PrivateKey>,
) -> crate::seed::Identity {
    use yaml_serde::Value as Y;
    let mut conf = prof.minion.clone();
    conf.insert("id".into(), Y::String(name.into()));
    if conf.get("master_port").is_none() {
        conf.insert("master_port".into(), Y::Number(mc.ret_port.into()));
    }
    // Several masters on ports of their own: each tells its port when the minion signs in,
    // which the minion takes unless its config names one (salt/channel/client.py). Named
    // when they share it: failover's liveness check (`status.master`) looks for a
    // connection to that port. Masters reached through `peers:` may have any: left to them
    // (a profile names the port they share, for failover).
    let one_port = MasterCtx::listed_masters(&prof.minion) <= 1
        || (mc.remote.is_none() && mc.peers.iter().all(|p| p.publish_port == mc.publish_port));
    if conf.get("publish_port").is_none() && one_port {
        conf.insert("publish_port".into(), Y::Number(mc.publish_port.into()));
    }
    // With the master's `zmq_filtering`, a clone reads only publications for its own id (and
    // those for all): it never sees the jobs, names and readiness checks of other clones.
    if mc.zmq_filtering && conf.get("zmq_filtering").is_none() {
        conf.insert("zmq_filtering".into(), Y::Bool(true));
    }
    // A master that signs its key (`master_sign_pubkey`) is refused by a minion that does
    // not verify it (salt/crypt.py `check_auth_deps`): the clone verifies, by the signing key
    // virtseed writes at `pki_dir/master_sign.pub`.
    if mc.sign_pub.is_some() {
        conf.insert("verify_master_pubkey_sign".into(), Y::Bool(true));
        conf.insert(
            "master_sign_key_name".into(),
            Y::String("master_sign".into()),
        );
    }
    let mut grains = prof.grains.clone();
    let mut ours = yaml_serde::Mapping::new();
    ours.insert("profile".into(), Y::String(prof.name.clone()));
    ours.insert(
        "provider".into(),
        Y::String(format!("{}:{}", prof.provider, prof.driver)),
    );
    ours.insert("base".into(), Y::String(prof.base_domain.clone()));
    grains.insert("virtseed".into(), Y::Mapping(ours));
    crate::seed::Identity {
        id: name.into(),
        instance_id: uuid.into(),
        private_pem: key.map(|k| k.to_pem()),
        public_pem: key.map(|k| k.public_key().pem().to_string()),
        master_pub: mc.master_pub.clone(),
        master_sign_pub: mc.sign_pub.clone(),
        minion_conf: conf,
        grains,
        nameservers: prof.nameservers.clone(),
        macs: Vec::new(),
        swap_mib: prof.swap_mib,
        userdata: None,
    }
}

/// The seed volume at `path` as a read-only virtio disk `target`.
fn seed_disk(path: &str, target: &str) -> Element {
    Element::new("disk")
        .with_attr("type", "file")
        .with_attr("device", "disk")
        .with_child(
            Element::new("driver")
                .with_attr("name", "qemu")
                .with_attr("type", "raw"),
        )
        .with_child(Element::new("source").with_attr("file", path))
        .with_child(
            Element::new("target")
                .with_attr("dev", target)
                .with_attr("bus", "virtio"),
        )
        .with_child(Element::new("readonly"))
        .with_child(Element::new("serial").with_text("virtseed-seed"))
}

/// The first free `vdX` device name after the domain's own virtio disks.
fn free_virtio_target(base: &Base) -> String {
    let used: Vec<String> = base.xml.disks.iter().map(|d| d.target.clone()).collect();
    ('b'..='z')
        .map(|c| format!("vd{c}"))
        .find(|t| !used.contains(t))
        .unwrap_or_else(|| "vdz".into())
}
