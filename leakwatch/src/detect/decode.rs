//! Credentials carried encoded as `base64(USER:PASSWORD)`: an HTTP Basic `Authorization`
//! header (curl `-u`, git and pip with a token in the URL, python `requests` with `auth=`)
//! and a registry auth file's `"auth"`. A rule with `decode = "basic"` matches the encoded
//! value; the engine reports the credential inside it (a token another rule knows, else the
//! password), so its fingerprint is the one the same credential has anywhere else.
//!
//! Also percent-encoding (a form body, a query string, a URL in a log): `percent` gives
//! the decoded view the engine scans again, so a key with `/`, `+` or `=` sent as
//! `%2F`, `%2B`, `%3D` is found and fingerprinted as itself.
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
            crate::wipe::vec(&mut text);
            None
        }
    }
}

/// `hay` with every `%XX` escape decoded and `+` read as a space (form encoding), and for
/// each decoded byte where it starts in `hay`; `None` when `hay` holds no escape.
pub fn percent(hay: &[u8]) -> Option<(Vec<u8>, Vec<u32>)> {
    escapes(hay).next()?;
    let mut text = Vec::with_capacity(hay.len());
    let mut at = Vec::with_capacity(hay.len());
    let mut i = 0;
    while i < hay.len() {
        at.push(i as u32);
        let (b, n) = match hay[i] {
            b'%' => escape(hay, i).map_or((b'%', 1), |b| (b, 3)),
            b'+' => (b' ', 1),
            b => (b, 1),
        };
        text.push(b);
        i += n;
    }
    Some((text, at))
}

/// Where `hay` holds a line-break or tab escape (`\n`, `\r`, `\t`) inside a quoted string,
/// as JSON and most loggers write them: a structured log line's message, a traceback or
/// an environment dumped into one JSON field. Only after a `"` on the same line: in an
/// env file, a command line or a `.netrc` a backslash is a character of the value. An
/// escaped backslash (`\\n`) is no escape. Offsets in order, looked for only on the lines
/// that hold `spans` (sorted by start): what a scan needs around its keyword windows. A
/// pass over the whole buffer cost a third of the engine's speed on source code, which is
/// full of `"` and `\n`.
pub fn breaks_near(hay: &[u8], spans: &[(usize, usize)]) -> Vec<usize> {
    let mut out = Vec::new();
    let (mut pos, mut quoted) = (0, false);
    // The byte after a backslash is the escape's, whatever it is.
    let mut skip_to = 0;
    for &(s, e) in spans {
        let e = e.min(hay.len());
        if e <= pos {
            continue;
        }
        // A line starts afresh: skip to the last one before the span.
        if s > pos {
            if let Some(nl) = memchr::memrchr(b'\n', &hay[pos..s]) {
                pos += nl + 1;
                quoted = false;
            }
        }
        for i in memchr::memchr3_iter(b'\n', b'"', b'\\', &hay[pos..e]) {
            let i = pos + i;
            if i < skip_to {
                continue;
            }
            match hay[i] {
                b'\n' => quoted = false,
                b'"' => quoted = true,
                _ => {
                    if quoted && matches!(hay.get(i + 1), Some(b'n' | b'r' | b't')) {
                        out.push(i);
                    }
                    skip_to = i + 2;
                }
            }
        }
        pos = e;
    }
    out
}

/// `hay` with the escapes at `at` (from `breaks_near`) made the breaks they stand for, in
/// place: `\n` becomes a space and a newline, so the view has `hay`'s length and every
/// offset is the same in both. Rules then see the line end or tab where the writer meant
/// one (a value stops there, a token after it starts a word).
pub fn broken(hay: &[u8], at: &[usize]) -> Vec<u8> {
    let mut view = hay.to_vec();
    for &i in at {
        view[i] = b' ';
        view[i + 1] = match hay[i + 1] {
            b'n' => b'\n',
            b'r' => b'\r',
            _ => b'\t',
        };
    }
    view
}

/// Where `hay` holds an escape `percent` decodes.
pub fn escapes(hay: &[u8]) -> impl Iterator<Item = usize> + '_ {
    memchr::memchr_iter(b'%', hay).filter(move |&i| escape(hay, i).is_some())
}

/// Does `raw` hold what no percent-encoder leaves as it is: a space, one of `"#<>\^`{|}`,
/// or a `%` that starts no escape? Then its escapes are literal text (a Django key drawn
/// with `%28` and `^` in it), not encoding.
pub fn literal(raw: &[u8]) -> bool {
    raw.iter()
        .enumerate()
        .any(|(i, &b)| b" \"#<>\\^`{|}".contains(&b) || b == b'%' && escape(raw, i).is_none())
}

/// The byte `%XX` at `i` stands for, if an encoder would have escaped it: printable ASCII
/// punctuation, a space or a line break. Letters, digits and `-_.~` are never escaped,
/// and no credential holds a control byte, so `p%dA55` stays a password and `%02x` a
/// format.
fn escape(hay: &[u8], i: usize) -> Option<u8> {
    let hex = |b: u8| (b as char).to_digit(16);
    let (h, l) = (hay.get(i + 1)?, hay.get(i + 2)?);
    let b = (hex(*h)? * 16 + hex(*l)?) as u8;
    let encoded = matches!(b, b' '..=b'~' | b'\n' | b'\r' | b'\t')
        && !b.is_ascii_alphanumeric()
        && !matches!(b, b'-' | b'_' | b'.' | b'~');
    encoded.then_some(b)
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
    fn percent_escapes_and_plus_are_decoded_with_where_each_byte_came_from() {
        assert!(percent(b"no escapes here, 100% sure").is_none());
        // Never escaped by an encoder: letters, digits, unreserved, control bytes.
        assert!(percent(b"p%41ss %2d %02x %7E %dA").is_none());
        let (t, at) = percent(b"a+k=a%2Fb+c%3d%").unwrap();
        assert_eq!(t, b"a k=a/b c=%");
        assert_eq!(at, [0, 1, 2, 3, 4, 5, 8, 9, 10, 11, 14]);
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
