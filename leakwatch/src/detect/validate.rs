//! Secondary checks on a candidate secret: entropy, checksums, structure, placeholders.
use super::bigrams;
use regex::bytes::{Regex, RegexSet};
use std::sync::OnceLock;

/// Shannon entropy in bits per byte.
pub fn entropy(s: &[u8]) -> f64 {
    if s.is_empty() {
        return 0.0;
    }
    let mut counts = [0u32; 256];
    for &b in s {
        counts[b as usize] += 1;
    }
    let n = s.len() as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / n;
            -p * p.log2()
        })
        .sum()
}

/// Entropy a random string of this length could reach is bounded by log2(len), so short
/// secrets are held to a proportionally lower bar. Mixed-case values get 0.8 of it: under
/// 0.85, 1.5–2.8 % of random 12–20-character base62 strings fell short, under 0.8 fewer
/// than 0.5 %. Single-case values keep 0.85: hand-typed filler (`lsdkfol23w54jlksdef`,
/// `value1&key2=value2x`) is single-case and sits just under it.
pub fn entropy_ok(s: &[u8], min: f64) -> bool {
    if min <= 0.0 {
        return true;
    }
    let mixed = s.iter().any(u8::is_ascii_uppercase) && s.iter().any(u8::is_ascii_lowercase);
    let mut cap = if mixed { 0.8 } else { 0.85 } * (s.len() as f64).log2();
    // Hex has 4 bits a character at most; random 32-hex keys average about 3.75, but one
    // in 10^4 falls under 3.0 (measured over 200,000 draws; the lowest was 2.74): at 32 to
    // 39 characters the bar is 2.7. From 40 on, 3.0 lets through all but ~10^-5.
    if s.iter().all(u8::is_ascii_hexdigit) {
        cap = cap.min(if (32..40).contains(&s.len()) {
            2.7
        } else {
            3.0
        });
    }
    entropy(s) >= min.min(cap)
}

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Base62 encoding of a u32, left-padded with '0' to 6 characters (GitHub/npm checksum form).
pub fn base62_6(mut n: u32) -> [u8; 6] {
    let mut out = [b'0'; 6];
    let mut i = 6;
    while n > 0 && i > 0 {
        i -= 1;
        out[i] = BASE62[(n % 62) as usize];
        n /= 62;
    }
    out
}

/// GitHub (ghp_/gho_/ghu_/ghs_/ghr_) and npm (npm_) tokens: the last 6 characters are the
/// base62 CRC32 of the 30 random characters after the 4-byte prefix.
pub fn github_crc32(token: &[u8]) -> bool {
    if token.len() != 40 {
        return false;
    }
    let body = &token[4..34];
    base62_6(crc32fast::hash(body)) == token[34..40]
}

/// A JWT whose header is base64url JSON with an `alg`.
pub fn jwt(token: &[u8]) -> bool {
    use base64::Engine as _;
    let Some(dot) = token.iter().position(|&b| b == b'.') else {
        return false;
    };
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header_ok = match engine.decode(&token[..dot]) {
        Ok(h) => {
            let h = String::from_utf8_lossy(&h);
            h.trim_start().starts_with('{') && h.contains("\"alg\"")
        }
        Err(_) => false,
    };
    header_ok && !documentation_example(&token[dot + 1..])
}

/// A tutorial's token, not a session: the jwt.io example (subject `1234567890`, `John
/// Doe`) whatever its signature, or a toy payload such as `{"some":"payload"}` — one
/// member and none of the registered claims every issued token carries.
fn documentation_example(rest: &[u8]) -> bool {
    use base64::Engine as _;
    const CLAIMS: [&str; 7] = ["iss", "sub", "aud", "exp", "nbf", "iat", "jti"];
    let end = rest.iter().position(|&b| b == b'.').unwrap_or(rest.len());
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let Ok(payload) = engine.decode(&rest[..end]) else {
        return false;
    };
    let Ok(serde_json::Value::Object(claims)) = serde_json::from_slice(&payload) else {
        return false;
    };
    let text = |k: &str| claims.get(k).and_then(|v| v.as_str());
    let toy = claims.len() < 2 && !CLAIMS.iter().any(|c| claims.contains_key(*c));
    toy || text("sub") == Some("1234567890")
        || matches!(text("name"), Some("John Doe" | "Jane Doe"))
}

static FORMAT: OnceLock<Regex> = OnceLock::new();

