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
