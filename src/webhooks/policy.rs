//! Where deliveries may go (SPEC §13): `http` or `https` URLs without credentials; never a
//! link-local, cloud-metadata, multicast, broadcast or unspecified address; loopback and
//! private ranges only when the operator allows them (`--webhooks-allow-private`).
//!
//! The address is checked after DNS resolution, by the resolver the delivery client uses
//! ([`CheckedResolver`]), so the connection goes to an address that was checked: a name that
//! resolves to a public address when the webhook is saved and to 127.0.0.1 at delivery time
//! (DNS rebinding) is refused at delivery time. Literal addresses never reach a resolver, so
//! [`check_url`] checks them itself.
use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Longest webhook URL.
pub const MAX_URL: usize = 2048;

/// Why an address is refused, or `None` when deliveries may go there.
pub fn refusal(ip: IpAddr, allow_private: bool) -> Option<&'static str> {
    let ip = match ip {
        IpAddr::V6(v6) => match embedded_v4(v6) {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    };
    let (always, private) = match ip {
        IpAddr::V4(v4) => (always_refused_v4(v4), private_v4(v4)),
        IpAddr::V6(v6) => (always_refused_v6(v6), private_v6(v6)),
    };
    if always.is_some() {
        return always;
    }
    if private && !allow_private {
        return Some("a loopback or private address (allowed only with --webhooks-allow-private)");
    }
    None
}

/// The IPv4 address an IPv6 one carries, where it reaches it: IPv4-mapped (`::ffff:a.b.c.d`),
/// IPv4-compatible (`::a.b.c.d`), NAT64 (`64:ff9b::/96`, `64:ff9b:1::/48`) and 6to4
/// (`2002:AABB:CCDD::/48`). Those are judged as the IPv4 address, so `[64:ff9b::a00:1]` is
/// 10.0.0.1 to the policy.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return Some(v4);
    }
    let s = ip.segments();
    let [a, b] = s[6].to_be_bytes();
    let [c, d] = s[7].to_be_bytes();
    let low = Ipv4Addr::new(a, b, c, d);
    let compatible = s[..6] == [0; 6] && !ip.is_loopback() && !ip.is_unspecified();
    let nat64 = s[0] == 0x64 && s[1] == 0xff9b && (s[2..6] == [0; 4] || s[2] == 1);
    if compatible || nat64 {
        return Some(low);
    }
    if s[0] == 0x2002 {
        let [a, b] = s[1].to_be_bytes();
        let [c, d] = s[2].to_be_bytes();
        return Some(Ipv4Addr::new(a, b, c, d));
    }
    None
}

fn always_refused_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    if ip.is_link_local() {
        Some("a link-local address (cloud metadata services live there)")
    } else if o == [100, 100, 100, 200] || o == [192, 0, 0, 192] {
        Some("a cloud metadata address")
    } else if ip.is_unspecified() || o[0] == 0 {
        Some("an unspecified address")
    } else if ip.is_multicast() || ip.is_broadcast() || o[0] >= 240 {
        Some("a multicast, broadcast or reserved address")
    } else {
        None
    }
}

fn private_v4(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        // Carrier-grade NAT (RFC 6598) and the IETF protocol block (RFC 6890).
        || (o[0] == 100 && (64..128).contains(&o[1]))
        || (o[0] == 192 && o[1] == 0 && o[2] == 0)
        // Benchmarking (RFC 2544).
        || (o[0] == 198 && (o[1] == 18 || o[1] == 19))
}

fn always_refused_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    if (s[0] & 0xffc0) == 0xfe80 {
        Some("a link-local address (cloud metadata services live there)")
    } else if s[0] == 0xfd00 && s[1] == 0x0ec2 {
        Some("a cloud metadata address")
    } else if ip.is_unspecified() {
        Some("an unspecified address")
    } else if ip.is_multicast() {
        Some("a multicast address")
    } else {
        None
    }
}