/// Values of generic `*KEY*=` assignments: must look like a credential, not code. `name` is
/// what the value is assigned to (may be empty).
pub fn generic(v: &[u8], name: &[u8]) -> bool {
    let assigned = name.to_ascii_lowercase();
    let has = |w: &str| assigned.windows(w.len()).any(|x| x == w.as_bytes());
    // A value its own name declares public (`PUBLIC_KEY`, `publishableKey`) is meant to be seen.
    if has("public")
        || has("publishable")
        || ["pubkey", "pub_key", "pub-key"].iter().any(|w| has(w))
    {
        return false;
    }
    // The regex asks 12 bytes; trimming may have left fewer (`oauth_token=234lsdkf....`,
    // `?token=yt4XSmQNKQ)](https://…`). `authority_str`, `AUTHOR`: `auth` is not a word of
    // these names.
    if v.len() < 12
        || code_name(name)
        || names_an_id(name)
        || !names_a_credential(&without_author(&assigned))
        || ip_address(v)
    {
        return false;
    }
    let digits = v.iter().filter(|b| b.is_ascii_digit()).count();
    let letters = v.iter().filter(|b| b.is_ascii_alphabetic()).count();
    let upper = v.iter().any(|b| b.is_ascii_uppercase());
    let lower = v.iter().any(|b| b.is_ascii_lowercase());
    // Punctuation that passwords carry and identifiers do not.
    let symbol = v
        .iter()
        .any(|b| !b.is_ascii_alphanumeric() && !b"_-.".contains(b));
    let classes = [upper, lower, digits > 0, symbol]
        .iter()
        .filter(|&&c| c)
        .count();
    if letters < 4 || (digits < 2 && classes < 3) {
        return false;
    }
    // `key` alone names map keys, document ids (`?key=0Ao1yRmX…`) and cache keys far more
    // often than secrets: under it a value must carry a password's punctuation.
    let word: Vec<u8> = assigned
        .iter()
        .copied()
        .filter(u8::is_ascii_alphanumeric)
        .collect();
    if (word == b"key" || word == b"keys") && !symbol {
        return false;
    }
    // `syn::Token![=]`, `std::string`: a path in code.
    let path_sep = v.windows(2).position(|w| w == b"::").is_some_and(|i| {
        i > 0
            && v[..i]
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || *b == b'_')
    });
    if path_sep
        || url_or_email(v)
        || code_expression(v)
        || algorithm_prefixed(v)
        || assignment(v)
        || mostly_words(v)
    {
        return false;
    }
    // Dotted identifiers (`self._lib.X509_get_pubkey`), paths and constant names are code.
    let ident = |p: &[u8]| {
        !p.is_empty()
            && (p[0].is_ascii_alphabetic() || p[0] == b'_')
            && p.iter().all(|&b| b.is_ascii_alphanumeric() || b == b'_')
    };
    // A path's letters must also pair like words: a random `wJalrXUtn/K7MDENG/bPxRfi` (AWS
    // secrets hold `/`) splits into identifier bytes too. Member access (`mem3.szKeyBlk`)
    // is too common in code to ask that of dotted values.
    let words = bigrams::wordlike(v);
    if v.contains(&b'.') && v.split(|&b| b == b'.').all(ident) {
        return false;
    }
    if v.contains(&b'/') && v.split(|&b| b == b'/').filter(|p| !p.is_empty()).all(ident) && words {
        return false;
    }
    // Absolute or home paths (`OLDPWD=/tmp/tmp.InJ96FOqFp/main`: `pwd` is a keyword, and
    // mktemp names look random): two or more components of file-name bytes.
    let name = |p: &[u8]| {
        !p.is_empty()
            && p.iter()
                .all(|&b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    };
    if (v.starts_with(b"/") || v.starts_with(b"~/"))
        && v.split(|&b| b == b'/').filter(|p| !p.is_empty()).count() >= 2
        && v.split(|&b| b == b'/')
            .skip(1)
            .all(|p| p.is_empty() || name(p))
    {
        return false;
    }
    // printf-style templates (`"VS%0.f0COMNTOOLS" % version`); a value with other
    // punctuation is a password that happens to hold `%s`.
    let format =
        FORMAT.get_or_init(|| Regex::new(r"%[-+ #0]*[0-9]*(?:\.[0-9]*)?[sdfir]").expect("valid"));
    let other_symbols = v
        .iter()
        .any(|b| !b.is_ascii_alphanumeric() && !b"_-.%".contains(b));
    // A template is words around the spec (`VS%0.f0COMNTOOLS`); `%d` inside random
    // letters is part of a password.
    if !other_symbols && format.is_match(v) {
        let words = format.replace_all(v, &b" "[..]);
        if mostly_words(&words) {
            return false;
        }
    }
    if v.iter()
        .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || *b == b'_')
        && v.contains(&b'_')
    {
        return false;
    }
    // Hex has only the letters a-f, among which `df`/`fd` are neighbours: never a mash.
    let all_hex = v.iter().all(u8::is_ascii_hexdigit);
    // Filler is typed without shift: a value with `!^)@` is not judged as a mash.
    if code_identifier(v) || (!all_hex && !symbol && keyboard_mash(v)) {
        return false;
    }
    // AWS documentation marks example ids with `XMPL` (`ACCAQFODXMPL4YFHP7DZE`): upper
    // case, in a value without lower case. Any case in any value would drop one random
    // mixed-case secret in ~50,000 (`…hXmPl4ml…`).
    if !v.iter().any(u8::is_ascii_lowercase) && v.windows(4).any(|w| w == b"XMPL") {
        return false;
    }
    // Lowercase hex of a digest length is a key when named like one (`DD_API_KEY`,
    // `api_key`) and a hash when named like a digest (`sha256`, `etag`, `cache_key`) or
    // only `key` (test vectors, lookup keys).
    let hex = v
        .iter()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b));
    if hex && matches!(v.len(), 32 | 40 | 56 | 64 | 96 | 128) {
        return named_as_key(&assigned);
    }
    true
}

