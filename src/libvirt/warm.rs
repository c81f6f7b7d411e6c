//! What warm clones need from libvirt: a transient domain, its running state saved into a
//! pool, a per-clone copy of that image with its header rewritten (storage API only, so a
//! `qemu+ssh://` host works as a local one), the restore, and the guest's virtio-serial
//! channel (`virDomainOpenChannel`, carried by the libvirt connection).

use super::saveimage::SaveImage;
use super::{raw_code, xml_escape, Hypervisor, LibvirtError};
use std::time::{Duration, Instant};
use virt::storage_vol::StorageVol;
use virt::stream::Stream;
use virt::sys;

/// A volume's identity for "has it changed": its path, size on disk and modification time.
pub fn volume_stamp(vol_xml: &str) -> String {
    let Ok(v) = super::dom::parse(vol_xml) else {
        return String::new();
    };
    let text = |path: &[&str]| {
        let mut e = Some(&v);
        for p in path {
            e = e.and_then(|x| x.child(p));
        }
        e.map(|x| x.text()).unwrap_or_default()
    };
    format!(
        "{} {} {} {}",
        text(&["target", "path"]),
        text(&["capacity"]),
        text(&["allocation"]),
        text(&["target", "timestamps", "mtime"])
    )
}

impl Hypervisor {
    /// Starts a transient domain from `xml`: it is gone once stopped or saved.
    pub fn create_transient(&self, xml: &str) -> Result<(), LibvirtError> {
        self.conn
            .create_domain_xml(xml, 0)
            .map(|_| ())
            .map_err(self.err("start the warming domain"))
    }

    /// Stops the transient domain `name`, if it runs (a warming that failed or was killed).
    pub fn stop_transient(&self, name: &str) -> Result<(), LibvirtError> {
        if let Some(dom) = self.lookup(name)? {
            if dom.is_active().unwrap_or(false) {
                dom.destroy().map_err(self.err(format!("stop {name}")))?;
            }
        }
        Ok(())
    }

    /// Saves the running domain `name` to `path` on the hypervisor (a restore of it resumes
    /// running); the domain stops.
    pub fn save_running(&self, name: &str, path: &str) -> Result<(), LibvirtError> {
        let dom = self.lookup(name)?.ok_or_else(|| LibvirtError::NoDomain {
            name: name.into(),
            uri: self.uri.clone(),
        })?;
        let to = std::ffi::CString::new(path).map_err(|_| LibvirtError::BaseDisk {
            target: name.into(),
            msg: format!("path {path:?} has a NUL"),
        })?;
        // SAFETY: `dom` is a live domain reference for the call; `to` outlives it; a null
        // dxml is allowed.
        let r = unsafe {
            sys::virDomainSaveFlags(
                dom.as_ptr(),
                to.as_ptr(),
                std::ptr::null(),
                sys::VIR_DOMAIN_SAVE_RUNNING,
            )
        };
        if r < 0 {
            return Err(self.err(format!("save {name} to {path}"))(
                virt::error::Error::last_error(),
            ));
        }
        Ok(())
    }

    /// Restores a saved image at `path` on the hypervisor; a persistent domain of the
    /// image's name and UUID takes it as its running state.
    pub fn restore(&self, path: &str) -> Result<(), LibvirtError> {
        self.conn
            .restore_domain(path)
            .map_err(self.err(format!("restore {path}")))
    }

    /// The directory of a dir pool.
    pub fn pool_path(&self, pool: &str) -> Result<String, LibvirtError> {
        let p = self.pool(pool)?;
        let xml = p
            .xml_desc(0)
            .map_err(self.err(format!("XML of pool {pool}")))?;
        super::dom::parse(&xml)
            .ok()
            .and_then(|x| x.child("target")?.child("path").map(|p| p.text()))
            .filter(|p| !p.is_empty())
            .ok_or_else(|| LibvirtError::BaseDisk {
                target: pool.into(),
                msg: format!("pool {pool} has no target path (warm clones need a dir pool)"),
            })
    }

    /// Makes libvirt look at a pool's directory again (after a file appeared in it).
    pub fn refresh_pool(&self, pool: &str) -> Result<(), LibvirtError> {
        self.pool(pool)?
            .refresh(0)
            .map_err(self.err(format!("refresh pool {pool}")))
    }

