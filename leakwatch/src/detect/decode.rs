//! Credentials carried encoded as `base64(USER:PASSWORD)`: an HTTP Basic `Authorization`
//! header (curl `-u`, git and pip with a token in the URL, python `requests` with `auth=`)
//! and a registry auth file's `"auth"`. A rule with `decode = "basic"` matches the encoded
//! value; the engine reports the credential inside it (a token another rule knows, else the
//! password), so its fingerprint is the one the same credential has anywhere else.
use base64::{
    alphabet,
    engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig},
    Engine as _,
};

const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// `blob` decoded, if it is `USER:PASSWORD` in base64 (standard alphabet, padding optional)
/// with no control bytes: the text and where the password starts (it may be empty: a token
/// given as the user name). The caller zeroizes the text.
pub fn basic(blob: &[u8]) -> Option<(Vec<u8>, usize)> {
    let mut text = LENIENT.decode(blob).ok()?;
    let printable = text.iter().all(|&b| b >= 0x20 && b != 0x7f);
    match text.iter().position(|&b| b == b':') {
        // Not the colon alone: a user name, a password or both.
        Some(c) if printable && (c > 0 || c + 1 < text.len()) => Some((text, c + 1)),
        _ => {
            zeroize::Zeroize::zeroize(&mut text);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(s: &str) -> Vec<u8> {
        base64::engine::general_purpose::STANDARD
            .encode(s)
            .into_bytes()
    }

    #[test]
    fn user_and_password_with_or_without_padding() {
        let (t, at) = basic(&enc("deploy:s3cret-Pass")).unwrap();
        assert_eq!((&t[..], at), (&b"deploy:s3cret-Pass"[..], 7));
        let unpadded = enc("ab:c");
        let unpadded = std::str::from_utf8(&unpadded)
            .unwrap()
            .trim_end_matches('=');
        assert_eq!(basic(unpadded.as_bytes()).unwrap().0, b"ab:c");
        // A token as the user name, no password (python requests `auth=(token, "")`).
        assert_eq!(basic(&enc("tok:")).unwrap().1, 4);
    }

    #[test]
    fn not_a_login() {
        // No colon, control bytes, not base64, or nothing but the colon.
        assert!(basic(&enc("justtext")).is_none());
        assert!(basic(&enc("a:\u{1}b")).is_none());
        assert!(basic(b"authentication!").is_none());
        assert!(basic(&enc(":")).is_none());
    }
}
