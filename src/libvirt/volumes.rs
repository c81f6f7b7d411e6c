//! Volumes of the clone engine: a clone's disks (overlay, copy, upload), its NVRAM copy, and
//! their deletion, all through libvirt's storage API. A volume already there is never
//! overwritten ([`LibvirtError::VolumeExists`]).

use super::{raw_code, xml_escape, Hypervisor, LibvirtError, LocatedDisk};
use virt::storage_pool::StoragePool;
use virt::storage_vol::StorageVol;
use virt::sys;

impl Hypervisor {
    pub(super) fn pool(&self, name: &str) -> Result<StoragePool, LibvirtError> {
        self.conn
            .lookup_storage_pool_by_name(name)
            .map_err(self.err(format!("pool {name}")))
    }

    pub(super) fn refuse_existing_volume(
        &self,
        pool: &StoragePool,
        pool_name: &str,
        vol: &str,
    ) -> Result<(), LibvirtError> {
        if pool.lookup_storage_vol_by_name(vol).is_ok() {
            return Err(LibvirtError::VolumeExists {
                name: vol.into(),
                pool: pool_name.into(),
            });
        }
        Ok(())
    }

    /// A qcow2 overlay over `backing` in `pool_name`; returns the new volume's path.
    pub fn create_overlay(
        &self,
        pool_name: &str,
        vol_name: &str,
        backing: &LocatedDisk,
        capacity: u64,
    ) -> Result<String, LibvirtError> {
        let pool = self.pool(pool_name)?;
        self.refuse_existing_volume(&pool, pool_name, vol_name)?;
        let xml = format!(
            "<volume><name>{}</name><capacity unit='bytes'>{capacity}</capacity><target><format type='qcow2'/></target><backingStore><path>{}</path><format type='{}'/></backingStore></volume>",
            xml_escape(vol_name),
            xml_escape(&backing.path),
            xml_escape(&backing.format),
        );
        let vol = StorageVol::create_xml(&pool, &xml, 0).map_err(|e| {
            self.vol_err(
                e,
                pool_name,
                vol_name,
                format!("create overlay {vol_name} in pool {pool_name}"),
            )
        })?;
        vol.path().map_err(self.err("overlay path"))
    }

    /// A full copy of `src` into `pool_name` (same format), grown to `capacity`.
    pub fn create_copy(
        &self,
        pool_name: &str,
        vol_name: &str,
        src: &LocatedDisk,
        capacity: u64,
    ) -> Result<String, LibvirtError> {
        let pool = self.pool(pool_name)?;
        self.refuse_existing_volume(&pool, pool_name, vol_name)?;
        let src_pool = self.pool(&src.pool)?;
        let src_vol = src_pool
            .lookup_storage_vol_by_name(&src.volume)
            .map_err(self.err(format!("volume {}", src.volume)))?;
        let xml = format!(
            "<volume><name>{}</name><capacity unit='bytes'>{capacity}</capacity><target><format type='{}'/></target></volume>",
            xml_escape(vol_name),
            xml_escape(&src.format),
        );
        let vol = StorageVol::create_xml_from(&pool, &xml, &src_vol, 0).map_err(|e| {
            self.vol_err(
                e,
                pool_name,
                vol_name,
                format!("copy {} to {vol_name}", src.volume),
            )
        })?;
        let path = vol.path().map_err(self.err("copy path"))?;
        if capacity > src.capacity {
            if let Err(e) = vol.resize(capacity, 0) {
                let _ = vol.delete(0);
                return Err(self.err(format!("grow {vol_name}"))(e));
            }
        }
        Ok(path)
    }

    /// An empty volume of `capacity` bytes.
    pub fn create_volume(
        &self,
        pool_name: &str,
        vol_name: &str,
        format: &str,
        capacity: u64,
    ) -> Result<String, LibvirtError> {
        let pool = self.pool(pool_name)?;
        self.refuse_existing_volume(&pool, pool_name, vol_name)?;
        let xml = format!(
            "<volume><name>{}</name><capacity unit='bytes'>{capacity}</capacity><target><format type='{}'/></target></volume>",
            xml_escape(vol_name),
            xml_escape(format)
        );
        let vol = StorageVol::create_xml(&pool, &xml, 0).map_err(|e| {
            self.vol_err(e, pool_name, vol_name, format!("create volume {vol_name}"))
        })?;
        vol.path().map_err(self.err("volume path"))
    }

