//! Host names of network rules, resolved off the hot path and refreshed when their
//! records expire (the TTL the answer carried, clamped), so a rule follows its service
//! as the service's addresses change.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use anyhow::{Context as _, Result};
use hickory_resolver::{
    Resolver, TokioResolver,
    config::{NameServerConfig, ResolverConfig},
    net::runtime::TokioRuntimeProvider,
};

/// Bounds of the refresh period: a zero TTL is not a busy loop, a day-long TTL does not
/// pin a stale address for a day.
pub const MIN_REFRESH: Duration = Duration::from_secs(2);
pub const MAX_REFRESH: Duration = Duration::from_secs(300);
/// After a failed lookup: the previous answer stays in force, the name is asked again.
pub const RETRY: Duration = Duration::from_secs(30);

/// The name servers a resolver configuration (`resolv.conf`) names, in its order.
pub fn nameservers(path: &std::path::Path) -> Result<Vec<IpAddr>> {
    let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let (config, _) = hickory_resolver::system_conf::parse_resolv_conf(data)
        .with_context(|| format!("parsing {}", path.display()))?;
    let mut ips: Vec<IpAddr> = Vec::new();
    for ns in config.name_servers() {
        if !ips.contains(&ns.ip) {
            ips.push(ns.ip);
        }
    }
    Ok(ips)
}

pub struct Dns {
    resolver: TokioResolver,
}

impl Dns {
    /// The system's resolver configuration (`/etc/resolv.conf`, `/etc/hosts`), or one
    /// name server (UDP) when given.
    pub fn new(server: Option<SocketAddr>) -> Result<Self> {
        let resolver = match server {
            Some(sa) => {
                let mut ns = NameServerConfig::udp(sa.ip());
                for c in &mut ns.connections {
                    c.port = sa.port();
                }
                let config = ResolverConfig::from_parts(None, Vec::new(), vec![ns]);
                Resolver::builder_with_config(config, TokioRuntimeProvider::default()).build()
            }
            None => TokioResolver::builder_tokio()
                .context("reading the system resolver configuration")?
                .build(),
        }
        .context("building the resolver")?;
        Ok(Self { resolver })
    }

    /// The addresses of `host` and how long they may be used.
    pub async fn resolve(&self, host: &str) -> Result<(Vec<IpAddr>, Duration)> {
        // Absolute: a rule names a host, not something to complete with search domains.
        let fqdn = if host.ends_with('.') {
            host.to_owned()
        } else {
            format!("{host}.")
        };
        let lookup = self
            .resolver
            .lookup_ip(fqdn.as_str())
            .await
            .with_context(|| format!("resolving {host}"))?;
        let ttl = lookup
            .valid_until()
            .saturating_duration_since(std::time::Instant::now());
        let mut ips: Vec<IpAddr> = lookup.iter().collect();
        ips.sort();
        ips.dedup();
        Ok((ips, ttl.clamp(MIN_REFRESH, MAX_REFRESH)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nameservers_are_read_in_order_once_each() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("resolv.conf");
        std::fs::write(
            &path,
            "# generated\nsearch example.com\nnameserver 10.96.0.10\nnameserver ::1\n\
             nameserver 10.96.0.10\noptions ndots:5\n",
        )
        .unwrap();
        assert_eq!(
            nameservers(&path).unwrap(),
            [
                "10.96.0.10".parse::<IpAddr>().unwrap(),
                "::1".parse().unwrap()
            ]
        );
        assert!(nameservers(&dir.path().join("missing")).is_err());
    }
}
