//! Who the client is behind a balancer: `SECKILL_TRUSTED_PROXIES` lists the
//! networks whose word about the client is believed.
//!
//! A request from an untrusted peer is that peer's, whatever headers it
//! sends. A request from a trusted peer names its client in `Forwarded`
//! (RFC 7239, preferred when present) or `X-Forwarded-For`: the hops are
//! read from the right (the one the trusted peer appended) leftwards,
//! skipping trusted proxies; the first untrusted hop is the client. Hops
//! further left were written by the client itself and prove nothing, so a
//! shopper cannot buy a fresh per-IP budget by sending the header. When a
//! hop cannot be read (`unknown`, an obfuscated name, garbage), the last
//! trusted address stands for the client.

use std::{fmt, net::IpAddr, str::FromStr};

use axum::http::{header, HeaderMap};

/// A network in CIDR notation (`10.0.0.0/8`, `::1/128`); a bare address is
/// its own /32 or /128.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Network {
    addr: IpAddr,
    prefix: u8,
}

impl Network {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                masked(u32::from(net).into(), self.prefix, 32)
                    == masked(u32::from(ip).into(), self.prefix, 32)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                masked(net.into(), self.prefix, 128) == masked(ip.into(), self.prefix, 128)
            }
            _ => false,
        }
    }
}

/// The top `prefix` bits of a `width`-bit address.
fn masked(bits: u128, prefix: u8, width: u8) -> u128 {
    if prefix == 0 {
        0
    } else {
        bits >> (width - prefix)
    }
}

/// IPv4-mapped IPv6 (`::ffff:10.0.0.1`, what a dual-stack socket reports)
/// as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

impl FromStr for Network {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s, None),
        };
        let addr = canonical(
            addr.parse::<IpAddr>()
                .map_err(|_| format!("{s:?} is not an address or a network"))?,
        );
        let width = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => width,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= width)
                .ok_or_else(|| format!("{s:?}: the prefix length must be in 0..={width}"))?,
        };
        Ok(Self { addr, prefix })
    }
}

impl fmt::Debug for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// The networks whose forwarding headers are believed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<Network>);

impl FromStr for TrustedProxies {
    type Err = String;

    /// A comma-separated list of networks; empty trusts nobody.
    fn from_str(s: &str) -> Result<Self, String> {
        s.split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(Network::from_str)
            .collect::<Result<_, _>>()
            .map(Self)
    }
}

impl TrustedProxies {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|n| n.contains(ip))
    }

    /// The client of a request that arrived from `peer` with `headers`.
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = canonical(peer);
        if !self.contains(peer) {
            return peer;
        }
        if headers.contains_key(header::FORWARDED) {
            let hops = headers
                .get_all(header::FORWARDED)
                .iter()
                .flat_map(|v| v.to_str().unwrap_or("").split(','))
                .map(forwarded_for);
            return self.first_untrusted(peer, hops);
        }
        let hops = headers
            .get_all("x-forwarded-for")
            .iter()
            .flat_map(|v| v.to_str().unwrap_or("").split(','))
            .map(|hop| parse_node(hop.trim()));
        self.first_untrusted(peer, hops)
    }

    /// Walks the hops right to left from a trusted `peer`.
    fn first_untrusted(
        &self,
        peer: IpAddr,
        hops: impl DoubleEndedIterator<Item = Option<IpAddr>>,
    ) -> IpAddr {
        let mut client = peer;
        for hop in hops.rev() {
            match hop {
                Some(ip) => {
                    client = canonical(ip);
                    if !self.contains(client) {
                        return client;
                    }
                }
                None => return client,
            }
        }
        client
    }
}

/// The `for=` of one `Forwarded` element (`for=192.0.2.60;proto=http`).
fn forwarded_for(element: &str) -> Option<IpAddr> {
    element.split(';').find_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("for")
            .then(|| parse_node(value.trim().trim_matches('"')))?
    })
}