/// A password a tool's own syntax places (`.netrc`, `curl -u`, `mysql -p`): documentation
/// fills those places with words (`letmeknow`, `carolknows`, `qwerty`); one letter case
/// and no digit or symbol, pairing like words, is such an example.
pub fn password(v: &[u8]) -> bool {
    let one_case = v.iter().all(u8::is_ascii_lowercase) || v.iter().all(u8::is_ascii_uppercase);
    !(one_case && (bigrams::wordlike(v) || keyboard_mash(v) || v.len() <= 8))
}

/// A token whose prefix identifiers start with too (`aio_DefaultConnectionPool`,
/// `cioServiceConfigurationProvider`): it must not be mostly words. (Letter pairs alone,
/// `bigrams::wordlike`, would refuse 3.3 % of random 28-character bodies; this refuses
/// none of 20,000.)
pub fn not_words(v: &[u8]) -> bool {
    !mostly_words(v)
}

/// Does this name (any case) hold one of the words credentials are named by?
fn names_a_credential(name: &[u8]) -> bool {
    let lower = name.to_ascii_lowercase();
    [
        "key",
        "token",
        "secret",
        "pass",
        "pwd",
        "credential",
        "auth",
    ]
    .iter()
    .any(|w| lower.windows(w.len()).any(|x| x == w.as_bytes()))
}

/// The (lower-case) name without the words that merely begin with `auth`: `author`,
/// `authors`, `authority`, `authorities` (but `authorization`, `authorize` stay).
fn without_author(name: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(name.len());
    let mut i = 0;
    while i < name.len() {
        let rest = &name[i..];
        if rest.starts_with(b"author")
            && !rest[6..].starts_with(b"iz")
            && !rest[6..].starts_with(b"is")
        {
            let word = rest
                .iter()
                .position(|b| !b.is_ascii_alphabetic())
                .unwrap_or(rest.len());
            out.push(b'_');
            i += word;
        } else {
            out.push(name[i]);
            i += 1;
        }
    }
    out
}

/// An IP address, bracketed or not, with an optional zone (`%eth0`, `%25eth0`) and port:
/// where a host is, not a credential.
fn ip_address(v: &[u8]) -> bool {
    let Ok(s) = std::str::from_utf8(v) else {
        return false;
    };
    let host = match s.strip_prefix('[') {
        Some(inner) => match inner.split_once(']') {
            Some((h, port))
                if port.is_empty()
                    || port
                        .strip_prefix(':')
                        .is_some_and(|p| p.bytes().all(|b| b.is_ascii_digit())) =>
            {
                h
            }
            _ => return false,
        },
        None => s,
    };
    let host = host.split_once('%').map_or(host, |(h, _)| h);
    host.parse::<std::net::Ipv6Addr>().is_ok()
        || host.parse::<std::net::Ipv4Addr>().is_ok()
        || host.parse::<std::net::SocketAddrV4>().is_ok()
}

