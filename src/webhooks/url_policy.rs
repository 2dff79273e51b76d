//! Which URLs a tenant may make ragq call: the outbound policy for every URL a tenant or a pipeline
//! supplies (job webhooks, pipeline templates, budget alert webhooks).
//!
//! Without it a tenant could aim signed POSTs at the operator's own network (server-side request
//! forgery). A URL must be http(s) (or https only), carry no user info or control characters, and
//! its host must resolve only to public addresses; loopback, private (RFC 1918), link-local, CGNAT,
//! unique-local, unspecified, multicast, broadcast and documentation ranges are refused in any
//! spelling (the WHATWG parser turns `2130706433`, `0x7f.1` and `0177.0.0.1` into 127.0.0.1, and
//! IPv4-mapped IPv6 addresses are judged as the IPv4 address they carry). The operator may allow
//! some ranges (`webhooks.allow_private`), which is how on-premises receivers, the demo and the
//! tests use loopback.
//!
//! The check runs at submission and again at delivery, where [`PolicyResolver`] is the sender's
//! DNS resolver: the connection can only go to an address that passed, so a name that changes its
//! answer after the check (DNS rebinding) gains nothing.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;
use reqwest::Url;

/// The longest URL accepted.
pub const MAX_URL_BYTES: usize = 2048;

/// Why a URL is refused; the message names the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlRefusal {
    #[error("not a URL")]
    NotAUrl,
    #[error("longer than {MAX_URL_BYTES} bytes")]
    TooLong,
    #[error("contains control characters or spaces")]
    ControlCharacters,
    #[error("scheme `{0}` is not allowed (use {1})")]
    Scheme(String, &'static str),
    #[error("user info (user:password@) is not allowed")]
    UserInfo,
    #[error("has no host")]
    NoHost,
    #[error("host `{host}` is a {range} address ({addr}), which is not allowed")]
    Address {
        host: String,
        addr: IpAddr,
        range: &'static str,
    },
    #[error("host `{0}` does not resolve")]
    Unresolvable(String),
}

/// The outbound URL policy; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct UrlPolicy {
    allow: Arc<Vec<IpNet>>,
    https_only: bool,
}

impl UrlPolicy {
    /// `allow` lists the CIDR ranges allowed despite being non-public (`127.0.0.0/8`).
    pub fn new(allow: Vec<IpNet>, https_only: bool) -> Self {
        Self {
            allow: Arc::new(allow),
            https_only,
        }
    }

    /// Parses `cidrs` (`10.0.0.0/8`, or a single address), naming the first bad one.
    pub fn parse_ranges(cidrs: &[String]) -> Result<Vec<IpNet>, String> {
        cidrs
            .iter()
            .map(|c| {
                c.parse::<IpNet>()
                    .or_else(|_| c.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| format!("`{c}` is not an address range like 10.0.0.0/8"))
            })
            .collect()
    }

    /// Everything that can be judged without DNS: the URL's form, and its host when that is an
    /// address. Returns the parsed URL.
    pub fn check_form(&self, url: &str) -> Result<Url, UrlRefusal> {
        if url.len() > MAX_URL_BYTES {
            return Err(UrlRefusal::TooLong);
        }
        if url.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(UrlRefusal::ControlCharacters);
        }
        let parsed = Url::parse(url).map_err(|_| UrlRefusal::NotAUrl)?;
        let allowed = if self.https_only {
            "https"
        } else {
            "http or https"
        };
        match parsed.scheme() {
            "https" => {}
            "http" if !self.https_only => {}
            other => return Err(UrlRefusal::Scheme(other.to_string(), allowed)),
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(UrlRefusal::UserInfo);
        }
        match parsed.host() {
            None => return Err(UrlRefusal::NoHost),
            Some(url::Host::Ipv4(v4)) => self.check_addr(&v4.to_string(), IpAddr::V4(v4))?,
            Some(url::Host::Ipv6(v6)) => self.check_addr(&v6.to_string(), IpAddr::V6(v6))?,
            Some(url::Host::Domain(_)) => {}
        }
        Ok(parsed)
    }

    /// The full check: the form, then every address the host resolves to.
    pub async fn check(&self, url: &str) -> Result<Url, UrlRefusal> {
        let parsed = self.check_form(url)?;
        if let Some(url::Host::Domain(name)) = parsed.host() {
            let addrs = resolve(name).await?;
            for addr in addrs {
                self.check_addr(name, addr.ip())?;
            }
        }
        Ok(parsed)
    }

    /// Refuses an address in a non-public range the operator has not allowed.
    pub fn check_addr(&self, host: &str, addr: IpAddr) -> Result<(), UrlRefusal> {
        let addr = canonical(addr);
        let Some(range) = non_public(addr) else {
            return Ok(());
        };
        if self.allow.iter().any(|net| net.contains(&addr)) {
            return Ok(());
        }
        Err(UrlRefusal::Address {
            host: host.to_string(),
            addr,
            range,
        })
    }
}

