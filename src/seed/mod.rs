//! The identity a clone boots with: its minion id, its keypair, the one master it trusts and
//! its minion config, as a cloud-init NoCloud seed (a vfat image labelled `cidata`) or as
//! systemd credentials in SMBIOS type 11 OEM strings.
//!
//! Both carry the private key: they are secrets. They are built in memory, handed to libvirt
//! and never logged.

pub mod userdata;

use base64::Engine;
use std::io::{Cursor, Write};
use yaml_serde::{Mapping, Value};
use zeroize::Zeroizing;

/// What a clone needs to know to be itself.
pub struct Identity {
    pub id: String,
    /// The instance id cloud-init keys its first boot on (the domain UUID).
    pub instance_id: String,
    /// The minion's keypair; `None` when the image makes its own (`accept: on_first_auth`).
    pub private_pem: Option<Zeroizing<String>>,
    pub public_pem: Option<String>,
    pub master_pub: String,
    /// The key the masters sign their own with (`master_sign_pubkey`), written where the
    /// minion looks for it (`pki_dir/master_sign.pub`; its config says to verify by it).
    pub master_sign_pub: Option<String>,
    /// The minion config (`id` and `master*` included).
    pub minion_conf: Mapping,
    pub grains: Mapping,
    /// The guest's resolvers (profile `nameserver`); empty: what DHCP gives.
    pub nameservers: Vec<std::net::IpAddr>,
    /// The clone's MACs, one per interface in order: cloud-init's network config matches them.
    pub macs: Vec<String>,
    /// A swap file of this many MiB, made at first boot (profile `swap`).
    pub swap_mib: Option<u64>,
    /// The user's own cloud-config (profile `userdata_file`), under virtseed's.
    pub userdata: Option<userdata::UserData>,
}

/// Where the swap file goes, for cloud-init's `swap:` and the guest unit alike.
pub const SWAP_FILE: &str = "/swapfile";

#[derive(Debug, thiserror::Error)]
#[error("building the seed: {0}")]
pub struct SeedError(String);

fn yaml(v: &Value) -> Result<String, SeedError> {
    yaml_serde::to_string(v).map_err(|e| SeedError(e.to_string()))
}

impl Identity {
    /// cloud-init `user-data`: the salt_minion module (conf, grains, keys), and the master's
    /// public key written where the minion caches it (so the guest trusts only this master).
    pub fn user_data(&self) -> Result<Zeroizing<String>, SeedError> {
        let mut salt = Mapping::new();
        salt.insert("conf".into(), Value::Mapping(self.minion_conf.clone()));
        if !self.grains.is_empty() {
            salt.insert("grains".into(), Value::Mapping(self.grains.clone()));
        }
        if let (Some(public), Some(private)) = (&self.public_pem, &self.private_pem) {
            salt.insert("public_key".into(), public.clone().into());
            salt.insert("private_key".into(), private.to_string().into());
        }
        let mut wf = Mapping::new();
        wf.insert(
            "path".into(),
            "/etc/salt/pki/minion/minion_master.pub".into(),
        );
        wf.insert("permissions".into(), "0644".into());
        wf.insert("content".into(), self.master_pub.clone().into());
        let mut files = vec![Value::Mapping(wf)];
        if let Some(sign) = &self.master_sign_pub {
            let mut wf = Mapping::new();
            wf.insert("path".into(), userdata::MASTER_SIGN_PUB_PATH.into());
            wf.insert("permissions".into(), "0644".into());
            wf.insert("content".into(), sign.clone().into());
            files.push(Value::Mapping(wf));
        }
        let mut top = Mapping::new();
        top.insert("salt_minion".into(), Value::Mapping(salt));
        top.insert("write_files".into(), Value::Sequence(files));
        if let Some(mib) = self.swap_mib {
            // cloud-init's mounts module (cc_mounts): size and maxsize in bytes.
            let bytes = Value::Number((mib * 1024 * 1024).into());
            let mut swap = Mapping::new();
            swap.insert("filename".into(), SWAP_FILE.into());
            swap.insert("size".into(), bytes.clone());
            swap.insert("maxsize".into(), bytes);
            top.insert("swap".into(), Value::Mapping(swap));
        }
        if let Some(ud) = &self.userdata {
            top = ud.merged_under(top);
        }
        let body = Zeroizing::new(yaml(&Value::Mapping(top))?);
        Ok(Zeroizing::new(format!("#cloud-config\n{}", body.as_str())))
    }

