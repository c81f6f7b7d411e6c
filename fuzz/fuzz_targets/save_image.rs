//! libvirt save image headers (a warm state's image, read back through the storage API):
//! any bytes give an image or an error, never a panic; an image rewritten with its own XML,
//! or another, reads back with that XML and the same length.
#![no_main]

use libfuzzer_sys::fuzz_target;
use virtseed::libvirt::saveimage::SaveImage;

fuzz_target!(|data: &[u8]| {
    let _ = SaveImage::needed(data);
    let Ok(img) = SaveImage::parse(data) else {
        return;
    };
    let need = SaveImage::needed(data).expect("parsed, so its header is good");
    for xml in [img.xml.clone(), format!("{}<x/>", img.xml), String::new()] {
        if let Ok(head) = img.with_xml(&xml) {
            assert_eq!(head.len(), need);
            let again = SaveImage::parse(&head).expect("a rewritten header parses");
            assert_eq!(again.xml, xml);
        }
    }
});
