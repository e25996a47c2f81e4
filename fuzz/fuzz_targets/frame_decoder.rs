//! Any bytes given to the frame decoder: a frame, a clean end, or an error —
//! never a panic, a hang or an allocation beyond the limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pstream_protocol::{decode_body, encode_frame, read_frame, DEFAULT_MAX_FRAME};

fuzz_target!(|data: &[u8]| {
    // As a body without its length prefix.
    if let Ok(frame) = decode_body(data.to_vec()) {
        // Whatever decodes re-encodes, and decodes to the same frame.
        let mut bytes = Vec::new();
        encode_frame(&frame.message, &frame.items, DEFAULT_MAX_FRAME, &mut bytes)
            .expect("a decoded frame re-encodes");
        let again = read_frame(&mut &bytes[..], DEFAULT_MAX_FRAME)
            .expect("a re-encoded frame decodes")
            .expect("and is not empty");
        assert_eq!(again, frame);
        // Items with lengths are all reachable; packed ones are split by their reader.
        if !frame.items.is_packed() {
            for i in 0..frame.items.len() {
                assert!(frame.items.get(i).is_some());
            }
        }
    }
    // As a stream of length-prefixed frames, with a small limit.
    let mut reader = data;
    while let Ok(Some(_)) = read_frame(&mut reader, 1 << 16) {}
});
