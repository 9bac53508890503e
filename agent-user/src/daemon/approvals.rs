//! Escalation's book: operations an `on_violation: ask` rule holds, waiting for a person
//! (`agentwarden approve|deny`) or their timeout, and the standing grants approvals
//! leave. Pure state: the refusal layer holds the kernel's permission events in it (`W`,
//! the waiter) and answers them with what comes out. Unit-tested without a kernel.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant, SystemTime},
};

use crate::{
    event::{ApprovalOutcome, ApprovalScope, Approver},
    policy::{AskRule, OnTimeout},
};

/// What a request is about: operations on one object under one rule in one session
/// share a request (a second open while the first waits joins it), and a grant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub session_id: u64,
    pub rule_id: u32,
    /// `(st_dev, st_ino)`.
    pub object: (u64, u64),
}

/// A held operation's request, as `agentwarden pending` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// Given by the book when it opens the request.
    pub id: u64,
    pub key: Key,
    /// The process whose operation was held first.
    pub tgid: u32,
    /// `open`, `read`, `exec` or `connect`.
    pub access: &'static str,
    /// The object: a path, or `IP:PORT`.
    pub path: String,
    /// The rule's category: `exec`, `files`, `network` or `tools`.
    pub category: &'static str,
    /// The rule's text where it has no kernel id (a `tools:` rule).
    pub rule_text: Option<String>,
    pub requested: SystemTime,
    pub since: Instant,
    pub rule: AskRule,
}

impl Request {
    /// The request an operation held now would open (its id is the book's to give).
    pub fn new(
        key: Key,
        tgid: u32,
        access: &'static str,
        path: String,
        category: &'static str,
        rule: AskRule,
    ) -> Self {
        Self {
            id: 0,
            key,
            tgid,
            access,
            path,
            category,
            rule_text: None,
            requested: SystemTime::now(),
            since: Instant::now(),
            rule,
        }
    }

    pub fn deadline(&self) -> Instant {
        self.since + self.rule.timeout
    }
}

/// A person's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub allow: bool,
    pub by: Approver,
    pub note: Option<String>,
    pub scope: ApprovalScope,
    /// For [`ApprovalScope::Duration`]: how long the grant stands.
    pub duration: Option<Duration>,
}

/// A request answered (by a person or its timeout), with the operations that waited.
#[derive(Debug)]
pub struct Settled<W> {
    pub request: Request,
    pub waiters: Vec<W>,
    pub outcome: ApprovalOutcome,
    pub allowed: bool,
    pub by: Option<Approver>,
    pub note: Option<String>,
    pub scope: ApprovalScope,
    pub until: Option<SystemTime>,
    pub waited: Duration,
}

/// What became of an operation handed to [`Book::hold`].
#[derive(Debug, PartialEq, Eq)]
pub enum Held {
    /// A standing grant covers it: let it through now.
    Granted,
    /// It waits on a request (new, or one already open for the same key).
    Waiting { id: u64, new: bool },
    /// Too many requests are open: refused at once (counted, never held unbounded).
    Full,
}

/// Open requests at most; past it an `ask` is refused at once. Each holds processes in
/// the kernel, and a flood must not pile up unbounded.
pub const MAX_PENDING: usize = 1_024;

/// A waiting operation: the process an approval goes on for, and the waiter.
type Waiting<W> = (Option<u32>, W);

/// Pending requests and standing grants.
#[derive(Debug)]
pub struct Book<W> {
    next: u64,
    /// Requests, with each waiting operation's process (where an approval goes on for
    /// it: see [`Book::hold`]).
    pending: BTreeMap<u64, (Request, Vec<Waiting<W>>)>,
    /// Grants by key, for every process of the session (`None`) or for one: until when
    /// (`None`: for the session's or the process's life).
    grants: BTreeMap<(Key, Option<u32>), Option<Instant>>,
}

impl<W> Default for Book<W> {
    fn default() -> Self {
        Self {
            next: 1,
            pending: BTreeMap::new(),
            grants: BTreeMap::new(),
        }
    }
}