    fn volume(&self, pool: &str, vol: &str) -> Result<Option<StorageVol>, LibvirtError> {
        match self.pool(pool)?.lookup_storage_vol_by_name(vol) {
            Ok(v) => Ok(Some(v)),
            Err(e) if raw_code(&e) == sys::VIR_ERR_NO_STORAGE_VOL as i32 => Ok(None),
            Err(e) => Err(self.err(format!("volume {vol} in pool {pool}"))(e)),
        }
    }

    /// The volume's path, if it exists.
    pub fn volume_path(&self, pool: &str, vol: &str) -> Result<Option<String>, LibvirtError> {
        self.volume(pool, vol)?
            .map(|v| v.path().map_err(self.err("volume path")))
            .transpose()
    }

    /// [`volume_stamp`] of the volume at `path`.
    pub fn volume_stamp(&self, path: &str) -> Result<String, LibvirtError> {
        let v = self
            .conn
            .lookup_storage_vol_by_path(path)
            .map_err(self.err(format!("volume {path}")))?;
        let xml = v.xml_desc(0).map_err(self.err("volume XML"))?;
        Ok(volume_stamp(&xml))
    }

    /// Names of the volumes in `pool` starting with `prefix`.
    pub fn volumes_named(&self, pool: &str, prefix: &str) -> Result<Vec<String>, LibvirtError> {
        let p = self.pool(pool)?;
        let _ = p.refresh(0);
        let names = p
            .list_volumes()
            .map_err(self.err(format!("volumes of pool {pool}")))?;
        Ok(names
            .into_iter()
            .filter(|n| n.starts_with(prefix))
            .collect())
    }

    /// The header and XML of the save image `vol`, read through a storage stream.
    pub fn read_save_image(&self, pool: &str, vol: &str) -> Result<SaveImage, LibvirtError> {
        let v = self
            .volume(pool, vol)?
            .ok_or_else(|| LibvirtError::BaseDisk {
                target: vol.into(),
                msg: format!("no volume {vol} in pool {pool}"),
            })?;
        let bad = |e: super::saveimage::SaveImageError| LibvirtError::BaseDisk {
            target: vol.into(),
            msg: e.to_string(),
        };
        let head = self.download(&v, super::saveimage::HEADER_LEN)?;
        let need = SaveImage::needed(&head).map_err(bad)?;
        SaveImage::parse(&self.download(&v, need)?).map_err(bad)
    }

    fn download(&self, v: &StorageVol, len: usize) -> Result<Vec<u8>, LibvirtError> {
        let run = || -> Result<Vec<u8>, virt::error::Error> {
            let stream = Stream::new(&self.conn, 0)?;
            v.download(&stream, 0, len as u64, 0)?;
            let mut out = vec![0u8; len];
            let mut off = 0;
            while off < len {
                let n = stream.recv(&mut out[off..])?;
                if n <= 0 {
                    break;
                }
                off += n as usize;
            }
            out.truncate(off);
            let _ = stream.abort();
            Ok(out)
        };
        run().map_err(self.err("read a save image"))
    }

    /// A copy of volume `src` of `pool` named `vol` (0600), with `head` written over its
    /// first bytes; returns its path. A copy left half-made is deleted.
    pub fn copy_with_head(
        &self,
        pool: &str,
        src: &str,
        vol: &str,
        head: &[u8],
    ) -> Result<String, LibvirtError> {
        let p = self.pool(pool)?;
        self.refuse_existing_volume(&p, pool, vol)?;
        let from = self
            .volume(pool, src)?
            .ok_or_else(|| LibvirtError::BaseDisk {
                target: src.into(),
                msg: format!("no volume {src} in pool {pool}"),
            })?;
        let cap = from.info().map_err(self.err("save image size"))?.capacity;
        let xml = format!(
            "<volume><name>{}</name><capacity unit='bytes'>{cap}</capacity><target><format type='raw'/><permissions><mode>0600</mode></permissions></target></volume>",
            xml_escape(vol)
        );
        let copy = StorageVol::create_xml_from(&p, &xml, &from, 0)
            .map_err(|e| self.vol_err(e, pool, vol, format!("copy {src} to {vol}")))?;
        let path = copy.path().map_err(self.err("copy path"));
        if let Err(e) = self.upload_at(&copy, head) {
            let _ = copy.delete(0);
            return Err(self.err(format!("write the header of {vol}"))(e));
        }
        path
    }

