//! Credentials inside base64 text: a `.env` attached to an API request, a Kubernetes
//! Secret, a wrapped PEM file, a stream cut anywhere. Reported at the encoded span with
//! the fingerprint of the credential itself, never with plaintext. Every secret is
//! generated here.
use base64::Engine as _;

use super::samples::{checksummed, generic_ok, sample, Rng, ALNUM};
use super::stream::StreamScanner;
use super::tests_shapes::assert_quiet;
use super::*;

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// Each secret found once, by the rule given, inside `span` of `hay`, without plaintext.
fn assert_inside(engine: &Engine, hay: &str, span: (usize, usize), want: &[(&str, &str)]) {
    let found = engine.scan(hay.as_bytes());
    for (secret, rule) in want {
        let fp = fingerprint(secret.as_bytes());
        let hits: Vec<_> = found.iter().filter(|f| f.fingerprint == fp).collect();
        assert_eq!(hits.len(), 1, "{rule}: {found:?}");
        let f = hits[0];
        assert_eq!(f.rule, *rule, "{found:?}");
        assert!(
            span.0 <= f.start && f.end <= span.1,
            "{rule}: {f:?} not in {span:?}"
        );
        assert!(
            !f.redacted.contains(secret),
            "{rule}: preview {}",
            f.redacted
        );
    }
    assert_eq!(found.len(), want.len(), "{found:?}");
}

#[test]
fn an_env_file_attached_to_a_request_is_decoded() {
    let engine = Engine::builtin();
    let mut rng = Rng::from_time();
    for _ in 0..10 {
        let (ant, _) = sample("anthropic-api-key", &mut rng).unwrap();
        let ghp = checksummed(&mut rng, "ghp_");
        let (aws, _) = sample("aws-secret-access-key", &mut rng).unwrap();
        let env = format!(
            "# deploy settings\nANTHROPIC_API_KEY={ant}\nGITHUB_TOKEN={ghp}\naws_secret_access_key = {aws}\nLOG_LEVEL=debug\n"
        );
        let blob = b64(&env);
        let body = format!(
            "{{\"model\":\"m\",\"messages\":[{{\"role\":\"user\",\"content\":[{{\"type\":\"document\",\"source\":{{\"type\":\"base64\",\"media_type\":\"text/plain\",\"data\":\"{blob}\"}}}}]}}]}}"
        );
        // URL-safe and unpadded, as a `data:` URL or a query parameter carries it.
        let url = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&env);
        let query = format!("GET /upload?file={url}&x=1 HTTP/1.1\r\n");
        for (hay, enc) in [(&body, &blob), (&query, &url)] {
            let at = hay.find(enc.as_str()).unwrap();
            assert_inside(
                &engine,
                hay,
                (at, at + enc.len()),
                &[
                    (&ant, "anthropic-api-key"),
                    (&ghp, "github-pat"),
                    (&aws, "aws-secret-access-key"),
                ],
            );
        }
    }
}

#[test]
fn a_secret_manifest_names_its_encoded_values() {
    let engine = Engine::builtin();
    let mut rng = Rng::from_time();
    for _ in 0..10 {
        let pw = generic_ok(&mut rng, "DB_PASSWORD", |r| {
            format!("{}{}", r.string(ALNUM, 22), r.below(90) + 10)
        });
        let ghp = checksummed(&mut rng, "ghp_");
        let manifest = format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: app\ndata:\n  DB_PASSWORD: {}\n  GITHUB_TOKEN: {}\n  LOG_LEVEL: {}\n",
            b64(&pw),
            b64(&ghp),
            b64("debug")
        );
        let found = engine.scan(manifest.as_bytes());
        let fps: Vec<_> = found.iter().map(|f| f.fingerprint.clone()).collect();
        assert!(fps.contains(&fingerprint(pw.as_bytes())), "{found:?}");
        assert!(fps.contains(&fingerprint(ghp.as_bytes())), "{found:?}");
        // Reported once each, at the encoded value, not also as the encoded text.
        assert_eq!(found.len(), 2, "{found:?}");
        let enc = b64(&pw);
        let f = found
            .iter()
            .find(|f| f.fingerprint == fingerprint(pw.as_bytes()))
            .unwrap();
        let at = manifest.find(&enc).unwrap();
        assert!(at <= f.start && f.end <= at + enc.len(), "{f:?}");
    }
}

#[test]
fn a_wrapped_pem_file_is_decoded_across_its_lines() {
    let engine = Engine::builtin();
    let mut rng = Rng::from_time();
    let (pem, _) = sample("private-key", &mut rng).unwrap();
    let enc = b64(&format!("{pem}\n"));
    let wrapped: Vec<&str> = enc
        .as_bytes()
        .chunks(76)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    let mail = format!(
        "Content-Type: application/x-pem-file\r\nContent-Transfer-Encoding: base64\r\n\r\n{}\r\n--b--\r\n",
        wrapped.join("\r\n")
    );
    let at = mail.find(wrapped[0]).unwrap();
    let end = mail.find("\r\n--b--").unwrap();
    assert_inside(&engine, &mail, (at, end), &[(&pem, "private-key")]);
}

