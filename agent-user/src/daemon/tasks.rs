//! The daemon's background tasks: the ring-buffer reader, the sweeper (reconciliation
//! and loss reports), re-binding deny rules to inodes, the DNS refresher for host-name
//! rules, and profile reloads on SIGHUP.

use super::*;

/// After a drain the reader lets records gather this long before it looks again. The
/// kernel signals only when a record lands in an empty ring, so while records wait here
/// the programs wake nobody: under load one wakeup (and one drain) carries a batch
/// instead of one record, which is most of the cost of tracing a busy agent. It bounds
/// how late an event is seen, never whether.
pub(super) const COALESCE: Duration = Duration::from_millis(5);

/// Records handled per hold of the core lock: about 10 ms of work at the daemon's rate on
/// a host, so a control request waits at most that long behind a flood.
pub(super) const DRAIN_BATCH: usize = 1024;

pub(super) async fn read_ring(shared: Arc<Shared>, fd: AsyncFd<OwnedFd>) -> Result<()> {
    loop {
        let mut guard = fd.readable().await?;
        // Clear before draining: a record committed after the drain sets readiness
        // again, so no wakeup is lost (the kernel only signals an empty-to-data edge).
        guard.clear_ready();
        while shared.drain_batch() {
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(COALESCE).await;
    }
}

/// systemd's watchdog (`WatchdogSec=`): `WATCHDOG=1` at half the period while the
/// daemon's core can be locked within it (every record, enrolment and decision goes
/// through it). A deadlocked core or a wedged runtime stops the pings, and systemd
/// restarts the daemon (`Restart=on-failure`).
pub(super) async fn watchdog(shared: Arc<Shared>, period: Duration) {
    let mut tick = tokio::time::interval(period / 2);
    loop {
        tick.tick().await;
        let s = shared.clone();
        let alive = tokio::task::spawn_blocking(move || s.core.try_lock_for(period / 2).is_some())
            .await
            .unwrap_or(false);
        if !alive {
            warn!(
                "watchdog: the daemon's core stayed locked for half the watchdog period; not pinging"
            );
            continue;
        }
        if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]) {
            warn!("sd_notify WATCHDOG=1: {e}");
        }
    }
}

pub(super) async fn sweep(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(SWEEP_PERIOD);
    let mut records = 0;
    loop {
        tick.tick().await;
        let mut core = shared.core();
        core.reconcile();
        if let Some(r) = &core.kernel.policy.refusal {
            // Grants of approvals end with their session.
            let reg = &core.attribution.registry;
            r.escalation
                .forget(|sid| reg.get(sid).is_some_and(|s| s.ended.is_none()));
        }
        core.keep_pins();
        core.report_losses();
        core.flush_sinks();
        let idle = core.counters.records_read == records;
        records = core.counters.records_read;
        drop(core);
        // Only when idle: under load the memory is about to be used again, and pages
        // given back are faulted (and zeroed) straight back in.
        if idle {
            crate::memory::ask_collect();
        }
    }
}

/// Period of re-binding deny rules to the inodes of the files they name.
pub(super) const REBIND_PERIOD: Duration = Duration::from_secs(10);

/// Batches drained ahead of a refusal at most (about a full ring of small records).
const REFUSAL_DRAIN_BATCHES: usize = 256;

/// Refusals of the fanotify layer, through the same pipeline as kernel records (the
/// layer writes them in the kernel's format).
pub(super) async fn refusals(
    shared: Arc<Shared>,
    mut rx: tokio::sync::mpsc::Receiver<refusal::Notice>,
    counts: Arc<refusal::NoticeCounts>,
) {
    while let Some(first) = rx.recv().await {
        // The ring's records were sent before the refusal was decided (the exec that
        // started the refused process, its forks): they go first, so the refusal is
        // attributed to a known process with its lineage. In batches, giving the lock up
        // between them, and at most a ring's worth: a session that refills the ring as
        // fast as it drains (a loop of denied reads) would otherwise keep the lock, and
        // every control request waiting, for as long as it runs.
        for _ in 0..REFUSAL_DRAIN_BATCHES {
            if !shared.drain_batch() {
                break;
            }
            tokio::task::yield_now().await;
        }
        let mut core = shared.core();
        core.handle_notice(first);
        counts.done();
        while let Ok(more) = rx.try_recv() {
            core.handle_notice(more);
            counts.done();
        }
        // The ends of sessions these refusals belonged to follow them.
        core.release_deferred_ends(false);
        core.flush_sinks();
    }
}

/// Keeps the inode binding of deny rules current: a file created or replaced under a
/// denied directory is denied under its other names within one period.
pub(super) async fn rebind_inodes(shared: Arc<Shared>) {
    loop {
        tokio::time::sleep(REBIND_PERIOD).await;
        if let Err(e) = shared.core().kernel.policy.rebind_inodes() {
            warn!(error = %format!("{e:#}"), "re-binding deny rules to inodes failed");
        }
    }
}

