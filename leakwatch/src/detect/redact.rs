//! Fingerprints and redacted previews: the only forms in which leakwatch ever shows a secret.
use sha2::{Digest, Sha256};

/// `sha256:` + lowercase hex SHA-256 of the credential (see [`digest`]).
pub fn fingerprint(secret: &[u8]) -> String {
    let digest = digest(secret);
    let mut s = String::with_capacity(7 + 64);
    s.push_str("sha256:");
    for b in digest {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// SHA-256 of a credential: of its exact bytes, except for a PEM block, whose digest covers
/// its canonical form (see [`pem_canonical`]) so the same key found in a file, indented in a
/// YAML block scalar, `\n`-escaped in JSON or an env var is one credential with one
/// fingerprint, and freezing it once freezes every form.
pub fn digest(secret: &[u8]) -> [u8; 32] {
    match pem_canonical(secret) {
        Some(c) => Sha256::digest(c).into(),
        None => Sha256::digest(secret).into(),
    }
}

/// A PEM block as `openssl` would write it, minus line wrapping: `-----BEGIN L-----\n`, the
/// text between the armour lines with every space, tab, line break and `\n`/`\r` escape
/// (however many backslashes deep) removed, then `\n-----END L-----\n`. Whatever follows the
/// END line is not part of it. None when `s` is not a BEGIN…END block.
pub fn pem_canonical(s: &[u8]) -> Option<Vec<u8>> {
    let rest = s.strip_prefix(b"-----BEGIN ")?;
    let close = find(rest, b"-----")?;
    let label = &rest[..close];
    let body_start = close + 5;
    let end = find(&rest[body_start..], b"-----END ")? + body_start;
    let body = &rest[body_start..end];
    let mut out = Vec::with_capacity(s.len());
    out.extend_from_slice(b"-----BEGIN ");
    out.extend_from_slice(label);
    out.extend_from_slice(b"-----\n");
    let mut i = 0;
    while i < body.len() {
        match body[i] {
            b' ' | b'\t' | b'\r' | b'\n' => i += 1,
            b'\\' => {
                let mut j = i;
                while j < body.len() && body[j] == b'\\' {
                    j += 1;
                }
                // `\n`, `\\n`: an escaped line break; a lone backslash is dropped.
                i = if matches!(body.get(j), Some(b'n' | b'r')) {
                    j + 1
                } else {
                    j
                };
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    out.extend_from_slice(b"\n-----END ");
    out.extend_from_slice(label);
    out.extend_from_slice(b"-----\n");
    Some(out)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
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
    fn a_pem_key_has_one_fingerprint_in_every_encoding() {
        let mut rng = crate::detect::samples::Rng::from_time();
        let file = crate::detect::samples::pem(&mut rng, "RSA PRIVATE KEY", 12) + "\n";
        let lines: Vec<&str> = file.lines().collect();
        let yaml: String = lines.iter().map(|l| format!("    {l}\n")).collect();
        let json = lines.join("\\n");
        let json_in_json = lines.join("\\\\n");
        let crlf = lines.join("\r\n");
        let want = fingerprint(file.as_bytes());
        for form in [&yaml.trim_start().to_string(), &json, &json_in_json, &crlf] {
            assert_eq!(
                fingerprint(form.as_bytes()),
                want,
                "{}",
                redact(form.as_bytes())
            );
        }
        // A different key, or another label, is another credential.
        let other = crate::detect::samples::pem(&mut rng, "RSA PRIVATE KEY", 12);
        assert_ne!(fingerprint(other.as_bytes()), want);
        assert_ne!(fingerprint(file.replace("RSA ", "EC ").as_bytes()), want);
        // Not PEM: the exact bytes.
        assert_eq!(fingerprint(b"-----BEGIN x"), fingerprint(b"-----BEGIN x"));
        assert_ne!(fingerprint(b"abc "), fingerprint(b"abc"));
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
