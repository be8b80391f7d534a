//! Round-two shapes (issue 11): the forms an independently written corpus caught us on.
//! Every secret is generated here; each test fixes a class, not a sample.
use super::frozen::{FrozenKey, FrozenSet};
use super::samples::{checksummed, generic_ok, pem, sample, Rng, ALNUM, HEX, LETTERS};
use super::*;

/// Fails when `hay` produces any finding; the message shows it redacted.
pub(super) fn assert_quiet(engine: &Engine, hay: &str) {
    let f = engine.scan(hay.as_bytes());
    assert!(f.is_empty(), "{:?} reported: {f:?}", redact(hay.as_bytes()));
}

/// The one finding for `secret` in `hay`: asserts its rule and exact span.
pub(super) fn assert_found(engine: &Engine, hay: &str, secret: &str, rule: &str) {
    let found = engine.scan(hay.as_bytes());
    let want = fingerprint(secret.as_bytes());
    let Some(f) = found.iter().find(|f| f.fingerprint == want) else {
        panic!(
            "{rule}: not found in {:?}; found {:?}",
            redact(hay.as_bytes()),
            found
                .iter()
                .map(|f| (&f.rule, f.start, f.end))
                .collect::<Vec<_>>()
        );
    };
    assert_eq!(f.rule, rule, "in {:?}", redact(hay.as_bytes()));
    assert_eq!(&hay.as_bytes()[f.start..f.end], secret.as_bytes());
    let overlapping = found
        .iter()
        .filter(|g| g.start < f.end && f.start < g.end)
        .count();
    assert_eq!(overlapping, 1, "a second finding overlaps the {rule} token");
}

#[test]
fn a_vendor_token_keeps_its_rule_and_span_inside_urls_and_assignments() {
    let engine = Engine::builtin();
    let mut rng = Rng::from_time();
    for _ in 0..20 {
        let ghs = checksummed(&mut rng, "ghs_");
        let (pypi, _) = sample("pypi-upload-token", &mut rng).unwrap();
        let (glpat, _) = sample("gitlab-pat", &mut rng).unwrap();
        let (ant, _) = sample("anthropic-api-key", &mut rng).unwrap();
        let cases = [
            (format!("git clone https://x-access-token:{ghs}@github.com/org/repo.git"), &ghs, "github-server-to-server-token"),
            (format!("remote: https://x-access-token:{ghs}@github.com/o/r\n"), &ghs, "github-server-to-server-token"),
            (format!("twine upload --repository-url https://__token__:{pypi}@upload.pypi.org/legacy/ dist/*"), &pypi, "pypi-upload-token"),
            (format!("url = https://oauth2:{glpat}@gitlab.com/group/project.git"), &glpat, "gitlab-pat"),
            (format!("GITHUB_TOKEN: {ghs}\n"), &ghs, "github-server-to-server-token"),
            (format!("{{\"api_key\": \"{ant}\"}}"), &ant, "anthropic-api-key"),
            (format!("-H 'Authorization: Bearer {ant}'"), &ant, "anthropic-api-key"),
            (format!("token={ant}&model=large"), &ant, "anthropic-api-key"),
        ];
        for (hay, secret, rule) in &cases {
            assert_found(&engine, hay, secret, rule);
        }
    }
}

/// A docker-compose file with the key in a block scalar, indented `indent` spaces.
fn compose(key: &str, indent: usize) -> String {
    let pad = " ".repeat(indent);
    let body: String = key.lines().map(|l| format!("{pad}{l}\n")).collect();
    format!("services:\n  app:\n    image: agent:1\n    environment:\n      TLS_KEY: |\n{body}      LOG_LEVEL: debug\n")
}

