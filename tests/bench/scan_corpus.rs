//! The planted corpus `scan_bench` measures: every rule's generated secrets, plus the
//! generic classes no vendor rule names (punctuated passwords, Django keys, hex API keys),
//! embedded in the contexts agents leak them in; and the hard negatives, including the
//! shapes other scanners' test suites treat as false positives (public keys, placeholders,
//! digests, code and URLs under key names, variable references, masked values).
//! Everything is generated at run time; nothing here is a real credential.
use std::fmt::Write as _;

use leakwatch::detect::{
    samples::{checksummed, password, pem, sample, uuid_v4, Rng, ALNUM, B64, HEX, URLSAFE},
    Engine, RuleSet,
};

/// One secret to plant: what should find it, and how it is named where it leaks.
pub struct Case {
    /// The rule expected to report it (`generic-secret` for the generic classes).
    pub rule: String,
    /// `DB_PASSWORD` when the secret only means something under a name.
    pub name: Option<String>,
    pub secret: String,
    /// The sample's own text (`NAME=value`, `Authorization: Bearer …`, the bare token).
    pub text: String,
}

/// Rules that recognise public values: never reported, so planted as negatives.
pub fn public_rules() -> Vec<String> {
    RuleSet::builtin()
        .rules
        .into_iter()
        .filter(|r| r.public)
        .map(|r| r.id)
        .collect()
}

/// `rounds` cases per non-public rule and `3 * rounds` per generic class.
pub fn cases(engine: &Engine, rng: &mut Rng, rounds: usize) -> Vec<Case> {
    let public = public_rules();
    let mut out = Vec::new();
    for (rule, _) in engine
        .rules()
        .filter(|(id, _)| !public.iter().any(|p| p == id))
    {
        for _ in 0..rounds {
            let (secret, text) = sample(rule, rng).unwrap();
            // `NAME=value` samples are named; a bare token is its own text.
            let name = text
                .strip_suffix(secret.as_str())
                .and_then(|p| p.strip_suffix('='))
                .filter(|n| {
                    !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                })
                .map(str::to_string);
            out.push(Case {
                rule: rule.to_string(),
                name,
                secret,
                text,
            });
        }
    }
    for _ in 0..3 * rounds {
        for (class, names, value) in [
            (
                "password",
                &[
                    "DB_PASSWORD",
                    "POSTGRES_PASSWORD",
                    "SMTP_PASSWORD",
                    "REDIS_PASSWORD",
                    "ADMIN_PASSWD",
                ][..],
                password(rng),
            ),
            (
                "django",
                &["SECRET_KEY", "DJANGO_SECRET_KEY", "APP_SECRET"][..],
                rng.string(b"abcdefghijklmnopqrstuvwxyz0123456789!@#$%^&*(-_=+)", 50),
            ),
            (
                "hex-key",
                // Vendor names (`DD_API_KEY`) belong to their rules' samples.
                &[
                    "API_KEY",
                    "SEGMENT_WRITE_KEY",
                    "INTERNAL_API_KEY",
                    "METRICS_API_KEY",
                ][..],
                rng.string(HEX, 32),
            ),
        ] {
            let name = names[rng.below(names.len())].to_string();
            out.push(Case {
                rule: format!("generic-secret ({class})"),
                text: format!("{name}={value}"),
                name: Some(name),
                secret: value,
            });
        }
    }
    out
}