/// A name that is code, not configuration: a member access whose last part does not name
/// a credential (`key_node.tag`), or a Hungarian-notation variable (`iKey`, `pKeyInfo`,
/// `zToken`), which configuration never uses.
fn code_name(name: &[u8]) -> bool {
    let last = name.rsplit(|&b| b == b'.').next().unwrap_or(name);
    let keyish = names_a_credential(last);
    let hungarian = last.len() >= 2 && last[0].is_ascii_lowercase() && last[1].is_ascii_uppercase();
    !name.is_empty() && (!keyish || hungarian)
}

/// A name whose last word is `id` (`api_key_id`, `tokenId`, `key-uuid`) or that names a
/// key's id or fingerprint (`.gitconfig`'s `signingkey`, `keyid`) or a request's OAuth 1.0
/// signature: it holds an identifier, not a credential.
fn names_an_id(name: &[u8]) -> bool {
    let lower = name.to_ascii_lowercase();
    let last = name.rsplit(|b| b"_.-".contains(b)).next().unwrap_or(name);
    // camelCase: the last word starts at the last capital (`apiKeyId` → `Id`).
    let word = last
        .iter()
        .rposition(u8::is_ascii_uppercase)
        .filter(|&i| i > 0 && last[..i].iter().any(u8::is_ascii_lowercase))
        .map_or(last, |i| &last[i..])
        .to_ascii_lowercase();
    let has = |w: &str| lower.windows(w.len()).any(|x| x == w.as_bytes());
    matches!(&word[..], b"id" | b"ids" | b"uuid" | b"guid")
        || has("signingkey")
        || has("keyid")
        || has("fingerprint")
        // OAuth 1.0's per-request HMAC and nonce: no key can be taken from them, and a
        // timestamp and nonce keep them from being replayed.
        || has("oauth_signature")
        || has("oauth_nonce")
        // A WebSocket handshake's Sec-WebSocket-Key: a nonce per connection (RFC 6455).
        || has("websocket-key")
}

/// Is a hex value under this (lower-cased) name a key rather than a digest or an id?
fn named_as_key(name: &[u8]) -> bool {
    const DIGEST: [&str; 16] = [
        "sha",
        "hash",
        "checksum",
        "digest",
        "etag",
        "commit",
        "md5",
        "crc",
        "fingerprint",
        "cache",
        "integrity",
        "revision",
        "nonce",
        "salt",
        "uuid",
        "guid",
    ];
    let has = |w: &str| name.windows(w.len()).any(|x| x == w.as_bytes());
    let word: Vec<u8> = name
        .iter()
        .copied()
        .filter(u8::is_ascii_alphanumeric)
        .collect();
    !DIGEST.iter().any(|w| has(w))
        && !word.ends_with(b"id")
        && !word.ends_with(b"ids")
        && word != b"key"
        && word != b"keys"
}

/// A URL (`https://accounts.example/o/oauth2/auth`) or an email address: an endpoint or
/// a user, not a credential (passwords inside URLs have their own rule).
fn url_or_email(v: &[u8]) -> bool {
    static SHAPE: OnceLock<Regex> = OnceLock::new();
    let shape = SHAPE.get_or_init(|| {
        Regex::new(r"^(?:[A-Za-z][A-Za-z0-9+.-]*://|[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}$)")
            .expect("valid")
    });
    shape.is_match(v)
}

/// A call or index assigned to a key-ish name: `hashlib.sha256(data).hexdigest()`,
/// `get_password(user)`, `os.environ[`. Random values almost never start with an
/// identifier run straight into a bracket and also end on one.
fn code_expression(v: &[u8]) -> bool {
    let Some(i) = v.iter().position(|b| b"([{".contains(b)) else {
        return false;
    };
    let head = &v[..i];
    let name = head.strip_prefix(b"$").unwrap_or(head);
    let ident = name.len() >= 2
        && (name[0].is_ascii_alphabetic() || name[0] == b'_')
        && name
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"_.".contains(b))
        && bigrams::wordlike(name);
    ident && (i + 1 == v.len() || v.last().is_some_and(|b| b")]}".contains(b)))
}