fn private_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    ip.is_loopback()
        // Unique local addresses (fc00::/7) and the old site-local ones (fec0::/10).
        || (s[0] & 0xfe00) == 0xfc00
        || (s[0] & 0xffc0) == 0xfec0
}

/// Checks a webhook URL as given: its form, and its address when it is a literal one. `Err`
/// says what is wrong, for a 422 or a delivery's error.
pub fn check_url(raw: &str, allow_private: bool) -> Result<Url, String> {
    if raw.len() > MAX_URL {
        return Err(format!("must be at most {MAX_URL} characters"));
    }
    let url = Url::parse(raw.trim()).map_err(|e| format!("is not a valid URL ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("must be an http or https URL".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry credentials (put a token in the webhook's headers)".into());
    }
    let ip = match url.host() {
        None => return Err("must name a host".into()),
        Some(url::Host::Domain(_)) => None,
        Some(url::Host::Ipv4(v4)) => Some(IpAddr::V4(v4)),
        Some(url::Host::Ipv6(v6)) => Some(IpAddr::V6(v6)),
    };
    if let Some(ip) = ip
        && let Some(why) = refusal(ip, allow_private)
    {
        return Err(format!("points at {ip}, {why}"));
    }
    Ok(url)
}

/// The delivery client's resolver: the system's, keeping only the addresses the policy
/// allows. A name with none left fails to resolve, with the reason.
#[derive(Debug, Clone, Copy)]
pub struct CheckedResolver {
    pub allow_private: bool,
}

impl Resolve for CheckedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_private = self.allow_private;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut refused = None;
            let allowed: Vec<SocketAddr> = found
                .into_iter()
                .filter(|a| match refusal(a.ip(), allow_private) {
                    None => true,
                    Some(why) => {
                        refused.get_or_insert((a.ip(), why));
                        false
                    }
                })
                .collect();
            if allowed.is_empty() {
                let detail = match refused {
                    Some((ip, why)) => format!("{host} resolves to {ip}, {why}"),
                    None => format!("{host} has no address"),
                };
                return Err(detail.into());
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn metadata_and_link_local_are_refused_even_when_private_is_allowed() {
        for a in [
            "169.254.169.254",
            "169.254.0.1",
            "fe80::1",
            "fd00:ec2::254",
            "100.100.100.200",
            "0.0.0.0",
            "::",
            "224.0.0.1",
            "255.255.255.255",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "2002:a9fe:a9fe::",
            "::169.254.169.254",
        ] {
            assert!(refusal(ip(a), true).is_some(), "{a}");
            assert!(refusal(ip(a), false).is_some(), "{a}");
        }
    }

    #[test]
    fn loopback_and_private_need_the_switch() {
        for a in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "100.64.0.1",
            "::1",
            "fd12::1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
            "64:ff9b:1::a00:1",
            "2002:a00:1::",
            "::10.0.0.1",
        ] {
            assert!(refusal(ip(a), false).is_some(), "{a}");
            assert_eq!(refusal(ip(a), true), None, "{a}");
        }
        for a in [
            "93.184.216.34",
            "2606:2800:220:1::1",
            "172.32.0.1",
            "64:ff9b::5db8:d822",
        ] {
            assert_eq!(refusal(ip(a), false), None, "{a}");
        }
    }

    #[test]
    fn urls_are_checked_for_scheme_credentials_and_literal_addresses() {
        assert!(check_url("https://example.com/hook", false).is_ok());
        assert!(check_url("http://127.0.0.1:9000/", true).is_ok());
        for bad in [
            "ftp://example.com/",
            "file:///etc/passwd",
            "javascript:alert(1)",
            "https://user:pw@example.com/",
            "https://user@example.com/",
            "http://127.0.0.1/",
            "http://[::1]/",
            "http://169.254.169.254/latest/meta-data",
            "http://2130706433/",
            "not a url",
            "",
        ] {
            assert!(check_url(bad, false).is_err(), "{bad}");
        }
        assert!(check_url("http://169.254.169.254/", true).is_err());
    }
}