async fn resolve(name: &str) -> Result<Vec<SocketAddr>, UrlRefusal> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((name, 0))
        .await
        .map_err(|_| UrlRefusal::Unresolvable(name.to_string()))?
        .collect();
    if addrs.is_empty() {
        return Err(UrlRefusal::Unresolvable(name.to_string()));
    }
    Ok(addrs)
}

/// An IPv4-mapped or -compatible IPv6 address is judged as its IPv4 address.
fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// The non-public range `addr` is in, if any.
fn non_public(addr: IpAddr) -> Option<&'static str> {
    match addr {
        IpAddr::V4(v4) => non_public_v4(v4),
        IpAddr::V6(v6) => non_public_v6(v6),
    }
}

fn non_public_v4(a: Ipv4Addr) -> Option<&'static str> {
    let [o1, o2, ..] = a.octets();
    if a.is_loopback() {
        Some("loopback")
    } else if a.is_private() {
        Some("private")
    } else if a.is_link_local() {
        Some("link-local")
    } else if o1 == 100 && (64..128).contains(&o2) {
        Some("CGNAT")
    } else if a.is_unspecified() || o1 == 0 {
        Some("unspecified")
    } else if a.is_multicast() {
        Some("multicast")
    } else if a.is_broadcast() || o1 >= 240 {
        Some("broadcast or reserved")
    } else if a.is_documentation() || (o1 == 198 && (o2 == 18 || o2 == 19)) {
        Some("documentation or benchmarking")
    } else {
        None
    }
}

fn non_public_v6(a: Ipv6Addr) -> Option<&'static str> {
    let first = a.segments()[0];
    if a.is_loopback() {
        Some("loopback")
    } else if a.is_unspecified() {
        Some("unspecified")
    } else if a.is_multicast() {
        Some("multicast")
    } else if first & 0xfe00 == 0xfc00 {
        Some("unique-local")
    } else if first & 0xffc0 == 0xfe80 {
        Some("link-local")
    } else if first == 0x2001 && a.segments()[1] == 0x0db8 {
        Some("documentation")
    } else if first == 0x64 && a.segments()[1] == 0xff9b {
        // NAT64 carries an IPv4 address in its last 32 bits: judge that one.
        let [.., a1, a2] = a.segments();
        let v4 = Ipv4Addr::from((u32::from(a1) << 16) | u32::from(a2));
        non_public_v4(v4)
    } else {
        None
    }
}

/// The webhook sender's DNS resolver: resolves, then keeps only addresses the policy allows, so
/// the connection goes to a checked address (no window for DNS rebinding).
#[derive(Debug, Clone)]
pub struct PolicyResolver {
    pub policy: UrlPolicy,
}

