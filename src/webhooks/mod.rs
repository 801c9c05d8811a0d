//! Webhooks: the durable feed pushed to the store's endpoints, signed, at least once, in
//! cursor order per webhook (contract v1.1, "Webhook deliveries").
//!
//! - this file: which targets are allowed (SSRF), the signature, the HTTP client;
//! - [`deliver`]: the delivery worker every instance runs, coordinated through the database
//!   (a lease per webhook), reading the feed from the database (never the hot path).

pub mod deliver;

use hmac::{Hmac, Mac};
use ipnet::IpNet;
use sha2::Sha256;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// Which targets deliveries may reach. By default only public addresses; loopback,
/// private, link-local (and the other special ranges) only when listed, by host name or by
/// CIDR. Checked when a webhook is created and again on every delivery, after DNS resolution
/// (the client connects only to the addresses checked), and redirects are not followed.
#[derive(Debug, Clone, Default)]
pub struct AllowedHosts {
    names: Vec<String>,
    networks: Vec<IpNet>,
}

/// Why a target is refused.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("the url is not an absolute http(s) URL: {0}")]
    BadUrl(String),
    #[error("{host} resolves to {address}, which is not a public address and not allowed (FLASHSALE_WEBHOOK_ALLOWED_HOSTS)")]
    NotAllowed { host: String, address: IpAddr },
    #[error("{0} could not be resolved")]
    Unresolved(String),
}

impl AllowedHosts {
    /// Parses `FLASHSALE_WEBHOOK_ALLOWED_HOSTS`: comma-separated host names or CIDRs (a bare
    /// address is a /32 or /128).
    pub fn parse(raw: &[String]) -> Result<Self, String> {
        let mut allowed = AllowedHosts::default();
        for item in raw.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
            if let Ok(net) = item.parse::<IpNet>() {
                allowed.networks.push(net);
            } else if let Ok(ip) = item.parse::<IpAddr>() {
                allowed.networks.push(IpNet::from(ip));
            } else if item
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
            {
                allowed.names.push(item.to_ascii_lowercase());
            } else {
                return Err(format!("{item:?} is neither a host name nor a CIDR"));
            }
        }
        Ok(allowed)
    }

    fn name_listed(&self, host: &str) -> bool {
        self.names.iter().any(|n| n.eq_ignore_ascii_case(host))
    }

    /// Whether a delivery may connect to `address` for `host`.
    pub fn address_allowed(&self, host: &str, address: IpAddr) -> bool {
        self.name_listed(host)
            || self.networks.iter().any(|n| n.contains(&address))
            || is_public(address)
    }

    /// Checks a URL: its scheme, and every address its host resolves to.
    pub async fn check_url(&self, url: &str) -> Result<reqwest::Url, TargetError> {
        let parsed = reqwest::Url::parse(url).map_err(|e| TargetError::BadUrl(e.to_string()))?;
        if !matches!(parsed.scheme(), "http" | "https") || !parsed.username().is_empty() {
            return Err(TargetError::BadUrl(url.to_owned()));
        }
        let host = host_of(&parsed)
            .ok_or_else(|| TargetError::BadUrl(url.to_owned()))?
            .to_owned();
        let port = parsed.port_or_known_default().unwrap_or(80);
        for address in self.resolve(&host, port).await? {
            if !self.address_allowed(&host, address.ip()) {
                return Err(TargetError::NotAllowed {
                    host,
                    address: address.ip(),
                });
            }
        }
        Ok(parsed)
    }

    /// Checks a URL whose host is an address (no resolution happens for it, so the
    /// resolver cannot); names pass here and are checked when resolved.
    pub fn check_literal(&self, url: &str) -> Result<(), TargetError> {
        let parsed = reqwest::Url::parse(url).map_err(|e| TargetError::BadUrl(e.to_string()))?;
        let literal = host_of(&parsed).unwrap_or_default().parse::<IpAddr>();
        let Ok(address) = literal else {
            return Ok(());
        };
        let host = address.to_string();
        if self.address_allowed(&host, address) {
            Ok(())
        } else {
            Err(TargetError::NotAllowed { host, address })
        }
    }

    async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, TargetError> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let found: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
            .await
            .map_err(|_| TargetError::Unresolved(host.to_owned()))?
            .collect();
        if found.is_empty() {
            return Err(TargetError::Unresolved(host.to_owned()));
        }
        Ok(found)
    }
}