/// An address as forwarding headers write it: `192.0.2.1`, `192.0.2.1:8080`,
/// `2001:db8::1`, `[2001:db8::1]`, `[2001:db8::1]:4711`.
fn parse_node(node: &str) -> Option<IpAddr> {
    if let Ok(ip) = node.parse() {
        return Some(ip);
    }
    if let Some(rest) = node.strip_prefix('[') {
        return rest.split_once(']')?.0.parse().ok();
    }
    let (host, port) = node.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    host.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, value.parse().unwrap());
        }
        map
    }

    fn trusted(s: &str) -> TrustedProxies {
        s.parse().unwrap()
    }

    #[test]
    fn networks_parse_and_match() {
        let t = trusted("10.0.0.0/8, 192.168.1.7, fd00::/8, 0.0.0.0/0");
        assert!(t.contains(ip("10.255.0.1")) && t.contains(ip("203.0.113.9")));
        let t = trusted("10.0.0.0/8,192.168.1.7,fd00::/8");
        assert!(t.contains(ip("::ffff:10.1.1.1")), "v4-mapped peers match");
        assert!(t.contains(ip("fd12::1")) && !t.contains(ip("fe80::1")));
        assert!(t.contains(ip("192.168.1.7")) && !t.contains(ip("192.168.1.8")));
        assert!("10.0.0.0/33".parse::<TrustedProxies>().is_err());
        assert!("10.0.0/8".parse::<TrustedProxies>().is_err());
        assert!("".parse::<TrustedProxies>().unwrap().is_empty());
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_says() {
        let t = trusted("10.0.0.0/8");
        let h = headers(&[("x-forwarded-for", "1.2.3.4"), ("forwarded", "for=5.6.7.8")]);
        assert_eq!(t.client(ip("203.0.113.5"), &h), ip("203.0.113.5"));
        assert_eq!(
            TrustedProxies::default().client(ip("10.0.0.1"), &h),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn the_right_most_untrusted_hop_is_the_client() {
        let t = trusted("10.0.0.0/8");
        let peer = ip("10.0.0.2");
        // The client forged the left-most entry; the balancer appended the real one.
        let h = headers(&[("x-forwarded-for", "6.6.6.6, 198.51.100.7, 10.0.0.9")]);
        assert_eq!(t.client(peer, &h), ip("198.51.100.7"));
        let h = headers(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-for", "198.51.100.7:5123"),
        ]);
        assert_eq!(
            t.client(peer, &h),
            ip("198.51.100.7"),
            "several headers, ports"
        );
        let h = headers(&[("x-forwarded-for", "10.1.1.1, 10.2.2.2")]);
        assert_eq!(
            t.client(peer, &h),
            ip("10.1.1.1"),
            "all trusted: the farthest"
        );
        let h = headers(&[("x-forwarded-for", "198.51.100.7, garbage, 10.3.3.3")]);
        assert_eq!(
            t.client(peer, &h),
            ip("10.3.3.3"),
            "unreadable: the last trusted"
        );
        assert_eq!(
            t.client(peer, &HeaderMap::new()),
            peer,
            "no header: the peer"
        );
    }

    #[test]
    fn forwarded_is_preferred_and_parsed() {
        let t = trusted("10.0.0.0/8");
        let h = headers(&[
            ("x-forwarded-for", "1.1.1.1"),
            (
                "forwarded",
                r#"for=6.6.6.6, for="[2001:db8::7]:4711";proto=https, for=10.0.0.3"#,
            ),
        ]);
        assert_eq!(t.client(ip("10.0.0.2"), &h), ip("2001:db8::7"));
        let h = headers(&[("forwarded", "proto=http;For=198.51.100.1:80")]);
        assert_eq!(t.client(ip("10.0.0.2"), &h), ip("198.51.100.1"));
        let h = headers(&[("forwarded", "for=unknown")]);
        assert_eq!(t.client(ip("10.0.0.2"), &h), ip("10.0.0.2"));
    }
}