#[test]
fn pem_keys_in_yaml_json_and_env_files_are_one_credential() {
    let engine = Engine::builtin();
    let mut rng = Rng::from_time();
    for label in [
        "PRIVATE KEY",
        "RSA PRIVATE KEY",
        "EC PRIVATE KEY",
        "OPENSSH PRIVATE KEY",
    ] {
        let rule = if label.starts_with("OPENSSH") {
            "openssh-private-key"
        } else {
            "private-key"
        };
        let key = pem(&mut rng, label, 10);
        let want = fingerprint(format!("{key}\n").as_bytes());
        let escaped = key.replace('\n', "\\n");
        let forms = [
            compose(&key, 8),
            compose(&key, 2),
            format!("{{\"tls\": {{\"key\": \"{escaped}\"}}}}"),
            format!(
                "{{\"env\": \"{{\\\"KEY\\\": \\\"{}\\\"}}\"}}",
                key.replace('\n', "\\\\n")
            ),
            format!("TLS_KEY=\"{key}\"\nOTHER=1\n"),
            format!("TLS_KEY=\"{escaped}\"\n"),
            format!("key: \"{}\"\n", key.replace('\n', " ")),
        ];
        for form in &forms {
            let found = engine.scan(form.as_bytes());
            let hits: Vec<_> = found.iter().filter(|f| f.fingerprint == want).collect();
            assert_eq!(
                hits.len(),
                1,
                "{label} in {:?}: {found:?}",
                redact(form.as_bytes())
            );
            assert_eq!(hits[0].rule, rule);
            assert_eq!(
                found.len(),
                1,
                "{label}: a second finding in {:?}",
                redact(form.as_bytes())
            );
        }
        // Frozen once (from the file's bytes), it is the frozen key in every form.
        let set = FrozenSet::new(vec![FrozenKey::from_secret(format!("{key}\n").as_bytes())]);
        let d = Detector::new(&engine, Some(&set));
        for form in &forms {
            let found = d.scan(form.as_bytes());
            assert!(
                found.iter().any(|f| d.is_frozen(f)),
                "{label}: not frozen in a form"
            );
        }
    }
}

/// Passwords of every punctuation Django keys and password managers use.
const PUNCT: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789=*$!#%&^()+@";
const DJANGO: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789!@#$%^&*(-_=+)";

#[test]
fn punctuated_passwords_are_found_in_every_context() {
    let engine = Engine::builtin();
    let mut rng = Rng::seeded(0x9a55);
    let (mut n, mut missed) = (0, Vec::new());
    for round in 0..400 {
        let len = 12 + rng.below(21);
        let pw = rng.string(PUNCT, len);
        let dj = format!("django-insecure-{}", rng.string(DJANGO, 50));
        // An unquoted value cannot end in what prose puts after it.
        let bare_ok = !b".,;:)]}".contains(pw.as_bytes().last().unwrap());
        let mut cases = vec![
            format!("export DB_PASSWORD=\"{pw}\"\n"),
            format!("export DB_PASSWORD='{pw}'\n"),
            format!("database:\n  password: \"{pw}\"\n"),
            format!("{{\"db\": {{\"password\": \"{pw}\", \"port\": 5432}}}}"),
            format!("  File \"/srv/app/db.py\", line 9, in connect\n    conn = Client(host='db', password='{pw}', timeout=38)\n"),
            format!("SECRET_KEY = '{dj}'\n"),
            format!("    secret_key = \"{dj}\"\n"),
        ];
        if bare_ok {
            cases.push(format!("java -Dapp.password={pw} -jar app.jar\n"));
            cases.push(format!("DB_PASSWORD={pw}\n"));
            cases.push(format!("db:\n  password: {pw}\n"));
        }
        for hay in &cases {
            let secret = if hay.contains(&dj) { &dj } else { &pw };
            n += 1;
            let want = fingerprint(secret.as_bytes());
            if !engine
                .scan(hay.as_bytes())
                .iter()
                .any(|f| f.fingerprint == want)
            {
                missed.push((round, redact(hay.as_bytes())));
            }
        }
    }
    assert!(
        missed.len() * 100 <= n,
        "{} of {n} missed: {:?}",
        missed.len(),
        &missed[..missed.len().min(10)]
    );
}

