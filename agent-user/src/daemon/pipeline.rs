//! What happens to each kernel record, in a straight line: decode → attribute → decide
//! (what the kernel left undecided) → respond → sinks; and the sweeper's work on the
//! same state (reconciliation, loss reports).

use super::*;

impl Core {
    /// Consumes up to `max` records from the ring buffer; true when it stopped at `max`
    /// (records may remain).
    pub(super) fn drain(&mut self, max: usize) -> bool {
        let Some(mut ring) = self.kernel.ring.take() else {
            return false;
        };
        let mut n = 0;
        while n < max
            && let Some(item) = ring.next()
        {
            self.handle_record(&item);
            n += 1;
        }
        self.kernel.ring = Some(ring);
        self.flush_sinks();
        n == max
    }

    /// Hands what this drain (or request) produced to the sinks: the event log's buffer
    /// to the file, the audit records to the writer in one batch.
    pub(super) fn flush_sinks(&mut self) {
        self.sinks.flush();
    }

    /// One record, in a straight line: decode → attribute → decide (what the kernel
    /// left undecided) → respond (a child it could not track) → sinks.
    pub(super) fn handle_record(&mut self, bytes: &[u8]) {
        self.counters.records_read += 1;
        // A new cgroup (container label selectors): context, not an event.
        if agent_common::event::decode::header(bytes)
            .is_some_and(|h| h.kind == agent_common::event::EventKind::CgroupCreated as u32)
        {
            match agent_common::event::decode::read_record::<agent_common::event::CgroupEvent>(
                bytes,
                std::mem::size_of::<agent_common::event::CgroupEvent>(),
            ) {
                Ok(c) => self.cgroup_created(&c),
                Err(e) => {
                    self.counters.decode_errors += 1;
                    warn!(error = %e, "undecodable cgroup record");
                }
            }
            return;
        }
        let raw = match event::decode_reusing(bytes, &mut self.spare) {
            Ok(r) => r,
            Err(e) => {
                self.counters.decode_errors += 1;
                warn!(error = %e, "undecodable ring-buffer record");
                return;
            }
        };
        let h = *raw.header();
        // A session the kernel started (a `match:` selector): known before its record
        // becomes its `session_start`.
        if let Raw::Enrolment(e) = &raw {
            self.selector_enrolled(e);
            // A process held for its container's lookup: resumed, its session (if any)
            // started by the daemon.
            if e.selector == agent_common::selector::HELD {
                self.spare.keep(raw);
                return;
            }
        }
        let mut ev = self.attribution.event(&raw, &self.rules);
        self.decide_in_userspace(&mut ev, h.session_id);
        self.judge_in_shadow(&mut ev, h.session_id);
        // A refusal inside a tool call is kept for the call's end, when the agent's hook
        // asks what to tell the model.
        if let (Some(d), Some(ctx)) = (&ev.decision, &ev.context)
            && d.action.refused()
        {
            let line = super::context::refusal_line(&ev, d);
            self.attribution.calls.refused(h.session_id, ctx, line);
        }
        if let Raw::SessionMapFull(f) = &raw {
            self.untracked_child(&mut ev, h.session_id, f.child_tgid, h.ktime_ns);
        }
        self.emit(ev);
        if let Some((sid, now)) = self.attribution.ended_by(&raw) {
            self.session_end(sid, now);
        }
        self.spare.keep(raw);
    }

    /// What the refusal layer sent: a refusal in the kernel's format, or the answer to
    /// a held operation (its approval row).
    pub(super) fn handle_notice(&mut self, n: refusal::Notice) {
        match n {
            refusal::Notice::Record(bytes) => self.handle_record(&bytes),
            refusal::Notice::Approval(a) => {
                let refusal::ApprovalNotice {
                    session_id,
                    tgid,
                    rule_id,
                    category,
                    rule_text,
                    process,
                    time,
                    info,
                } = *a;
                let allowed = info.allowed;
                let mut ev = Event::new(
                    crate::event::Body::Approval(info),
                    time,
                    self.attribution.session_ref(session_id),
                );
                ev.process = process
                    .map(|mut p| {
                        p.user = self.attribution.users.name(p.uid);
                        p
                    })
                    .or_else(|| self.attribution.process_info(tgid));
                ev.context = self.attribution.calls.context_of(session_id, tgid);
                ev.decision = Some(crate::event::DecisionInfo {
                    decision: agent_common::vocab::Verdict::Deny,
                    action: if allowed {
                        agent_common::vocab::Action::Approved
                    } else {
                        agent_common::vocab::Action::Blocked
                    },
                    rule: rule_text.unwrap_or_else(|| self.rules.describe(rule_id, category)),
                    enforced_by: agent_common::vocab::Layer::Fanotify,
                });
                self.emit(ev);
            }
        }
    }

