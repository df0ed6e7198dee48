//! The MIME reader: entities, multipart splitting, transfer decoding.
#![no_main]

use as2_protocol::mime::{self, Entity, MimeLimits, Multipart};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = MimeLimits::default();
    if let Ok(entity) = Entity::parse(data, &limits) {
        let _ = entity.content_type();
        let _ = entity.filename();
        let _ = entity.decoded_body();
        if let Ok(multipart) = entity.multipart(&limits) {
            for part in &multipart.parts {
                let _ = part.decoded_body();
                let _ = part.multipart(&limits);
            }
        }
    }
    // The first line (if short) doubles as a boundary for the body that follows.
    if let Some(newline) = data.iter().position(|b| *b == b'\n').filter(|n| *n < 70) {
        if let (Ok(boundary), Some(body)) = (
            std::str::from_utf8(&data[..newline]),
            data.get(newline + 1..),
        ) {
            let _ = Multipart::parse(body, boundary.trim_end_matches('\r'), &limits);
        }
    }
    let _ = mime::decode_quoted_printable(data);
    let _ = mime::decode_base64(data);
});