/// Code and prose, not a password: most letters sit in identifier-like words
/// (`&AtomicUsize`, `analyzeWindowKeyword((const`, `tag:yaml.org,2002:str`,
/// `secret%3Dpassword`). Random values rarely put 70 % of their letters in words.
fn mostly_words(v: &[u8]) -> bool {
    // `%3D` and friends separate words, as the bytes they encode would.
    let mut text = v.to_vec();
    for i in 0..text.len().saturating_sub(2) {
        if text[i] == b'%' && text[i + 1].is_ascii_hexdigit() && text[i + 2].is_ascii_hexdigit() {
            text[i..i + 3].copy_from_slice(b"   ");
        }
    }
    let letters = text.iter().filter(|b| b.is_ascii_alphabetic()).count();
    let worded: usize = text
        .split(|b| !(b.is_ascii_alphanumeric() || *b == b'_'))
        .filter(|run| run.len() >= 3 && code_identifier(run))
        .map(|run| run.iter().filter(|b| b.is_ascii_alphabetic()).count())
        .sum();
    letters >= 4 && worded * 10 >= letters * 7
}

/// `"INTERNAL_TOKEN=…"` quoted under another name: the inner assignment is the finding.
fn assignment(v: &[u8]) -> bool {
    let Some(i) = v.iter().position(|b| *b == b'=' || *b == b':') else {
        return false;
    };
    let head = &v[..i];
    // `uuid=7f46…;storage=user`: a record of fields, not one credential.
    let field = [
        "uid", "uuid", "guid", "name", "type", "user", "path", "file", "host", "mode",
    ]
    .iter()
    .any(|f| head.eq_ignore_ascii_case(f.as_bytes()));
    let keyish = names_a_credential(head) || field;
    let upper_snake = head.contains(&b'_')
        && head
            .iter()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || *b == b'_');
    head.len() >= 3
        && head[0].is_ascii_alphabetic()
        && head
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(b))
        && (keyish || upper_snake)
}

/// `sha256:…`, `sha512-…`, `md5:…`: a digest that names its algorithm.
fn algorithm_prefixed(v: &[u8]) -> bool {
    let lower = v.to_ascii_lowercase();
    [
        "sha1", "sha224", "sha256", "sha384", "sha512", "md5", "blake2b", "blake3",
    ]
    .iter()
    .any(|a| {
        lower.starts_with(a.as_bytes()) && matches!(lower.get(a.len()), Some(b':' | b'-' | b'='))
    })
}

/// An unquoted value without what follows it in prose and code: trailing `.`, `,`, `;`,
/// `:` and closing brackets that were never opened inside it but were opened before it on
/// its line (`f(token=abc123XYZ)`; `"KEY=…&n&f)"` keeps its `)`).
pub fn trim_value<'a>(mut v: &'a [u8], before: &[u8]) -> &'a [u8] {
    // A query string goes on after the value: `token=…&token_type_hint=refresh`. Query
    // values are URL-encoded, so a value with raw punctuation before the `&` (a Django
    // key's `…*@2+&svsp=…`) is not one.
    let encoded = |b: &u8| b.is_ascii_alphanumeric() || b"._~%-".contains(b);
    for i in 0..v.len() {
        if v[i] != b'&' {
            continue;
        }
        if !v[..i].iter().all(encoded) {
            break;
        }
        let name = v[i + 1..]
            .iter()
            .take_while(|b| b.is_ascii_alphabetic() || **b == b'_')
            .count();
        // `&key2=`: a word may be numbered.
        let digits = v[i + 1 + name..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        if name >= 3 && v.get(i + 1 + name + digits) == Some(&b'=') {
            v = &v[..i];
            break;
        }
    }
    // A list of settings goes on after the value: `a.password=…,b.user=x` (helm `--set`).
    if let Some(i) = (1..v.len()).find(|&i| {
        v[i - 1] == b','
            && v[i].is_ascii_alphabetic()
            && v[i..].iter().position(|&b| b == b'=').is_some_and(|e| {
                e >= 2
                    && v[i..i + e]
                        .iter()
                        .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(b))
            })
    }) {
        v = &v[..i - 1];
    }
    // A closing bracket the value never opened, where its line opened one before it, ends
    // the value: `f(token=abc123XYZ)`, `[badge](https://x/?token=abc)](https://…)`.
    let line = before.rsplit(|&b| b == b'\n').next().unwrap_or(before);
    let opened = |o: u8, c: u8| {
        let n = |x: u8| line.iter().filter(|&&b| b == x).count();
        n(o) > n(c)
    };
    let mut depth = [0usize; 3];
    for (i, &b) in v.iter().enumerate() {
        let Some(k) = b"([{"
            .iter()
            .position(|&o| o == b)
            .map(|k| (k, true))
            .or_else(|| b")]}".iter().position(|&c| c == b).map(|k| (k, false)))
        else {
            continue;
        };
        match k {
            (k, true) => depth[k] += 1,
            (k, false) if depth[k] > 0 => depth[k] -= 1,
            (k, false) => {
                if opened(b"([{"[k], b")]}"[k]) {
                    v = &v[..i];
                    break;
                }
            }
        }
    }
    loop {
        match v.last() {
            Some(b'.' | b',' | b';' | b':') => v = &v[..v.len() - 1],
            _ => return v,
        }
    }
}