    /// The profile session `sid` runs under.
    pub(super) fn profile_of(&self, sid: u64) -> Option<&Profile> {
        self.profiles
            .get(&self.attribution.registry.get(sid)?.profile)
    }

    /// A child of the session that the kernel could not track: in an enforce-mode
    /// session it is killed (it would run outside its profile), in monitor mode recorded.
    pub(super) fn untracked_child(&mut self, ev: &mut Event, sid: u64, child: u32, forked_ns: u64) {
        let enforce = self
            .profile_of(sid)
            .is_some_and(|p| p.file.mode == policy::Mode::Enforce);
        let outcome = enforce.then(|| overflow::kill_untracked(child, forked_ns));
        if let Some(Err(e)) = &outcome {
            warn!(child, error = %e, "could not kill a child the kernel could not track");
        }
        ev.decision = Some(decide::untracked_child(outcome.map(|o| o.ok())));
    }

    /// Exec and file decisions the kernel does not take: judged here against the
    /// session's profile (see [`decide::userspace`]).
    pub(super) fn decide_in_userspace(&mut self, ev: &mut Event, sid: u64) {
        let Some(s) = self.attribution.registry.get(sid) else {
            return;
        };
        let owner = s.owner_uid;
        let users = &mut self.attribution.users;
        let mut ctx = decide::Context {
            profile: self.profiles.get(&s.profile),
            landlocked: self.landlocked.contains(&sid),
            home: &mut || users.home(owner).unwrap_or_default(),
            registry: &self.attribution.registry,
        };
        decide::userspace(ev, &mut ctx);
        if let Some(p) = ctx.profile {
            decide::asked(ev, p);
        }
    }

    /// The session's agent's shadow profiles (`shadow_of`) judge the action too; where
    /// one would decide otherwise, its verdict is recorded on the event, not enforced.
    pub(super) fn judge_in_shadow(&mut self, ev: &mut Event, sid: u64) {
        let Some(s) = self.attribution.registry.get(sid) else {
            return;
        };
        let mut shadows = self.profiles.shadows_of(&s.profile).peekable();
        if shadows.peek().is_none() {
            return;
        }
        let home = self.attribution.users.home(s.owner_uid).unwrap_or_default();
        let was = crate::drift::replay::recorded(ev);
        for p in shadows {
            let Some(j) = crate::drift::replay::judge(p, &mut self.shadow_names, ev, &home) else {
                continue;
            };
            if j.denied == was.denied {
                continue;
            }
            let decision = if j.denied {
                agent_common::vocab::Verdict::Deny
            } else {
                agent_common::vocab::Verdict::Allow
            };
            *self
                .shadow_counts
                .entry((p.file.name.clone(), decision))
                .or_default() += 1;
            ev.shadow.push(crate::event::ShadowVerdict {
                profile: p.file.name.clone(),
                decision,
                rule: j.rule,
            });
        }
    }

    pub(super) fn emit(&mut self, ev: Event) {
        self.sinks.emit(ev);
    }

    /// The daemon's counters: its own and those the sinks keep.
    pub(super) fn daemon_counters(&self) -> DaemonCounters {
        use std::sync::atomic::Ordering::Relaxed;
        let otlp = self.sinks.otlp.as_ref().map(|q| &q.stats);
        let read = |f: fn(&export::ExportStats) -> &std::sync::atomic::AtomicU64| {
            otlp.map_or(0, |s| f(s).load(Relaxed))
        };
        DaemonCounters {
            events_logged: self.sinks.logged,
            log_write_errors: self.sinks.log_write_errors,
            stdout_dropped: self.sinks.log.stdout_dropped(),
            otlp_exported: read(|s| &s.exported),
            otlp_dropped: read(|s| &s.dropped),
            otlp_errors: read(|s| &s.errors),
            ..self.counters.clone()
        }
    }

    /// Ends session `sid`, or holds its end until the refusal notices offered before now
    /// are recorded: the refusal of its last process may be one of them, and goes into
    /// the trail first.
    pub(super) fn session_end(&mut self, sid: u64, now: SystemTime) {
        // Behind the ends held before it, in order; at once when nothing is held and its
        // mark is passed.
        let mark = self.refusal_counts.mark();
        self.deferred_ends.push_back((sid, now, mark));
        self.release_deferred_ends(false);
    }