    /// cloud-init `network-config` (v2) when the profile names resolvers: DHCP as before on
    /// each interface (matched by the MAC virtseed gave it), DHCP's DNS servers replaced.
    pub fn network_config(&self) -> Result<Option<String>, SeedError> {
        if self.nameservers.is_empty() {
            return Ok(None);
        }
        let addrs: Vec<Value> = self
            .nameservers
            .iter()
            .map(|a| Value::String(a.to_string()))
            .collect();
        let mut ethernets = Mapping::new();
        for (i, mac) in self.macs.iter().enumerate() {
            let mut m = Mapping::new();
            let mut matcher = Mapping::new();
            matcher.insert("macaddress".into(), mac.clone().into());
            m.insert("match".into(), Value::Mapping(matcher));
            m.insert("dhcp4".into(), true.into());
            let mut over = Mapping::new();
            over.insert("use-dns".into(), false.into());
            m.insert("dhcp4-overrides".into(), Value::Mapping(over));
            let mut ns = Mapping::new();
            ns.insert("addresses".into(), Value::Sequence(addrs.clone()));
            m.insert("nameservers".into(), Value::Mapping(ns));
            ethernets.insert(format!("virtseed{i}").into(), Value::Mapping(m));
        }
        let mut top = Mapping::new();
        top.insert("version".into(), 2.into());
        top.insert("ethernets".into(), Value::Mapping(ethernets));
        yaml(&Value::Mapping(top)).map(Some)
    }

    /// The resolvers as `/etc/resolv.conf` text, for the guest unit.
    pub fn resolv_conf(&self) -> Option<String> {
        if self.nameservers.is_empty() {
            return None;
        }
        let mut s = String::from("# from virtseed (profile `nameserver`)\n");
        for a in &self.nameservers {
            s.push_str(&format!("nameserver {a}\n"));
        }
        Some(s)
    }

    pub fn meta_data(&self) -> Result<String, SeedError> {
        let mut m = Mapping::new();
        m.insert("instance-id".into(), self.instance_id.clone().into());
        m.insert("local-hostname".into(), self.id.clone().into());
        yaml(&Value::Mapping(m))
    }

    /// The NoCloud seed: a 1 MiB FAT12 image labelled `cidata` with a random volume serial,
    /// holding `meta-data` and `user-data` (for any cloud-init image), and beside them the
    /// identity as the `virtseed.*` files of [`Identity::files`] (for images with
    /// `guest/virtseed-credentials`, which install them without waiting for cloud-init).
    pub fn nocloud_image(&self) -> Result<Zeroizing<Vec<u8>>, SeedError> {
        let user = self.user_data()?;
        let meta = self.meta_data()?;
        let files = self.files()?;
        let network = self.network_config()?;
        let e = |e: std::io::Error| SeedError(e.to_string());
        let mut img = Zeroizing::new(vec![0u8; 1024 * 1024]);
        {
            let mut cur = Cursor::new(&mut img[..]);
            fatfs::format_volume(
                &mut cur,
                fatfs::FormatVolumeOptions::new()
                    .volume_label(*b"cidata     ")
                    .volume_id(rand::random()),
            )
            .map_err(e)?;
            cur.set_position(0);
            let fs = fatfs::FileSystem::new(&mut cur, fatfs::FsOptions::new()).map_err(e)?;
            {
                let root = fs.root_dir();
                let all = [("meta-data", meta.as_str()), ("user-data", user.as_str())];
                for (name, body) in all
                    .into_iter()
                    .chain(network.as_deref().map(|n| ("network-config", n)))
                    .chain(files.iter().map(|(n, b)| (*n, b.as_str())))
                {
                    root.create_file(name)
                        .map_err(e)?
                        .write_all(body.as_bytes())
                        .map_err(e)?;
                }
            }
            fs.unmount().map_err(e)?;
        }
        Ok(img)
    }

    /// The identity as files, named as the guest unit reads them (systemd credential names
    /// for `seed: smbios`, file names on the NoCloud volume): id, minion config, the master's
    /// key, and the minion's keypair unless the image makes its own; the resolvers and the
    /// swap size when the profile sets them.
    pub fn files(&self) -> Result<Vec<(&'static str, Zeroizing<String>)>, SeedError> {
        let mut v = vec![
            ("virtseed.minion_id", Zeroizing::new(self.id.clone())),
            (
                "virtseed.minion.conf",
                Zeroizing::new(self.minion_conf_text()?),
            ),
            (
                "virtseed.minion_master.pub",
                Zeroizing::new(self.master_pub.clone()),
            ),
        ];
        if let Some(sign) = &self.master_sign_pub {
            v.push(("virtseed.master_sign.pub", Zeroizing::new(sign.clone())));
        }
        if let (Some(public), Some(private)) = (&self.public_pem, &self.private_pem) {
            v.push(("virtseed.minion.pem", private.clone()));
            v.push(("virtseed.minion.pub", Zeroizing::new(public.clone())));
        }
        if let Some(r) = self.resolv_conf() {
            v.push(("virtseed.resolv.conf", Zeroizing::new(r)));
        }
        if let Some(mib) = self.swap_mib {
            v.push(("virtseed.swap_mib", Zeroizing::new(mib.to_string())));
        }
        Ok(v)
    }

