//! Credentials inside gzip data: a JSON body sent with `Content-Encoding: gzip`, a `.env`
//! compressed into a `.gz`, a body cut across two writes. Reported inside the member's
//! compressed span with the fingerprint of the credential itself, never with plaintext.
//! Every secret is generated here.
use super::detector::Detector;
use super::gz::gzip;
use super::samples::{checksummed, sample, Rng};
use super::stream::StreamScanner;
use super::*;

/// An HTTP request whose gzip body holds `body`: (request, the body's span).
fn request(body: &str) -> (Vec<u8>, (usize, usize)) {
    let gz = gzip(body.as_bytes());
    let mut req = format!(
        "POST /v1/messages HTTP/1.1\r\nHost: api.example.test\r\nContent-Encoding: gzip\r\nContent-Length: {}\r\n\r\n",
        gz.len()
    )
    .into_bytes();
    let at = req.len();
    req.extend_from_slice(&gz);
    (req, (at, at + gz.len()))
}

fn keys(rng: &mut Rng) -> Vec<(String, &'static str)> {
    let (ant, _) = sample("anthropic-api-key", rng).unwrap();
    let (aws, _) = sample("aws-secret-access-key", rng).unwrap();
    vec![
        (ant, "anthropic-api-key"),
        (checksummed(rng, "ghp_"), "github-pat"),
        (aws, "aws-secret-access-key"),
    ]
}

fn body(k: &[(String, &str)]) -> String {
    format!(
        "{{\"model\":\"m\",\"messages\":[{{\"role\":\"user\",\"content\":\"deploy with this .env:\\nANTHROPIC_API_KEY={}\\nGITHUB_TOKEN={}\\naws_secret_access_key = {}\\n\"}}]}}",
        k[0].0, k[1].0, k[2].0
    )
}

#[test]
fn a_gzip_request_body_is_inflated_and_scanned() {
    let engine = Engine::builtin();
    let mut rng = Rng::from_time();
    for _ in 0..5 {
        let k = keys(&mut rng);
        let (req, span) = request(&body(&k));
        let found = engine.scan(&req);
        assert_eq!(found.len(), k.len(), "{found:?}");
        for (secret, rule) in &k {
            let fp = fingerprint(secret.as_bytes());
            let f = found.iter().find(|f| f.fingerprint == fp).expect(rule);
            assert_eq!(f.rule, *rule, "{found:?}");
            assert!(
                span.0 <= f.start && f.end <= span.1,
                "{f:?} not in {span:?}"
            );
            assert!(!f.redacted.contains(secret.as_str()), "{}", f.redacted);
        }
    }
}

#[test]
fn a_gzip_body_cut_across_two_writes_is_found_in_a_stream() {
    let engine = Engine::builtin();
    let d = Detector::new(&engine, None);
    let mut rng = Rng::from_time();
    let k = keys(&mut rng);
    // The keys after kilobytes of text that does not compress away, and the cut between:
    // the second write alone is past the context a stream rescans, so only the member
    // left open is inflated again.
    let filler: String = (0..1500)
        .map(|i| format!("{:03x} ", ((i * 2654435761u64) >> 7) & 0xfff))
        .collect();
    let text = format!("{filler}{}", body(&k));
    let (req, (gs, ge)) = request(&text);
    let cut = ge - 200;
    assert!(
        cut - gs > 2 * engine.context_before(),
        "setup: the member is short"
    );
    let mut s = StreamScanner::new(&engine);
    let mut found = s.feed(&d, &req[..cut]);
    // Found at the second write, not only at the pause that ends the stream (`finish`).
    found.extend(s.feed(&d, &req[cut..]));
    for (secret, rule) in &k {
        let fp = fingerprint(secret.as_bytes());
        assert!(
            found.iter().any(|f| f.finding.fingerprint == fp),
            "{rule} missing: {found:?}"
        );
    }
}

#[test]
fn gzip_without_credentials_and_bad_members_find_nothing() {
    let engine = Engine::builtin();
    let (req, _) = request(&"{\"messages\":[\"summarise the build log\"]}".repeat(50));
    assert!(engine.scan(&req).is_empty());
    let mut bad = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03".to_vec();
    bad.extend_from_slice(&[0xff; 64]);
    assert!(engine.scan(&bad).is_empty());
}
