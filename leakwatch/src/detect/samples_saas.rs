//! Sample secrets for the rules in `rules_saas.toml` (see `samples`): generated from a seed,
//! never a real credential.
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;

use super::samples::{Rng, ALNUM, HEX, URLSAFE};

/// Bitcoin's base58 (no 0, O, I, l).
const BASE58: &[u8] = b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";
const UPPER_ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
const LOWER_ALNUM: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
const HEX_UPPER: &[u8] = b"0123456789ABCDEF";
const DIGITS: &[u8] = b"0123456789";
/// NuGet's key alphabet (lowercase base32).
const BASE32_LOWER: &[u8] = b"abcdefghijklmnopqrstuvwxyz234567";
/// The characters after the `!` of a Salesforce access token.
const SALESFORCE: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._";
/// The characters of a 1Password Secret Key (no 0/O, 1/I/L, U).
const ONEPASSWORD: &[u8] = b"23456789ABCDEFGHJKMNPQRSTVWXYZ";

/// A sample secret for `rule` and the text to embed, as `samples::sample`.
pub fn sample(rule: &str, rng: &mut Rng) -> Option<(String, String)> {
    let s = match rule {
        // ---- communications, commerce
        "twilio-auth-token" => return named("TWILIO_AUTH_TOKEN", rng.string(HEX, 32)),
        "twilio-api-key-secret" => return named("TWILIO_API_SECRET", rng.string(ALNUM, 32)),
        "shopify-access-token" => format!(
            "{}{}",
            pick(rng, &["shpat_", "shpca_", "shppa_"]),
            rng.string(HEX, 32)
        ),
        "shopify-shared-secret" => format!("shpss_{}", rng.string(HEX, 32)),
        "mailgun-private-api-key" => format!("key-{}", rng.string(HEX, 32)),
        "mailgun-api-key" => {
            let v = format!(
                "{}-{}-{}",
                rng.string(HEX, 32),
                rng.string(HEX, 8),
                rng.string(HEX, 8)
            );
            return named("MAILGUN_API_KEY", v);
        }
        "atlassian-api-token" => format!(
            "{}3xFfGF0{}={}",
            pick(rng, &["ATATT", "ATCTT"]),
            rng.string(URLSAFE, 171),
            rng.string(HEX_UPPER, 8)
        ),
        "atlassian-legacy-api-token" => return named("JIRA_API_TOKEN", rng.string(ALNUM, 24)),
        // ---- identity, platforms, infrastructure
        "okta-api-token" => {
            return named("OKTA_API_TOKEN", format!("00{}", rng.string(URLSAFE, 40)));
        }
        "okta-ssws-token" => {
            let k = format!("00{}", rng.string(URLSAFE, 40));
            return Some((k.clone(), format!("Authorization: SSWS {k}")));
        }
        "heroku-api-key" => format!("HRKU-AA{}", rng.string(URLSAFE, 58)),
        "heroku-legacy-api-key" => return named("HEROKU_API_KEY", uuid(rng)),
        "postman-api-key" => format!("PMAK-{}-{}", rng.string(HEX, 24), rng.string(HEX, 34)),
        "terraform-cloud-token" => format!(
            "{}.atlasv1.{}",
            rng.string(ALNUM, 14),
            rng.string(ALNUM, 67)
        ),
        "doppler-token" => {
            let kind = pick(rng, &["pt", "ct", "sa", "st", "st.prd"]);
            format!("dp.{kind}.{}", rng.string(ALNUM, 43))
        }
        "1password-service-account-token" => {
            format!("ops_{}", URL_SAFE_NO_PAD.encode(onepassword_account(rng)))
        }
        "1password-secret-key" => {
            let mut k = format!("A3-{}", rng.string(ONEPASSWORD, 6));
            for n in [6, 5, 5, 5, 5] {
                k.push('-');
                k.push_str(&rng.string(ONEPASSWORD, n));
            }
            k
        }
        "cloudflare-api-token" => format!(
            "{}{}{}",
            pick(rng, &["cfut_", "cfat_"]),
            rng.string(ALNUM, 40),
            rng.string(HEX, 8)
        ),
        "cloudflare-global-api-key" => {
            format!("cfk_{}{}", rng.string(ALNUM, 40), rng.string(HEX, 8))
        }
        "cloudflare-legacy-api-token" => {
            return named("CLOUDFLARE_API_TOKEN", rng.string(URLSAFE, 40));
        }
        "cloudflare-legacy-global-api-key" => {
            return named("CLOUDFLARE_API_KEY", rng.string(HEX, 37));
        }
        "cloudflare-origin-ca-key" => {
            format!("v1.0-{}-{}", rng.string(HEX, 24), rng.string(HEX, 146))
        }
        "fastly-api-token" => return named("FASTLY_API_TOKEN", rng.string(URLSAFE, 32)),
        // ---- observability
        "newrelic-user-api-key" => format!(
            "{}{}",
            pick(rng, &["NRAK-", "NRAA-"]),
            rng.string(UPPER_ALNUM, 27)
        ),
        "newrelic-insights-key" => format!(
            "{}{}",
            pick(rng, &["NRII-", "NRIQ-"]),
            rng.string(URLSAFE, 32)
        ),
        "newrelic-license-key" => format!("{}FFFFNRAL", rng.string(HEX, 32)),
        "grafana-cloud-token" => {
            let json = format!(
                r#"{{"o":"{}","n":"stack-{}-hm-read-{}","k":"{}","m":{{"r":"prod-us-east-0"}}}}"#,
                rng.string(DIGITS, 7),
                rng.string(DIGITS, 6),
                rng.string(LOWER_ALNUM, 6),
                rng.string(ALNUM, 24)
            );
            format!("glc_{}", STANDARD.encode(json))
        }
        "dynatrace-api-token" => format!(
            "dt0c01.{}.{}",
            rng.string(UPPER_ALNUM, 24),
            rng.string(UPPER_ALNUM, 64)
        ),
        // ---- developer platforms
        "netlify-access-token" => format!("nfp_{}", rng.string(ALNUM, 36)),
        "netlify-legacy-access-token" => {
            return named("NETLIFY_AUTH_TOKEN", rng.string(URLSAFE, 43));
        }
        "vercel-token" => format!(
            "{}{}",
            pick(rng, &["vcp_", "vci_", "vca_", "vcr_", "vck_"]),
            rng.string(ALNUM, 56)
        ),
        "vercel-legacy-token" => return named("VERCEL_TOKEN", rng.string(ALNUM, 24)),
        "supabase-secret-key" => format!(
            "sb_secret_{}_{}",
            rng.string(URLSAFE, 22),
            rng.string(URLSAFE, 8)
        ),
        "supabase-access-token" => format!("sbp_{}", rng.string(HEX, 40)),
        "firebase-fcm-server-key" => format!(
            "AAAA{}:APA91b{}",
            rng.string(URLSAFE, 7),
            rng.string(URLSAFE, 134)
        ),
        "azure-openai-key" => format!(
            "{}JQQJ99{}{}{}AAA{}ACOG{}",
            rng.string(ALNUM, 52),
            rng.string(ALNUM, 1),
            rng.string(b"ABCDEFGHIJKL", 1),
            rng.string(ALNUM, 12),
            pick(rng, &["A", "B", "E"]),
            rng.string(ALNUM, 4)
        ),
        "azure-openai-legacy-key" => return named("AZURE_OPENAI_API_KEY", rng.string(HEX, 32)),
        "azure-api-key-header" => {
            let k = rng.string(HEX, 32);
            return Some((k.clone(), format!("api-key: {k}")));
        }
        // ---- model providers
        "aws-bedrock-api-key" => {
            let inner = format!(
                "BedrockAPIKey-{}-at-{}:{}",
                rng.string(LOWER_ALNUM, 4),
                rng.string(DIGITS, 12),
                STANDARD.encode(bytes(rng, 45))
            );
            format!("ABSK{}", STANDARD.encode(inner))
        }
        "aws-bedrock-short-term-api-key" => {
            format!(
                "bedrock-api-key-{}",
                STANDARD.encode(bedrock_presigned(rng))
            )
        }
        "elevenlabs-api-key" => {
            return named("ELEVENLABS_API_KEY", format!("sk_{}", rng.string(HEX, 48)));
        }
        "elevenlabs-xi-api-key" => {
            let k = format!("sk_{}", rng.string(HEX, 48));
            return Some((k.clone(), format!("xi-api-key: {k}")));
        }
        "deepgram-api-key" => return named("DEEPGRAM_API_KEY", rng.string(HEX, 40)),
        "together-api-key" => format!("tgp_v1_{}", rng.string(URLSAFE, 43)),
        "together-legacy-api-key" => return named("TOGETHER_API_KEY", rng.string(HEX, 64)),
        "fireworks-api-key" => format!("fw_{}", rng.string(BASE58, 24)),
        "deepseek-api-key" => {
            return named("DEEPSEEK_API_KEY", format!("sk-{}", rng.string(HEX, 32)));
        }
        "cerebras-api-key" => format!("csk-{}", rng.string(LOWER_ALNUM, 48)),
        "langfuse-secret-key" => format!("sk-lf-{}", uuid(rng)),
        // ---- data, productivity, payments
        "databricks-token" => format!("dapi{}", rng.string(HEX, 32)),
        "notion-api-token" => format!("ntn_{}{}", rng.string(DIGITS, 11), rng.string(ALNUM, 35)),
        "notion-legacy-token" => format!("secret_{}", rng.string(ALNUM, 43)),
        "mapbox-secret-token" => format!("sk.{}.{}", mapbox_payload(rng), rng.string(URLSAFE, 22)),
        "square-access-token" => format!("EAAA{}", rng.string(URLSAFE, 60)),
        "square-oauth-secret" => format!("sq0csp-{}", rng.string(URLSAFE, 43)),
        "mailchimp-api-key" => format!("{}-us{}", rng.string(HEX, 32), 1 + rng.below(21)),
        "brevo-api-key" => format!(
            "{}{}-{}",
            pick(rng, &["xkeysib-", "xsmtpsib-"]),
            rng.string(HEX, 64),
            rng.string(ALNUM, 16)
        ),
        "airtable-pat" => {
            let k = format!("pat{}.{}", rng.string(ALNUM, 14), rng.string(HEX, 64));
            return named("AIRTABLE_API_KEY", k);
        }
        "figma-pat" => format!("figd_{}", rng.string(URLSAFE, 40)),
        // ---- databases, deploy, packages, CI
        "planetscale-token" => format!(
            "{}{}",
            pick(rng, &["pscale_tkn_", "pscale_pw_", "pscale_oauth_"]),
            rng.string(URLSAFE, 43)
        ),
        "flyio-token" => {
            let k = format!(
                "fm2_{},fm2_{}",
                STANDARD.encode(bytes(rng, 120)),
                STANDARD.encode(bytes(rng, 80))
            );
            return Some((k.clone(), format!("FlyV1 {k}")));
        }
        "pulumi-access-token" => format!("pul-{}", rng.string(HEX, 40)),
        "rubygems-api-key" => format!("rubygems_{}", rng.string(HEX, 48)),
        "sourcegraph-access-token" => {
            format!("sgp_{}_{}", rng.string(HEX, 16), rng.string(HEX, 40))
        }
        "buildkite-api-token" => format!("bkua_{}", rng.string(HEX, 40)),
        "circleci-token" => format!(
            "{}{}_{}",
            pick(rng, &["CCIPAT_", "CCIPRJ_"]),
            rng.string(ALNUM, 22),
            rng.string(HEX, 40)
        ),
        "hashicorp-vault-batch-token" => format!("hvb.{}", rng.string(URLSAFE, 180)),
        // ---- public by design
        "supabase-publishable-key" => format!(
            "sb_publishable_{}_{}",
            rng.string(URLSAFE, 22),
            rng.string(URLSAFE, 8)
        ),
        "newrelic-browser-key" => format!("NRJS-{}", rng.string(HEX, 19)),
        "newrelic-mobile-app-token" => format!("AA{}-NRMA", rng.string(HEX, 40)),
        "mapbox-public-token" => format!("pk.{}.{}", mapbox_payload(rng), rng.string(URLSAFE, 22)),
        "square-application-id" => format!("sq0idp-{}", rng.string(URLSAFE, 22)),
        "langfuse-public-key" => format!("pk-lf-{}", uuid(rng)),
        "clerk-publishable-key" => {
            let host = format!(
                "{}-{}-{}.clerk.accounts.dev$",
                rng.string(b"abcdefghijklmnopqrstuvwxyz", 6),
                rng.string(b"abcdefghijklmnopqrstuvwxyz", 5),
                rng.string(DIGITS, 2)
            );
            format!("pk_test_{}", STANDARD.encode(host))
        }
        "posthog-project-api-key" => format!("phc_{}", rng.string(ALNUM, 43)),
        // ---- third round
        "azure-devops-pat" => format!(
            "{}JQQJ99{}AZDO{}",
            rng.string(ALNUM, 52),
            rng.string(ALNUM, 18),
            rng.string(ALNUM, 4)
        ),
        "alibaba-access-key-id" => format!("LTAI5t{}", rng.string(ALNUM, 16)),
        "nvidia-api-key" => format!("nvapi-{}", rng.string(URLSAFE, 64)),
        "nuget-api-key" => format!("oy2{}", rng.string(BASE32_LOWER, 43)),
        "jfrog-api-key" => match rng.below(2) {
            0 => format!("AKCp8{}", rng.string(ALNUM, 68)),
            _ => format!("cmVmdGtuOjAxOj{}", rng.string(ALNUM, 50)),
        },
        "sonarqube-token" => format!(
            "{}{}",
            pick(rng, &["squ_", "sqp_", "sqa_"]),
            rng.string(HEX, 40)
        ),
        "tailscale-key" => format!(
            "tskey-{}-k{}CNTRL-{}",
            pick(rng, &["api", "auth", "client"]),
            rng.string(ALNUM, 11),
            rng.string(ALNUM, 33)
        ),
        "mongodb-atlas-service-account-secret" => format!("mdb_sa_sk_{}", rng.string(URLSAFE, 40)),
        "crates-io-api-token" => format!("cio{}", rng.string(ALNUM, 32)),
        "posthog-personal-api-key" => format!("phx_{}", rng.string(ALNUM, 43)),
        "prefect-api-key" => format!("pnu_{}", rng.string(ALNUM, 36)),
        "contentful-pat" => format!("CFPAT-{}", rng.string(URLSAFE, 43)),
        "e2b-api-key" => format!("e2b_{}", rng.string(HEX, 40)),
        "jina-api-key" => format!("jina_{}", rng.string(ALNUM, 60)),
        "browserbase-api-key" => format!("bb_live_{}", rng.string(URLSAFE, 27)),
        "readme-api-key" => format!("rdme_{}", rng.string(LOWER_ALNUM, 70)),
        "typeform-token" => format!("tfp_{}_{}", rng.string(ALNUM, 44), rng.string(ALNUM, 14)),
        "easypost-api-key" => format!("{}{}", pick(rng, &["EZAK", "EZTK"]), rng.string(ALNUM, 54)),
        "adafruit-io-key" => format!("aio_{}", rng.string(ALNUM, 28)),
        "grafana-api-key" => {
            let json = format!(
                "{{\"k\":\"{}\",\"n\":\"ci-{}\",\"id\":{}}}",
                rng.string(ALNUM, 32),
                rng.string(LOWER_ALNUM, 6),
                1 + rng.below(999)
            );
            STANDARD.encode(json).trim_end_matches('=').to_string()
        }
        "slack-config-token" => match rng.below(2) {
            0 => format!("xoxe.xoxp-1-{}", rng.string(ALNUM, 146)),
            _ => format!("xoxe-1-{}", rng.string(ALNUM, 146)),
        },
        "microsoft-teams-webhook" => format!(
            "https://{}.webhook.office.com/webhookb2/{}@{}/IncomingWebhook/{}/{}",
            pick(rng, &["contoso", "acme-corp", "fabrikam"]),
            uuid(rng),
            uuid(rng),
            rng.string(HEX, 32),
            uuid(rng)
        ),
        "zapier-webhook-url" => {
            let url = format!(
                "https://hooks.zapier.com/hooks/catch/{}/{}",
                1_000_000 + rng.below(9_000_000),
                rng.string(LOWER_ALNUM, 6)
            );
            // Written with the trailing slash Zapier shows; the credential is without it.
            return Some((url.clone(), format!("{url}/")));
        }
        // ---- fourth round
        "facebook-access-token" => {
            let n = 150 + rng.below(80);
            format!(
                "EAA{}{}",
                pick(rng, &["B", "C", "G", "J", "M"]),
                rng.string(ALNUM, n)
            )
        }
        "salesforce-access-token" => {
            // Ends alphanumeric: a trailing `.` is sentence punctuation to the generic rule.
            let k = format!(
                "00D{}!{}{}",
                rng.string(ALNUM, 12),
                rng.string(SALESFORCE, 95),
                rng.string(ALNUM, 1)
            );
            return Some((k.clone(), format!("Authorization: Bearer {k}")));
        }
        "azure-devops-legacy-pat" => {
            return named("AZURE_DEVOPS_EXT_PAT", rng.string(BASE32_LOWER, 52));
        }
        "flutterwave-secret-key" => match rng.below(3) {
            0 => format!("FLWSECK_TEST-{}-X", rng.string(HEX, 32)),
            1 => format!("FLWSECK-{}-X", rng.string(HEX, 32)),
            _ => format!("FLWSECK_TEST{}", rng.string(HEX, 12)),
        },
        "openshift-user-token" => format!("sha256~{}", rng.string(URLSAFE, 43)),
        "adobe-client-secret" => format!("p8e-{}", rng.string(ALNUM, 32)),
        _ => return None,
    };
    Some((s.clone(), s))
}