/// Why an answer changed nothing.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum AnswerError {
    #[error(
        "no pending request {0}: it was answered, timed out, or never made (see `agentwarden pending`)"
    )]
    NotPending(u64),
    #[error("a denial has no scope: it answers the operations waiting now")]
    ScopedDenial,
    #[error("`--for` needs a duration of at most 24h")]
    BadDuration,
}

impl<W> Book<W> {
    /// Holds `waiter` (an operation described by `request`, held at `request.since`), or
    /// says it need not or cannot wait; `request` is opened only when no request for
    /// its key is open already. `tgid`: the process an approval goes on for (its reads
    /// of the file it opened, the loading of the program it executed are the same
    /// action); `None` where each operation is its own (a connection, a tool call).
    pub fn hold(
        &mut self,
        tgid: Option<u32>,
        waiter: W,
        mut request: Request,
    ) -> (Held, Option<W>) {
        let (key, now) = (request.key, request.since);
        for g in [Some((key, None)), tgid.map(|t| (key, Some(t)))]
            .into_iter()
            .flatten()
        {
            match self.grants.get(&g) {
                Some(None) => return (Held::Granted, Some(waiter)),
                Some(Some(until)) if *until > now => return (Held::Granted, Some(waiter)),
                Some(Some(_)) => {
                    self.grants.remove(&g);
                }
                None => {}
            }
        }
        if let Some((id, (_, waiters))) = self.pending.iter_mut().find(|(_, (r, _))| r.key == key) {
            waiters.push((tgid, waiter));
            return (
                Held::Waiting {
                    id: *id,
                    new: false,
                },
                None,
            );
        }
        if self.pending.len() >= MAX_PENDING {
            return (Held::Full, Some(waiter));
        }
        let id = self.next;
        self.next += 1;
        request.id = id;
        self.pending.insert(id, (request, vec![(tgid, waiter)]));
        (Held::Waiting { id, new: true }, None)
    }

    /// An operation let through goes on for its processes: the reads of the file they
    /// opened, the loading of the program they executed (each its own permission event)
    /// are the same action, not new ones to ask about.
    fn grant_processes(&mut self, key: Key, waiters: &[Waiting<W>]) {
        for tgid in waiters.iter().filter_map(|(t, _)| *t) {
            self.grants.insert((key, Some(tgid)), None);
        }
    }

    /// A person's answer to request `id`.
    pub fn answer(&mut self, id: u64, a: Answer, now: Instant) -> Result<Settled<W>, AnswerError> {
        if !a.allow && a.scope != ApprovalScope::Once {
            return Err(AnswerError::ScopedDenial);
        }
        let until = match (a.scope, a.duration) {
            (ApprovalScope::Duration, Some(d))
                if !d.is_zero() && d <= Duration::from_secs(86_400) =>
            {
                Some(d)
            }
            (ApprovalScope::Duration, _) => return Err(AnswerError::BadDuration),
            _ => None,
        };
        let (request, waiters) = self
            .pending
            .remove(&id)
            .ok_or(AnswerError::NotPending(id))?;
        if a.allow {
            self.grant_processes(request.key, &waiters);
            match a.scope {
                ApprovalScope::Once => {}
                ApprovalScope::Session => {
                    self.grants.insert((request.key, None), None);
                }
                ApprovalScope::Duration => {
                    self.grants
                        .insert((request.key, None), until.map(|d| now + d));
                }
            }
        }
        Ok(Settled {
            waited: now.saturating_duration_since(request.since),
            request,
            waiters: waiters.into_iter().map(|(_, w)| w).collect(),
            outcome: if a.allow {
                ApprovalOutcome::Approved
            } else {
                ApprovalOutcome::Denied
            },
            allowed: a.allow,
            by: Some(a.by),
            note: a.note,
            scope: a.scope,
            until: until.map(|d| SystemTime::now() + d),
        })
    }