impl reqwest::dns::Resolve for PolicyResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        Box::pin(async move {
            let host = name.as_str().to_string();
            let addrs = resolve(&host).await?;
            let mut allowed = Vec::with_capacity(addrs.len());
            for addr in addrs {
                policy.check_addr(&host, addr.ip())?;
                allowed.push(addr);
            }
            let addrs: reqwest::dns::Addrs = Box::new(allowed.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(url: &str) -> UrlRefusal {
        match UrlPolicy::default().check_form(url) {
            Err(e) => e,
            Ok(_) => panic!("{url} was accepted"),
        }
    }

    #[test]
    fn loopback_is_refused_in_every_spelling() {
        for url in [
            "http://127.0.0.1:8080/hook",
            "http://127.1/",
            "http://2130706433/",
            "http://0x7f000001/",
            "http://0x7f.0.0.1/",
            "http://0177.0.0.1/",
            "http://[::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://[::ffff:7f00:1]/",
            "http://[64:ff9b::7f00:1]/",
        ] {
            assert!(
                matches!(
                    refused(url),
                    UrlRefusal::Address {
                        range: "loopback",
                        ..
                    }
                ),
                "{url}: {}",
                refused(url)
            );
        }
    }

    #[test]
    fn every_non_public_range_is_refused() {
        for (url, range) in [
            ("http://0/", "unspecified"),
            ("http://0.0.0.0/", "unspecified"),
            ("http://10.1.2.3/", "private"),
            ("http://172.16.0.1/", "private"),
            ("http://192.168.1.1/", "private"),
            ("http://169.254.169.254/latest/meta-data", "link-local"),
            ("http://100.64.0.1/", "CGNAT"),
            ("http://224.0.0.1/", "multicast"),
            ("http://255.255.255.255/", "broadcast or reserved"),
            ("http://[fd00::1]/", "unique-local"),
            ("http://[fe80::1]/", "link-local"),
            ("http://[::]/", "unspecified"),
            ("http://[ff02::1]/", "multicast"),
            ("http://[::ffff:10.0.0.1]/", "private"),
        ] {
            match refused(url) {
                UrlRefusal::Address { range: r, .. } => assert_eq!(r, range, "{url}"),
                other => panic!("{url}: {other}"),
            }
        }
    }

    #[test]
    fn form_rules_name_what_is_wrong() {
        assert_eq!(
            refused("ftp://example.com/"),
            UrlRefusal::Scheme("ftp".into(), "http or https")
        );
        assert_eq!(
            refused("file:///etc/passwd"),
            UrlRefusal::Scheme("file".into(), "http or https")
        );
        assert_eq!(
            refused("http://user:pass@example.com/"),
            UrlRefusal::UserInfo
        );
        assert_eq!(
            refused("http://example.com/\0x"),
            UrlRefusal::ControlCharacters
        );
        assert_eq!(
            refused("http://exa mple.com/"),
            UrlRefusal::ControlCharacters
        );
        assert_eq!(refused("not a url"), UrlRefusal::ControlCharacters);
        assert_eq!(refused("hooks"), UrlRefusal::NotAUrl);
        let long = format!("https://example.com/{}", "a".repeat(MAX_URL_BYTES));
        assert_eq!(refused(&long), UrlRefusal::TooLong);
        let https = UrlPolicy::new(vec![], true);
        assert!(matches!(
            https.check_form("http://example.com/"),
            Err(UrlRefusal::Scheme(..))
        ));
        assert!(https.check_form("https://example.com/").is_ok());
        assert!(UrlPolicy::default()
            .check_form("https://93.184.216.34/hook")
            .is_ok());
    }

    #[test]
    fn an_allowed_range_opens_only_itself() {
        let ranges = UrlPolicy::parse_ranges(&["127.0.0.0/8".into(), "::1".into()]).unwrap();
        let policy = UrlPolicy::new(ranges, false);
        assert!(policy.check_form("http://127.0.0.1:9/").is_ok());
        assert!(policy.check_form("http://[::1]:9/").is_ok());
        assert!(policy.check_form("http://[::ffff:127.0.0.1]/").is_ok());
        assert!(policy.check_form("http://10.0.0.1/").is_err());
        assert!(UrlPolicy::parse_ranges(&["nope".into()]).is_err());
    }

    #[tokio::test]
    async fn names_are_judged_by_what_they_resolve_to() {
        // `localhost` resolves from /etc/hosts, without any network.
        let refused = UrlPolicy::default().check("http://localhost:9/").await;
        assert!(
            matches!(
                refused,
                Err(UrlRefusal::Address {
                    range: "loopback",
                    ..
                })
            ),
            "{refused:?}"
        );
        let allowed = UrlPolicy::new(
            UrlPolicy::parse_ranges(&["127.0.0.0/8".into(), "::1/128".into()]).unwrap(),
            false,
        );
        assert!(allowed.check("http://localhost:9/").await.is_ok());
    }
}
