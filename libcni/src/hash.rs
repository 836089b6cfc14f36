//! Names and keys derived from SHA-512, as the reference derives them: iptables chain names,
//! the keys at the start of rule comments, cnitool's container IDs. One place, so a name we
//! make and a name the reference made for the same attachment cannot drift apart.

use sha2::{Digest, Sha512};

/// The longest iptables chain name the reference makes (`utils.MaxChainLength`).
pub const MAX_CHAIN_LEN: usize = 28;

/// Bytes as lowercase hex digits, two per byte.
pub fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(2 * bytes.len());
    push_hex(&mut out, bytes);
    out
}

/// Appends `bytes` to `out` as [`hex`] writes them.
pub fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    out.reserve(2 * bytes.len());
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)].into());
        out.push(DIGITS[usize::from(b & 0xf)].into());
    }
}

/// The bytes that hex digits (either case) stand for; `None` for anything else.
pub fn unhex(hex: &str) -> Option<Vec<u8>> {
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    let hex = hex.as_bytes();
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    let mut bytes = Vec::with_capacity(hex.len() / 2);
    for pair in hex.chunks_exact(2) {
        bytes.push(nibble(pair[0])? << 4 | nibble(pair[1])?);
    }
    Some(bytes)
}

/// The first `digits` (at most 128) hex digits of SHA-512 of `input`.
pub fn sha512_hex(input: &str, digits: usize) -> String {
    let mut hex = hex(&Sha512::digest(input.as_bytes()));
    hex.truncate(digits);
    hex
}

/// The first 16 hex digits of SHA-512 of `input`: short, stable keys for comments.
pub fn hash16(input: &str) -> String {
    sha512_hex(input, 16)
}

/// `prefix` + as many hex digits of SHA-512 of `input` as fill [`MAX_CHAIN_LEN`]: the
/// reference's `utils.MustFormatHashWithPrefix` for its per-container chains.
pub fn chain_name(prefix: &str, input: &str) -> String {
    format!(
        "{prefix}{}",
        sha512_hex(input, MAX_CHAIN_LEN.saturating_sub(prefix.len()))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash16_matches_the_reference_vector() {
        // From the reference's ipmasq comment: hex16(sha512("unit-test")).
        assert_eq!(hash16("unit-test"), "6fd94d501e58f0aa");
    }

    #[test]
    fn chain_names_fill_28_characters() {
        // The reference's own test vector (`utils.FormatChainName("test", "1234")`).
        assert_eq!(
            chain_name("CNI-", "test1234"),
            "CNI-2bbe0c48b91a7d1b8a6753a8"
        );
        assert_eq!(chain_name("CNI-DN-", "x").len(), MAX_CHAIN_LEN);
    }

    #[test]
    fn hex_and_prefixes() {
        assert_eq!(hex(&[0, 0xab, 0x10]), "00ab10");
        assert_eq!(unhex("00ab10"), Some(vec![0, 0xab, 0x10]));
        assert_eq!(unhex("00AB"), Some(vec![0, 0xab]));
        for bad in ["0", "0g", "+f", "é0"] {
            assert_eq!(unhex(bad), None, "{bad}");
        }
        assert_eq!(sha512_hex("unit-test", 128).len(), 128);
        assert!(sha512_hex("unit-test", 128).starts_with(&hash16("unit-test")));
    }
}