#[test]
fn what_the_bench_caught_is_found_with_its_own_span() {
    let engine = Engine::builtin();
    let mut rng = Rng::from_time();
    let mut missed = 0;
    for _ in 0..200 {
        // `%d` between random letters is not a printf template.
        let pw = format!("{}%d{}7", rng.string(ALNUM, 6), rng.string(ALNUM, 9));
        // `&w=` inside a Django key is not a query string.
        let dj = format!("{}&w={}x", rng.string(DJANGO, 20), rng.string(DJANGO, 27));
        for (hay, secret) in [
            (format!("SMTP_PASSWORD={pw}\n"), &pw),
            (format!("SECRET_KEY={dj}\n"), &dj),
        ] {
            let want = fingerprint(secret.as_bytes());
            let hit = engine
                .scan(hay.as_bytes())
                .iter()
                .any(|f| f.fingerprint == want);
            missed += !hit as usize;
        }
        // Dotted JVM property names keep the vendor's rule.
        let dd = rng.string(HEX, 32);
        let jvm = format!("java -Ddd.api.key={dd} -jar a.jar\n");
        assert_found(&engine, &jvm, &dd, "datadog-api-key");
    }
    // Random values fail the "not code" checks at a small base rate (~0.2 %).
    assert!(missed <= 4, "{missed} of 400 missed");
    for quiet in [
        "  tpmkey:uuid=7f468c16-cb7f-11e1-824d-b3a4f4b20343;storage=user",
        "https://docs.example.com/spreadsheet/ccc?key=0Ao1yRmX6PQQzdG5wSFlrZl9HRWNET3Zy&usp=sharing",
    ] {
        assert_quiet(&engine, quiet);
    }
}

/// The tail of random hex: 32 characters with the counts one real draw had (8, 5, 5, 3, 2,
/// 1 of six digits, 4, 3, 1 of three letters: 2.91 bits), shuffled; about one random 32-hex
/// key in 10^4 is this uneven, and it is still a key.
#[test]
fn an_uneven_random_hex_key_is_still_a_key() {
    let engine = Engine::builtin();
    let mut rng = Rng::from_time();
    for _ in 0..20 {
        // Six digits and three letters, as in that draw (a quarter letters).
        let mut digits: Vec<u8> = b"0123456789".to_vec();
        let mut letters: Vec<u8> = b"abcdef".to_vec();
        let mut v = Vec::new();
        for (letter, n) in [
            (false, 8),
            (false, 5),
            (false, 5),
            (true, 4),
            (false, 3),
            (true, 3),
            (false, 2),
            (false, 1),
            (true, 1),
        ] {
            let pool = if letter { &mut letters } else { &mut digits };
            let d = pool.remove(rng.below(pool.len()));
            v.extend(std::iter::repeat_n(d, n));
        }
        for i in (1..v.len()).rev() {
            v.swap(i, rng.below(i + 1));
        }
        let h = String::from_utf8(v).unwrap();
        assert!(validate::entropy(h.as_bytes()) < 3.0);
        assert_found(
            &engine,
            &format!("    api_key = '{h}'\n"),
            &h,
            "generic-secret",
        );
    }
}

#[test]
fn hex_values_are_keys_when_named_as_keys_and_digests_otherwise() {
    let engine = Engine::builtin();
    // Fixed seed (override with LW_SEED): about 1 random 32-digit hex value in 1,700 is
    // mostly digits, under the entropy bar by design, which made a time-seeded run flake.
    let mut rng = Rng::seeded(0x4e5);
    for _ in 0..50 {
        let h32 = rng.string(HEX, 32);
        let h40 = rng.string(HEX, 40);
        let h64 = rng.string(HEX, 64);
        assert_found(
            &engine,
            &format!("DD_API_KEY={h32}\n"),
            &h32,
            "datadog-api-key",
        );
        assert_found(
            &engine,
            &format!("    api_key = '{h32}'\n"),
            &h32,
            "generic-secret",
        );
        assert_found(
            &engine,
            &format!("X_API_KEY: {h40}\n"),
            &h40,
            "generic-secret",
        );
        assert_found(
            &engine,
            &format!("\"webhook_secret\": \"{h64}\""),
            &h64,
            "generic-secret",
        );
        for quiet in [
            format!("sha256_key = {h64}"),
            format!("cache_key = \"{h64}\""),
            format!("key = '{h32}'"),
            format!("token_id: {h32}"),
            format!("api_key_hash = {h64}"),
            format!("commit_sha_token: {h40}"),
        ] {
            assert_quiet(&engine, &quiet);
        }
    }
}