    /// Requests past their deadline, answered by their rule's `on_timeout`.
    pub fn expire(&mut self, now: Instant) -> Vec<Settled<W>> {
        let due: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, (r, _))| r.deadline() <= now)
            .map(|(id, _)| *id)
            .collect();
        let mut out = Vec::new();
        for id in due {
            let Some((request, waiters)) = self.pending.remove(&id) else {
                continue;
            };
            let allowed = request.rule.on_timeout == OnTimeout::Allow;
            if allowed {
                self.grant_processes(request.key, &waiters);
            }
            out.push(Settled {
                waited: now.saturating_duration_since(request.since),
                request,
                waiters: waiters.into_iter().map(|(_, w)| w).collect(),
                outcome: ApprovalOutcome::TimedOut,
                allowed,
                by: None,
                note: None,
                scope: ApprovalScope::Once,
                until: None,
            });
        }
        out
    }

    /// The earliest deadline of an open request.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.pending.values().map(|(r, _)| r.deadline()).min()
    }

    /// Request `id` while it is open, with how many operations wait on it.
    pub fn get(&self, id: u64) -> Option<(Request, usize)> {
        self.pending.get(&id).map(|(r, w)| (r.clone(), w.len()))
    }

    /// Open requests, oldest first, with how many operations wait on each.
    pub fn list(&self) -> Vec<(Request, usize)> {
        self.pending
            .values()
            .map(|(r, w)| (r.clone(), w.len()))
            .collect()
    }

    /// Forgets the grants of ended sessions and processes (and those expired).
    pub fn forget(
        &mut self,
        session_live: impl Fn(u64) -> bool,
        process_live: impl Fn(u32) -> bool,
        now: Instant,
    ) {
        self.grants.retain(|(k, tgid), until| {
            session_live(k.session_id)
                && tgid.is_none_or(&process_live)
                && until.is_none_or(|u| u > now)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(object: u64) -> Key {
        Key {
            session_id: 7,
            rule_id: 3,
            object: (1, object),
        }
    }

    /// A read of `/x` held at `now`.
    fn request(key: Key, now: Instant, secs: u64, on_timeout: OnTimeout) -> Request {
        let rule = AskRule {
            timeout: Duration::from_secs(secs),
            on_timeout,
        };
        Request {
            since: now,
            ..Request::new(key, 100, "open", "/x".into(), "files", rule)
        }
    }

    fn by() -> Approver {
        Approver {
            via: "control".into(),
            uid: Some(0),
            user: Some("root".into()),
            pid: Some(1),
        }
    }

    fn answer(allow: bool, scope: ApprovalScope, duration: Option<Duration>) -> Answer {
        Answer {
            allow,
            by: by(),
            note: Some("ok".into()),
            scope,
            duration,
        }
    }

    /// Operations on one object join one request; one answer settles them all; an
    /// answer to a settled request changes nothing.
    #[test]
    fn waiters_on_one_object_share_a_request_and_its_answer() {
        let now = Instant::now();
        let mut b: Book<&str> = Book::default();
        let mk = || request(key(1), now, 60, OnTimeout::Deny);
        assert_eq!(
            b.hold(Some(101), "a", mk()).0,
            Held::Waiting { id: 1, new: true }
        );
        assert_eq!(
            b.hold(Some(102), "b", request(key(1), now, 60, OnTimeout::Deny))
                .0,
            Held::Waiting { id: 1, new: false }
        );
        let other = || request(key(2), now, 60, OnTimeout::Deny);
        assert_eq!(
            b.hold(Some(103), "c", other()).0,
            Held::Waiting { id: 2, new: true }
        );
        let s = b
            .answer(1, answer(true, ApprovalScope::Once, None), now)
            .unwrap();
        assert_eq!((s.waiters, s.allowed), (vec!["a", "b"], true));
        assert_eq!(
            b.answer(1, answer(false, ApprovalScope::Once, None), now)
                .unwrap_err(),
            AnswerError::NotPending(1)
        );
        // The approved processes go on (their reads of what they opened are the same
        // action); `once` leaves no grant for another process: it asks again.
        assert_eq!(
            b.hold(Some(102), "b2", request(key(1), now, 60, OnTimeout::Deny))
                .0,
            Held::Granted
        );
        let mk = || request(key(1), now, 60, OnTimeout::Deny);
        assert_eq!(
            b.hold(Some(104), "d", mk()).0,
            Held::Waiting { id: 3, new: true }
        );
        assert_eq!(b.list().len(), 2);
    }

    /// A session grant lets the same object through without asking; a timed grant until
    /// it runs out; neither reaches another object or session; a denial takes no scope.
    #[test]
    fn grants_reach_their_key_for_their_time() {
        let now = Instant::now();
        let mut b: Book<u32> = Book::default();
        b.hold(Some(101), 1, request(key(1), now, 60, OnTimeout::Deny));
        b.answer(1, answer(true, ApprovalScope::Session, None), now)
            .unwrap();
        assert_eq!(
            b.hold(Some(102), 2, request(key(1), now, 60, OnTimeout::Deny))
                .0,
            Held::Granted
        );
        let other = Key {
            session_id: 8,
            ..key(1)
        };
        let (h, _) = b.hold(Some(103), 3, request(other, now, 60, OnTimeout::Deny));
        assert!(matches!(h, Held::Waiting { new: true, .. }));
        b.hold(Some(104), 4, request(key(2), now, 60, OnTimeout::Deny));
        let ten = Duration::from_secs(10);
        assert_eq!(
            b.answer(3, answer(false, ApprovalScope::Session, None), now)
                .unwrap_err(),
            AnswerError::ScopedDenial
        );
        assert_eq!(
            b.answer(3, answer(true, ApprovalScope::Duration, None), now)
                .unwrap_err(),
            AnswerError::BadDuration
        );
        b.answer(3, answer(true, ApprovalScope::Duration, Some(ten)), now)
            .unwrap();
        assert_eq!(
            b.hold(Some(105), 5, request(key(2), now, 60, OnTimeout::Deny))
                .0,
            Held::Granted
        );
        let later = now + ten + Duration::from_secs(1);
        let (h, _) = b.hold(Some(106), 6, request(key(2), later, 60, OnTimeout::Deny));
        assert!(matches!(h, Held::Waiting { new: true, .. }));
        b.forget(|sid| sid != 7, |_| true, later);
        let (h, _) = b.hold(Some(107), 7, request(key(1), later, 60, OnTimeout::Deny));
        assert!(
            matches!(h, Held::Waiting { new: true, .. }),
            "grant of an ended session"
        );
    }

    /// An unanswered request is settled by its rule's `on_timeout` at its deadline, not
    /// before.
    #[test]
    fn timeouts_settle_by_the_rule() {
        let now = Instant::now();
        let mut b: Book<u32> = Book::default();
        b.hold(Some(101), 1, request(key(1), now, 5, OnTimeout::Deny));
        b.hold(Some(102), 2, request(key(2), now, 10, OnTimeout::Allow));
        assert_eq!(b.next_deadline(), Some(now + Duration::from_secs(5)));
        assert!(b.expire(now + Duration::from_secs(4)).is_empty());
        let s = b.expire(now + Duration::from_secs(5));
        assert_eq!(s.len(), 1);
        assert_eq!(
            (s[0].outcome, s[0].allowed, s[0].by.is_none()),
            (ApprovalOutcome::TimedOut, false, true)
        );
        let s = b.expire(now + Duration::from_secs(11));
        assert_eq!((s[0].request.id, s[0].allowed), (2, true));
        assert_eq!(b.next_deadline(), None);
    }

    #[test]
    fn a_flood_is_refused_past_the_bound() {
        let now = Instant::now();
        let mut b: Book<u64> = Book::default();
        for i in 0..MAX_PENDING as u64 {
            b.hold(
                Some(100 + i as u32),
                i,
                request(key(i), now, 60, OnTimeout::Deny),
            );
        }
        let k = key(u64::MAX);
        let (h, back) = b.hold(Some(109), 9, request(k, now, 60, OnTimeout::Deny));
        assert_eq!((h, back), (Held::Full, Some(9)));
    }
}