/// A URL's host as a name or a bare address (an IPv6 literal without its brackets).
fn host_of(url: &reqwest::Url) -> Option<&str> {
    url.host_str()
        .map(|host| host.trim_start_matches('[').trim_end_matches(']'))
}

/// Whether an address is on the public internet: not loopback, private, link-local,
/// unspecified, broadcast, documentation, shared (CGNAT), benchmarking, multicast, or an
/// IPv6 unique-local / link-local / IPv4-mapped form of those.
pub fn is_public(address: IpAddr) -> bool {
    match address {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_documentation()
                || v4.is_multicast()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
                || (a == 198 && (18..20).contains(&b))
                || a >= 240)
        }
        IpAddr::V6(v6) => {
            let segments = v6.segments();
            // Local-use NAT64 (64:ff9b:1::/48) reaches whatever the site's translator does.
            if segments[..3] == [0x64, 0xff9b, 1] {
                return false;
            }
            // An IPv4 address carried inside the IPv6 one is judged as itself.
            let embedded = embedded_ipv4(v6);
            if !embedded.is_empty() {
                return embedded.into_iter().all(|v4| is_public(IpAddr::V4(v4)));
            }
            let first = segments[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
                || first == 0x2001 && v6.segments()[1] == 0x0db8)
        }
    }
}

/// The IPv4 addresses an IPv6 address carries: IPv4-mapped (`::ffff:a.b.c.d`), IPv4-translated
/// (`::ffff:0:a.b.c.d`), IPv4-compatible (`::a.b.c.d`, but not `::` or `::1`), NAT64's
/// well-known prefix (`64:ff9b::/96`), 6to4 (`2002:AABB:CCDD::/48`), and Teredo
/// (`2001:0::/32`: its server, and its client obfuscated in the last 32 bits).
fn embedded_ipv4(v6: std::net::Ipv6Addr) -> Vec<std::net::Ipv4Addr> {
    use std::net::Ipv4Addr;
    let s = v6.segments();
    let from = |high: u16, low: u16| Ipv4Addr::from((u32::from(high) << 16) | u32::from(low));
    match s {
        [0, 0, 0, 0, 0, 0xffff, high, low] => vec![from(high, low)],
        [0, 0, 0, 0, 0xffff, 0, high, low] => vec![from(high, low)],
        [0, 0, 0, 0, 0, 0, high, low] if high != 0 => vec![from(high, low)],
        [0x64, 0xff9b, 0, 0, 0, 0, high, low] => vec![from(high, low)],
        [0x2002, high, low, ..] => vec![from(high, low)],
        [0x2001, 0, server_high, server_low, _, _, client_high, client_low] => vec![
            from(server_high, server_low),
            from(!client_high, !client_low),
        ],
        _ => Vec::new(),
    }
}

/// The resolver deliveries use: the system's, keeping only allowed addresses, so the check
/// and the connection see the same addresses (no window for DNS rebinding).
struct CheckedResolver(Arc<AllowedHosts>);