    /// Ends, in order, the sessions [`Core::session_end`] held whose refusals are
    /// recorded (every one with `force`: the daemon is stopping).
    pub(super) fn release_deferred_ends(&mut self, force: bool) {
        while let Some(&(sid, now, mark)) = self.deferred_ends.front() {
            if !force && !self.refusal_counts.passed(mark) {
                return;
            }
            self.deferred_ends.pop_front();
            self.end_session_now(sid, now);
        }
    }

    fn end_session_now(&mut self, sid: u64, now: SystemTime) {
        let ev = Event::new(Body::SessionEnd, now, self.attribution.session_ref(sid));
        info!(session = %format_id(sid), "session ended");
        self.attribution.calls.session_ended(sid);
        // The hooks file `run` wrote for a Gemini CLI session, if any.
        let _ = std::fs::remove_file(crate::hooks::gemini::defaults_path(&format_id(sid)));
        self.emit(ev);
        if let Err(e) = self.syscall_programs(None) {
            warn!(error = %format!("{e:#}"), "detaching the syscall programs");
        }
        self.save_manifest();
    }

    /// Ends sessions with no process left in the kernel map. The map is read first and
    /// the ring drained after, so exit events submitted before a removal are handled
    /// (and end their session) before reconciliation looks. Behind a backlog it waits for
    /// a later tick: a session is never ended on a map read older than its records.
    pub(super) fn reconcile(&mut self) {
        let mut snapshot = self.kernel.sessions_snapshot();
        // Entries whose process is gone (an exit the kernel saw before the entry was
        // made, a lost exit record) would keep their session open for ever: every few
        // seconds they are checked against /proc and removed. One that exits between
        // the map read and the check was removed by the kernel already.
        self.stale_sweep = self.stale_sweep.wrapping_add(1);
        if self.stale_sweep.is_multiple_of(STALE_SWEEP_EVERY) {
            let stale: Vec<u32> = snapshot
                .keys()
                .copied()
                .filter(|t| !super::adopt::running(*t))
                .collect();
            for t in stale {
                if self.kernel.sessions.remove(&t).is_ok() {
                    self.counters.stale_entries_removed += 1;
                }
                snapshot.remove(&t);
            }
            // Out of band, at the same pace: agents running outside every session.
            self.scan_unmanaged();
        }
        if self.drain(DRAIN_BATCH) {
            return;
        }
        let now = SystemTime::now();
        for sid in self.attribution.registry.reconcile(&snapshot, now) {
            self.session_end(sid, now);
        }
        // Held ends whose refusals were recorded meanwhile.
        self.release_deferred_ends(false);
    }

    /// Raises an event for every new loss: kernel-side, and records the audit store
    /// could not take (its queue was full).
    pub(super) fn report_losses(&mut self) {
        let mut totals: Vec<(&'static str, u64)> = [
            Stat::RingbufDrops,
            Stat::SessionMapFull,
            Stat::StashFull,
            Stat::SentWhileAbsent,
        ]
        .into_iter()
        .map(|stat| (stat.name(), self.kernel.counter(stat).total))
        .collect();
        totals.push(("audit_dropped", self.sinks.audit.stats().snapshot().dropped));
        totals.push(("stdout_dropped", self.sinks.log.stdout_dropped()));
        if self.sinks.otlp.is_some() {
            totals.push(("otlp_dropped", self.daemon_counters().otlp_dropped));
        }
        // A record refused at decoding (short, unknown kind or decision number) is an
        // action missing from the trail: raised like the kernel's losses.
        totals.push(("decode_errors", self.counters.decode_errors));
        // Refusals the pipeline's queue could not take: the refusal happened, its record
        // is missing.
        if let Some(r) = &self.kernel.policy.refusal {
            totals.push((
                "refusal_records_dropped",
                r.stats
                    .records_dropped
                    .load(std::sync::atomic::Ordering::Relaxed),
            ));
        }
        for (name, total) in totals {
            let seen = self.reported_losses.entry(name.to_owned()).or_insert(0);
            if total > *seen {
                let delta = total - *seen;
                *seen = total;
                warn!(counter = name, delta, total, "events lost");
                let ev = Event::new(
                    Body::Loss(LossInfo {
                        counter: name.to_owned(),
                        delta,
                        total,
                    }),
                    SystemTime::now(),
                    SessionRef::default(),
                );
                self.emit(ev);
            }
        }
        self.save_manifest();
    }
}
