//! Round-four shapes: values passed with their name as call arguments, commands continued
//! over lines, and the places the fourth round's tokens leak in (a Graph API URL, a
//! Salesforce Bearer header, `vault login`). Every secret is generated here.
use base64::Engine as _;

use super::samples::{generic_ok, pem, sample, Rng, ALNUM, HEX};
use super::tests_shapes::{assert_found, assert_quiet};
use super::*;

/// A value the generic rule's own checks accept under `name` (digits, mixed case).
fn value(rng: &mut Rng, name: &str) -> String {
    generic_ok(rng, name, |r| {
        format!(
            "{}{}{}",
            r.string(ALNUM, 12),
            r.below(90) + 10,
            r.string(ALNUM, 10)
        )
    })
}

#[test]
fn defaults_passed_with_a_credentials_name_are_found() {
    let engine = Engine::builtin();
    let mut rng = Rng::from_time();
    for _ in 0..20 {
        let v = value(&mut rng, "API_KEY");
        for hay in [
            format!("api_key = os.getenv(\"API_KEY\", \"{v}\")\n"),
            format!("    token := utils.GetEnvOrDefault(\"api_token\", \"{v}\")\n"),
            format!("        'key' => env('TWILIO_API_KEY', '{v}'),\n"),
            format!("SECRET_KEY = os.environ.setdefault('DJANGO_SECRET_KEY','{v}')\n"),
            format!("client = Client(api_key=os.environ.get(\"SERVICE_TOKEN\", '{v}'))\n"),
            format!("const apiKey = process.env.OPENAI_API_KEY || \"{v}\";\n"),
            format!("  apiKey: process.env.API_KEY ?? '{v}',\n"),
        ] {
            assert_found(&engine, &hay, &v, "generic-secret");
        }
    }
    for quiet in [
        "api_key = os.getenv(\"API_KEY\", \"\")",
        "api_key = os.getenv(\"API_KEY\", \"${OPENAI_API_KEY}\")",
        "msg = t(\"auth.token_expired\", \"Your session has expired\")",
        "NAMES = [\"secret_key\", \"access_token\", \"refresh_token\"]",
        "KEYS = ['PKCS8_PRIV_KEY_INFO', 'PBE2PARAM_st', 'EVP_PKEY_CTX']",
        "    .header(\"sec-websocket-key\", \"dGhlIHNhbXBsZSBub25jZQ==\")",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "const name = opts.key || \"default_cache_key\";",
        "debug = getattr(settings, \"SECRET_KEY_FALLBACKS\", \"development\")",
        "api_key=config.get(\"api_key\", 12)",
    ] {
        assert_quiet(&engine, quiet);
    }
}

#[test]
fn curl_credentials_on_continued_lines_and_in_quoted_halves() {
    let engine = Engine::builtin();
    // Fixed seed: a random 14-letter password falls under the entropy bar about 1 run in 30.
    let mut rng = Rng::seeded(0xc0de);
    for _ in 0..20 {
        let pw = rng.string(ALNUM, 14);
        let user = rng.string(b"abcdefghijklmnopqrstuvwxyz0123456789", 15);
        for hay in [
            format!("sh-5.0$ curl -k -X POST https://cache:11222/rest/v2/caches/default/hello \\\n  -H 'Content-type: text/plain' \\\n  -d 'world' \\\n  -u developer:{pw}\n"),
            format!("$ curl https://api.example.org/oauth2/token \\\r\n  --user {user}:{pw} --data grant_type=authorization_code\r\n"),
            format!("curl --user kevin:'{pw}' -iX PATCH -H \"Content-Type: application/json\"\n"),
            format!("curl -X POST --user \"{user}\":\"{pw}\" https://gateway.example.org/v3\n"),
            format!("curl -u {user}:\"{pw}\" https://ci.internal/api\n"),
        ] {
            assert_found(&engine, &hay, &pw, "curl-user-password");
        }
        let token = rng.string(ALNUM, 40);
        let hay = format!(
            "curl -X POST https://api.example.org/v1/jobs \\\n  -H \"Authorization: Bearer {token}\" \\\n  -d @job.json\n"
        );
        assert_found(&engine, &hay, &token, "bearer-token");
        // A break with no `\` before it ends the command: `-u` on the next line is another's.
        let other = format!("curl -fsS https://example.org/health\nrsync -u {user}:{pw} /srv/\n");
        assert!(
            !engine
                .scan(other.as_bytes())
                .iter()
                .any(|f| f.rule == "curl-user-password"),
            "{:?}",
            redact(other.as_bytes())
        );
    }
}

