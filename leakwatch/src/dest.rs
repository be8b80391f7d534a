//! Destinations: which host a socket write goes to, and whether a credential is expected
//! there. The host is read from the first bytes a socket carries — the SNI of a TLS
//! ClientHello, or the `Host:` header of a plain HTTP request (also in TLS plaintext).
//! Each built-in rule names its provider's hosts (`hosts` in `rules.toml`);
//! `[[destination]]` in the config adds or replaces them per rule (hosts, CIDRs, ports). A
//! credential sent to one of its own destinations is expected: recorded, not alerted. A
//! name is the sender's own claim, so a send expected by name only is `Named`: the caller
//! checks the peer against what the name resolves to (`resolve`), unless the peer is a
//! declared proxy (`[host_check]`). Pure: bytes and names in, answers out.
use std::{collections::HashMap, net::IpAddr};

use anyhow::{bail, Result};
use serde::Deserialize;

use crate::detect::RuleSet;

/// `[[destination]]`: where a rule's credential may go.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct DestinationSpec {
    /// Rule id (`openai-project-key`…).
    pub rule: String,
    /// Host names; `*.example.com` matches any subdomain.
    pub hosts: Vec<String>,
    /// Remote addresses, `10.0.0.0/8`, `fd00::/8`, or one address.
    pub cidrs: Vec<String>,
    /// Only on these remote ports (empty: any).
    pub ports: Vec<u16>,
    /// Replace the rule's built-in hosts instead of adding to them.
    pub replace: bool,
}

/// `[host_check]`: whether a name a socket carries is trusted only where it resolves.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct HostCheck {
    /// Check the peer against the name's addresses (false: trust the name as sent).
    pub resolve: bool,
    /// Egress proxies and gateways (`10.0.0.5`, `10.8.0.0/16`): the peer of a proxied
    /// connection is the proxy, so a name sent to one is trusted as sent.
    pub proxies: Vec<String>,
}

impl Default for HostCheck {
    fn default() -> Self {
        HostCheck {
            resolve: true,
            proxies: Vec::new(),
        }
    }
}

impl HostCheck {
    pub fn validate(&self) -> Result<()> {
        for p in &self.proxies {
            if parse_cidr(p).is_none() {
                bail!("[host_check] proxies entry `{p}` is not an address or network; give e.g. `10.0.0.5` or `10.8.0.0/16`");
            }
        }
        Ok(())
    }
}

