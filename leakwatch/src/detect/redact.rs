//! Fingerprints and redacted previews: the only forms in which leakwatch ever shows a secret.
use sha2::{Digest, Sha256};

/// `sha256:` + lowercase hex SHA-256 of the exact secret bytes.
pub fn fingerprint(secret: &[u8]) -> String {
    let digest = Sha256::digest(secret);
    let mut s = String::with_capacity(7 + 64);
    s.push_str("sha256:");
    for b in digest {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// A preview that keeps at most a quarter of the secret (and never more than 6 bytes) in
/// front and 2 at the end, e.g. `ghp_Ab…9x`. Non-printable bytes are shown as `?`.
pub fn redact(secret: &[u8]) -> String {
    // A PEM block's first line names its kind and is not secret: show it instead.
    if secret.starts_with(b"-----BEGIN ") {
        let end = secret
            .iter()
            .position(|&b| b == b'\n' || b == b'\\')
            .unwrap_or(secret.len())
            .min(64);
        return format!("{}…", String::from_utf8_lossy(&secret[..end]).trim_end());
    }
    let n = secret.len();
    let head = (n / 4).min(6);
    let tail = (n / 12).min(2);
    let show = |b: &[u8]| -> String {
        b.iter()
            .map(|&c| if c.is_ascii_graphic() { c as char } else { '?' })
            .collect()
    };
    format!("{}…{}", show(&secret[..head]), show(&secret[n - tail..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_is_sha256_hex() {
        assert_eq!(
            fingerprint(b"abc"),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn redact_shows_little() {
        let s = b"ghp_0123456789abcdefghijklmnopqrstuvwxyz";
        let r = redact(s);
        assert_eq!(r, "ghp_01…yz");
        assert!(redact(b"short").chars().count() <= 3);
        assert_eq!(redact(b""), "…");
        assert_eq!(
            redact(b"-----BEGIN RSA PRIVATE KEY-----\nMIIEowAB\n-----END RSA PRIVATE KEY-----"),
            "-----BEGIN RSA PRIVATE KEY-----…"
        );
    }
}