/// Hand-typed filler from documentation (`qwe089234lkjsdf`, `kjfch2345sdf`): most letter pairs
/// are neighbours on a QWERTY row. About 1 pair in 15 is, in random letters; with fewer
/// than 6 pairs (`P5O2fq#+21#710NtYt`: `tY`, `Yt`) that happens too often to judge.
pub fn keyboard_mash(v: &[u8]) -> bool {
    const ROWS: [&[u8]; 3] = [b"qwertyuiop", b"asdfghjkl", b"zxcvbnm"];
    let row_pos = |c: u8| {
        ROWS.iter()
            .enumerate()
            .find_map(|(r, row)| row.iter().position(|&k| k == c).map(|i| (r, i)))
    };
    let (mut pairs, mut near) = (0, 0);
    for w in v.windows(2) {
        let (a, b) = (w[0].to_ascii_lowercase(), w[1].to_ascii_lowercase());
        if let (Some((ra, ia)), Some((rb, ib))) = (row_pos(a), row_pos(b)) {
            pairs += 1;
            if ra == rb && ia.abs_diff(ib) == 1 {
                near += 1;
            }
        }
    }
    pairs >= 6 && near * 2 >= pairs
}

/// Code identifiers (`X509KeyUsageFlags`, `_bindgen_ty_12`, `Crypto_SM4_2Vector_Intrinsic`)
/// in `name: Type` and `ALIAS = other_name` lines. An identifier is built from words:
/// snake_case parts, UPPER parts, digits, and CamelCase words of 3+ letters. Random tokens
/// almost never decompose that way (a lowercase letter right after a digit, or a 2-letter
/// `Xy` word, breaks it).
pub fn code_identifier(v: &[u8]) -> bool {
    if v.is_empty() || !(v[0].is_ascii_alphabetic() || v[0] == b'_') {
        return false;
    }
    if !v.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'_') {
        return false;
    }
    let mut tokens = 0;
    for part in v.split(|&b| b == b'_').filter(|p| !p.is_empty()) {
        match word_tokens(part) {
            Some(n) => tokens += n,
            None => return false,
        }
    }
    // Words are long; the rare random string that decomposes does so into 1-2 byte pieces.
    let alnum = v.iter().filter(|b| b.is_ascii_alphanumeric()).count();
    tokens > 0 && alnum as f64 / tokens as f64 >= 3.0 && bigrams::wordlike(v)
}

/// Splits one `_`-separated part into words (lowercase words with a digit suffix, UPPER
/// acronyms, numbers, camel/Pascal case words of 3+ letters) and returns how many, or None
/// when it does not decompose.
fn word_tokens(p: &[u8]) -> Option<usize> {
    let mut i = 0;
    let mut n = 0;
    // camelCase may start lowercase.
    if i < p.len() && p[i].is_ascii_lowercase() {
        while i < p.len() && p[i].is_ascii_lowercase() {
            i += 1;
        }
        n += 1;
    }
    while i < p.len() {
        let c = p[i];
        if c.is_ascii_digit() {
            while i < p.len() && p[i].is_ascii_digit() {
                i += 1;
            }
            n += 1;
            if i < p.len() && p[i].is_ascii_lowercase() {
                // A short lowercase tail after a number (`sm4ekey`) ends the part.
                let start = i;
                while i < p.len() && p[i].is_ascii_lowercase() {
                    i += 1;
                }
                if i - start < 3 || i < p.len() {
                    return None;
                }
                n += 1;
            }
        } else if c.is_ascii_uppercase() {
            let start = i;
            while i < p.len() && p[i].is_ascii_uppercase() {
                i += 1;
            }
            let lower = p[i..].iter().take_while(|b| b.is_ascii_lowercase()).count();
            if lower > 0 {
                // The last capital starts a word: it needs 2+ lowercase letters after it.
                if lower < 2 {
                    return None;
                }
                i += lower;
                n += if i - lower - start > 1 { 2 } else { 1 };
            } else if i - start == 1 && i < p.len() && !p[i].is_ascii_digit() {
                return None;
            } else {
                n += 1;
            }
        } else {
            return None;
        }
    }
    Some(n)
}

