#![no_main]
use libfuzzer_sys::fuzz_target;
use salt_proto::event::{Event, EventStream};
use salt_proto::version::Framing;

fuzz_target!(|data: &[u8]| {
    for framing in [Framing::Bare, Framing::LengthPrefixed] {
        let mut s = EventStream::new(framing);
        for chunk in data.chunks(7) {
            s.push(chunk);
            loop {
                match s.next_event() {
                    Ok(Some(ev)) => {
                        // What parses re-encodes to a frame that parses the same.
                        let mut t = EventStream::new(framing);
                        t.push(&ev.encode_frame(framing));
                        assert_eq!(t.next_event().unwrap(), Some(ev));
                    }
                    Ok(None) | Err(_) => break,
                }
            }
        }
    }
    let _ = Event::from_body(data);
});