pub fn json_escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The contexts a case is embedded in: (context, file body, the secret's exact bytes there).
pub fn contexts(c: &Case) -> Vec<(&'static str, String, String)> {
    let (text, secret) = (c.text.as_str(), c.secret.as_str());
    let multiline = secret.contains('\n');
    let generic = c.rule.starts_with("generic-secret (");
    let mut v = vec![
        ("shell-export", format!("# deploy env\nexport APP_CONFIG_VALUE=\"{text}\"\nexport PATH=/usr/bin\n"), secret.to_string()),
        (
            "json-config",
            format!("{{\n  \"name\": \"agent\",\n  \"settings\": {{\"value\": \"{}\", \"retries\": 3}}\n}}\n", json_escape(text)),
            json_escape(secret),
        ),
        (
            "node-report",
            format!("{{\"header\": {{\"reportVersion\": 3}}, \"environmentVariables\": {{\"HOME\": \"/root\", \"APP_VALUE\": \"{}\"}}}}\n", json_escape(text)),
            json_escape(secret),
        ),
        (
            "jvm-hs-err",
            format!("# A fatal error has been detected by the Java Runtime Environment:\n#\n\nEnvironment Variables:\nJAVA_TOOL_OPTIONS=-Xmx2g\nAPP_OPTS={text}\nSHELL=/bin/bash\n"),
            secret.to_string(),
        ),
        (
            "python-traceback",
            format!("Traceback (most recent call last):\n  File \"/srv/agent/run.py\", line 41, in <module>\n    main()\nRuntimeError: upstream rejected credentials {text} (401)\n"),
            secret.to_string(),
        ),
    ];
    // A command line (`curl -u …`, a netrc entry) is not a header value or a query parameter.
    let spaced = text.contains(' ');
    if !multiline && !generic && !spaced {
        v.push((
            "http-header",
            format!("> POST /v1/messages HTTP/1.1\n> Host: api.internal\n> Authorization: Bearer {text}\n> Content-Type: application/json\n"),
            secret.to_string(),
        ));
        v.push((
            "url",
            format!("GET https://api.internal/v1/run?token={text}&model=large 200\n"),
            secret.to_string(),
        ));
    }
    // The named forms: the sample's name, or a plain one for a self-contained token.
    let name = match (&c.name, text == secret) {
        (Some(n), _) => n.clone(),
        (None, true) => "SERVICE_TOKEN".to_string(),
        (None, false) => return v,
    };
    let lower = name.to_ascii_lowercase();
    let dotted = lower.replace('_', ".");
    if multiline {
        let indented: String = secret.lines().map(|l| format!("        {l}\n")).collect();
        v.push((
            "compose-yaml",
            format!("services:\n  agent:\n    image: agent:1.4\n    environment:\n      {name}: |\n{indented}      LOG_LEVEL: info\n"),
            // The key as it stands in the file: from BEGIN to END, indented inside.
            secret.trim_end().replace('\n', "\n        "),
        ));
        v.push((
            "dotenv",
            format!(
                "LOG_LEVEL=info\n{name}=\"{}\"\n",
                secret.replace('\n', "\\n")
            ),
            secret.replace('\n', "\\n"),
        ));
        return v;
    }
    let quotable = !secret.contains('\'') && !secret.contains('"');
    v.push((
        "dotenv",
        format!("LOG_LEVEL=info\n{name}={secret}\nPORT=8080\n"),
        secret.to_string(),
    ));
    v.push((
        "compose-yaml",
        format!("services:\n  agent:\n    image: agent:1.4\n    environment:\n      - {name}={secret}\n      - LOG_LEVEL=info\n"),
        secret.to_string(),
    ));
    v.push((
        "logfmt",
        format!("ts=2026-12-03T10:00:00Z level=debug msg=\"calling upstream\" {lower}={secret} elapsed=12ms\n"),
        secret.to_string(),
    ));
    v.push((
        "jvm-arg",
        format!("exec java -Xmx1g -D{dotted}={secret} -jar /srv/app.jar\n"),
        secret.to_string(),
    ));
    if quotable {
        v.push((
            "python-kwargs",
            format!("  File \"/srv/agent/client.py\", line 88, in connect\n    client = Client({lower}='{secret}', timeout=38)\n"),
            secret.to_string(),
        ));
        v.push((
            "traceback-locals",
            format!("│ {lower:>14} = '{secret}' │\n│        retries = 3 │\n"),
            secret.to_string(),
        ));
        v.push((
            "yaml-config",
            format!("upstream:\n  {lower}: \"{secret}\"\n  timeout: 30\n"),
            secret.to_string(),
        ));
        v.push((
            "toml",
            format!("[upstream]\n{lower} = \"{secret}\"\nretries = 3\n"),
            secret.to_string(),
        ));
    }
    if c.name.is_none()
        && secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
    {
        v.push((
            "url-userinfo",
            format!("git clone https://x-access-token:{secret}@github.com/org/repo.git\n"),
            secret.to_string(),
        ));
    }
    v
}

/// Hard negatives, `rounds` of each kind: (kind, file body).
pub fn negatives(rng: &mut Rng, rounds: usize) -> Vec<(&'static str, String)> {
    let public = public_rules();
    let mut cases: Vec<(&str, String)> = Vec::new();
    for _ in 0..rounds {
        let sha1 = rng.string(HEX, 40);
        let sha256 = rng.string(HEX, 64);
        let uuid = uuid_v4(rng);
        cases.push((
            "git-sha",
            format!(
                "commit {sha1}\nMerge: {} {}\n",
                &sha1[..7],
                rng.string(HEX, 7)
            ),
        ));
        cases.push((
            "uuid",
            format!("{{\"request_id\": \"{uuid}\", \"trace_id\": \"{uuid}\"}}\n"),
        ));
        cases.push((
            "hash",
            format!(
                "{sha256}  agent-1.2.3.tar.gz\nsha1={sha1}\nmd5: {}\n",
                rng.string(HEX, 32)
            ),
        ));
        cases.push((
            "sri-integrity",
            format!("\"integrity\": \"sha512-{}==\",\n", rng.string(B64, 86)),
        ));
        cases.push((
            "docker-digest",
            format!("image: registry.internal/agent@sha256:{sha256}\n"),
        ));
        cases.push((
            "digest-named-key",
            format!(
                "sha256_key = {sha256}\ncache_key = \"{}\"\nETAG_TOKEN: {}\ncommit_sha_token: {sha1}\nkey = '{}'\nrequest_key_id={}\n",
                rng.string(HEX, 64),
                rng.string(HEX, 32),
                rng.string(HEX, 32),
                rng.string(HEX, 32)
            ),
        ));
        cases.push((
            "placeholder",
            [
                "OPENAI_API_KEY=your-api-key-here",
                "ANTHROPIC_API_KEY=${ANTHROPIC_API_KEY}",
                "api_key: <KEY>",
                "password = \"changeme\"",
                "AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE",
                "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
                "token: xxxxxxxxxxxxxxxxxxxxxxxx",
                "Authorization: Bearer <token>",
                "GITHUB_TOKEN={{ secrets.GITHUB_TOKEN }}",
            ]
            .join("\n"),
        ));
        let var = rng.string(b"abcdefghijklmnopqrstuvwxyz", 6);
        cases.push((
            "variable-reference",
            format!(
                "password: ${{DB_PASSWORD_{n}}}\nDB_PASSWORD=$(cat /run/secrets/{var}_db)\npassword = var.{var}_password\napi_key: \"{{{{ .Values.{var}.apiKey }}}}\"\nSECRET_KEY=os.environ.get(\"{}_SECRET\")\n        - name: API_TOKEN\n          valueFrom:\n            secretKeyRef:\n              name: {var}-secrets\n              key: api-token\n",
                var.to_uppercase(),
                n = rng.below(90) + 10,
            ),
        ));
        cases.push((
            "masked",
            format!(
                "password=********\ntoken: [REDACTED]\nAPI_KEY=sk-...{}\nsecret: \"<redacted:{}>\"\n",
                rng.string(ALNUM, 4),
                rng.below(9000) + 1000
            ),
        ));
        for p in ["ghp_", "gho_", "ghs_", "npm_"] {
            let mut t = checksummed(rng, p).into_bytes();
            let i = t.len() - 2;
            t[i] = if t[i] == b'a' { b'b' } else { b'a' };
            let t = String::from_utf8(t).unwrap();
            cases.push(("bad-checksum-token", format!("TOKEN={t}\n")));
            cases.push((
                "bad-checksum-token",
                format!("git clone https://x-access-token:{t}@github.com/org/repo.git\n"),
            ));
        }
        // Publishable keys under the names front ends give them, and every public rule's
        // sample in an env file.
        for id in &public {
            if let Some((_, text)) = sample(id, rng) {
                cases.push((
                    "public-by-design",
                    format!("NEXT_PUBLIC_APP_KEY={text}\n\"publishableKey\": \"{text}\"\n"),
                ));
            }
        }
        let jwt = {
            use base64::Engine as _;
            let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
            format!(
                "{}.{}.{}",
                e.encode(br#"{"alg":"HS256","typ":"JWT"}"#),
                e.encode(br#"{"sub":"1234567890","name":"John Doe","iat":1516239022}"#),
                rng.string(URLSAFE, 43)
            )
        };
        cases.push((
            "jwt-documentation",
            format!("curl -H \"Authorization: Bearer {jwt}\" https://api.example.com/\n"),
        ));
        let id = rng.string(ALNUM, 6);
        cases.push((
            "code-under-key-names",
            format!(
                "key = hashlib.sha256(data_{id}).hexdigest()\npassword = get_password(user, '{id}')\nsecret_key = os.environ[\"SECRET_KEY_{n}\"]\napi_key=config.get(\"api_key\", {n})\nfor(iKey=walHash{id}(sLoc.aPgno[j]);iKey;iKey=walNext(iKey)){{\npKeyInfo = sqlite3KeyInfoOf{id}(pParse, pIdx);\nx.u.zToken = sqlite3DbSpanDup{n}(db, zStart, zEnd);\nconst token = this.tokenizer{id}.next();\nkey_node.tag = 'tag:yaml.org,2002:{id}'\n",
                n = rng.below(900) + 100
            ),
        ));
        cases.push((
            "url-email-under-key-names",
            format!(
                "\"authority\": \"https://accounts.{id}.example.com/o/oauth2/v2/auth\"\nauth_email: \"ops.{id}42@example-corp.com\"\nTOKEN_URL=https://oauth2.{id}.example.net/v1/token?x=12\n"
            ),
        ));
        let (h1, h2) = (
            rng.string(b"0123456789abcdef", 4),
            rng.string(b"0123456789abcdef", 4),
        );
        cases.push((
            "paths-authors-addresses",
            format!(
                "let key_pair = Ed{n}{id}KeyPair::from_seed_and_public_key(&seed, &public_key).unwrap();\nlet authority_str = \"[fe80::1:{h1}:{h2}:4%25eth0]\";\nCERT_AUTHORITY={id}Xq{n}Zr{id}\nsecret_host = \"10.{a}.{b}.7:8443\"\nTOKEN_SERVER=[2001:db8::{h1}:{h2}]:8443\n",
                n = rng.below(90000) + 10000,
                a = rng.below(250),
                b = rng.below(250)
            ),
        ));
        cases.push(("pem-public", pem(rng, "PUBLIC KEY", 6)));
        cases.push(("pem-certificate", pem(rng, "CERTIFICATE", 18)));
        cases.push(("ssh-public-key", format!("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI{} dev@host\nssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQ{} ci@runner\n", rng.string(B64, 43), rng.string(B64, 300))));
        let mut js = String::new();
        for _ in 0..40 {
            let (a, b) = (
                rng.string(b"abcdefghijklmnopqrstuvwxyz", 2),
                rng.string(ALNUM, 8),
            );
            write!(js, "var {a}=function(e,t){{var key=e[t],token=n.{b};return key&&token?{a}(key):null}};").unwrap();
        }
        cases.push(("minified-js", js));
    }
    cases
}