/// Placeholders and templates that are never real credentials, whatever the rule.
pub fn placeholder(s: &[u8]) -> bool {
    static SET: OnceLock<RegexSet> = OnceLock::new();
    let set = SET.get_or_init(|| {
        RegexSet::new([
            r"(?i)^(?:x+|\*+|\.+|-+|_+|0+|#+)$",
            r"(?i)(?:your|my)[-_]?(?:[a-z]+[-_])?(?:api[-_]?)?(?:key|token|secret|pass)",
            r"(?i)(?:example|placeholder|changeme|change_me|redacted|dummy|insert[-_]?here|replace[-_]?me|xxxxx|\*\*\*\*|fake[-_]?(?:key|token))",
            r"(?i)^(?:none|null|true|false|undefined|secret|password|token)$",
            // Credentials published as examples in vendor docs and RFCs (Stripe's test key,
            // RFC 6749 and RFC 5849 examples).
            r"^(?:sk_test_4eC39HqLyjWDarjtT1zdp7dc|2YotnFZFEjr1zCsicMWpAA|tGzv3JOkF0XG5Qx2TlKWIA|h480djs93hd8|0685bd9184jfhq22|ad180jjd733klru7|wOJIO9A2W5mFwDgiDvZbTSMK%2FPY%3D|dj9rAiCE1SggwYcJcRI1BA)$",
        ])
        .expect("built-in placeholder patterns compile")
    });
    set.is_match(s) || template(s)
}