#[test]
fn vault_legacy_tokens_under_a_vault_name_or_login() {
    let engine = Engine::builtin();
    let mut rng = Rng::from_time();
    for _ in 0..20 {
        let t = format!("s.{}", rng.string(ALNUM, 24));
        for hay in [
            format!("VAULT_TOKEN={t}\n"),
            format!("export VAULT_TOKEN=\"{t}\"\n"),
            format!("GET /v1/secret/data/app HTTP/1.1\r\nX-Vault-Token: {t}\r\n"),
            format!("{{\"vault_token\": \"{t}\"}}"),
            format!("VAULT_DEV_ROOT_TOKEN_ID: {t}\n"),
            format!("$ vault login {t}\n"),
            format!("vault login -method=token token={t}\n"),
        ] {
            assert_found(&engine, &hay, &t, "hashicorp-vault-legacy-token");
        }
        // `s.` is member access: without a Vault name it is not taken for a token.
        assert!(!engine
            .scan(format!("token: {t}\n").as_bytes())
            .iter()
            .any(|f| f.rule == "hashicorp-vault-legacy-token"));
    }
    for quiet in [
        "vault_token_ttl = s.AcceptanceTimeoutSeconds",
        "vault_token = s.makeKubeConfigController(args)",
        "VAULT_TOKEN=s.xxxxxxxxxxxxxxxxxxxxxxxx",
    ] {
        assert_quiet(&engine, quiet);
    }
}

#[test]
fn graph_api_and_salesforce_tokens_where_they_are_sent() {
    let engine = Engine::builtin();
    let mut rng = Rng::from_time();
    for _ in 0..20 {
        let (fb, _) = sample("facebook-access-token", &mut rng).unwrap();
        let (sf, _) = sample("salesforce-access-token", &mut rng).unwrap();
        for (hay, secret, rule) in [
            (format!("GET https://graph.facebook.com/v19.0/me?fields=id,name&access_token={fb} 200\n"), &fb, "facebook-access-token"),
            (format!("- name: FACEBOOK_TOKEN\n  value: \"{fb}\"\n"), &fb, "facebook-access-token"),
            (format!("GET /services/data/v60.0/query HTTP/1.1\r\nAuthorization: Bearer {sf}\r\n"), &sf, "salesforce-access-token"),
            (format!("curl -H \"Authorization: Bearer {sf}\" https://acme.my.salesforce.com/services/data\n"), &sf, "salesforce-access-token"),
            // Named, the generic rule has it (the CLI's auth files, SF_ACCESS_TOKEN).
            (format!("{{\"accessToken\": \"{sf}\", \"instanceUrl\": \"https://acme.my.salesforce.com\"}}"), &sf, "generic-secret"),
            (format!("SF_ACCESS_TOKEN={sf}\n"), &sf, "generic-secret"),
        ] {
            assert_found(&engine, &hay, secret, rule);
        }
        // An upper-case SHA-512 that starts EAA, a base64 blob holding `/EAA…+`, a hex
        // checksum, an org id alone.
        let digest = format!("EAA{}", rng.string(b"0123456789ABCDEF", 125));
        let blob = format!(
            "{}/EAA{}+{}",
            rng.string(ALNUM, 40),
            rng.string(ALNUM, 120),
            rng.string(ALNUM, 40)
        );
        for quiet in [
            format!("SHA512: {digest}\n"),
            format!("\"data\": \"{blob}\"\n"),
            format!("  checksum: eaac{}\n", rng.string(HEX, 124)),
            format!("Id                00D5{}\n", rng.string(ALNUM, 11)),
        ] {
            assert_quiet(&engine, &quiet);
        }
    }
}

#[test]
fn named_legacy_formats_and_workflow_hooks() {
    let engine = Engine::builtin();
    let mut rng = Rng::from_time();
    for _ in 0..20 {
        let pat = rng.string(b"abcdefghijklmnopqrstuvwxyz234567", 52);
        for hay in [
            format!("export AZURE_DEVOPS_EXT_PAT={pat}\n"),
            format!("    azure_devops_pat =  \"{pat}\"\n"),
            format!("{{\"azureDevOpsToken\": \"{pat}\"}}"),
            format!("    ado_pat =  \"{pat}\"\n"),
            format!("ADO_TOKEN: {pat}\n"),
        ] {
            assert_found(&engine, &hay, &pat, "azure-devops-legacy-pat");
        }
        let hook = format!(
            "https://hooks.slack.com/workflows/T{}/A{}/{}/{}",
            rng.string(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", 10),
            rng.string(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", 10),
            rng.string(b"0123456789", 18),
            rng.string(ALNUM, 24)
        );
        assert_found(
            &engine,
            &format!("SLACK_HOOK={hook}\n"),
            &hook,
            "slack-webhook-url",
        );
    }
    assert_quiet(
        &engine,
        "AZURE_DEVOPS_ORG_URL=https://dev.azure.com/contoso",
    );
}

#[test]
fn a_private_key_in_an_environment_variable_as_base64() {
    let engine = Engine::builtin();
    let mut rng = Rng::from_time();
    let key = pem(&mut rng, "RSA PRIVATE KEY", 25);
    let enc = base64::engine::general_purpose::STANDARD.encode(format!("{key}\n"));
    for hay in [
        format!("PRIVATE_KEY_B64={enc}\n"),
        format!("{{\"env\": {{\"GITHUB_APP_PRIVATE_KEY\": \"{enc}\"}}}}"),
    ] {
        let found = engine.scan(hay.as_bytes());
        let want = fingerprint(key.as_bytes());
        let at = hay.find(&enc).unwrap();
        assert!(
            found.iter().any(|f| f.fingerprint == want
                && f.rule == "private-key"
                && at <= f.start
                && f.end <= at + enc.len()),
            "{found:?}"
        );
    }
}
