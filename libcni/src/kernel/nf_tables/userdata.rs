//! Rule userdata as `nft` writes it (libnftnl's udata): a run of `{u8 type, u8 len, value}`
//! records. The comment is record type `NFTNL_UDATA_RULE_COMMENT` holding a NUL-terminated
//! string, which `nft list` prints as `comment "..."`.

use super::error::{Error, Result};

const NFTNL_UDATA_RULE_COMMENT: u8 = 0;
/// `NFTNL_UDATA_COMMENT_MAXLEN`: nft refuses to print (and to parse) longer comments.
pub const COMMENT_MAX: usize = 128;

/// The userdata holding `comment`.
pub fn encode_comment(comment: &str) -> Result<Vec<u8>> {
    if comment.len() > COMMENT_MAX || comment.contains('\0') {
        return Err(Error::Invalid(format!(
            "rule comment must be at most {COMMENT_MAX} bytes without NUL: {comment:?}"
        )));
    }
    let len = comment.len() + 1;
    let mut out = Vec::with_capacity(2 + len);
    out.push(NFTNL_UDATA_RULE_COMMENT);
    out.push(len as u8);
    out.extend_from_slice(comment.as_bytes());
    out.push(0);
    Ok(out)
}

/// The comment in `userdata`, when there is a well-formed one.
pub fn decode_comment(mut userdata: &[u8]) -> Option<String> {
    while let [kind, len, rest @ ..] = userdata {
        let len = usize::from(*len);
        let value = rest.get(..len)?;
        if *kind == NFTNL_UDATA_RULE_COMMENT {
            let (nul, text) = value.split_last()?;
            return (*nul == 0 && !text.contains(&0))
                .then(|| String::from_utf8(text.to_vec()).ok())
                .flatten();
        }
        userdata = &rest[len..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comment_is_type_zero_len_and_nul() {
        assert_eq!(encode_comment("abc").unwrap(), b"\x00\x04abc\x00");
        assert_eq!(decode_comment(b"\x00\x04abc\x00").as_deref(), Some("abc"));
    }

    #[test]
    fn other_records_are_skipped_and_bad_ones_refused() {
        assert_eq!(
            decode_comment(b"\x07\x02xy\x00\x02a\x00").as_deref(),
            Some("a")
        );
        assert_eq!(decode_comment(b"\x00\x09abc"), None);
        assert_eq!(decode_comment(b"\x00\x03abc"), None);
        assert_eq!(decode_comment(b"\x00\x00"), None);
        assert_eq!(decode_comment(b"\x00"), None);
        assert_eq!(decode_comment(b""), None);
        assert_eq!(decode_comment(b"\x00\x03\xff\xfe\x00"), None);
    }

    #[test]
    fn long_or_nul_comments_are_refused() {
        assert!(encode_comment(&"x".repeat(COMMENT_MAX)).is_ok());
        assert!(encode_comment(&"x".repeat(COMMENT_MAX + 1)).is_err());
        assert!(encode_comment("a\0b").is_err());
    }
}
