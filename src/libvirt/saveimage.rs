//! libvirt's QEMU save image header, read and rewritten for warm clones.
//!
//! `virsh save` writes (libvirt src/qemu/qemu_saveimage.h): a 92-byte header (`magic[16]`
//! = "LibvirtQemudSave", then the u32s `version` (2), `data_len`, `was_running`, `format`
//! (0: raw), `cookieOffset`, `unused[14]`, in host order), then `data_len` bytes holding the
//! NUL-terminated domain XML, the cookie at `cookieOffset` (NUL-terminated) and zero padding
//! (libvirt reserves room so the XML can be edited in place), then QEMU's migration stream.
//! libvirt checks the magic, version, format and `data_len > 0`; there is no checksum.
//!
//! A warm clone is restored from a copy of its state's image whose XML is the clone's own
//! (name, UUID, disks, MACs): libvirt's supported ways to give a restore another XML refuse
//! another name or UUID. This depends on a private format, so anything but the one known
//! here is refused with a clear error rather than guessed at.

/// The header's size in bytes.
pub const HEADER_LEN: usize = 92;
const MAGIC: &[u8; 16] = b"LibvirtQemudSave";
/// What libvirt writes while a save is still under way.
const MAGIC_PARTIAL: &[u8; 16] = b"LibvirtQemudPart";
const VERSION: u32 = 2;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SaveImageError {
    #[error("not a libvirt QEMU save image (no LibvirtQemudSave magic)")]
    Magic,
    #[error("the save image is incomplete (libvirt did not finish writing it)")]
    Partial,
    #[error("save image format version {0}: virtseed knows version {VERSION} (libvirt 6.0 to 11.x); warm clones need that format")]
    Version(u32),
    #[error("the save image is compressed (format {0}): warm clones need an uncompressed image (save_image_format = \"raw\" in qemu.conf)")]
    Compressed(u32),
    #[error("the save image is malformed: {0}")]
    Malformed(String),
    #[error("the clone's domain XML ({need} bytes with the cookie) does not fit the {have} bytes the save image reserves")]
    TooLong { need: usize, have: usize },
}

/// The header and the domain XML of a save image.
#[derive(Debug, Clone, PartialEq)]
pub struct SaveImage {
    /// The first 92 bytes, as read.
    header: [u8; HEADER_LEN],
    data_len: usize,
    /// The domain XML the image was saved with.
    pub xml: String,
    /// libvirt's cookie (CPU model details), without its NUL; may be empty.
    cookie: Vec<u8>,
}

fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

impl SaveImage {
    /// How many bytes of an image [`SaveImage::parse`] needs: the header, then `data_len`.
    pub fn needed(head: &[u8]) -> Result<usize, SaveImageError> {
        Self::check_header(head).map(|data_len| HEADER_LEN + data_len)
    }

    fn check_header(head: &[u8]) -> Result<usize, SaveImageError> {
        if head.len() < HEADER_LEN {
            return Err(SaveImageError::Malformed(format!(
                "{} bytes, shorter than the header",
                head.len()
            )));
        }
        if &head[..16] == MAGIC_PARTIAL {
            return Err(SaveImageError::Partial);
        }
        if &head[..16] != MAGIC {
            return Err(SaveImageError::Magic);
        }
        let version = u32_at(head, 16);
        if version != VERSION {
            return Err(SaveImageError::Version(version));
        }
        let format = u32_at(head, 28);
        if format != 0 {
            return Err(SaveImageError::Compressed(format));
        }
        let data_len = u32_at(head, 20) as usize;
        if data_len == 0 || data_len > 16 << 20 {
            return Err(SaveImageError::Malformed(format!("data_len {data_len}")));
        }
        Ok(data_len)
    }