/// How often the refresher looks for names added by a reload, between expiries.
pub(super) const DNS_POLL: Duration = Duration::from_secs(5);

/// Resolves the host names of all profiles off the hot path, each again when its answer
/// expires (its TTL), and recompiles the maps when the answers change. Until a name
/// resolves its rule matches nothing (an allow rule then falls back to the default: fail
/// closed); a failed refresh keeps the previous answer and asks again after
/// [`dns::RETRY`].
pub(super) async fn refresh_dns(shared: Arc<Shared>) {
    // Without a resolver configuration (a host before DHCP) the loop goes on: the name
    // servers are read each round, and the resolver is made once there is one.
    let mut resolver: Option<Dns> = None;
    let mut warned = false;
    // From what the core holds: the name servers read at start stay in force until the
    // file is read again.
    let mut answers: HashMap<String, Vec<std::net::IpAddr>> = shared.core().dns.clone();
    let mut due: HashMap<String, tokio::time::Instant> = HashMap::new();
    loop {
        let hosts: BTreeSet<String> = {
            let core = shared.core();
            let set = &core.profiles;
            set.names()
                .iter()
                .filter_map(|n| set.get(n))
                .flat_map(compile::host_names)
                .collect()
        };
        answers.retain(|h, _| h == compile::NAMESERVERS || hosts.contains(h));
        due.retain(|h, _| hosts.contains(h));
        // The system's name servers, re-read each round (DHCP, a VPN or a container
        // runtime rewrites the file); an unreadable file keeps the servers in force.
        match dns::nameservers(&shared.cfg.resolv_conf) {
            Ok(ips) => {
                answers.insert(compile::NAMESERVERS.to_owned(), ips);
            }
            Err(e) => tracing::debug!(error = %format!("{e:#}"), "name servers not re-read"),
        }
        if resolver.is_none() {
            match Dns::new(shared.cfg.dns_server) {
                Ok(d) => resolver = Some(d),
                Err(e) if !warned => {
                    warned = true;
                    warn!(error = %format!("{e:#}"), "no resolver yet: network rules naming hosts stay inactive until there is one");
                }
                Err(_) => {}
            }
        }
        let now = tokio::time::Instant::now();
        // No resolver yet: the names wait (their rules stay inactive).
        if let Some(r) = &resolver {
            for h in &hosts {
                if due.get(h).is_some_and(|t| *t > now) {
                    continue;
                }
                match r.resolve(h).await {
                    Ok((ips, ttl)) => {
                        answers.insert(h.clone(), ips);
                        due.insert(h.clone(), now + ttl);
                    }
                    Err(e) => {
                        tracing::debug!(host = %h, error = %format!("{e:#}"), "lookup failed");
                        answers.entry(h.clone()).or_default();
                        due.insert(h.clone(), now + dns::RETRY);
                    }
                }
            }
        }
        {
            let mut core = shared.core();
            if core.dns != answers {
                core.dns = answers.clone();
                core.shadow_names.set_hosts(answers.clone());
                let set = core.profiles.clone();
                if let Err(e) = core.install_profiles(&set) {
                    warn!(error = %format!("{e:#}"), "recompiling after DNS refresh failed");
                }
            }
        }
        let next = due.values().min().copied().unwrap_or(now + DNS_POLL);
        tokio::time::sleep_until(next.min(tokio::time::Instant::now() + DNS_POLL)).await;
    }
}

/// SIGHUP: re-reads the rules directory over the current set.
pub(super) fn reload_profiles(shared: &Shared) {
    let Some(dir) = &shared.cfg.rules_dir else {
        info!("SIGHUP: no rules directory configured; shipped profiles unchanged");
        return;
    };
    // The files are read and parsed without the lock (the reader keeps draining); the
    // set starts from what is installed, so a file that turned bad keeps its last good
    // version. When compiling into the kernel fails, the userspace set stays the old one;
    // maps written before the failure keep their new entries (the install is not
    // transactional).
    let mut set = shared.core().profiles.clone();
    report_profile_diagnostics(&set.load_dir(dir));
    if let Err(e) = shared.core().install_profiles(&set) {
        warn!(error = %format!("{e:#}"), "compiling profiles into the kernel failed; previous maps kept");
        return;
    }
    info!(profiles = %set.names().join(","), "SIGHUP: profiles reloaded");
}

pub(super) fn report_profile_diagnostics(diags: &[policy::Diagnostic]) {
    for d in diags {
        match d.severity {
            policy::Severity::Error => {
                warn!("profile rejected, last good version kept: {d}");
            }
            policy::Severity::Warning => info!("profile: {d}"),
        }
    }
}