/// A value as a `NAME=value` env line.
fn named(name: &str, value: String) -> Option<(String, String)> {
    let text = format!("{name}={value}");
    Some((value, text))
}

fn pick<'a>(rng: &mut Rng, options: &[&'a str]) -> &'a str {
    options[rng.below(options.len())]
}

fn bytes(rng: &mut Rng, n: usize) -> Vec<u8> {
    (0..n).map(|_| rng.next_u64() as u8).collect()
}

fn uuid(rng: &mut Rng) -> String {
    format!(
        "{}-{}-{}-{}-{}",
        rng.string(HEX, 8),
        rng.string(HEX, 4),
        rng.string(HEX, 4),
        rng.string(HEX, 4),
        rng.string(HEX, 12)
    )
}

/// The JSON a 1Password service account token encodes (made-up values in its shape).
fn onepassword_account(rng: &mut Rng) -> String {
    let mut secret_key = format!("A3-{}", rng.string(ONEPASSWORD, 6));
    for n in [6, 5, 5, 5, 5] {
        secret_key.push('-');
        secret_key.push_str(&rng.string(ONEPASSWORD, n));
    }
    format!(
        concat!(
            r#"{{"signInAddress":"my.1password.com","userAuth":{{"method":"SRPg-4096","#,
            r#""alg":"PBES2g-HS256","iterations":650000,"salt":"{}"}},"#,
            r#""email":"{}@1passwordserviceaccounts.com","srpX":"{}","#,
            r#""muk":{{"alg":"A256GCM","ext":true,"k":"{}","key_ops":["encrypt","decrypt"],"#,
            r#""kty":"oct","kid":"mp"}},"secretKey":"{}","#,
            r#""throttleSecret":{{"seed":"{}","uuid":"{}"}},"deviceUuid":"{}"}}"#
        ),
        rng.string(URLSAFE, 22),
        rng.string(LOWER_ALNUM, 13),
        rng.string(HEX, 64),
        rng.string(URLSAFE, 43),
        secret_key,
        rng.string(HEX, 64),
        rng.string(UPPER_ALNUM, 26),
        rng.string(LOWER_ALNUM, 26)
    )
}

