//! Network destinations of profiles: a CIDR or a host name, and ports.

use std::net::IpAddr;

/// A validated CIDR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    /// `10.0.0.0/8`, `::1/128`, or a bare address (a host route).
    pub fn parse(s: &str) -> Result<Self, String> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a
            .parse()
            .map_err(|_| format!("`{a}` is not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("prefix length `{p}` is not 0..={max}"))?,
        };
        // IPv4-mapped IPv6 is judged as IPv4.
        if let IpAddr::V6(v6) = addr
            && let Some(v4) = v6.to_ipv4_mapped()
        {
            return Ok(Self {
                addr: IpAddr::V4(v4),
                prefix: prefix.saturating_sub(96),
            });
        }
        Ok(Self { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// An inclusive port range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
}

impl PortRange {
    pub const ALL: Self = Self { lo: 1, hi: 65535 };

    /// `443` or `8000-8100`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let port = |p: &str| {
            p.trim()
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("`{p}` is not a port (1-65535)"))
        };
        let r = match s.split_once('-') {
            Some((lo, hi)) => Self {
                lo: port(lo)?,
                hi: port(hi)?,
            },
            None => {
                let p = port(s)?;
                Self { lo: p, hi: p }
            }
        };
        if r.lo > r.hi {
            return Err(format!("port range `{s}` is empty (start above end)"));
        }
        Ok(r)
    }

    pub fn contains(&self, port: u16) -> bool {
        (self.lo..=self.hi).contains(&port)
    }
}

/// A host name as the daemon will resolve it.
pub fn check_host(h: &str) -> Result<(), String> {
    let ok = !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{h}` is not a DNS host name (no scheme, port or path)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs() {
        let c = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(c.contains("10.1.2.3".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        // IPv4-mapped IPv6 destinations are judged as IPv4.
        assert!(c.contains("::ffff:10.9.9.9".parse().unwrap()));
        assert_eq!(
            Cidr::parse("::ffff:127.0.0.1").unwrap(),
            Cidr::parse("127.0.0.1/32").unwrap()
        );
        assert!(Cidr::parse("::1").unwrap().contains("::1".parse().unwrap()));
        assert!(
            Cidr::parse("0.0.0.0/0")
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
        assert!(Cidr::parse("10.0.0.0/33").unwrap_err().contains("0..=32"));
        assert!(
            Cidr::parse("example.com")
                .unwrap_err()
                .contains("not an IP")
        );
    }

    #[test]
    fn ports_and_hosts() {
        assert_eq!(
            PortRange::parse("443").unwrap(),
            PortRange { lo: 443, hi: 443 }
        );
        assert!(PortRange::parse("8000-8100").unwrap().contains(8080));
        assert!(PortRange::parse("9-1").is_err());
        assert!(PortRange::parse("0").is_err());
        assert!(PortRange::parse("70000").is_err());
        assert!(check_host("api.anthropic.com").is_ok());
        assert!(check_host("https://api.anthropic.com").is_err());
        assert!(check_host("a..b").is_err());
    }
}