/// Is a credential expected where it went?
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expect {
    No,
    /// Yes, and why (`address`: a listed network; `proxy`: a name sent to a declared
    /// proxy; `trusted`: a name, with `[host_check] resolve = false`).
    Yes(&'static str),
    /// Yes if the name resolves to the peer (`ip`; `None`: the peer is unknown).
    Named {
        name: String,
        ip: Option<IpAddr>,
    },
}

#[derive(Clone, Debug, Default)]
struct Allowed {
    hosts: Vec<String>,
    cidrs: Vec<(IpAddr, u8)>,
    ports: Vec<u16>,
}

/// Every rule's expected destinations.
#[derive(Clone, Debug, Default)]
pub struct Destinations {
    by_rule: HashMap<String, Vec<Allowed>>,
    check: bool,
    proxies: Vec<(IpAddr, u8)>,
}

impl Destinations {
    /// From the rules' own `hosts`, the config's `[[destination]]` tables and `[host_check]`.
    pub fn new(
        rules: &RuleSet,
        extra: &[DestinationSpec],
        check: &HostCheck,
    ) -> Result<Destinations> {
        check.validate()?;
        let mut by_rule: HashMap<String, Vec<Allowed>> = HashMap::new();
        for r in &rules.rules {
            if !r.hosts.is_empty() {
                let hosts = r.hosts.iter().map(|h| h.to_ascii_lowercase()).collect();
                by_rule.entry(r.id.clone()).or_default().push(Allowed {
                    hosts,
                    ..Default::default()
                });
            }
        }
        for d in extra {
            validate(d, rules)?;
            let a = Allowed {
                hosts: d.hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
                cidrs: d.cidrs.iter().filter_map(|c| parse_cidr(c)).collect(),
                ports: d.ports.clone(),
            };
            let list = by_rule.entry(d.rule.clone()).or_default();
            if d.replace {
                list.clear();
            }
            list.push(a);
        }
        Ok(Destinations {
            by_rule,
            check: check.resolve,
            proxies: check.proxies.iter().filter_map(|c| parse_cidr(c)).collect(),
        })
    }

    /// Is a credential found by `rule` expected at this destination (`host` from SNI or
    /// `Host:`, `remote` as `ip:port`)? Never for `frozen`: a frozen credential has no
    /// expected destination.
    pub fn expected(&self, rule: &str, host: Option<&str>, remote: Option<&str>) -> Expect {
        let Some(list) = self.by_rule.get(rule) else {
            return Expect::No;
        };
        let (ip, port) = remote.and_then(split_remote).unzip();
        let mut named = false;
        for a in list {
            if !a.ports.is_empty() && !port.is_some_and(|p| a.ports.contains(&p)) {
                continue;
            }
            if ip.is_some_and(|ip| a.cidrs.iter().any(|c| in_cidr(*c, ip))) {
                return Expect::Yes("address");
            }
            named |= host.is_some_and(|h| a.hosts.iter().any(|p| host_matches(p, h)));
        }
        let Some(h) = host.filter(|_| named) else {
            return Expect::No;
        };
        if !self.check {
            Expect::Yes("trusted")
        } else if ip.is_some_and(|ip| self.proxies.iter().any(|c| in_cidr(*c, ip))) {
            Expect::Yes("proxy")
        } else {
            Expect::Named {
                name: h.trim_end_matches('.').to_ascii_lowercase(),
                ip,
            }
        }
    }
}

fn validate(d: &DestinationSpec, rules: &RuleSet) -> Result<()> {
    if !rules.rules.iter().any(|r| r.id == d.rule) {
        bail!(
            "[[destination]] rule = \"{}\" names no rule; give the id of a built-in or [[rule]] rule",
            d.rule
        );
    }
    if d.hosts.is_empty() && d.cidrs.is_empty() {
        bail!(
            "[[destination]] for rule \"{}\" lists no hosts and no cidrs; give at least one",
            d.rule
        );
    }
    for c in &d.cidrs {
        if parse_cidr(c).is_none() {
            bail!("[[destination]] cidrs entry `{c}` is not an address or network; give e.g. `10.0.0.0/8` or `fd00::/8`");
        }
    }
    for h in &d.hosts {
        let bare = h.strip_prefix("*.").unwrap_or(h);
        if bare.is_empty() || bare.contains(['/', ':', ' ', '*']) {
            bail!("[[destination]] hosts entry `{h}` is not a host name; give e.g. `api.example.com` or `*.example.com`");
        }
    }
    Ok(())
}

/// `pattern` (`api.x.com`, `*.x.com`) matches host `h` (case-insensitive, port stripped).
pub fn host_matches(pattern: &str, h: &str) -> bool {
    let h = h.trim_end_matches('.').to_ascii_lowercase();
    match pattern.strip_prefix("*.") {
        Some(suffix) => h.len() > suffix.len() + 1 && h.ends_with(&format!(".{suffix}")),
        None => h == pattern,
    }
}

fn parse_cidr(s: &str) -> Option<(IpAddr, u8)> {
    let (a, bits) = match s.split_once('/') {
        Some((a, b)) => (a, Some(b.parse::<u8>().ok()?)),
        None => (s, None),
    };
    let ip: IpAddr = a.parse().ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let bits = bits.unwrap_or(max);
    (bits <= max).then_some((ip, bits))
}

fn in_cidr((net, bits): (IpAddr, u8), ip: IpAddr) -> bool {
    match (net, ip.to_canonical()) {
        (IpAddr::V4(n), IpAddr::V4(i)) => {
            let mask = u32::MAX.checked_shl(32 - bits as u32).unwrap_or(0);
            u32::from(n) & mask == u32::from(i) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(i)) => {
            let mask = u128::MAX.checked_shl(128 - bits as u32).unwrap_or(0);
            u128::from(n) & mask == u128::from(i) & mask
        }
        _ => false,
    }
}

/// `1.2.3.4:443` / `[::1]:8443` as (address, port).
fn split_remote(r: &str) -> Option<(IpAddr, u16)> {
    let (a, p) = r.rsplit_once(':')?;
    let a = a.trim_start_matches('[').trim_end_matches(']');
    Some((a.parse().ok()?, p.parse().ok()?))
}

/// The server name of a TLS ClientHello at the start of `d` (a socket's first write).
pub fn sni(d: &[u8]) -> Option<String> {
    // Record: type 22 (handshake), version 3.x, length; handshake: type 1 (ClientHello).
    if d.len() < 9 || d[0] != 22 || d[1] != 3 || d[5] != 1 {
        return None;
    }
    let mut r = Reader { d, at: 9 };
    r.skip(2 + 32)?; // client version, random
    let n = r.u8()? as usize;
    r.skip(n)?; // session id
    let n = r.u16()? as usize;
    r.skip(n)?; // cipher suites
    let n = r.u8()? as usize;
    r.skip(n)?; // compression methods
    let end = r.at + r.u16()? as usize;
    while r.at + 4 <= end.min(d.len()) {
        let (kind, len) = (r.u16()?, r.u16()? as usize);
        if kind != 0 {
            r.skip(len)?;
            continue;
        }
        // server_name: list length, then (type 0 = host_name, length, name).
        r.skip(2)?;
        if r.u8()? != 0 {
            return None;
        }
        let n = r.u16()? as usize;
        let name = r.take(n)?;
        let s = std::str::from_utf8(name).ok()?;
        return is_host(s).then(|| s.to_ascii_lowercase());
    }
    None
}

/// The `Host:` of a plain HTTP/1 request at the start of `d`, port stripped.
pub fn http_host(d: &[u8]) -> Option<String> {
    const METHODS: [&[u8]; 7] = [
        b"GET ",
        b"POST ",
        b"PUT ",
        b"PATCH ",
        b"DELETE ",
        b"HEAD ",
        b"OPTIONS ",
    ];
    if !METHODS.iter().any(|m| d.starts_with(m)) {
        return None;
    }
    let head = &d[..d.len().min(8192)];
    // The searcher is built once: `memmem::find` builds one per call.
    static BLANK: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\r\n\r\n"));
    let end = BLANK.find(head).unwrap_or(head.len());
    for line in head[..end].split(|&b| b == b'\n').skip(1) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.len() > 5 && line[..5].eq_ignore_ascii_case(b"host:") {
            let v = std::str::from_utf8(&line[5..]).ok()?.trim();
            let host = match v.strip_prefix('[') {
                Some(v6) => v6.split(']').next()?,
                None => v.split(':').next()?,
            };
            return is_host(host).then(|| host.to_ascii_lowercase());
        }
    }
    None
}