    /// The minion config as a drop-in file (`/etc/salt/minion.d/virtseed.conf`), with grains.
    pub fn minion_conf_text(&self) -> Result<String, SeedError> {
        let mut conf = self.minion_conf.clone();
        if !self.grains.is_empty() {
            conf.insert("grains".into(), Value::Mapping(self.grains.clone()));
        }
        yaml(&Value::Mapping(conf))
    }

    /// systemd credentials as SMBIOS type 11 OEM strings
    /// (`io.systemd.credential.binary:NAME=BASE64`), installed in the guest by
    /// `guest/virtseed-credentials` before salt-minion starts.
    pub fn smbios_strings(&self) -> Result<Vec<Zeroizing<String>>, SeedError> {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
        Ok(self
            .files()?
            .iter()
            .map(|(name, v)| {
                Zeroizing::new(format!("io.systemd.credential.binary:{name}={}", b64(v)))
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ident() -> Identity {
        let mut conf = Mapping::new();
        conf.insert("id".into(), "web1".into());
        conf.insert("master".into(), "10.0.2.2".into());
        let mut grains = Mapping::new();
        grains.insert("role".into(), "web".into());
        Identity {
            id: "web1".into(),
            instance_id: "aaaa-bbbb".into(),
            private_pem: Some(Zeroizing::new(
                "-----BEGIN RSA PRIVATE KEY-----\nAAA\n-----END RSA PRIVATE KEY-----\n".into(),
            )),
            public_pem: Some("-----BEGIN PUBLIC KEY-----\nBBB\n-----END PUBLIC KEY-----\n".into()),
            master_pub: "-----BEGIN PUBLIC KEY-----\nMMM\n-----END PUBLIC KEY-----\n".into(),
            master_sign_pub: None,
            minion_conf: conf,
            grains,
            nameservers: Vec::new(),
            macs: vec!["52:54:00:00:00:01".into()],
            swap_mib: None,
            userdata: None,
        }
    }

    #[test]
    fn user_data_is_cloud_config_with_keys_and_master_key() {
        let i = ident();
        let ud = i.user_data().unwrap();
        assert!(ud.starts_with("#cloud-config\n"));
        let v: Value = yaml_serde::from_str(&ud).unwrap();
        assert_eq!(
            v["salt_minion"]["conf"]["master"].as_str(),
            Some("10.0.2.2")
        );
        assert_eq!(v["salt_minion"]["grains"]["role"].as_str(), Some("web"));
        assert_eq!(
            v["salt_minion"]["private_key"].as_str(),
            i.private_pem.as_deref().map(|s| s.as_str())
        );
        assert_eq!(
            v["salt_minion"]["public_key"].as_str(),
            i.public_pem.as_deref()
        );
        assert_eq!(
            v["write_files"][0]["content"].as_str(),
            Some(i.master_pub.as_str())
        );
        let md: Value = yaml_serde::from_str(&i.meta_data().unwrap()).unwrap();
        assert_eq!(md["instance-id"].as_str(), Some("aaaa-bbbb"));
        assert_eq!(v["write_files"].as_sequence().map(Vec::len), Some(1));
        assert!(!i.files().unwrap().iter().any(|(n, _)| n.contains("sign")));
    }

    #[test]
    fn signing_masters_key_goes_where_the_minion_verifies_by_it() {
        let mut i = ident();
        let sign = "-----BEGIN PUBLIC KEY-----\nSSS\n-----END PUBLIC KEY-----\n";
        i.master_sign_pub = Some(sign.into());
        let v: Value = yaml_serde::from_str(&i.user_data().unwrap()).unwrap();
        assert_eq!(
            v["write_files"][1]["path"].as_str(),
            Some("/etc/salt/pki/minion/master_sign.pub")
        );
        assert_eq!(v["write_files"][1]["content"].as_str(), Some(sign));
        let files = i.files().unwrap();
        let got = files
            .iter()
            .find(|(n, _)| *n == "virtseed.master_sign.pub")
            .map(|(_, b)| b.as_str());
        assert_eq!(got, Some(sign));
    }

    #[test]
    fn nocloud_image_is_a_cidata_vfat_with_cloud_init_and_identity_files() {
        let i = ident();
        let img = i.nocloud_image().unwrap();
        let img2 = i.nocloud_image().unwrap();
        let mut cur = Cursor::new(img.to_vec());
        let fs = fatfs::FileSystem::new(&mut cur, fatfs::FsOptions::new()).unwrap();
        assert_eq!(fs.volume_label(), "cidata");
        let serial = fs.volume_id();
        let mut names: Vec<String> = fs
            .root_dir()
            .iter()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "meta-data",
                "user-data",
                "virtseed.minion.conf",
                "virtseed.minion.pem",
                "virtseed.minion.pub",
                "virtseed.minion_id",
                "virtseed.minion_master.pub"
            ]
        );
        let read = |name: &str| {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut fs.root_dir().open_file(name).unwrap(), &mut s)
                .unwrap();
            s
        };
        assert_eq!(read("user-data"), *i.user_data().unwrap());
        for (name, body) in i.files().unwrap() {
            assert_eq!(read(name), *body, "{name}");
        }
        assert_eq!(read("virtseed.minion_id"), i.id);
        assert_eq!(
            read("virtseed.minion.pem"),
            **i.private_pem.as_ref().unwrap()
        );
        drop(fs);
        let fs2 =
            fatfs::FileSystem::new(Cursor::new(img2.to_vec()), fatfs::FsOptions::new()).unwrap();
        assert_ne!(
            serial,
            fs2.volume_id(),
            "volume serials must differ per image"
        );
    }

    #[test]
    fn smbios_credentials_decode() {
        let i = ident();
        let s = i.smbios_strings().unwrap();
        let pem = s
            .iter()
            .find(|x| x.contains("virtseed.minion.pem="))
            .unwrap();
        let b = pem.split_once('=').unwrap().1;
        let dec = base64::engine::general_purpose::STANDARD.decode(b).unwrap();
        assert_eq!(
            String::from_utf8(dec).unwrap(),
            **i.private_pem.as_ref().unwrap()
        );
        assert!(s[0].starts_with("io.systemd.credential.binary:virtseed.minion_id="));
    }

    #[test]
    fn resolvers_swap_and_the_users_cloud_config() {
        let mut i = ident();
        assert!(i.network_config().unwrap().is_none());
        i.nameservers = vec![
            "8.8.8.8".parse().unwrap(),
            "2001:4860:4860::8888".parse().unwrap(),
        ];
        i.swap_mib = Some(256);
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("ud.yaml");
        std::fs::write(
            &f,
            "#cloud-config\npackages: [htop]\nsalt_minion: {conf: {master: evil}}\n",
        )
        .unwrap();
        i.userdata = Some(userdata::UserData::load(&f).unwrap());

        let ud: Value = yaml_serde::from_str(&i.user_data().unwrap()).unwrap();
        assert_eq!(ud["swap"]["filename"].as_str(), Some(SWAP_FILE));
        assert_eq!(ud["swap"]["size"].as_u64(), Some(256 << 20));
        assert_eq!(ud["packages"][0].as_str(), Some("htop"));
        assert_eq!(
            ud["salt_minion"]["conf"]["master"].as_str(),
            Some("10.0.2.2")
        );

        let nc: Value = yaml_serde::from_str(&i.network_config().unwrap().unwrap()).unwrap();
        let eth = &nc["ethernets"]["virtseed0"];
        assert_eq!(nc["version"].as_u64(), Some(2));
        assert_eq!(
            eth["match"]["macaddress"].as_str(),
            Some("52:54:00:00:00:01")
        );
        assert_eq!(eth["dhcp4"].as_bool(), Some(true));
        assert_eq!(
            eth["nameservers"]["addresses"][1].as_str(),
            Some("2001:4860:4860::8888")
        );

        let files = i.files().unwrap();
        let get = |n: &str| {
            files
                .iter()
                .find(|(k, _)| *k == n)
                .map(|(_, v)| v.to_string())
        };
        assert_eq!(
            get("virtseed.resolv.conf")
                .unwrap()
                .lines()
                .skip(1)
                .collect::<Vec<_>>(),
            ["nameserver 8.8.8.8", "nameserver 2001:4860:4860::8888"]
        );
        assert_eq!(get("virtseed.swap_mib").as_deref(), Some("256"));
        let img = i.nocloud_image().unwrap();
        let fs =
            fatfs::FileSystem::new(Cursor::new(img.to_vec()), fatfs::FsOptions::new()).unwrap();
        assert!(fs.root_dir().open_file("network-config").is_ok());
    }

    #[test]
    fn images_that_make_their_own_key_get_no_keys() {
        let mut i = ident();
        i.private_pem = None;
        i.public_pem = None;
        let v: Value = yaml_serde::from_str(&i.user_data().unwrap()).unwrap();
        assert!(v["salt_minion"].get("private_key").is_none());
        assert!(v["salt_minion"].get("public_key").is_none());
        assert!(!i
            .smbios_strings()
            .unwrap()
            .iter()
            .any(|s| s.contains("minion.pem")));
    }
}