#[test]
fn public_and_invalid_values_are_not_rescued_by_the_generic_rule() {
    let engine = Engine::builtin();
    let mut rng = Rng::from_time();
    for _ in 0..50 {
        let pk = format!("pk_live_{}", rng.string(ALNUM, 99));
        let pkt = format!("pk_test_{}", rng.string(ALNUM, 24));
        let mut bad = checksummed(&mut rng, "ghp_").into_bytes();
        let i = bad.len() - 1;
        bad[i] = if bad[i] == b'a' { b'b' } else { b'a' };
        let bad = String::from_utf8(bad).unwrap();
        let other = format!("{}{}", rng.string(ALNUM, 30), rng.below(90) + 10);
        for quiet in [
            format!("NEXT_PUBLIC_STRIPE_KEY={pk}\n"),
            format!("STRIPE_KEY={pkt}\n"),
            format!("{{\"publishableKey\": \"{pk}\"}}"),
            format!("GITHUB_TOKEN={bad}\n"),
            format!("token: \"{bad}\"\n"),
            format!("https://x-access-token:{bad}@github.com/o/r.git"),
            format!("PUBLIC_KEY={other}\n"),
        ] {
            assert_quiet(&engine, &quiet);
        }
    }
}

#[test]
fn the_jwt_io_example_is_documentation() {
    use base64::Engine as _;
    let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let engine = Engine::builtin();
    let mut rng = Rng::from_time();
    let head = e.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let example = e.encode(br#"{"sub":"1234567890","name":"John Doe","iat":1516239022}"#);
    let real = e.encode(format!(
        r#"{{"sub":"{}","iat":1700000000}}"#,
        rng.string(ALNUM, 12)
    ));
    let sig = rng.string(super::samples::URLSAFE, 43);
    // A toy payload with no registered claim (`{"some":"payload"}`) is a tutorial too.
    let toy = e.encode(format!(r#"{{"{}":"payload"}}"#, rng.string(LETTERS, 6)));
    for payload in [&example, &toy] {
        assert_quiet(
            &engine,
            &format!("curl -H \"Authorization: Bearer {head}.{payload}.{sig}\" https://x/\n"),
        );
    }
    let token = format!("{head}.{real}.{sig}");
    assert_found(
        &engine,
        &format!("Authorization: Bearer {token}\n"),
        &token,
        "jwt",
    );
}

#[test]
fn code_urls_and_emails_under_key_names_are_not_secrets() {
    let engine = Engine::builtin();
    for quiet in [
        "key = hashlib.sha256(data2).hexdigest()",
        "password = get_password(user, 'db2')",
        "secret_key = os.environ[\"SECRET_KEY\"]",
        "api_key=config.get(\"api_key\", 12)",
        "\"authority\": \"https://accounts.example.com/o/oauth2/v2/auth\"",
        "auth_email: \"ops.team42@example-corp.com\"",
        "\"cache_key\": \"sha256:8c2f1d3e4b5a69788c2f1d3e4b5a69788c2f1d3e4b5a69788c2f1d3e4b5a6978\"",
        "TOKEN_URL=https://oauth2.example.net/v1/token?x=12",
        // C with Hungarian names, member access, calls cut off by a bracket.
        "for(iKey=walHash(sLoc.aPgno[j]);sLoc.aHash[iKey];iKey=walNextHash(iKey)){",
        "pRec->pKeyInfo = sqlite3KeyInfoOfIndex(p->pParse, pIdx);",
        "|| (double)(iKey = sqlite3RealToI64(x.u.r))!=x.u.r",
        "x.u.zToken = sqlite3DbSpanDup(db, zStart, zEnd);",
        "pNew->x1.xTokenize = fts5V1toV2Tokenize;",
        "key_node.tag = 'tag:yaml.org,2002:str'",
        "const pubkey256 = 'SIXvRyDmBJSgatgTQRGbInBaAK+hZOQ18UmrSwnDlK8=';",
        // Docstring placeholders shorter than a credential once trimmed.
        "'Authorization': 'OAuth oauth_token=234lsdkf....'",
        "'https://example.com/callback#access_token=sdlfkj452&state=ss345asyht&token_type=Bearer'",
    ] {
        assert_quiet(&engine, quiet);
    }
}

#[test]
fn code_paths_author_names_and_ip_addresses_are_not_secrets() {
    let engine = Engine::builtin();
    let mut rng = Rng::from_time();
    const UPPER: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ";
    const LOWER: &[u8] = b"abcdefghijklmnopqrstuvwxyz";
    for _ in 0..50 {
        // A type path whose name looks random enough (`Ed25519KeyPair::from_seed…`).
        let ty = format!(
            "{}{}{}KeyPair",
            rng.string(UPPER, 1),
            rng.string(LOWER, 2),
            rng.string(b"0123456789", 5)
        );
        let (h1, h2) = (rng.string(HEX, 4), rng.string(HEX, 4));
        let o: Vec<usize> = (0..4).map(|_| rng.below(250) + 1).collect();
        let v4 = format!("{}.{}.{}.{}:8443", o[0], o[1], o[2], o[3]);
        // Two digits at least: the generic rule asks that much of a value without symbols.
        let random = generic_ok(&mut rng, "AUTH_TOKEN", |r| {
            format!(
                "{}9{}4{}",
                r.string(ALNUM, 10),
                r.string(ALNUM, 6),
                r.string(ALNUM, 6)
            )
        });
        for quiet in [
            format!(
                "    let key_pair = {ty}::from_seed_and_public_key(&seed, &public_key).unwrap();"
            ),
            format!("        let authority_str = \"[fe80::1:{h1}:{h2}:4%25eth0]\";"),
            format!("authority = \"{random}\""),
            format!("CERT_AUTHORITY={random}"),
            format!("secret_host = \"{v4}\""),
            format!("TOKEN_SERVER=[2001:db8::{h1}:{h2}]:8443"),
        ] {
            assert_quiet(&engine, &quiet);
        }
        // The same places with a credential's name still report it.
        for (hay, rule) in [
            (format!("authorization = \"{random}\""), "generic-secret"),
            (format!("AUTH_TOKEN={random}"), "generic-secret"),
            (format!("author_api_key: {random}"), "generic-secret"),
        ] {
            assert_found(&engine, &hay, &random, rule);
        }
    }
}

#[test]
fn a_key_block_whose_body_spells_a_placeholder_word_is_still_a_key() {
    let engine = Engine::builtin();
    let mut rng = super::samples::Rng::from_time();
    for (rule, label) in [
        ("pgp-private-key", "PGP PRIVATE KEY BLOCK"),
        ("private-key", "RSA PRIVATE KEY"),
    ] {
        let pem = super::samples::pem(&mut rng, label, 20);
        let at = pem.find('\n').unwrap() + 1 + 30;
        for word in ["XxXXx", "DuMmY", "exaMple"] {
            let key = format!("{}{word}{}", &pem[..at], &pem[at + word.len()..]);
            assert_found(&engine, &key, &key, rule);
        }
    }
    // A short block that is only a placeholder is not.
    assert_quiet(
        &engine,
        "-----BEGIN RSA PRIVATE KEY-----\nxxxxxxxxxxxxxxxx\n-----END RSA PRIVATE KEY-----",
    );
}

/// Structured logs escape line breaks inside a string: the break still ends a value and
/// starts a word, so a key right after `\n` is found and one before it stops there.
#[test]
fn escaped_line_breaks_end_values_and_start_tokens() {
    let engine = Engine::builtin();
    let mut rng = Rng::from_time();
    let token = generic_ok(&mut rng, "SERVICE_TOKEN", |r| r.string(ALNUM, 32));
    let shop = format!("shpat_{}", rng.string(HEX, 32));
    let line = format!(
        "{{\"level\":\"error\",\"msg\":\"env:\\nSERVICE_TOKEN={token}\\nHOME=/root\\r\\n{shop}\\tend\"}}"
    );
    let found = engine.scan(line.as_bytes());
    for want in [&token, &shop] {
        assert!(
            found
                .iter()
                .any(|f| f.fingerprint == fingerprint(want.as_bytes())),
            "{} not found exactly in {:?}: {:?}",
            redact(want.as_bytes()),
            redact(line.as_bytes()),
            found.iter().map(|f| &f.rule).collect::<Vec<_>>()
        );
    }
    assert_eq!(found.len(), 2, "{found:?}");
    // An escaped backslash before `n` is text, not a break; outside a quoted string a
    // backslash is the value's own character.
    let breaks = |b: &[u8]| decode::breaks_near(b, &[(0, b.len())]);
    assert!(breaks(br#""a\\nb""#).is_empty());
    assert_eq!(breaks(br#""a\\\nb""#), vec![4]);
    assert!(breaks(br"PASSWORD=ab\tcd").is_empty());
    assert_eq!(decode::broken(br#""x\ty"#, &[2]), b"\"x \ty");
}

/// A token right after a percent-encoded character (`%22`, `%3D`) starts there; one glued
/// to a word does not (`task_test_…` holds no Stripe key).
#[test]
fn token_boundaries_after_encoded_characters_and_inside_words() {
    let engine = Engine::builtin();
    let mut rng = Rng::from_time();
    let key = format!("sk_live_{}", rng.string(ALNUM, 30));
    for text in [format!("data=%22{key}%22"), format!("q=token%3D{key}&x=1")] {
        let found = engine.scan(text.as_bytes());
        assert!(
            found
                .iter()
                .any(|f| f.fingerprint == fingerprint(key.as_bytes())),
            "{:?}: {found:?}",
            redact(text.as_bytes())
        );
    }
    let glued = format!("task_test_{}", rng.string(ALNUM, 30));
    assert!(engine.scan(glued.as_bytes()).is_empty());
    let blob = format!("{}AIza{}", rng.string(ALNUM, 40), rng.string(ALNUM, 35));
    assert!(engine.scan(format!("{blob}+rest").as_bytes()).is_empty());
    // Identifiers behind the short prefixes of Adafruit IO and crates.io tokens.
    for code in [
        "pool = aio_DefaultConnectionPoolManager()",
        "import { cioServiceConfigurationProviderImpl } from './cio';",
    ] {
        assert!(engine.scan(code.as_bytes()).is_empty(), "{code}");
    }
    // A backslash is a character of an unquoted value (env file, argv, `.netrc`).
    let pw = format!("Zx9k{}\\tQ2#v", rng.string(ALNUM, 8));
    let found = engine.scan(format!("DB_PASSWORD={pw}\n").as_bytes());
    assert!(
        found
            .iter()
            .any(|f| f.fingerprint == fingerprint(pw.as_bytes())),
        "{found:?}"
    );
}

/// GitLab's routable tokens carry a dot and a checksum: the whole token is the credential.
#[test]
fn gitlab_routable_tokens_are_reported_whole() {
    let engine = Engine::builtin();
    let mut rng = Rng::from_time();
    let tok = format!(
        "glpat-{}.01{}",
        rng.string(ALNUM, 27),
        rng.string(b"0123456789abcdefghijklmnopqrstuvwxyz", 7)
    );
    let found = engine.scan(format!("GITLAB_TOKEN={tok}. Done").as_bytes());
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].fingerprint, fingerprint(tok.as_bytes()));
    assert_eq!(found[0].rule, "gitlab-pat");
}
