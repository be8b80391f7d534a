//! Synthetic credentials in each rule's format, generated from a seed. Used by the unit and
//! integration tests and by the benchmark corpus, so no real secret is ever committed.
use super::validate::base62_6;

/// SplitMix64: small, seedable, good enough to make test tokens.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// Seeded from the clock and pid: different secrets on every test run.
    /// A time-seeded generator (see [`Rng::seeded`]).
    pub fn from_time() -> Rng {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Rng::seeded(t ^ ((std::process::id() as u64) << 32))
    }

    /// A generator seeded from `LW_SEED` when set, else from `seed`. The seed goes to
    /// stderr so a failing test (which shows its captured stderr) can be rerun as it was.
    pub fn seeded(seed: u64) -> Rng {
        let seed = std::env::var("LW_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(seed);
        eprintln!("samples: LW_SEED={seed}");
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// `n` characters drawn from `alphabet`.
    pub fn string(&mut self, alphabet: &[u8], n: usize) -> String {
        (0..n)
            .map(|_| alphabet[self.below(alphabet.len())] as char)
            .collect()
    }
}

pub const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
pub const URLSAFE: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-";
pub const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
pub const HEX: &[u8] = b"0123456789abcdef";
pub const UPPER32: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
pub const LETTERS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A GitHub/npm-style token: prefix + 30 random + 6-char base62 CRC32 of the 30.
pub fn checksummed(rng: &mut Rng, prefix: &str) -> String {
    let body = rng.string(ALNUM, 30);
    let crc = base62_6(crc32fast::hash(body.as_bytes()));
    format!("{prefix}{body}{}", String::from_utf8_lossy(&crc))
}

/// A value from `draw` that the generic rule's own checks (its entropy bar, 3.6 in
/// rules.toml; placeholders; `validate::generic`) accept under `name`. For tests of where
/// a value is found (decoded, named, quoted): a random draw fails those checks about once
/// in a thousand, which is that rule's miss rate, measured by the corpus bench, not a fault
/// of the place under test.
pub fn generic_ok(rng: &mut Rng, name: &str, mut draw: impl FnMut(&mut Rng) -> String) -> String {
    use super::validate::{entropy_ok, generic, placeholder};
    loop {
        let v = draw(rng);
        let b = v.as_bytes();
        if entropy_ok(b, 3.6) && !placeholder(b) && generic(b, name.as_bytes()) {
            return v;
        }
    }
}

/// A password as people pick them for services: 14-24 characters, upper, lower, two
/// digits and at least one of `= * $ ! # % & ^ ( ) + @`.
pub fn password(rng: &mut Rng) -> String {
    const PUNCT: &[u8] = b"=*$!#%&^()+@";
    let n = 14 + rng.below(11);
    let mut v: Vec<u8> = rng.string(ALNUM, n).into_bytes();
    for _ in 0..1 + rng.below(3) {
        let i = rng.below(n);
        v[i] = PUNCT[rng.below(PUNCT.len())];
    }
    let (a, b) = (rng.below(n), rng.below(n));
    v[a] = b'0' + rng.below(10) as u8;
    v[b] = b'0' + rng.below(10) as u8;
    v[0] = b'A' + rng.below(26) as u8;
    v[n - 1] = b'a' + rng.below(26) as u8;
    String::from_utf8(v).unwrap()
}

/// A random version-4 UUID (lowercase hex, variant `a`).
pub fn uuid_v4(rng: &mut Rng) -> String {
    format!(
        "{}-{}-4{}-a{}-{}",
        rng.string(HEX, 8),
        rng.string(HEX, 4),
        rng.string(HEX, 3),
        rng.string(HEX, 3),
        rng.string(HEX, 12)
    )
}

/// A PEM block of `lines` base64 lines with the given label.
pub fn pem(rng: &mut Rng, label: &str, lines: usize) -> String {
    let mut s = format!("-----BEGIN {label}-----\n");
    for _ in 0..lines {
        s.push_str(&rng.string(B64, 64));
        s.push('\n');
    }
    s.push_str(&format!("-----END {label}-----"));
    s
}

/// A sample secret for `rule`, and the text to embed (the same, except for rules whose
/// secret is part of a larger credential string such as a URL or JSON field).
pub fn sample(rule: &str, rng: &mut Rng) -> Option<(String, String)> {
    let same = |s: String| Some((s.clone(), s));
    match rule {
        "anthropic-api-key" => same(format!("sk-ant-api03-{}AA", rng.string(URLSAFE, 93))),
        "anthropic-admin-key" => same(format!("sk-ant-admin01-{}AA", rng.string(URLSAFE, 93))),
        "openai-project-key" => same(format!(
            "sk-proj-{}T3BlbkFJ{}",
            rng.string(URLSAFE, 74),
            rng.string(URLSAFE, 74)
        )),
        "openai-service-account-key" => same(format!(
            "sk-svcacct-{}T3BlbkFJ{}",
            rng.string(URLSAFE, 74),
            rng.string(URLSAFE, 74)
        )),
        "openai-admin-key" => same(format!(
            "sk-admin-{}T3BlbkFJ{}",
            rng.string(URLSAFE, 74),
            rng.string(URLSAFE, 74)
        )),
        "openai-legacy-key" => same(format!(
            "sk-{}T3BlbkFJ{}",
            rng.string(ALNUM, 20),
            rng.string(ALNUM, 20)
        )),
        "google-api-key" => same(format!("AIza{}", rng.string(URLSAFE, 35))),
        "mistral-api-key" => {
            let k = rng.string(ALNUM, 32);
            Some((k.clone(), format!("MISTRAL_API_KEY={k}")))
        }
        "cohere-api-key" => {
            let k = rng.string(ALNUM, 40);
            Some((k.clone(), format!("COHERE_API_KEY={k}")))
        }
        "groq-api-key" => same(format!("gsk_{}", rng.string(ALNUM, 52))),
        "xai-api-key" => same(format!("xai-{}", rng.string(ALNUM, 80))),
        "perplexity-api-key" => same(format!("pplx-{}", rng.string(ALNUM, 48))),
        "huggingface-token" => same(format!("hf_{}", rng.string(LETTERS, 34))),
        "huggingface-org-token" => same(format!("api_org_{}", rng.string(LETTERS, 34))),
        "replicate-api-token" => same(format!("r8_{}", rng.string(ALNUM, 37))),
        "openrouter-api-key" => same(format!("sk-or-v1-{}", rng.string(HEX, 64))),
        "langsmith-api-key" => same(format!(
            "lsv2_pt_{}_{}",
            rng.string(HEX, 32),
            rng.string(HEX, 10)
        )),
        "tavily-api-key" => same(format!("tvly-dev-{}", rng.string(ALNUM, 32))),
        "pinecone-api-key" => same(format!(
            "pcsk_{}_{}",
            rng.string(ALNUM, 6),
            rng.string(ALNUM, 62)
        )),
        "aws-access-key-id" => same(format!("AKIA{}", rng.string(UPPER32, 16))),
        "aws-secret-access-key" => {
            let k = rng.string(B64, 40);
            Some((k.clone(), format!("aws_secret_access_key = {k}")))
        }
        "aws-session-token" => same(format!("IQoJb3JpZ2luX2Vj{}", rng.string(B64, 300))),
        "gcp-service-account-key" => {
            let body: Vec<String> = (0..20).map(|_| rng.string(B64, 64)).collect();
            let k = format!(
                "-----BEGIN PRIVATE KEY-----\\n{}\\n-----END PRIVATE KEY-----\\n",
                body.join("\\n")
            );
            Some((
                k.clone(),
                format!("{{\"type\": \"service_account\", \"private_key\": \"{k}\"}}"),
            ))
        }
        "gcp-oauth-client-secret" => same(format!("GOCSPX-{}", rng.string(URLSAFE, 28))),
        "google-oauth-access-token" => same(format!("ya29.a0{}", rng.string(URLSAFE, 120))),
        "azure-storage-account-key" => {
            let k = format!("{}==", rng.string(B64, 86));
            Some((k.clone(), format!("DefaultEndpointsProtocol=https;AccountName=acct7;AccountKey={k};EndpointSuffix=core.windows.net")))
        }
        "azure-sas-token" => {
            let k = format!("{}%3D", rng.string(ALNUM, 43));
            Some((k.clone(), format!("https://acct7.blob.core.windows.net/c?sv=2022-11-02&ss=b&srt=co&sp=rl&se=2026-12-01T00:00:00Z&spr=https&sig={k}")))
        }
        "azure-ad-client-secret" => same(format!(
            "{}{}Q~{}",
            rng.string(ALNUM, 3),
            rng.below(10),
            rng.string(ALNUM, 34)
        )),
        "digitalocean-token" => same(format!("dop_v1_{}", rng.string(HEX, 64))),
        "hashicorp-vault-token" => same(format!("hvs.{}", rng.string(URLSAFE, 95))),
        "hashicorp-vault-legacy-token" => {
            let k = format!("s.{}", rng.string(ALNUM, 24));
            Some((k.clone(), format!("VAULT_TOKEN={k}")))
        }
        "github-pat" => same(checksummed(rng, "ghp_")),
        "github-oauth-token" => same(checksummed(rng, "gho_")),
        "github-user-to-server-token" => same(checksummed(rng, "ghu_")),
        "github-server-to-server-token" => same(checksummed(rng, "ghs_")),
        "github-refresh-token" => same(checksummed(rng, "ghr_")),
        "github-fine-grained-pat" => same(format!(
            "github_pat_{}_{}",
            rng.string(ALNUM, 22),
            rng.string(ALNUM, 59)
        )),
        // Legacy (20 characters) or routable (base64url, a dot, version and CRC in base36).
        "gitlab-pat" => same(match rng.below(2) {
            0 => format!("glpat-{}", rng.string(URLSAFE, 20)),
            _ => format!(
                "glpat-{}.01{}",
                rng.string(URLSAFE, 27),
                rng.string(LOWER36, 7)
            ),
        }),
        "gitlab-runner-token" => same(match rng.below(3) {
            0 => format!("glrt-{}", rng.string(URLSAFE, 20)),
            1 => format!(
                "glrt-t1_{}.01{}",
                rng.string(URLSAFE, 27),
                rng.string(LOWER36, 7)
            ),
            _ => format!("GR1348941{}", rng.string(URLSAFE, 20)),
        }),
        "npm-access-token" => same(checksummed(rng, "npm_")),
        "pypi-upload-token" => same(format!("pypi-AgEIcHlwaS5vcmc{}", rng.string(URLSAFE, 120))),
        "docker-hub-pat" => same(format!("dckr_pat_{}", rng.string(URLSAFE, 27))),
        "slack-token" => same(format!(
            "xoxb-{}-{}-{}",
            10_000_000_000u64 + rng.next_u64() % 1_000_000_000,
            10_000_000_000u64 + rng.next_u64() % 1_000_000_000,
            rng.string(ALNUM, 24)
        )),
        "slack-webhook-url" => same(format!(
            "https://hooks.slack.com/services/T{}/B{}/{}",
            rng.string(&UPPER32[..26], 8),
            rng.string(&UPPER32[..26], 10),
            rng.string(ALNUM, 24)
        )),
        "discord-webhook-url" => same(format!(
            "https://discord.com/api/webhooks/{}/{}",
            100_000_000_000_000_000u64 + rng.next_u64() % 100_000_000_000_000_000,
            rng.string(URLSAFE, 68)
        )),
        "discord-bot-token" => {
            let k = format!(
                "M{}.{}.{}",
                rng.string(ALNUM, 25),
                rng.string(URLSAFE, 6),
                rng.string(URLSAFE, 38)
            );
            Some((k.clone(), format!("DISCORD_BOT_TOKEN={k}")))
        }
        "telegram-bot-token" => same(format!(
            "{}:AA{}",
            100_000_000 + rng.below(899_999_999),
            rng.string(URLSAFE, 33)
        )),
        "datadog-api-key" => {
            let k = rng.string(HEX, 32);
            Some((k.clone(), format!("DD_API_KEY={k}")))
        }
        "sentry-dsn" => {
            let k = rng.string(HEX, 32);
            Some((
                k.clone(),
                format!(
                    "https://{k}@o{}.ingest.sentry.io/{}",
                    rng.below(999_999),
                    rng.below(9_999_999)
                ),
            ))
        }
        "sentry-auth-token" => same(format!("sntrys_eyJ{}", rng.string(ALNUM, 120))),
        "stripe-secret-key" => same(format!("sk_live_{}", rng.string(ALNUM, 99))),
        "stripe-webhook-secret" => same(format!("whsec_{}", rng.string(ALNUM, 32))),
        "sendgrid-api-key" => same(format!(
            "SG.{}.{}",
            rng.string(URLSAFE, 22),
            rng.string(URLSAFE, 43)
        )),
        "grafana-service-account-token" => same(format!(
            "glsa_{}_{}",
            rng.string(ALNUM, 32),
            rng.string(HEX, 8)
        )),
        "linear-api-key" => same(format!("lin_api_{}", rng.string(ALNUM, 40))),
        "database-url-password" => {
            let k = rng.string(ALNUM, 20);
            Some((
                k.clone(),
                format!("postgres://app:{k}@db.internal:5432/prod"),
            ))
        }
        "netrc-password" => {
            let k = rng.string(ALNUM, 16);
            Some((
                k.clone(),
                format!("machine api.internal.corp login deploy password {k}"),
            ))
        }
        "curl-user-password" => {
            let k = rng.string(ALNUM, 16);
            Some((
                k.clone(),
                format!("curl -sS -u deploy:{k} https://api.internal.corp/v1/jobs"),
            ))
        }
        "mysql-cli-password" => {
            let k = rng.string(ALNUM, 16);
            Some((k.clone(), format!("mysql -h db.internal -u app -p{k} prod")))
        }
        "url-basic-auth" => {
            let k = rng.string(ALNUM, 18);
            Some((
                k.clone(),
                format!("https://deploy:{k}@git.internal.corp/repo.git"),
            ))
        }
        "http-basic-auth" | "registry-auth" => {
            use base64::Engine as _;
            let k = rng.string(ALNUM, 18);
            let b = base64::engine::general_purpose::STANDARD.encode(format!("deploy:{k}"));
            let text = if rule == "http-basic-auth" {
                format!("Authorization: Basic {b}")
            } else {
                format!(r#"{{"auths": {{"registry.internal.corp": {{"auth": "{b}"}}}}}}"#)
            };
            Some((k, text))
        }
        "private-key" => same(pem(rng, "RSA PRIVATE KEY", 25)),
        "openssh-private-key" => same(pem(rng, "OPENSSH PRIVATE KEY", 7)),
        "pgp-private-key" => same(pem(rng, "PGP PRIVATE KEY BLOCK", 20)),
        "age-secret-key" => same(format!(
            "AGE-SECRET-KEY-1{}",
            rng.string(b"QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L", 58)
        )),
        "jwt" => {
            use base64::Engine as _;
            let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
            let h = e.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
            let p = e.encode(format!(
                r#"{{"sub":"{}","iat":1700000000}}"#,
                rng.string(ALNUM, 12)
            ));
            same(format!("{h}.{p}.{}", rng.string(URLSAFE, 43)))
        }
        "bearer-token" => {
            let k = rng.string(URLSAFE, 40);
            Some((k.clone(), format!("Authorization: Bearer {k}")))
        }
        "xml-secret" => {
            let k = generic_ok(rng, "password", |r| r.string(ALNUM, 20));
            let tag = ["password", "apiKey", "clientSecret", "accessToken"][rng.below(4)];
            Some((
                k.clone(),
                format!("<server><id>corp</id><{tag}>{k}</{tag}></server>"),
            ))
        }
        "xml-add-secret" => {
            let k = generic_ok(rng, "ApiKey", |r| r.string(ALNUM, 24));
            let name = ["ApiKey", "ClearTextPassword", "StorageSecret"][rng.below(3)];
            Some((k.clone(), format!("<add key=\"{name}\" value=\"{k}\" />")))
        }
        "authorization-token" => {
            let k = rng.string(URLSAFE, 40);
            let scheme = ["Token", "token", "Api-Key", "ApiKey", "Key", "sso-key"][rng.below(6)];
            Some((k.clone(), format!("Authorization: {scheme} {k}")))
        }
        "generic-secret" => {
            let k = format!("{}{}", rng.string(ALNUM, 22), rng.below(90) + 10);
            Some((k.clone(), format!("INTERNAL_SERVICE_TOKEN={k}")))
        }
        _ => super::samples_saas::sample(rule, rng),
    }
}

/// Base36 as GitLab writes it (routable tokens' suffix).
const LOWER36: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