fn is_host(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':'))
}

struct Reader<'a> {
    d: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.d.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(s)
    }
    fn skip(&mut self, n: usize) -> Option<()> {
        self.take(n).map(|_| ())
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|s| s[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|s| u16::from_be_bytes([s[0], s[1]]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ClientHello naming `host`, built field by field.
    fn client_hello(host: &str) -> Vec<u8> {
        let name = host.as_bytes();
        let mut sni = vec![0, 0]; // extension type server_name
        let list_len = 3 + name.len();
        sni.extend(((list_len + 2) as u16).to_be_bytes());
        sni.extend((list_len as u16).to_be_bytes());
        sni.push(0);
        sni.extend((name.len() as u16).to_be_bytes());
        sni.extend(name);
        let mut other = vec![0, 43, 0, 3, 2, 3, 4]; // supported_versions
        other.extend(sni);
        let mut body = vec![3, 3];
        body.extend([7u8; 32]);
        body.push(0); // session id
        body.extend([0, 2, 0x13, 0x01]); // one suite
        body.extend([1, 0]); // compression
        body.extend((other.len() as u16).to_be_bytes());
        body.extend(other);
        let mut hs = vec![1, 0];
        hs.extend((body.len() as u16).to_be_bytes());
        hs.extend(body);
        let mut rec = vec![22, 3, 1];
        rec.extend((hs.len() as u16).to_be_bytes());
        rec.extend(hs);
        rec
    }

    #[test]
    fn sni_is_read_from_a_client_hello() {
        assert_eq!(
            sni(&client_hello("API.Anthropic.com")).as_deref(),
            Some("api.anthropic.com")
        );
        let h = client_hello("x.example");
        for cut in 0..h.len() {
            assert_eq!(sni(&h[..cut]), None, "cut at {cut}");
        }
        assert_eq!(sni(b"GET / HTTP/1.1\r\n"), None);
    }

    #[test]
    fn http_host_is_read_from_a_request_head() {
        let r =
            b"POST /v1 HTTP/1.1\r\nContent-Type: x\r\nhost: Collector.example.net:8080\r\n\r\nbody";
        assert_eq!(http_host(r).as_deref(), Some("collector.example.net"));
        assert_eq!(
            http_host(b"GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n").as_deref(),
            Some("::1")
        );
        assert_eq!(http_host(b"HTTP/1.1 200 OK\r\nHost: a\r\n\r\n"), None);
        assert_eq!(http_host(b"GET / HTTP/1.1\r\n\r\nHost: late\r\n"), None);
    }

    #[test]
    fn expected_by_host_pattern_cidr_and_port() {
        let set = RuleSet::builtin();
        let extra = [DestinationSpec {
            rule: "openai-project-key".into(),
            hosts: vec!["*.gw.internal".into()],
            cidrs: vec!["10.1.0.0/16".into()],
            ports: vec![443],
            replace: false,
        }];
        let d = Destinations::new(&set, &extra, &HostCheck::default()).unwrap();
        let r = "openai-project-key";
        let named = |n: &str, ip: Option<&str>| Expect::Named {
            name: n.into(),
            ip: ip.map(|i| i.parse().unwrap()),
        };
        assert_eq!(
            d.expected(r, Some("API.openai.com."), Some("1.2.3.4:443")),
            named("api.openai.com", Some("1.2.3.4"))
        );
        assert_eq!(
            d.expected(r, Some("llm.gw.internal"), Some("10.9.9.9:443")),
            named("llm.gw.internal", Some("10.9.9.9"))
        );
        let no = Expect::No;
        assert_eq!(d.expected(r, Some("gw.internal"), Some("10.9.9.9:443")), no);
        assert_eq!(
            d.expected(r, None, Some("10.1.2.3:443")),
            Expect::Yes("address")
        );
        assert_eq!(
            d.expected(r, Some("evil.example"), Some("[::ffff:10.1.2.3]:443")),
            Expect::Yes("address"),
            "a v4-mapped peer is its v4 address"
        );
        assert_eq!(d.expected(r, None, Some("10.1.2.3:80")), no, "port");
        assert_eq!(d.expected(r, Some("evil.example"), Some("1.2.3.4:443")), no);
        assert_eq!(d.expected(r, None, None), no);
        assert_eq!(
            d.expected(r, Some("api.openai.com"), None),
            named("api.openai.com", None)
        );
        assert_eq!(d.expected("frozen", Some("api.openai.com"), None), no);
        assert_eq!(
            d.expected("anthropic-api-key", Some("api.openai.com"), None),
            no
        );
        // A name sent to a declared proxy is trusted; with resolve off, every name is.
        let proxied = HostCheck {
            proxies: vec!["192.168.7.0/24".into()],
            ..Default::default()
        };
        let d = Destinations::new(&set, &extra, &proxied).unwrap();
        assert_eq!(
            d.expected(r, Some("api.openai.com"), Some("192.168.7.9:3128")),
            Expect::Yes("proxy")
        );
        assert_eq!(
            d.expected(r, Some("evil.example"), Some("192.168.7.9:3128")),
            no
        );
        let off = HostCheck {
            resolve: false,
            ..Default::default()
        };
        let d = Destinations::new(&set, &extra, &off).unwrap();
        assert_eq!(
            d.expected(r, Some("api.openai.com"), Some("6.6.6.6:443")),
            Expect::Yes("trusted")
        );
        // Replace drops the built-in hosts.
        let only = [DestinationSpec {
            rule: r.into(),
            hosts: vec!["proxy.corp".into()],
            replace: true,
            ..Default::default()
        }];
        let d = Destinations::new(&set, &only, &off).unwrap();
        assert_eq!(d.expected(r, Some("api.openai.com"), None), no);
        assert_eq!(
            d.expected(r, Some("proxy.corp"), None),
            Expect::Yes("trusted")
        );
    }

    #[test]
    fn bad_destinations_are_one_clear_error() {
        let set = RuleSet::builtin();
        let ok = HostCheck::default();
        let bad = |d: DestinationSpec| Destinations::new(&set, &[d], &ok).unwrap_err().to_string();
        let e = bad(DestinationSpec {
            rule: "nope".into(),
            hosts: vec!["a".into()],
            ..Default::default()
        });
        assert!(e.contains("names no rule"), "{e}");
        let e = bad(DestinationSpec {
            rule: "github-pat".into(),
            ..Default::default()
        });
        assert!(e.contains("no hosts and no cidrs"), "{e}");
        let e = bad(DestinationSpec {
            rule: "github-pat".into(),
            cidrs: vec!["10.0.0.0/40".into()],
            ..Default::default()
        });
        assert!(e.contains("not an address or network"), "{e}");
        let proxy = HostCheck {
            proxies: vec!["proxy.corp".into()],
            ..Default::default()
        };
        let e = Destinations::new(&set, &[], &proxy)
            .unwrap_err()
            .to_string();
        assert!(e.contains("[host_check] proxies entry `proxy.corp`"), "{e}");
    }
}
