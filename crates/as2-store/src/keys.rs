//! Pieces of object keys that the services name objects with.

/// `text` as one key segment: ASCII letters, digits, `-`, `_` and `.` kept, anything
/// else (`/` above all) turned into `_`.
pub fn segment(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// A random name of `bytes` random bytes in lowercase hex. A failure of the random
/// source leaves zeros: callers put it beside other parts (a day, a time) that still
/// tell keys apart, and an upload to a key that exists fails rather than overwrites.
pub fn random_name(bytes: usize) -> String {
    let mut random = vec![0u8; bytes];
    let _ = openssl::rand::rand_bytes(&mut random);
    hex(&random)
}

/// `bytes` in lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_keep_safe_characters_only() {
        assert_eq!(segment("acme/eu orders.v2"), "acme_eu_orders.v2");
        assert_eq!(random_name(4).len(), 8);
        assert_eq!(hex(&[0, 255]), "00ff");
    }
}