#[test]
fn an_encoded_secret_cut_across_writes_is_found_once() {
    let engine = Engine::builtin();
    let d = Detector::new(&engine, None);
    let mut rng = Rng::from_time();
    let (ant, _) = sample("anthropic-api-key", &mut rng).unwrap();
    let filler = rng.string(ALNUM, 3000);
    let body = format!(
        "{{\"data\":\"{}\"}}\n",
        b64(&format!("notes: {filler}\nANTHROPIC_API_KEY={ant}\n"))
    );
    let fp = fingerprint(ant.as_bytes());
    let mut cuts: Vec<usize> = (1..body.len()).step_by(97).collect();
    cuts.extend((body.len() - 200..body.len()).step_by(7));
    for cut in cuts {
        let mut s = StreamScanner::new(&engine);
        let mut found = s.feed(&d, &body.as_bytes()[..cut]);
        found.extend(s.feed(&d, &body.as_bytes()[cut..]));
        found.extend(s.finish(&d));
        let hits = found.iter().filter(|f| f.finding.fingerprint == fp).count();
        assert_eq!(hits, 1, "cut at {cut}: {found:?}");
    }
}

#[test]
fn binary_tokens_and_jwts_stay_as_they_were() {
    let engine = Engine::builtin();
    let mut rng = Rng::from_time();
    // An image (binary) next to a word that names secrets: nothing.
    let bin: Vec<u8> = (0..3000).map(|_| rng.below(256) as u8).collect();
    let img = base64::engine::general_purpose::STANDARD.encode(&bin);
    assert_quiet(&engine, &format!("{{\"password_hint\": \"{img}\"}}"));
    // Encoded text with no credential in it.
    assert_quiet(
        &engine,
        &format!("{{\"data\": \"{}\"}}", b64("just a note about the build\n")),
    );
    // A JWT is one finding, the token, although its parts decode to JSON.
    let (jwt, text) = sample("jwt", &mut rng).unwrap();
    let found = engine.scan(text.as_bytes());
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].fingerprint, fingerprint(jwt.as_bytes()));
}

/// A value that reads on into a base64 run (a line of env assignments joined by literal
/// `\n`s) is reported as written: its fingerprint is of bytes that are in the input.
#[test]
fn a_value_read_on_into_a_base64_run_is_fingerprinted_as_written() {
    let engine = Engine::builtin();
    let mut rng = Rng::from_time();
    for _ in 0..20 {
        let v = generic_ok(&mut rng, "PASSWORD", |r| r.string(ALNUM, 16));
        let run = b64("x\tnot a credential, only a note");
        let hay = format!("PASSWORD={v}\\nX=1\\nNEXT_PASSWORD={run}");
        let found = engine.scan(hay.as_bytes());
        assert!(!found.is_empty(), "{hay}");
        for f in &found {
            let written = fingerprint(&hay.as_bytes()[f.start..f.end]);
            assert_eq!(f.fingerprint, written, "{f:?}");
        }
    }
}

/// A password encoded with its name, the run followed by more words without a break: the
/// run's end ends the value, and the password is found as itself.
#[test]
fn a_decoded_value_ends_where_its_run_ends() {
    let engine = Engine::builtin();
    let mut rng = Rng::from_time();
    for _ in 0..20 {
        let pw = generic_ok(&mut rng, "DB_PASSWORD", |r| r.string(ALNUM, 20));
        let run = b64(&format!("DB_PASSWORD={pw}"));
        let hay = format!("echo {run}\\nmore words");
        let at = hay.find(&run).unwrap();
        assert_inside(
            &engine,
            &hay,
            (at, at + run.len()),
            &[(&pw, "generic-secret")],
        );
    }
}

/// A raw value that reads on into a run (`secret=ab:` and then the base64, with no break:
/// `:` is a byte a value may hold) does not hide the password the run itself encodes.
#[test]
fn a_raw_value_read_into_a_run_does_not_hide_what_it_encodes() {
    let engine = Engine::builtin();
    let mut rng = Rng::from_time();
    for _ in 0..20 {
        let pw = generic_ok(&mut rng, "DB_PASSWORD", |r| r.string(ALNUM, 20));
        let run = b64(&format!("DB_PASSWORD={pw}\n"));
        let hay = format!("secret=ab:{run}");
        let at = hay.find(&run).unwrap();
        assert_inside(
            &engine,
            &hay,
            (at, at + run.len()),
            &[(&pw, "generic-secret")],
        );
    }
}