/// A SigV4-presigned bedrock.amazonaws.com URL, as the Bedrock token generators build it
/// before base64 (the https:// dropped, `&Version=1` appended).
fn bedrock_presigned(rng: &mut Rng) -> String {
    format!(
        concat!(
            "bedrock.amazonaws.com/?Action=CallWithBearerToken",
            "&X-Amz-Algorithm=AWS4-HMAC-SHA256",
            "&X-Amz-Credential=ASIA{}%2F20260115%2Fus-east-1%2Fbedrock%2Faws4_request",
            "&X-Amz-Date=20260115T101500Z&X-Amz-Expires=43200",
            "&X-Amz-Security-Token={}",
            "&X-Amz-Signature={}&X-Amz-SignedHeaders=host&Version=1"
        ),
        rng.string(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", 16),
        rng.string(ALNUM, 400),
        rng.string(HEX, 64)
    )
}

/// The base64url JSON part of a Mapbox token.
fn mapbox_payload(rng: &mut Rng) -> String {
    URL_SAFE_NO_PAD.encode(format!(
        r#"{{"u":"{}","a":"{}"}}"#,
        rng.string(LOWER_ALNUM, 10),
        rng.string(LOWER_ALNUM, 25)
    ))
}

#[cfg(test)]
mod tests {
    use super::super::{Engine, Finding, RuleSet, RuleSpec};
    use super::*;

    fn saas_rules() -> Vec<RuleSpec> {
        RuleSet::parse(include_str!("rules_saas.toml"), "rules_saas.toml").unwrap()
    }

    /// How a sample's text carries its secret.
    enum Kind<'a> {
        /// The text is the token itself.
        Token,
        /// `NAME=value`.
        Named(&'a str),
        /// A header line or a token inside a larger credential string.
        Line,
    }

    fn kind<'a>(secret: &str, text: &'a str) -> Kind<'a> {
        if text == secret {
            return Kind::Token;
        }
        match text.strip_suffix(secret).and_then(|t| t.strip_suffix('=')) {
            Some(name)
                if name
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_') =>
            {
                Kind::Named(name)
            }
            _ => Kind::Line,
        }
    }

    /// The shapes a credential leaks in: env line, JSON string, YAML `key: value`, HTTP
    /// header, URL query.
    fn contexts(secret: &str, text: &str) -> Vec<String> {
        match kind(secret, text) {
            Kind::Token => vec![
                format!("APP_CREDENTIAL={secret}\n"),
                format!("{{\"credential\": \"{secret}\", \"retries\": 3}}"),
                format!("service:\n  credential: {secret}\n  retries: 3\n"),
                format!("GET /v1/items HTTP/1.1\r\nAuthorization: Bearer {secret}\r\n\r\n"),
                format!("https://api.example.org/v1/items?token={secret}&page=2"),
            ],
            Kind::Named(name) => {
                let lower = name.to_ascii_lowercase();
                let header = name.replace('_', "-");
                vec![
                    format!("export {name}={secret}\n"),
                    format!("{{\"{name}\": \"{secret}\", \"retries\": 3}}"),
                    format!("service:\n  {lower}: {secret}\n  retries: 3\n"),
                    format!("POST /hook HTTP/1.1\r\n{header}: {secret}\r\n\r\n"),
                    format!("https://hooks.example.org/cb?{lower}={secret}&page=2"),
                ]
            }
            Kind::Line => {
                let mut v = vec![
                    format!("{text}\n"),
                    format!("curl -s -H '{text}' https://api.example.org/v1/items"),
                    format!("  {text}\n  retries: 3\n"),
                    format!("> {text}\r\n> Accept: */*\r\n"),
                ];
                if let Some((h, value)) = text.split_once(": ") {
                    v.push(format!(
                        "headers = {{\"{h}\": \"{value}\", \"retries\": 3}}"
                    ));
                    v.push(format!("requests.get(url, headers={{'{h}': '{value}'}})"));
                }
                v
            }
        }
    }

    fn show(found: &[Finding]) -> Vec<(&str, usize, usize)> {
        found
            .iter()
            .map(|f| (f.rule.as_str(), f.start, f.end))
            .collect()
    }

    #[test]
    fn every_saas_rule_finds_its_samples_with_its_id_and_exact_span() {
        let engine = Engine::builtin();
        let mut rng = Rng::seeded(0x5aa5);
        let mut failures = Vec::new();
        for spec in saas_rules().iter().filter(|r| !r.public) {
            let id = spec.id.as_str();
            for round in 0..10 {
                let (secret, text) =
                    sample(id, &mut rng).unwrap_or_else(|| panic!("{id}: no sample generator"));
                assert!(
                    text.contains(&secret),
                    "{id}: text does not hold the secret"
                );
                for ctx in contexts(&secret, &text) {
                    let found = engine.scan(ctx.as_bytes());
                    let start = ctx.find(&secret).unwrap();
                    let end = start + secret.len();
                    let exact = found
                        .iter()
                        .any(|f| f.rule == id && f.start == start && f.end == end);
                    let other = found
                        .iter()
                        .any(|f| f.start < end && start < f.end && f.rule != id);
                    if !exact || other {
                        failures.push(format!(
                            "{id} round {round}: want {start}..{end} in {:?}; found {:?}",
                            super::super::redact(ctx.as_bytes()),
                            show(&found)
                        ));
                    }
                }
            }
        }
        assert!(
            failures.is_empty(),
            "{} failures:\n{}",
            failures.len(),
            failures[..failures.len().min(40)].join("\n")
        );
    }

    /// Per rule: is the token's length fixed (so one character less or more is no token),
    /// and a character outside its alphabet at the middle of the value.
    fn near(id: &str) -> (bool, char) {
        match id {
            // Fixed length, lowercase-hex bodies.
            "twilio-auth-token"
            | "shopify-access-token"
            | "shopify-shared-secret"
            | "mailgun-private-api-key"
            | "mailgun-api-key"
            | "heroku-legacy-api-key"
            | "postman-api-key"
            | "cloudflare-legacy-global-api-key"
            | "cloudflare-origin-ca-key"
            | "newrelic-license-key"
            | "supabase-access-token"
            | "azure-openai-legacy-key"
            | "azure-api-key-header"
            | "elevenlabs-api-key"
            | "elevenlabs-xi-api-key"
            | "deepgram-api-key"
            | "together-legacy-api-key"
            | "deepseek-api-key"
            | "langfuse-secret-key"
            | "databricks-token"
            | "brevo-api-key"
            | "airtable-pat"
            | "pulumi-access-token"
            | "rubygems-api-key"
            | "sourcegraph-access-token"
            | "buildkite-api-token"
            | "circleci-token" => (true, 'g'),
            // Fixed length, alphanumeric bodies: `-` is neither in them nor a boundary.
            "twilio-api-key-secret"
            | "atlassian-legacy-api-token"
            | "cloudflare-api-token"
            | "cloudflare-global-api-key"
            | "netlify-access-token"
            | "vercel-token"
            | "vercel-legacy-token"
            | "azure-openai-key"
            | "notion-api-token"
            | "notion-legacy-token" => (true, '-'),
            // Fixed length, base64url bodies.
            "okta-api-token"
            | "okta-ssws-token"
            | "heroku-api-key"
            | "cloudflare-legacy-api-token"
            | "fastly-api-token"
            | "supabase-secret-key"
            | "firebase-fcm-server-key"
            | "together-api-key"
            | "mapbox-secret-token"
            | "square-access-token"
            | "square-oauth-secret"
            | "figma-pat" => (true, '+'),
            // Uppercase-only and lowercase-only bodies.
            "newrelic-user-api-key" | "dynatrace-api-token" | "1password-secret-key" => (true, 'a'),
            "cerebras-api-key" => (true, 'A'),
            // The checksum after `=` fixes the end, whatever the body's length.
            "atlassian-api-token" => (true, '.'),
            // Variable length, with a character outside the body's alphabet.
            "fireworks-api-key" => (false, '0'),
            "terraform-cloud-token" => (false, '+'),
            // -us9 and -us97 are both data centers in shape.
            "mailchimp-api-key" => (false, 'g'),
            // Variable length: only a glued left side and a wrong-case prefix are checked.
            "doppler-token"
            | "1password-service-account-token"
            | "newrelic-insights-key"
            | "grafana-cloud-token"
            | "netlify-legacy-access-token"
            | "aws-bedrock-api-key"
            | "aws-bedrock-short-term-api-key"
            | "planetscale-token"
            | "flyio-token"
            | "hashicorp-vault-batch-token" => (false, '#'),
            // Third round.
            "sonarqube-token" | "e2b-api-key" => (true, 'g'),
            "azure-devops-pat"
            | "crates-io-api-token"
            | "posthog-personal-api-key"
            | "prefect-api-key"
            | "easypost-api-key"
            | "adafruit-io-key" => (true, '-'),
            "nvidia-api-key" | "mongodb-atlas-service-account-secret" | "contentful-pat" => {
                (true, '+')
            }
            "nuget-api-key" | "readme-api-key" => (true, 'A'),
            "microsoft-teams-webhook" => (true, 'g'),
            "alibaba-access-key-id" | "jfrog-api-key" | "jina-api-key" => (false, '-'),
            "browserbase-api-key" | "typeform-token" | "slack-config-token" => (false, '+'),
            "tailscale-key" | "grafana-api-key" | "zapier-webhook-url" => (false, '#'),
            // Fourth round.
            "salesforce-access-token" | "adobe-client-secret" => (true, '-'),
            "azure-devops-legacy-pat" => (true, 'A'),
            "flutterwave-secret-key" => (true, 'g'),
            "openshift-user-token" => (true, '+'),
            "facebook-access-token" => (false, '+'),
            _ => panic!("{id}: add it to near()"),
        }
    }

    /// `text` with `secret` replaced by `to`.
    fn with(text: &str, secret: &str, to: &str) -> String {
        text.replacen(secret, to, 1)
    }

    #[test]
    fn near_misses_are_not_reported() {
        let engine = Engine::builtin();
        let mut rng = Rng::seeded(0x0a11);
        for spec in saas_rules().iter().filter(|r| !r.public) {
            let id = spec.id.as_str();
            let (fixed, bad) = near(id);
            for _ in 0..5 {
                let (secret, text) = sample(id, &mut rng).unwrap();
                let mut misses = Vec::new();
                // Glued to a token character on the left (a longer value, for a named
                // value of variable length, so no near miss there).
                if fixed || !matches!(kind(&secret, &text), Kind::Named(_)) {
                    misses.push(("glued left", with(&text, &secret, &format!("a{secret}"))));
                }
                // The literal prefix in the wrong case (the keyword still matches); not for
                // tokens that start with random characters.
                let first = secret.chars().next().unwrap();
                if first.is_ascii_alphabetic()
                    && matches!(kind(&secret, &text), Kind::Token)
                    && !matches!(
                        id,
                        "azure-openai-key" | "terraform-cloud-token" | "azure-devops-pat"
                    )
                {
                    let flipped = if first.is_ascii_uppercase() {
                        first.to_ascii_lowercase()
                    } else {
                        first.to_ascii_uppercase()
                    };
                    misses.push((
                        "prefix case",
                        with(&text, &secret, &format!("{flipped}{}", &secret[1..])),
                    ));
                }
                if fixed {
                    let mid = secret.len() / 2;
                    misses.push((
                        "one short",
                        with(&text, &secret, &secret[..secret.len() - 1]),
                    ));
                    misses.push(("glued right", with(&text, &secret, &format!("{secret}7"))));
                    misses.push((
                        "wrong alphabet",
                        with(
                            &text,
                            &secret,
                            &format!("{}{bad}{}", &secret[..mid], &secret[mid + 1..]),
                        ),
                    ));
                } else if bad != '#' {
                    let mid = secret.len() / 2;
                    misses.push((
                        "wrong alphabet",
                        with(
                            &text,
                            &secret,
                            &format!("{}{bad}{}", &secret[..mid], &secret[mid + 1..]),
                        ),
                    ));
                }
                for (what, miss) in misses {
                    for ctx in [
                        format!("{miss}\n"),
                        format!("{{\"credential\": \"{miss}\"}}"),
                    ] {
                        let found = engine.scan(ctx.as_bytes());
                        assert!(
                            !found.iter().any(|f| f.rule == id),
                            "{id}: {what} reported in {:?}: {:?}",
                            super::super::redact(ctx.as_bytes()),
                            show(&found)
                        );
                    }
                }
            }
        }
    }

    /// Needs the engine's `public` handling: a public rule's match is never reported and
    /// keeps the generic rules (`NAME=value`, `Bearer …`) off those bytes.
    #[test]
    fn public_values_produce_no_finding() {
        let engine = Engine::builtin();
        let mut rng = Rng::seeded(0x9b1c);
        let public: Vec<RuleSpec> = saas_rules().into_iter().filter(|r| r.public).collect();
        assert!(public.len() >= 7);
        for spec in &public {
            let id = spec.id.as_str();
            for _ in 0..10 {
                let (secret, _) =
                    sample(id, &mut rng).unwrap_or_else(|| panic!("{id}: no sample generator"));
                for ctx in [
                    format!("NEXT_PUBLIC_ANALYTICS_KEY={secret}\n"),
                    format!("{{\"publishableKey\": \"{secret}\", \"retries\": 3}}"),
                    format!("client:\n  public_key: {secret}\n"),
                    format!("Authorization: Bearer {secret}\r\n"),
                    format!("https://cdn.example.org/sdk.js?key={secret}&v=2"),
                ] {
                    let found = engine.scan(ctx.as_bytes());
                    assert!(
                        found.is_empty(),
                        "{id}: public value reported in {:?}: {:?}",
                        super::super::redact(ctx.as_bytes()),
                        show(&found)
                    );
                }
            }
        }
    }

    #[test]
    fn code_naming_the_providers_is_quiet() {
        let engine = Engine::builtin();
        let mut rng = Rng::from_time();
        let uuid = uuid(&mut rng);
        let negatives = [
            "let client = twilio::Client::new(&account_sid, &auth_token);".to_string(),
            "TWILIO_ACCOUNT_SID=AC".to_string() + &rng.string(HEX, 32),
            "const OKTA_DOMAIN = \"dev-123456.okta.com\";".into(),
            "jira_url: https://acme.atlassian.net/browse/OPS-1234".into(),
            format!("HEROKU_APP_ID={uuid}"),
            "struct fw_cfg_file { __be32 size; __be16 select; char name[56]; };".into(),
            "static int fw_request_firmware(const char *fw_name, struct fw_priv *fw_priv);".into(),
            "EVP_MD *md = EVP_MD_fetch(NULL, \"SHA3-256\", NULL); /* sha3-256 */".into(),
            "let key = \"key-value\"; map.insert(key, secret_len);".into(),
            "deepseek_model: deepseek-chat  # DEEPSEEK_API_KEY from the environment".into(),
            "MAILGUN_DOMAIN=mg.example.org".into(),
            "CLOUDFLARE_ZONE_ID=".to_string() + &rng.string(HEX, 32),
            "vercel_project_id: prj_".to_string() + &rng.string(ALNUM, 28),
            format!("aws-cli@sha256:eaaa{}", rng.string(HEX, 60)),
            "api-key: <your-azure-openai-key>".into(),
            "xi-api-key: YOUR_ELEVENLABS_KEY".into(),
            "AIRTABLE_BASE_ID=app".to_string() + &rng.string(ALNUM, 14),
        ];
        for n in &negatives {
            let found = engine.scan(n.as_bytes());
            assert!(
                found.is_empty(),
                "false positive {:?} in {n:?}",
                show(&found)
            );
        }
    }

    #[test]
    fn saas_rules_name_their_hosts_and_use_distinct_ids() {
        let rules = saas_rules();
        let core = RuleSet::parse(include_str!("rules.toml"), "rules.toml").unwrap();
        for r in &rules {
            assert!(
                !core.iter().any(|c| c.id == r.id),
                "{}: id also in rules.toml",
                r.id
            );
            assert!(
                r.keywords.iter().all(|k| k.len() >= 3),
                "{}: keyword under 3 bytes",
                r.id
            );
            // Vault is self-hosted: no fixed host to name.
            if !r.public && r.id != "hashicorp-vault-batch-token" {
                assert!(!r.hosts.is_empty(), "{}: no hosts", r.id);
            }
        }
    }
}