impl reqwest::dns::Resolve for CheckedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allowed = Arc::clone(&self.0);
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let found = allowed.resolve(&host, 0).await?;
            let kept: Vec<SocketAddr> = found
                .into_iter()
                .filter(|a| allowed.address_allowed(&host, a.ip()))
                .collect();
            if kept.is_empty() {
                return Err(format!("{host} resolves to no allowed address").into());
            }
            Ok(Box::new(kept.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The HTTP client of deliveries: checked resolution, no redirects, a timeout per delivery.
pub fn client(allowed: Arc<AllowedHosts>, timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .dns_resolver(Arc::new(CheckedResolver(allowed)))
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .user_agent(concat!("flashsale-webhooks/", env!("CARGO_PKG_VERSION")))
        .build()
        .unwrap_or_default()
}

/// `Flashsale-Signature`: `t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
pub fn signature(secret: &str, unix_seconds: i64, body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes a key of any length");
    mac.update(unix_seconds.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!(
        "t={unix_seconds},v1={}",
        hex::encode(mac.finalize().into_bytes())
    )
}

/// A new signing secret: 32 random bytes, hex, prefixed.
pub fn new_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("whsec_{}", hex::encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_addresses_pass_by_default() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(
                !is_public(private.parse().expect("an address")),
                "{private}"
            );
        }
        for public in ["1.1.1.1", "93.184.216.34", "2606:4700:4700::1111"] {
            assert!(is_public(public.parse().expect("an address")), "{public}");
        }
    }

    #[test]
    fn ipv4_addresses_inside_ipv6_ones_are_judged_as_themselves() {
        for (address, public) in [
            ("::127.0.0.1", false),
            ("::10.0.0.1", false),
            ("::1.1.1.1", true),
            ("::ffff:127.0.0.1", false),
            ("::ffff:1.1.1.1", true),
            ("::ffff:0:127.0.0.1", false),
            ("::ffff:0:192.168.1.1", false),
            ("::ffff:0:1.1.1.1", true),
            ("64:ff9b::127.0.0.1", false),
            ("64:ff9b::169.254.169.254", false),
            ("64:ff9b::1.1.1.1", true),
            ("64:ff9b:1::1.1.1.1", false),
            ("2002:7f00:1::1", false),
            ("2002:c0a8:101::1", false),
            ("2002:101:101::1", true),
            // Teredo: server 65.54.227.120, client 127.0.0.1 (obfuscated: 0x80ff:0xfffe).
            ("2001:0:4136:e378:8000:63bf:80ff:fffe", false),
            // Teredo: server 65.54.227.120, client 1.1.1.1 (0xfefe:0xfefe).
            ("2001:0:4136:e378:8000:63bf:fefe:fefe", true),
            ("::", false),
            ("::1", false),
        ] {
            assert_eq!(
                is_public(address.parse().expect("an address")),
                public,
                "{address}"
            );
        }
    }

    #[test]
    fn listed_networks_and_names_are_allowed() {
        let allowed =
            AllowedHosts::parse(&["127.0.0.0/8".into(), "hooks.internal".into()]).expect("parses");
        assert!(allowed.address_allowed("x", "127.0.0.2".parse().expect("ip")));
        assert!(!allowed.address_allowed("x", "10.0.0.1".parse().expect("ip")));
        assert!(allowed.address_allowed("hooks.internal", "10.0.0.1".parse().expect("ip")));
        assert!(AllowedHosts::parse(&["not a host!".into()]).is_err());
    }

    #[tokio::test]
    async fn a_name_resolving_to_loopback_is_refused_unless_listed() {
        let default = AllowedHosts::default();
        assert!(matches!(
            default.check_url("http://localhost:9/hook").await,
            Err(TargetError::NotAllowed { .. })
        ));
        assert!(matches!(
            default.check_url("http://127.0.0.1:9/hook").await,
            Err(TargetError::NotAllowed { .. })
        ));
        assert!(matches!(
            default.check_url("ftp://example.com/").await,
            Err(TargetError::BadUrl(_))
        ));
        let listed = AllowedHosts::parse(&["localhost".into()]).expect("parses");
        assert!(listed.check_url("http://localhost:9/hook").await.is_ok());
    }

    #[test]
    fn the_signature_is_hmac_sha256_of_time_dot_body() {
        // Python: hmac.new(b"whsec_test", b"1700000000.{}", hashlib.sha256).hexdigest()
        assert_eq!(
            signature("whsec_test", 1_700_000_000, b"{}"),
            "t=1700000000,v1=35495024f4ef3f94e5a93e22221544c4b75e9a42300cd965ab81cb85cd994e91"
        );
    }
}