/// A template: its slots (`${VAR}`, `$(cmd)`, `$VAR`, `{{ x }}`, `%(name)s`, `<NAME>`) leave
/// less literal text than a credential's 12 bytes. A random key whose characters happen
/// to spell a slot (`…c8c4$(of)wr`: about one Django key in 2,000) is still a key.
fn template(s: &[u8]) -> bool {
    static SLOT: OnceLock<Regex> = OnceLock::new();
    let slot = SLOT.get_or_init(|| {
        Regex::new(
            r"\$\{[^}]*\}|\$\([a-z_]+\)|^\$[A-Za-z_][A-Za-z0-9_]*$|\{\{[^}]*\}\}|%\([a-z_]+\)s|<[A-Za-z_ -]+>",
        )
        .expect("built-in template pattern compiles")
    });
    let (mut slots, mut in_slots) = (0, 0);
    for m in slot.find_iter(s) {
        slots += 1;
        in_slots += m.len();
    }
    slots > 0 && s.len() - in_slots < 12
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entropy_bounds() {
        assert_eq!(entropy(b"aaaa"), 0.0);
        assert!((entropy(b"ab") - 1.0).abs() < 1e-9);
        assert!(entropy(b"0123456789abcdef") > 3.9);
        // Same letters, same entropy (3.50): mixed case passes, hand-typed lower case not.
        assert!(entropy_ok(b"c6m2BzXdcO7t7Lt7w7", 3.6));
        assert!(!entropy_ok(b"c6m2bzxdco7t7lt7w7", 3.6));
        assert!(!keyboard_mash(b"P5O2fq#+21#710NtYt"));
        // Four of eight letter pairs are neighbours by chance; the symbols say it was
        // not typed.
        assert!(generic(
            b"9!k^w8)7@1=(w34+-qd1w9l1#ghq$oiu(d1^vz5^y((hj7km*e",
            b"SECRET_KEY"
        ));
    }

    #[test]
    fn query_strings_end_values() {
        assert_eq!(trim_value(b"value1abcd&key2=value2x", b""), b"value1abcd");
        assert_eq!(
            trim_value(b"Tok3nV4lue&token_type_hint=x", b""),
            b"Tok3nV4lue"
        );
        let django = b"1k27=q7c*d9iz*@2+-u2rn8u3&svsp=ird23";
        assert_eq!(trim_value(django, b""), django.as_slice());
        // A closing bracket is trimmed only when its line opened one before the value.
        assert_eq!(trim_value(b"abc123XYZ)", b"x\nf(token="), b"abc123XYZ");
        assert_eq!(trim_value(b"9fz+x&n&f)", b"(\n\"KEY="), b"9fz+x&n&f)");
    }

    #[test]
    fn github_checksum() {
        let body = b"abcdefghijklmnopqrstuvwxyz0123";
        let mut tok = b"ghp_".to_vec();
        tok.extend_from_slice(body);
        tok.extend_from_slice(&base62_6(crc32fast::hash(body)));
        assert!(github_crc32(&tok));
        let last = tok.len() - 1;
        tok[last] = if tok[last] == b'A' { b'B' } else { b'A' };
        assert!(!github_crc32(&tok));
    }

    #[test]
    fn placeholders() {
        for p in [
            "your-api-key-here",
            "${OPENAI_API_KEY}",
            "<KEY>",
            "xxxxxxxxxxxxxxxx",
            "changeme",
            "AKIAIOSFODNN7EXAMPLE",
            "{{ secrets.TOKEN }}",
        ] {
            assert!(placeholder(p.as_bytes()), "{p}");
        }
        assert!(!placeholder(b"Zq8vJr2LkP0wXy7TbN4m"));
        // Slots with little literal text around them are templates; a random key that
        // spells one is not.
        for t in [
            "sk-${SUFFIX}",
            "%(db_password)s",
            "$(pass)-$(host)",
            "Bearer {{token}}",
        ] {
            assert!(placeholder(t.as_bytes()), "{t}");
        }
        assert!(!placeholder(
            b"m(r-*y=7-hq%df*15rpfo0u^o7egrd!ljm07)!@c8c4$(of)wr"
        ));
    }

    #[test]
    fn random_tokens_are_rarely_taken_for_identifiers() {
        let mut rng = crate::detect::samples::Rng::new(7);
        let n = 20_000;
        let taken = (0..n)
            .filter(|_| {
                let v = format!(
                    "{}{}",
                    rng.string(crate::detect::samples::ALNUM, 22),
                    rng.below(90) + 10
                );
                code_identifier(v.as_bytes())
            })
            .count();
        assert!(
            taken * 250 < n,
            "{taken} of {n} random tokens look like identifiers"
        );
    }

    fn generic_(v: &[u8]) -> bool {
        generic(v, b"API_TOKEN")
    }

    #[test]
    fn generic_rejects_code() {
        for v in [
            &b"self.next_token2.value"[..],
            &b"MAX_TOKEN_LEN_32"[..],
            &b"X509CertificateTemplatePrivateKeyFlag"[..],
            &b"_bindgen_ty_12"[..],
            &b"DBPROPENUM21"[..],
            &b"Pkcs10AllowedSignatureTypes"[..],
            &b"Crypto_SM4_2Vector_Intrinsic"[..],
            &b"bpf_attr__bindgen_ty_20"[..],
            &b"self._lib.X509_REQ_get_pubkey"[..],
            &b"VS%0.f0COMNTOOLS"[..],
            &b"qwe089234lkjsdf"[..],
            &b"kjfch2345sdf"[..],
            &b"ACCAQFODXMPL4YFHP7DZE"[..],
            &b"/tmp/tmp.InJ96FOqFp/main"[..],
            &b"~/.cache/build-7Qx2k9/out"[..],
        ] {
            assert!(!generic_(v), "{}", String::from_utf8_lossy(v));
        }
        assert!(!generic(
            b"da39a3ee5e6b4b0d3255bfef95601890afd80709",
            b"cache_key"
        ));
        assert!(generic_(b"Zq8vJr2LkP0wXy7TbN4m"));
        // `XMPL` marks AWS's upper-case example ids only, not a random value's letters.
        assert!(generic_(b"V0pKte65sG9HhXmPl4mlrFYk"));
        assert!(generic_(b"K7mQ2xP9vL4nR8xmplwY6zA1b"));
        assert!(generic_(b"5CeVmFS0jDnutd00x9Xl"));
        assert!(generic_(b"3f9a0c1d2b4e5f60718293a4b5c6d7e8f9"));
    }
}