    /// Reads the header and XML from the image's first bytes (at least [`SaveImage::needed`]).
    pub fn parse(bytes: &[u8]) -> Result<Self, SaveImageError> {
        let data_len = Self::check_header(bytes)?;
        let data = bytes
            .get(HEADER_LEN..HEADER_LEN + data_len)
            .ok_or_else(|| SaveImageError::Malformed("shorter than its data_len".into()))?;
        let nul = data
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| SaveImageError::Malformed("the domain XML has no end".into()))?;
        let xml = std::str::from_utf8(&data[..nul])
            .map_err(|_| SaveImageError::Malformed("the domain XML is not UTF-8".into()))?
            .to_string();
        let cookie_offset = u32_at(bytes, 32) as usize;
        let cookie = if cookie_offset == 0 {
            Vec::new()
        } else {
            let rest = data.get(cookie_offset..).ok_or_else(|| {
                SaveImageError::Malformed(format!("cookie offset {cookie_offset} past the data"))
            })?;
            if cookie_offset <= nul {
                return Err(SaveImageError::Malformed(
                    "the cookie overlaps the XML".into(),
                ));
            }
            let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
            rest[..end].to_vec()
        };
        let mut header = [0u8; HEADER_LEN];
        header.copy_from_slice(&bytes[..HEADER_LEN]);
        Ok(Self {
            header,
            data_len,
            xml,
            cookie,
        })
    }

    /// The image's first `92 + data_len` bytes with `xml` in place of its XML (the cookie
    /// moved after it, the rest zero): written over a copy of the image at offset 0, the
    /// copy restores as the domain `xml` describes.
    pub fn with_xml(&self, xml: &str) -> Result<Vec<u8>, SaveImageError> {
        if xml.as_bytes().contains(&0) {
            return Err(SaveImageError::Malformed("a NUL in the new XML".into()));
        }
        let xml_len = xml.len() + 1;
        let need = xml_len
            + if self.cookie.is_empty() {
                0
            } else {
                self.cookie.len() + 1
            };
        if need > self.data_len {
            return Err(SaveImageError::TooLong {
                need,
                have: self.data_len,
            });
        }
        let mut out = Vec::with_capacity(HEADER_LEN + self.data_len);
        out.extend_from_slice(&self.header);
        let cookie_offset = if self.cookie.is_empty() {
            0
        } else {
            xml_len as u32
        };
        out[32..36].copy_from_slice(&cookie_offset.to_ne_bytes());
        out.extend_from_slice(xml.as_bytes());
        out.push(0);
        if !self.cookie.is_empty() {
            out.extend_from_slice(&self.cookie);
            out.push(0);
        }
        out.resize(HEADER_LEN + self.data_len, 0);
        Ok(out)
    }

    /// The domain was running when saved (a restore resumes it).
    pub fn was_running(&self) -> bool {
        u32_at(&self.header, 24) == 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An image as libvirt lays it out: header, XML, cookie, padding, then "stream" bytes.
    fn image(xml: &str, cookie: &str, data_len: usize) -> Vec<u8> {
        let mut b = MAGIC.to_vec();
        let cookie_offset = if cookie.is_empty() { 0 } else { xml.len() + 1 };
        for v in [VERSION, data_len as u32, 1, 0, cookie_offset as u32] {
            b.extend_from_slice(&v.to_ne_bytes());
        }
        b.resize(HEADER_LEN, 0);
        b.extend_from_slice(xml.as_bytes());
        b.push(0);
        if !cookie.is_empty() {
            b.extend_from_slice(cookie.as_bytes());
            b.push(0);
        }
        b.resize(HEADER_LEN + data_len, 0);
        b.extend_from_slice(b"QEVM-stream");
        b
    }

    #[test]
    fn reads_and_rewrites_the_xml_keeping_the_cookie() {
        let img = image("<domain><name>a</name></domain>", "<cookie/>", 4096);
        assert_eq!(
            SaveImage::needed(&img[..HEADER_LEN]).unwrap(),
            HEADER_LEN + 4096
        );
        let s = SaveImage::parse(&img).unwrap();
        assert_eq!(s.xml, "<domain><name>a</name></domain>");
        assert!(s.was_running());
        let longer = "<domain><name>a-much-longer-name</name></domain>";
        let head = s.with_xml(longer).unwrap();
        assert_eq!(head.len(), HEADER_LEN + 4096);
        let mut copy = img.clone();
        copy[..head.len()].copy_from_slice(&head);
        let again = SaveImage::parse(&copy).unwrap();
        assert_eq!(again.xml, longer);
        assert_eq!(again.cookie, b"<cookie/>");
        assert_eq!(u32_at(&copy, 32) as usize, longer.len() + 1);
        // Everything past the header and data is untouched.
        assert_eq!(&copy[HEADER_LEN + 4096..], b"QEVM-stream");
    }

    #[test]
    fn without_a_cookie_the_offset_stays_zero() {
        let img = image("<domain/>", "", 64);
        let s = SaveImage::parse(&img).unwrap();
        let head = s.with_xml("<domain><x/></domain>").unwrap();
        assert_eq!(u32_at(&head, 32), 0);
        assert_eq!(
            SaveImage::parse(&head).unwrap().xml,
            "<domain><x/></domain>"
        );
    }

    #[test]
    fn refuses_what_it_does_not_know() {
        let good = image("<domain/>", "<cookie/>", 256);
        let with = |at: usize, v: &[u8]| {
            let mut b = good.clone();
            b[at..at + v.len()].copy_from_slice(v);
            b
        };
        assert_eq!(
            SaveImage::parse(&with(0, MAGIC_PARTIAL)),
            Err(SaveImageError::Partial)
        );
        assert_eq!(
            SaveImage::parse(&with(0, b"QFI")),
            Err(SaveImageError::Magic)
        );
        assert_eq!(
            SaveImage::parse(&with(16, &3u32.to_ne_bytes())),
            Err(SaveImageError::Version(3))
        );
        assert_eq!(
            SaveImage::parse(&with(28, &1u32.to_ne_bytes())),
            Err(SaveImageError::Compressed(1))
        );
        for bad in [
            with(20, &0u32.to_ne_bytes()),
            with(32, &9999u32.to_ne_bytes()),
            with(32, &2u32.to_ne_bytes()),
            good[..50].to_vec(),
            good[..HEADER_LEN + 5].to_vec(),
            with(HEADER_LEN, &[b'x'; 256]),
            with(HEADER_LEN, &[0xff, 0xfe, 0]),
        ] {
            assert!(
                matches!(SaveImage::parse(&bad), Err(SaveImageError::Malformed(_))),
                "{:?}",
                SaveImage::parse(&bad)
            );
        }
    }

    #[test]
    fn a_clone_xml_too_long_for_the_reserved_room_is_refused() {
        let s = SaveImage::parse(&image("<domain/>", "<cookie/>", 32)).unwrap();
        assert!(matches!(
            s.with_xml(&"x".repeat(40)),
            Err(SaveImageError::TooLong { have: 32, .. })
        ));
        assert!(s.with_xml("a\0b").is_err());
    }
}