    /// A volume with the given bytes, uploaded through libvirt's stream API.
    pub fn upload_volume(
        &self,
        pool_name: &str,
        vol_name: &str,
        format: &str,
        data: &[u8],
    ) -> Result<String, LibvirtError> {
        let pool = self.pool(pool_name)?;
        self.refuse_existing_volume(&pool, pool_name, vol_name)?;
        let xml = format!(
            "<volume><name>{}</name><capacity unit='bytes'>{}</capacity><target><format type='{}'/><permissions><mode>0600</mode></permissions></target></volume>",
            xml_escape(vol_name),
            data.len(),
            xml_escape(format)
        );
        let vol = StorageVol::create_xml(&pool, &xml, 0).map_err(|e| {
            self.vol_err(e, pool_name, vol_name, format!("create volume {vol_name}"))
        })?;
        let path = vol.path().map_err(self.err("volume path"))?;
        let result = self.upload_at(&vol, data);
        if let Err(e) = result {
            let _ = vol.delete(0);
            return Err(self.err(format!("upload {vol_name}"))(e));
        }
        Ok(path)
    }

    /// Writes `data` over the start of `vol` through a storage stream.
    pub(super) fn upload_at(
        &self,
        vol: &StorageVol,
        data: &[u8],
    ) -> Result<(), virt::error::Error> {
        let stream = virt::stream::Stream::new(&self.conn, 0)?;
        vol.upload(&stream, 0, data.len() as u64, 0)?;
        let mut off = 0;
        while off < data.len() {
            let n = stream.send(&data[off..])?;
            if n <= 0 {
                break;
            }
            off += n as usize;
        }
        stream.finish()
    }

    /// Deletes the volume at `path`; a volume that is already gone is not an error.
    pub fn delete_volume(&self, path: &str) -> Result<(), LibvirtError> {
        match self.conn.lookup_storage_vol_by_path(path) {
            Ok(v) => v
                .delete(0)
                .map_err(self.err(format!("delete volume {path}"))),
            Err(e) if raw_code(&e) == sys::VIR_ERR_NO_STORAGE_VOL as i32 => Ok(()),
            Err(e) => Err(self.err(format!("look up volume {path}"))(e)),
        }
    }

    /// The pool holding the base's NVRAM, if it is a pool volume.
    pub fn nvram_pool(&self, base_nvram: &str) -> Option<String> {
        let vol = self.conn.lookup_storage_vol_by_path(base_nvram).ok()?;
        vol.lookup_storage_pool().ok()?.name().ok()
    }

    /// The name [`Hypervisor::copy_nvram`] gives the clone's NVRAM volume.
    pub fn nvram_volume_name(new_name: &str) -> String {
        format!("{new_name}_VARS.fd")
    }

    /// Deletes volume `name` of pool `pool_name`; one that is gone (or a pool that is gone)
    /// is not an error.
    pub fn delete_volume_named(&self, pool_name: &str, name: &str) -> Result<(), LibvirtError> {
        let pool = match self.conn.lookup_storage_pool_by_name(pool_name) {
            Ok(p) => p,
            Err(e) if raw_code(&e) == sys::VIR_ERR_NO_STORAGE_POOL as i32 => return Ok(()),
            Err(e) => return Err(self.err(format!("pool {pool_name}"))(e)),
        };
        // A pool's view can be stale after libvirtd restarted.
        let _ = pool.refresh(0);
        match pool.lookup_storage_vol_by_name(name) {
            Ok(v) => v
                .delete(0)
                .map_err(self.err(format!("delete volume {name} in pool {pool_name}"))),
            Err(e) if raw_code(&e) == sys::VIR_ERR_NO_STORAGE_VOL as i32 => Ok(()),
            Err(e) => Err(self
                .err(format!("look up volume {name} in pool {pool_name}"))(
                e
            )),
        }
    }

    /// Copies the base's NVRAM into the pool holding it (if it is a pool volume).
    pub fn copy_nvram(
        &self,
        base_nvram: &str,
        new_name: &str,
    ) -> Result<Option<String>, LibvirtError> {
        let Ok(vol) = self.conn.lookup_storage_vol_by_path(base_nvram) else {
            return Ok(None);
        };
        let pool = vol.lookup_storage_pool().map_err(self.err("nvram pool"))?;
        let pool_name = pool.name().map_err(self.err("nvram pool name"))?;
        let vol_name = Self::nvram_volume_name(new_name);
        self.refuse_existing_volume(&pool, &pool_name, &vol_name)?;
        let xml = format!(
            "<volume><name>{}</name><target><format type='raw'/></target></volume>",
            xml_escape(&vol_name)
        );
        let xml = {
            let cap = vol.info().map_err(self.err("nvram info"))?.capacity;
            xml.replace(
                "</name>",
                &format!("</name><capacity unit='bytes'>{cap}</capacity>"),
            )
        };
        let nv =
            StorageVol::create_xml_from(&pool, &xml, &vol, 0).map_err(self.err("copy nvram"))?;
        nv.path().map(Some).map_err(self.err("nvram path"))
    }
}