    /// The virtio-serial channel `name` of running domain `domain`.
    pub fn open_channel(&self, domain: &str, name: &str) -> Result<Channel, LibvirtError> {
        let dom = self.lookup(domain)?.ok_or_else(|| LibvirtError::NoDomain {
            name: domain.into(),
            uri: self.uri.clone(),
        })?;
        let stream =
            Stream::new(&self.conn, sys::VIR_STREAM_NONBLOCK).map_err(self.err("new stream"))?;
        dom.open_channel(Some(name), &stream, sys::VIR_DOMAIN_CHANNEL_FORCE)
            .map_err(self.err(format!("open channel {name} of {domain}")))?;
        Ok(Channel {
            stream: Some(stream),
            buf: Vec::new(),
            what: format!("channel {name} of {domain}"),
        })
    }
}

/// A guest's virtio-serial channel, line by line.
pub struct Channel {
    stream: Option<Stream>,
    buf: Vec<u8>,
    what: String,
}

const POLL: Duration = Duration::from_millis(5);

impl Channel {
    fn ptr(&self) -> sys::virStreamPtr {
        // SAFETY: the stream lives as long as `self` (taken only in drop).
        unsafe {
            self.stream
                .as_ref()
                .map(|s| s.as_ptr())
                .unwrap_or(std::ptr::null_mut())
        }
    }

    fn failed(&self, op: &str) -> String {
        format!(
            "{op} {}: {}",
            self.what,
            virt::error::Error::last_error().message()
        )
    }

    /// Sends all of `data`, waiting while the stream is full.
    pub fn send(&mut self, data: &[u8], limit: Duration) -> Result<(), String> {
        let t = Instant::now();
        let mut off = 0;
        while off < data.len() {
            // SAFETY: valid stream; the slice outlives the call.
            let n = unsafe {
                sys::virStreamSend(self.ptr(), data[off..].as_ptr().cast(), data.len() - off)
            };
            match n {
                -2 if t.elapsed() < limit => std::thread::sleep(POLL),
                -2 => return Err(format!("writing to {}: timed out", self.what)),
                n if n < 0 => return Err(self.failed("writing to")),
                n => off += n as usize,
            }
        }
        Ok(())
    }

    /// The next line (without its newline), waiting up to `limit`.
    pub fn recv_line(&mut self, limit: Duration) -> Result<String, String> {
        let t = Instant::now();
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                return Ok(String::from_utf8_lossy(&line[..i]).into_owned());
            }
            if self.buf.len() > 1 << 20 {
                return Err(format!("{} sent a line over 1 MiB", self.what));
            }
            // SAFETY: valid stream; `chunk` outlives the call.
            let n =
                unsafe { sys::virStreamRecv(self.ptr(), chunk.as_mut_ptr().cast(), chunk.len()) };
            match n {
                -2 if t.elapsed() < limit => std::thread::sleep(POLL),
                -2 => {
                    return Err(format!(
                        "nothing from {} in {} s",
                        self.what,
                        limit.as_secs()
                    ))
                }
                0 => return Err(format!("{} was closed", self.what)),
                n if n < 0 => return Err(self.failed("reading")),
                n => self.buf.extend_from_slice(&chunk[..n as usize]),
            }
        }
    }
}

impl Drop for Channel {
    fn drop(&mut self) {
        if let Some(s) = self.stream.take() {
            let _ = s.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_volume_stamp_changes_with_size_or_time() {
        let xml = |alloc: &str, mtime: &str| {
            format!("<volume><name>d</name><capacity unit='bytes'>10</capacity><allocation unit='bytes'>{alloc}</allocation><target><path>/p/d</path><timestamps><mtime>{mtime}</mtime></timestamps></target></volume>")
        };
        let a = volume_stamp(&xml("5", "1.5"));
        assert_eq!(a, "/p/d 10 5 1.5");
        assert_ne!(a, volume_stamp(&xml("6", "1.5")));
        assert_ne!(a, volume_stamp(&xml("5", "1.6")));
        assert_eq!(volume_stamp("<not"), "");
    }
}
