//! The refusal layer for hosts without BPF-LSM: fanotify permission marks on just the
//! objects deny rules name (the bound files and programs, and every directory of a
//! `/dir/**` tree for the files it gains later). The kernel asks the daemon before any
//! open, read or exec of a marked object, by whatever route the process took to it
//! (`openat`, io_uring, `open_by_handle_at`, a `/proc/<pid>/fd` re-open, another mount
//! namespace or chroot, the dynamic loader, a descriptor obtained before enrolment read
//! with `read`, `sendfile`, `splice` or io_uring), and waits for the answer.
//!
//! While a profile denies programs (or names `exec.fileless`), every filesystem is also
//! watched for execs: a copy of a denied program under any name is refused by its
//! SHA-256 (hashed only when a denied program has the file's size), a deleted or
//! `O_TMPFILE` program by `exec.fileless`. A program no session could be refused gets an
//! ignore mark after its first exec, so the round trip is paid once per program.
//!
//! One thread answers: processes outside a session at once, session processes by their
//! profile (`EPERM` for `block`; `kill` also sends SIGKILL first). It never takes the
//! daemon's core lock and never opens a marked object itself, so the daemon's own opens
//! (binding rules to inodes) are answered while the core is held. A refusal is sent on as
//! a record in the kernel's own format (`enforced_by: fanotify`), through the one
//! pipeline every kernel record takes.

use std::{
    collections::HashMap,
    os::{
        fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd},
        unix::fs::OpenOptionsExt,
    },
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use agent_common::{
    event::{
        EventHeader, EventKind, ExecEvent, KPath, KernelVerdict, OpenEvent, OpenSyscall, PATH_MAX,
    },
    policy::CATEGORY_EXEC,
    session::SessionEntry,
    vocab::{Action, Layer},
};
use anyhow::{Context as _, Result};
use aya::maps::{HashMap as BpfHashMap, MapData};
use nix::sys::fanotify::{
    EventFFlags, Fanotify, FanotifyEvent, FanotifyResponse, InitFlags, MarkFlags, MaskFlags,
    Response,
};
use parking_lot::RwLock;
use tracing::warn;

use super::approvals::{Answer, Book, Held, Key, Request, Settled};

/// Every way to the content of a marked object: opening it, reading from a descriptor of
/// it (however obtained), executing it; for directories, the same for their entries.
const MASK: MaskFlags = MaskFlags::FAN_OPEN_PERM
    .union(MaskFlags::FAN_ACCESS_PERM)
    .union(MaskFlags::FAN_OPEN_EXEC_PERM);
const DIR_MASK: MaskFlags = MaskFlags::FAN_EVENT_ON_CHILD.union(MaskFlags::FAN_ONDIR);

/// Directories of `/dir/**` rules marked per tree; a larger tree is marked in part and
/// reported (its unmarked files are met by the kill backstop).
pub const MAX_TREE_DIRS: usize = 1_024;

/// Refused records waiting for the pipeline; past this they are counted as lost.
pub const QUEUE: usize = 4_096;

/// How a profile meets a denial of one category where this layer decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Act {
    /// Refuse with `EPERM`.
    Block,
    /// Refuse, and end the process with SIGKILL before it returns from the call.
    Kill,
    /// Let it happen and record it (`exec.fileless: alert`).
    Alert,
    /// Hold it until a person answers, or the rule's timeout does (`on_violation: ask`).
    Ask(crate::policy::AskRule),
}

/// What the layer sends the pipeline: refusals in the kernel's record format, and the
/// answers to held operations.
#[derive(Debug)]
pub enum Notice {
    Record(Vec<u8>),
    Approval(Box<ApprovalNotice>),
}

/// The pipeline's queue of notices, with counts of those queued and of those the
/// pipeline has recorded (a notice the full queue refused is counted as lost by the
/// layer's stats, and in neither): a session's end waits until every
/// notice offered before it is recorded, so a refusal never lands in the trail after the
/// end of its session (the refused process's exit reaches the ring buffer while its
/// refusal may still be on its way here). The queue is first in, first out, so two
/// counters say it exactly, also under a flood of another session's refusals.
#[derive(Clone, Debug)]
pub struct Records {
    tx: tokio::sync::mpsc::Sender<Notice>,
    counts: Arc<NoticeCounts>,
}

/// Notices offered to the pipeline's queue and notices done with, both only growing.
#[derive(Debug, Default)]
pub struct NoticeCounts {
    offered: AtomicU64,
    done: AtomicU64,
}

impl NoticeCounts {
    /// A mark that [`NoticeCounts::passed`] says is reached once every notice offered
    /// until now is done with.
    pub fn mark(&self) -> u64 {
        self.offered.load(Ordering::SeqCst)
    }

    pub fn passed(&self, mark: u64) -> bool {
        self.done.load(Ordering::SeqCst) >= mark
    }

    /// One more notice recorded by the pipeline.
    pub fn done(&self) {
        self.done.fetch_add(1, Ordering::SeqCst);
    }
}

impl Records {
    pub fn new(tx: tokio::sync::mpsc::Sender<Notice>) -> Self {
        Self {
            tx,
            counts: Arc::default(),
        }
    }

    /// Queues `n` without waiting; `false` when the queue is full or closed.
    pub fn try_send(&self, n: Notice) -> bool {
        if self.tx.try_send(n).is_err() {
            return false;
        }
        // Counted once queued (the pipeline may have recorded it already: `done` runs
        // ahead for a moment, which no mark minds). The refused process is answered
        // only after this, so its exit, and its session's end, come after the count.
        self.counts.offered.fetch_add(1, Ordering::SeqCst);
        true
    }

    pub fn counts(&self) -> Arc<NoticeCounts> {
        self.counts.clone()
    }

    /// Notices in the queue and not yet taken.
    pub fn queued(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }
}

/// A held operation answered: the approval row's content.
#[derive(Debug)]
pub struct ApprovalNotice {
    pub session_id: u64,
    /// The process whose operation was held first.
    pub tgid: u32,
    pub rule_id: u32,
    /// `exec`, `files`, `network` or `tools`: the rule's category.
    pub category: &'static str,
    /// The rule's text where it has no kernel id (a `tools:` rule).
    pub rule_text: Option<String>,
    /// The process, as it was while its operation waited (it may be gone by the time
    /// the row is written).
    pub process: Option<crate::event::ProcessInfo>,
    /// When the answer was given (before the operation went on).
    pub time: std::time::SystemTime,
    pub info: crate::event::ApprovalInfo,
}

/// One held operation.
#[derive(Debug)]
pub enum Waiter {
    /// An open, read or exec the kernel holds for a fanotify answer.
    Kernel(KernelWaiter),
    /// A connection the holding endpoint keeps (`network.on_violation: ask`), or a tool
    /// call its hook holds: told whether to go ahead.
    Reply(tokio::sync::oneshot::Sender<bool>),
}

/// The kernel's permission event (its descriptor is the answer's address, so it stays
/// open until answered) and what the refusal record needs.
#[derive(Debug)]
pub struct KernelWaiter {
    event: FanotifyEvent,
    tgid: u32,
    access: Access,
    session: SessionEntry,
    refused: Refused,
    path: String,
}

/// A deny rule bound to an object: which profile and owner it applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Binding {
    pub profile_id: u32,
    pub owner_uid: u32,
    /// `CATEGORY_EXEC` or `CATEGORY_FILE`.
    pub category: u8,
    pub rule_id: u32,
}

/// What the answering thread decides on: no kernel handles, unit-testable.
#[derive(Clone, Debug, Default)]
pub struct Table {
    /// `(st_dev, st_ino)` of each marked file → the rules naming it.
    pub by_inode: HashMap<(u64, u64), Vec<Binding>>,
    /// `/dir/**` rules as absolute directory paths: files created below after binding.
    pub trees: Vec<(String, Binding)>,
    /// Per profile id: the act for exec and for files (`None`: this layer leaves them to
    /// the others — monitor mode, `alert`).
    pub acts: HashMap<u32, [Option<Act>; 2]>,
    /// SHA-256 of each denied program, by size: an exec of a copy under any name is
    /// matched by content, and a file of another size is let through on a stat.
    pub digests: HashMap<u64, Vec<(Digest, Binding)>>,
    /// Per profile id: how an exec of a program with no name is met, and the rule.
    pub fileless: HashMap<u32, (Act, u32)>,
    /// The daemon's self-protection rules: refused whatever the profile's acts.
    pub always: std::collections::HashSet<u32>,
}

pub type Digest = [u8; 32];

impl Table {
    /// Whether an exec of this file would be let through for every session under any
    /// profile, now and until the file changes: it has a name, no rule names it (by
    /// inode, or as a file below a denied tree) and its content is no denied program's.
    /// Such a file gets an ignore mark: its next execs are not asked about at all.
    pub fn exec_never_refused(
        &self,
        id: (u64, u64),
        f: &mut ExecFile<'_>,
        path: &dyn Fn() -> Option<String>,
    ) -> bool {
        if f.unnamed || self.by_inode.contains_key(&id) {
            return false;
        }
        if !self.trees.is_empty() {
            let Some(p) = path() else { return false };
            if self.trees.iter().any(|(dir, _)| below(&p, dir)) {
                return false;
            }
        }
        match self.digests.get(&f.size) {
            None => true,
            Some(known) => (f.digest)().is_some_and(|d| known.iter().all(|(k, _)| *k != d)),
        }
    }

    /// What every ignore mark was decided on: when it changes they are all removed. Not
    /// the bound files: a file bound since loses its own mark (see `Refusal::update`),
    /// and the others stay (the daemon's state files, bound for its self-protection,
    /// change identity all the time).
    fn exec_fingerprint(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        let mut trees: Vec<_> = self.trees.iter().map(|(d, _)| d).collect();
        trees.sort();
        trees.hash(&mut h);
        let mut digests: Vec<_> = self
            .digests
            .iter()
            .flat_map(|(size, v)| v.iter().map(move |(d, _)| (*size, *d)))
            .collect();
        digests.sort();
        digests.hash(&mut h);
        h.finish()
    }
}

/// Files whose execs are no longer asked about (an ignore mark each, kept with the
/// descriptor to remove it through); bounded: past it, execs are asked every time.
pub const MAX_IGNORED: usize = 16_384;

/// Ignore-marked files by `(st_dev, st_ino)`, with the descriptor to remove the mark by.
type Ignored = HashMap<(u64, u64), OwnedFd>;

/// What an exec's file is, beyond its identity: for the fileless and digest checks.
pub struct ExecFile<'a> {
    /// No name in any filesystem (memfd, `O_TMPFILE`, deleted).
    pub unnamed: bool,
    pub size: u64,
    /// The content's digest, computed only when a denied program has this size.
    pub digest: &'a mut dyn FnMut() -> Option<Digest>,
}

/// One refusal, as decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    pub binding: Binding,
    pub act: Act,
}

impl Table {
    /// The refusal for session entry `s` touching the object `id` (found by path for
    /// files not bound when the table was built), or `None` to allow.
    pub fn judge(
        &self,
        s: &SessionEntry,
        id: (u64, u64),
        path: &dyn Fn() -> Option<String>,
    ) -> Option<Refused> {
        let acts = self.acts.get(&s.profile_id)?;
        let ours = |b: &&Binding| b.profile_id == s.profile_id && b.owner_uid == s.owner_uid;
        let binding = match self.by_inode.get(&id).and_then(|v| v.iter().find(ours)) {
            Some(b) => *b,
            None => {
                let p = path()?;
                self.trees
                    .iter()
                    .filter(|(_, b)| ours(&b))
                    .find(|(dir, _)| below(&p, dir))?
                    .1
            }
        };
        let act = match acts[category_index(binding.category)] {
            // A profile that asks still may not reach the daemon: refused, not held.
            Some(Act::Ask(_)) | None if self.always.contains(&binding.rule_id) => Act::Block,
            act => act?,
        };
        Some(Refused { binding, act })
    }

    /// The decision on executing a file no rule names: run from memory (`fileless`), or
    /// a copy of a denied program (same content under another name or inode).
    pub fn judge_exec(&self, s: &SessionEntry, f: &mut ExecFile<'_>) -> Option<Refused> {
        let binding = |rule_id| Binding {
            profile_id: s.profile_id,
            owner_uid: s.owner_uid,
            category: CATEGORY_EXEC,
            rule_id,
        };
        if f.unnamed {
            let (act, rule_id) = *self.fileless.get(&s.profile_id)?;
            return Some(Refused {
                binding: binding(rule_id),
                act,
            });
        }
        let act = self.acts.get(&s.profile_id)?[category_index(CATEGORY_EXEC)]?;
        let ours: Vec<&(Digest, Binding)> = self
            .digests
            .get(&f.size)?
            .iter()
            .filter(|(_, b)| b.profile_id == s.profile_id && b.owner_uid == s.owner_uid)
            .collect();
        if ours.is_empty() {
            return None;
        }
        let digest = (f.digest)()?;
        let (_, b) = ours.into_iter().find(|(d, _)| *d == digest)?;
        Some(Refused { binding: *b, act })
    }
}

/// SHA-256 of what `fd` holds, read from its start (`pread`: the descriptor's position
/// is left alone).
pub fn digest_of(fd: BorrowedFd<'_>) -> Option<Digest> {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut at = 0u64;
    loop {
        let n = rustix::io::pread(fd, &mut buf, at).ok()?;
        if n == 0 {
            return Some(h.finalize().into());
        }
        h.update(&buf[..n]);
        at += n as u64;
    }
}

/// Index of a category in `[exec, file]` pairs.
pub fn category_index(category: u8) -> usize {
    usize::from(category != CATEGORY_EXEC)
}

/// Whether `path` is the directory `dir` or below it (`/a/bc` is not below `/a/b`): a
/// `/dir/**` rule names the directory itself too (listing it is refused, as BPF-LSM's
/// file_open hook refuses it).
fn below(path: &str, dir: &str) -> bool {
    path.strip_prefix(dir)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Counters of the layer, shown by `status` and raised as losses.
#[derive(Debug, Default)]
pub struct Stats {
    pub refused: AtomicU64,
    pub answered: AtomicU64,
    /// Refusal records the pipeline's queue could not take.
    pub records_dropped: AtomicU64,
    /// Objects that could not be marked (their rules fall back to the kill backstop).
    pub mark_errors: AtomicU64,
    pub marked: AtomicU64,
    /// Operations held for an answer (`on_violation: ask`), and refused at once because
    /// too many requests were open.
    pub held: AtomicU64,
    pub ask_overflow: AtomicU64,
    /// The approval webhook: requests sent, answers taken, failed exchanges and refused
    /// answers (a bad signature, an unreadable body, a request no longer pending).
    pub webhook_sent: AtomicU64,
    pub webhook_answered: AtomicU64,
    pub webhook_errors: AtomicU64,
}

/// The fanotify group, its marks and the answering thread's table.
pub struct Refusal {
    group: Arc<Fanotify>,
    table: Arc<RwLock<Table>>,
    /// Marked objects by `(st_dev, st_ino)`, with the descriptor the mark was set
    /// through (kept: the mark is removed through it, whatever the object's name now).
    marked: HashMap<(u64, u64), OwnedFd>,
    /// Filesystems whose execs are asked about (fileless and copy checks), by `st_dev`
    /// (or tried and refused: not tried again while mounted).
    exec_watched: std::collections::HashSet<u64>,
    /// The memory-file filesystem could be marked: fileless execs are refused here.
    pub memfd_watched: bool,
    /// Files with an exec ignore mark, shared with the answering thread.
    ignored: Arc<parking_lot::Mutex<Ignored>>,
    /// [`Table::exec_fingerprint`] of the table the ignore marks were set under.
    fingerprint: u64,
    pub stats: Arc<Stats>,
    /// The pipeline's queue (to tell whether records wait in it).
    records: Records,
    /// Operations held for a person's answer.
    pub escalation: Arc<Escalation>,
}

/// Filesystems whose files a permission event could wait on a network or a user-space
/// server for (the kernel opens the event's descriptor in the answering thread): not
/// watched for execs, so a stalled server cannot stall every exec on the host. Copies of
/// denied programs there are not matched by content.
fn remote_or_user(fs_type: &str) -> bool {
    fs_type.starts_with("fuse")
        || fs_type.starts_with("nfs")
        || [
            "cifs",
            "smb3",
            "9p",
            "ceph",
            "glusterfs",
            "lustre",
            "afs",
            "virtiofs",
        ]
        .contains(&fs_type)
}

/// Filesystems that hold no programs (kernel interfaces): not watched for execs.
const PSEUDO_FS: &[&str] = &[
    "proc",
    "sysfs",
    "cgroup",
    "cgroup2",
    "devpts",
    "mqueue",
    "debugfs",
    "tracefs",
    "securityfs",
    "pstore",
    "bpf",
    "configfs",
    "fusectl",
    "binfmt_misc",
    "autofs",
    "efivarfs",
    "nsfs",
    "rpc_pipefs",
    "selinuxfs",
];

impl Refusal {
    /// The layer's counters as `status` shows them (totals; no per-CPU split).
    pub fn counters(&self) -> Vec<crate::proto::Counter> {
        let s = &self.stats;
        [
            ("fanotify_refused", &s.refused),
            ("fanotify_answered", &s.answered),
            ("fanotify_marked", &s.marked),
            ("fanotify_mark_errors", &s.mark_errors),
            ("fanotify_records_dropped", &s.records_dropped),
            ("ask_held", &s.held),
            ("ask_overflow", &s.ask_overflow),
            ("ask_webhook_sent", &s.webhook_sent),
            ("ask_webhook_answered", &s.webhook_answered),
            ("ask_webhook_errors", &s.webhook_errors),
        ]
        .into_iter()
        .map(|(name, v)| (name, v.load(Ordering::Relaxed)))
        .chain([
            // Filesystems asked about every exec (copies, fileless), and whether memory
            // files are among them (never, so far: fanotify cannot mark them).
            (
                "fanotify_exec_watched_filesystems",
                self.exec_watched.len() as u64,
            ),
            ("fanotify_memfd_watched", u64::from(self.memfd_watched)),
            // Programs whose execs are no longer asked about.
            ("fanotify_exec_ignored", self.ignored.lock().len() as u64),
        ])
        .map(|(name, total)| crate::proto::Counter {
            name: name.to_owned(),
            total,
            per_cpu: Vec::new(),
        })
        .collect()
    }
}

/// An object to mark: a bound file or a directory of a tree rule.
pub struct Object {
    pub fd: OwnedFd,
    pub dir: bool,
    /// Opens only, not reads of held descriptors: the daemon's own files (no session
    /// holds them from before its enrolment, and the daemon's own reads of its audit
    /// store must not each wait for an answer).
    pub opens_only: bool,
}

impl Refusal {
    /// Creates the group and starts the answering thread; `sessions` is a second handle
    /// on the kernel's session map, `records` the pipeline's queue.
    pub fn start(
        sessions: BpfHashMap<MapData, u32, SessionEntry>,
        records: Records,
    ) -> Result<Self> {
        let group = Fanotify::init(
            InitFlags::FAN_CLASS_CONTENT
                | InitFlags::FAN_CLOEXEC
                | InitFlags::FAN_UNLIMITED_MARKS
                | InitFlags::FAN_UNLIMITED_QUEUE,
            EventFFlags::O_RDONLY | EventFFlags::O_LARGEFILE | EventFFlags::O_CLOEXEC,
        )
        .context("fanotify_init (permission events need CAP_SYS_ADMIN and CONFIG_FANOTIFY_ACCESS_PERMISSIONS)")?;
        let group = Arc::new(group);
        let table = Arc::new(RwLock::new(Table::default()));
        let stats = Arc::new(Stats::default());
        let ignored = Arc::new(parking_lot::Mutex::new(Ignored::new()));
        let escalation = Arc::new(Escalation {
            book: parking_lot::Mutex::new(Book::default()),
            wake: parking_lot::Condvar::new(),
            group: group.clone(),
            records: records.clone(),
            stats: stats.clone(),
            notify: parking_lot::Mutex::new(None),
        });
        let timer = escalation.clone();
        std::thread::Builder::new()
            .name("aw-ask-timer".into())
            .spawn(move || timer.run_timer())
            .context("starting the approval timer")?;
        let worker = Worker {
            escalation: escalation.clone(),
            ignored: ignored.clone(),
            digests: parking_lot::Mutex::new(HashMap::new()),
            group: group.clone(),
            table: table.clone(),
            sessions,
            records: records.clone(),
            stats: stats.clone(),
            me: std::process::id(),
        };
        std::thread::Builder::new()
            .name("aw-refusal".into())
            .spawn(move || worker.run())
            .context("starting the refusal thread")?;
        Ok(Self {
            group,
            table,
            marked: HashMap::new(),
            exec_watched: std::collections::HashSet::new(),
            memfd_watched: false,
            ignored,
            fingerprint: Table::default().exec_fingerprint(),
            stats,
            records,
            escalation,
        })
    }

    /// Refusal records queued for the pipeline and not yet taken.
    pub fn pending(&self) -> usize {
        self.records.queued()
    }

    /// Removes every exec ignore mark.
    fn clear_ignores(&self) {
        let fds = std::mem::take(&mut *self.ignored.lock());
        for (_, fd) in fds {
            self.unignore(&fd);
        }
    }

    /// Removes the ignore marks of files the table now binds to a rule.
    fn unignore_bound(&self) {
        let table = self.table.read();
        let mut ignored = self.ignored.lock();
        let bound: Vec<(u64, u64)> = ignored
            .keys()
            .filter(|id| table.by_inode.contains_key(id))
            .copied()
            .collect();
        for id in bound {
            if let Some(fd) = ignored.remove(&id) {
                self.unignore(&fd);
            }
        }
    }

    /// Lets go of the ignore marks of programs deleted since (their descriptors would
    /// keep a deleted file's space, and its filesystem busy, for as long as the daemon
    /// runs). Called at every binding.
    fn prune_ignores(&self) {
        let mut ignored = self.ignored.lock();
        let gone: Vec<(u64, u64)> = ignored
            .iter()
            .filter(|(_, fd)| rustix::fs::fstat(fd).is_ok_and(|st| st.st_nlink == 0))
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            if let Some(fd) = ignored.remove(&id) {
                self.unignore(&fd);
            }
        }
    }

    fn unignore(&self, fd: &OwnedFd) {
        let _ = self.group.mark(
            MarkFlags::FAN_MARK_REMOVE | MarkFlags::FAN_MARK_IGNORED_MASK,
            MaskFlags::FAN_OPEN_EXEC_PERM,
            fd.as_fd(),
            None::<&str>,
        );
    }

    /// Asks about every exec on the host's filesystems (and of memory files) while some
    /// profile needs it: copies of denied programs and fileless execs have no mark of
    /// their own. The answer for a process outside every session is immediate; one in a
    /// session is let through on a stat unless a denied program has that file's size.
    /// Filesystems mounted later are picked up at the next binding.
    pub fn watch_execs(&mut self, wanted: bool) {
        if !wanted {
            if !self.exec_watched.is_empty() {
                let root = std::fs::File::open("/");
                if let Ok(root) = &root {
                    let _ = self.group.mark(
                        MarkFlags::FAN_MARK_FLUSH | MarkFlags::FAN_MARK_FILESYSTEM,
                        MaskFlags::empty(),
                        root.as_fd(),
                        None::<&str>,
                    );
                }
            }
            self.exec_watched.clear();
            self.memfd_watched = false;
            return;
        }
        // No descriptor is kept: a held mount root would make the filesystem busy (no
        // unmount), and the kernel drops a filesystem's marks when it goes away.
        let mut roots: Vec<OwnedFd> = Vec::new();
        if let Ok(mounts) = procfs::process::Process::myself().and_then(|p| p.mountinfo()) {
            for m in mounts {
                if PSEUDO_FS.contains(&m.fs_type.as_str()) || remote_or_user(&m.fs_type) {
                    continue;
                }
                // Not O_PATH: fanotify_mark refuses those descriptors.
                if let Ok(f) = std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
                    .open(&m.mount_point)
                {
                    roots.push(f.into());
                }
            }
        }
        // The kernel's internal filesystem of memory files, reached through one.
        let memfd =
            rustix::fs::memfd_create("agentwarden-exec-watch", rustix::fs::MemfdFlags::CLOEXEC)
                .ok();
        let memfd_dev = memfd
            .as_ref()
            .and_then(|m| rustix::fs::fstat(m).ok())
            .map(|st| st.st_dev);
        roots.extend(memfd);
        let roots: Vec<(OwnedFd, u64)> = roots
            .into_iter()
            .filter_map(|fd| rustix::fs::fstat(&fd).ok().map(|st| (fd, st.st_dev)))
            .collect();
        // Filesystems gone since are forgotten (a new one may get their number); marking
        // one again is harmless (the mask is added to the mark it has).
        let present: std::collections::HashSet<u64> = roots.iter().map(|(_, d)| *d).collect();
        self.exec_watched.retain(|d| present.contains(d));
        for (fd, dev) in roots {
            if !self.exec_watched.insert(dev) {
                continue;
            }
            match self.group.mark(
                MarkFlags::FAN_MARK_ADD | MarkFlags::FAN_MARK_FILESYSTEM,
                MaskFlags::FAN_OPEN_EXEC_PERM,
                fd.as_fd(),
                None::<&str>,
            ) {
                Ok(()) => {
                    if Some(dev) == memfd_dev {
                        self.memfd_watched = true;
                    }
                }
                Err(e) => {
                    tracing::debug!(dev, error = %e, "filesystem not watched for execs");
                    if Some(dev) == memfd_dev {
                        // Expected (the kernel's internal filesystem takes no
                        // filesystem marks): memory-file execs are decided in the kernel.
                        tracing::info!(error = %e, "memory files are not watched for execs: `exec.fileless` decides them in the kernel (refused by BPF-LSM, else killed at exec)");
                    }
                }
            }
        }
    }

    /// Marks `objects` and hands `table` to the answering thread; marks of objects no
    /// longer named go last, so the rules that stay are never unmarked in between.
    pub fn update(&mut self, table: Table, objects: Vec<Object>) {
        let mut next = HashMap::new();
        for o in objects {
            let Ok(st) = rustix::fs::fstat(&o.fd) else {
                continue;
            };
            let id = (st.st_dev, st.st_ino);
            if next.contains_key(&id) {
                continue;
            }
            if let Some(fd) = self.marked.remove(&id) {
                next.insert(id, fd);
                continue;
            }
            // A tree's directories: opens of the files in them, and of the directories
            // themselves (a listing), which fanotify reports only with FAN_ONDIR.
            let base = if o.opens_only {
                MaskFlags::FAN_OPEN_PERM | MaskFlags::FAN_OPEN_EXEC_PERM
            } else {
                MASK
            };
            let mask = if o.dir { base | DIR_MASK } else { base };
            match self
                .group
                .mark(MarkFlags::FAN_MARK_ADD, mask, o.fd.as_fd(), None::<&str>)
            {
                Ok(()) => {
                    next.insert(id, o.fd);
                }
                Err(e) => {
                    self.stats.mark_errors.fetch_add(1, Ordering::Relaxed);
                    warn!(error = %e, "could not mark a denied object; the kill backstop covers it");
                }
            }
        }
        self.prune_ignores();
        let fingerprint = table.exec_fingerprint();
        *self.table.write() = table;
        // Removed after the new table is in place, so a mark set in between was judged
        // on the new one.
        if fingerprint != self.fingerprint {
            // A tree or a digest changed: a file let through before may be denied now.
            self.fingerprint = fingerprint;
            self.clear_ignores();
        } else {
            // A file bound since it was let through is asked about again.
            self.unignore_bound();
        }
        for (_, fd) in std::mem::replace(&mut self.marked, next) {
            let _ = self.group.mark(
                MarkFlags::FAN_MARK_REMOVE,
                MASK | DIR_MASK,
                fd.as_fd(),
                None::<&str>,
            );
        }
        self.stats
            .marked
            .store(self.marked.len() as u64, Ordering::Relaxed);
    }
}

/// Digests of executed files, by identity and modification (bounded: cleared when full).
const DIGEST_CACHE: usize = 4_096;

/// Identity, modification and change times, size: a rewrite that puts the old mtime
/// back still changes the ctime.
pub type DigestKey = (u64, u64, i64, u64, i64, u64, i64);

/// The key a file's digest is cached under.
pub fn digest_key(st: &rustix::fs::Stat) -> DigestKey {
    (
        st.st_dev,
        st.st_ino,
        st.st_mtime,
        st.st_mtime_nsec,
        st.st_ctime,
        st.st_ctime_nsec,
        st.st_size,
    )
}

struct Worker {
    escalation: Arc<Escalation>,
    ignored: Arc<parking_lot::Mutex<Ignored>>,
    digests: parking_lot::Mutex<HashMap<DigestKey, Digest>>,
    group: Arc<Fanotify>,
    table: Arc<RwLock<Table>>,
    sessions: BpfHashMap<MapData, u32, SessionEntry>,
    records: Records,
    stats: Arc<Stats>,
    me: u32,
}

impl Worker {
    fn run(self) {
        loop {
            let events = match self.group.read_events() {
                Ok(v) => v,
                Err(nix::errno::Errno::EINTR | nix::errno::Errno::EAGAIN) => continue,
                // The kernel could not open the file of the first event for this reader
                // (a bpffs object cannot be opened: an open of a pinned map, say) and has
                // refused that open itself, unrecorded (it does the same silently when
                // such an event follows others in one read): read on at once, as a pause
                // here would hold every opener of a marked file.
                Err(
                    e @ (nix::errno::Errno::EIO
                    | nix::errno::Errno::ENXIO
                    | nix::errno::Errno::ENODEV),
                ) => {
                    tracing::debug!(error = %e, "a permission event whose file cannot be opened was refused by the kernel");
                    continue;
                }
                Err(e) => {
                    warn!(error = %e, "reading fanotify events failed");
                    std::thread::sleep(std::time::Duration::from_millis(10));
                    continue;
                }
            };
            for ev in events {
                self.answer(ev);
            }
        }
    }

    fn answer(&self, ev: FanotifyEvent) {
        // A queue overflow has no descriptor; permission events are never dropped by
        // the kernel (the process waits), so there is nothing to answer.
        let Some(fd) = ev.fd() else { return };
        let tgid = ev.pid() as u32;
        let exec = ev.mask().contains(MaskFlags::FAN_OPEN_EXEC_PERM);
        let Ok(st) = rustix::fs::fstat(fd) else {
            self.respond(fd, Response::FAN_ALLOW);
            return;
        };
        let id = (st.st_dev, st.st_ino);
        let key = digest_key(&st);
        let mut digest = || self.digest(fd, key);
        let mut file = ExecFile {
            unnamed: st.st_nlink == 0,
            size: st.st_size as u64,
            digest: &mut digest,
        };
        let table = self.table.read();
        let refused = (tgid != self.me)
            .then(|| self.sessions.get(&tgid, 0).ok())
            .flatten()
            .and_then(|s| {
                let r = table
                    .judge(&s, id, &|| path_of(fd))
                    .or_else(|| exec.then(|| table.judge_exec(&s, &mut file)).flatten())?;
                Some((s, r))
            });
        // An exec let through that no session could be refused: not asked again until
        // the file changes (the ignore mark goes with a modification) or a rule does.
        let ignore =
            exec && refused.is_none() && table.exec_never_refused(id, &mut file, &|| path_of(fd));
        // The record is made while the process still waits for the answer: its `/proc`
        // entry (comm, parent, ids) is gone soon after a refusal or a kill.
        let access = if exec {
            Access::Exec
        } else if ev.mask().contains(MaskFlags::FAN_ACCESS_PERM) {
            Access::Read
        } else {
            Access::Open
        };
        if let Some((s, r)) = &refused
            && let Act::Ask(rule) = r.act
        {
            let path = path_of(fd).unwrap_or_default();
            let key = Key {
                session_id: s.session_id,
                rule_id: r.binding.rule_id,
                object: id,
            };
            let category = if r.binding.category == CATEGORY_EXEC {
                "exec"
            } else {
                "files"
            };
            let request = Request::new(key, tgid, access.as_str(), path.clone(), category, rule);
            let waiter = Waiter::Kernel(KernelWaiter {
                tgid,
                access,
                session: *s,
                refused: r.clone(),
                path,
                event: ev,
            });
            drop(table);
            self.escalation.hold(waiter, request);
            return;
        }
        let rec = refused
            .as_ref()
            .map(|(s, r)| record(s, r, tgid, access, &path_of(fd).unwrap_or_default()));
        if let Some((_, r)) = &refused
            && r.act == Act::Kill
        {
            // The process waits for this answer inside the call: its pid cannot be
            // reused before the signal lands.
            // SAFETY: plain syscall.
            unsafe { libc::kill(tgid as i32, libc::SIGKILL) };
        }
        let response = match &refused {
            Some((_, r)) if r.act != Act::Alert => Response::FAN_DENY,
            _ => Response::FAN_ALLOW,
        };
        // The record is queued before the process hears the answer: whatever the
        // process does next (its agent's hook asking why the tool failed) comes after
        // the record is there to be found.
        if let (Some((_, r)), Some(rec)) = (&refused, rec) {
            if r.act != Act::Alert {
                self.stats.refused.fetch_add(1, Ordering::Relaxed);
            }
            if !self.records.try_send(Notice::Record(rec)) {
                self.stats.records_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.respond(fd, response);
        if ignore {
            // Under the table's read lock: a new table (and the removal of every ignore
            // mark it brings) cannot come between this decision and the mark.
            self.ignore_execs(fd, id);
        }
        drop(table);
    }
}

impl Worker {
    fn respond(&self, fd: BorrowedFd<'_>, response: Response) {
        respond(&self.group, &self.stats, fd, response);
    }

    /// The content digest of an executed file, cached by identity and modification.
    fn digest(&self, fd: BorrowedFd<'_>, key: DigestKey) -> Option<Digest> {
        if let Some(d) = self.digests.lock().get(&key) {
            return Some(*d);
        }
        let d = digest_of(fd)?;
        let mut cache = self.digests.lock();
        if cache.len() >= DIGEST_CACHE {
            cache.clear();
        }
        cache.insert(key, d);
        Some(d)
    }

    /// Stops asking about execs of the file behind `fd` (an ignore mark, removed when
    /// the file is modified, and by [`Refusal::clear_ignores`]).
    fn ignore_execs(&self, fd: BorrowedFd<'_>, id: (u64, u64)) {
        let mut ignored = self.ignored.lock();
        if ignored.len() >= MAX_IGNORED || ignored.contains_key(&id) {
            return;
        }
        let Ok(own) = fd.try_clone_to_owned() else {
            return;
        };
        if self
            .group
            .mark(
                MarkFlags::FAN_MARK_ADD | MarkFlags::FAN_MARK_IGNORED_MASK,
                MaskFlags::FAN_OPEN_EXEC_PERM,
                own.as_fd(),
                None::<&str>,
            )
            .is_ok()
        {
            ignored.insert(id, own);
        }
    }
}

fn respond(group: &Fanotify, stats: &Stats, fd: BorrowedFd<'_>, response: Response) {
    if let Err(e) = group.write_response(FanotifyResponse::new(fd, response)) {
        warn!(error = %e, "answering a fanotify permission event failed");
    }
    stats.answered.fetch_add(1, Ordering::Relaxed);
}

/// Held operations and their answers: the [`Book`] with the means to answer the kernel
/// (the group) and to record (the pipeline's queue). Three callers: the answering thread
/// holds, the control socket answers (a person), the timer thread expires. None of them
/// takes the daemon's core lock while holding the book's.
pub struct Escalation {
    book: parking_lot::Mutex<Book<Waiter>>,
    /// Woken when a new request may have an earlier deadline.
    wake: parking_lot::Condvar,
    group: Arc<Fanotify>,
    records: Records,
    pub stats: Arc<Stats>,
    /// New requests' ids, for the approval webhook.
    notify: parking_lot::Mutex<Option<tokio::sync::mpsc::UnboundedSender<u64>>>,
}

impl Escalation {
    /// Sends every new request's id to `tx` (the approval webhook's task).
    pub fn notify_to(&self, tx: tokio::sync::mpsc::UnboundedSender<u64>) {
        *self.notify.lock() = Some(tx);
    }

    /// Holds a waiter, or answers it at once (a standing grant, a full book).
    fn hold(&self, w: Waiter, request: Request) {
        let (tgid, access, path) = (request.tgid, request.access, request.path.clone());
        // An approval goes on for the process whose open or exec it let through.
        let lasting = matches!(w, Waiter::Kernel(_)).then_some(tgid);
        let (held, back) = self.book.lock().hold(lasting, w, request);
        match (held, back) {
            (Held::Granted, Some(w)) => self.let_through(w),
            (Held::Full, Some(w)) => {
                self.stats.ask_overflow.fetch_add(1, Ordering::Relaxed);
                warn!(path = %path, "too many operations held for approval; refused at once");
                self.refuse(w);
            }
            (Held::Waiting { id, new }, _) => {
                self.stats.held.fetch_add(1, Ordering::Relaxed);
                if new {
                    tracing::info!(request = id, tgid, path = %path, access, "held for approval (agentwarden pending)");
                    self.wake.notify_all();
                    if let Some(tx) = &*self.notify.lock() {
                        let _ = tx.send(id);
                    }
                }
            }
            (_, None) => {}
        }
    }

    /// Holds an operation the daemon itself keeps waiting (a connection at the holding
    /// endpoint, a tool call in its hook), described by `request`. The answer arrives on
    /// the receiver (`true`: go ahead).
    pub fn hold_reply(&self, request: Request) -> tokio::sync::oneshot::Receiver<bool> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.hold(Waiter::Reply(tx), request);
        rx
    }

    /// Lets a held operation go ahead.
    fn let_through(&self, w: Waiter) {
        match w {
            Waiter::Kernel(k) => {
                if let Some(fd) = k.event.fd() {
                    respond(&self.group, &self.stats, fd, Response::FAN_ALLOW);
                }
            }
            Waiter::Reply(tx) => {
                let _ = tx.send(true);
            }
        }
    }

    /// Refuses a held operation: an open, read or exec after its refusal is recorded
    /// (`EPERM`), a connection by reset (its `held` row and the approval row say why).
    fn refuse(&self, w: Waiter) {
        match w {
            Waiter::Kernel(k) => {
                let r = Refused {
                    binding: k.refused.binding,
                    act: Act::Block,
                };
                let rec = record(&k.session, &r, k.tgid, k.access, &k.path);
                if !self.records.try_send(Notice::Record(rec)) {
                    self.stats.records_dropped.fetch_add(1, Ordering::Relaxed);
                }
                self.stats.refused.fetch_add(1, Ordering::Relaxed);
                if let Some(fd) = k.event.fd() {
                    respond(&self.group, &self.stats, fd, Response::FAN_DENY);
                }
            }
            Waiter::Reply(tx) => {
                let _ = tx.send(false);
            }
        }
    }

    /// Sends a settled request's approval row, then answers its operations (the row is
    /// made while the process still waits: its `/proc` entry goes soon after).
    fn settle(&self, s: Settled<Waiter>) {
        let held = s.waiters.len() as u32;
        let process = super::attribute::live_process(s.request.tgid);
        let time = std::time::SystemTime::now();
        let rfc3339 = |t: std::time::SystemTime| humantime::format_rfc3339_millis(t).to_string();
        let info = crate::event::ApprovalInfo {
            request: s.request.id,
            access: s.request.access.to_owned(),
            path: s.request.path.clone(),
            outcome: s.outcome,
            allowed: s.allowed,
            by: s.by,
            note: s.note,
            scope: s.scope,
            until: s.until.map(rfc3339),
            requested: rfc3339(s.request.requested),
            waited_ms: s.waited.as_millis() as u64,
            held,
        };
        let notice = ApprovalNotice {
            session_id: s.request.key.session_id,
            tgid: s.request.tgid,
            rule_id: s.request.key.rule_id,
            category: s.request.category,
            rule_text: s.request.rule_text.clone(),
            process,
            time,
            info,
        };
        if !self.records.try_send(Notice::Approval(Box::new(notice))) {
            self.stats.records_dropped.fetch_add(1, Ordering::Relaxed);
        }
        for w in s.waiters {
            if s.allowed {
                self.let_through(w);
            } else {
                self.refuse(w);
            }
        }
    }

    /// A person's answer to request `id`; the number of operations it answered.
    pub fn answer(&self, id: u64, a: Answer) -> Result<u32> {
        let s = self.book.lock().answer(id, a, std::time::Instant::now())?;
        let n = s.waiters.len() as u32;
        self.settle(s);
        Ok(n)
    }

    /// Request `id` while it is open, with the operations waiting on it.
    pub fn request(&self, id: u64) -> Option<(Request, usize)> {
        self.book.lock().get(id)
    }

    /// Open requests, oldest first, with the operations waiting on each.
    pub fn pending(&self) -> Vec<(Request, usize)> {
        self.book.lock().list()
    }

    /// Forgets the grants of sessions and processes that ended.
    pub fn forget(&self, live: impl Fn(u64) -> bool) {
        let process = |tgid: u32| std::path::Path::new(&format!("/proc/{tgid}")).exists();
        self.book
            .lock()
            .forget(live, process, std::time::Instant::now());
    }

    /// Settles requests as their deadlines pass.
    fn run_timer(&self) {
        loop {
            let mut book = self.book.lock();
            let due = book.expire(std::time::Instant::now());
            if due.is_empty() {
                let until = book.next_deadline().unwrap_or_else(|| {
                    std::time::Instant::now() + std::time::Duration::from_secs(60)
                });
                self.wake.wait_until(&mut book, until);
                continue;
            }
            drop(book);
            for s in due {
                tracing::info!(
                    request = s.request.id,
                    allowed = s.allowed,
                    "approval request timed out"
                );
                self.settle(s);
            }
        }
    }
}

/// The path of the object behind an event's descriptor.
fn path_of(fd: BorrowedFd<'_>) -> Option<String> {
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .ok()
        .map(|p| p.to_string_lossy().into_owned())
}

/// A path as the kernel programs send resolved ones: components leaf first, each
/// followed by `/` (see [`KPath`]).
pub fn kpath(path: &str) -> KPath {
    let mut k = KPath {
        len: 0,
        flags: 0,
        _pad: 0,
        bytes: [0; PATH_MAX],
    };
    let mut at = 0;
    for c in path.split('/').filter(|c| !c.is_empty()).rev() {
        let c = c.as_bytes();
        if at + c.len() + 1 > PATH_MAX {
            k.flags |= agent_common::event::PATH_FLAG_TRUNCATED;
            break;
        }
        k.bytes[at..at + c.len()].copy_from_slice(c);
        k.bytes[at + c.len()] = b'/';
        at += c.len() + 1;
    }
    k.len = at as u16;
    k
}

/// The header the kernel would have written for `tgid` (from `/proc`: the process is
/// still there, waiting or just refused).
fn header(kind: EventKind, s: &SessionEntry, tgid: u32) -> EventHeader {
    let stat =
        procfs::process::Process::new(tgid as i32).and_then(|p| Ok((p.stat()?, p.status()?)));
    let mut comm = [0u8; agent_common::event::COMM_LEN];
    let (ppid, uid, gid) = match &stat {
        Ok((st, status)) => {
            let n = st.comm.len().min(comm.len() - 1);
            comm[..n].copy_from_slice(&st.comm.as_bytes()[..n]);
            (st.ppid as u32, status.ruid, status.rgid)
        }
        Err(_) => (0, 0, 0),
    };
    let ktime_ns = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
    EventHeader {
        kind: kind as u32,
        _reserved: 0,
        ktime_ns: ktime_ns.tv_sec as u64 * 1_000_000_000 + ktime_ns.tv_nsec as u64,
        session_id: s.session_id,
        cgroup_id: 0,
        pid: tgid,
        tgid,
        ppid,
        uid,
        gid,
        _pad: 0,
        comm,
    }
}

/// What the refused process was doing to the object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Open,
    /// Reading from a descriptor it held.
    Read,
    Exec,
}

impl Access {
    pub const fn as_str(self) -> &'static str {
        match self {
            Access::Open => "open",
            Access::Read => "read",
            Access::Exec => "exec",
        }
    }
}

/// The refusal as a kernel-format record: an exec when the program was being
/// executed, else an open that failed with `EPERM` (`syscall: other`: which syscall or
/// ring submission opened it is not known here; `read` for a read of a held descriptor).
pub fn record(s: &SessionEntry, r: &Refused, tgid: u32, access: Access, path: &str) -> Vec<u8> {
    let verdict = KernelVerdict {
        rule_id: r.binding.rule_id,
        denied: 1,
        action: match r.act {
            // A held operation is recorded here only when it was refused.
            Act::Block | Act::Ask(_) => Action::Blocked,
            Act::Kill => Action::Killed,
            Act::Alert => Action::Alerted,
        } as u8,
        enforced_by: if r.act == Act::Alert {
            Layer::None
        } else {
            Layer::Fanotify
        } as u8,
        _pad: 0,
    };
    if access == Access::Exec {
        let cwd = std::fs::read_link(format!("/proc/{tgid}/cwd"))
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let ev = Box::new(ExecEvent {
            header: header(EventKind::Exec, s, tgid),
            exe: kpath(path),
            cwd: kpath(&cwd),
            argv_len: 0,
            argv_flags: 0,
            verdict,
            argv: [0; agent_common::event::ARGV_MAX],
        });
        return bytes_of(&*ev).to_vec();
    }
    let ev = Box::new(OpenEvent {
        header: header(EventKind::Open, s, tgid),
        syscall: if access == Access::Read {
            OpenSyscall::Read
        } else {
            OpenSyscall::Other
        } as u32,
        flags: libc::O_RDONLY as u32,
        ret: -i64::from(libc::EPERM),
        verdict,
        dev: 0,
        _pad: 0,
        ino: 0,
        path: kpath(path),
    });
    bytes_of(&*ev).to_vec()
}

fn bytes_of<T: agent_common::event::Plain>(v: &T) -> &[u8] {
    // SAFETY: `Plain` types are repr(C) integers and arrays, every byte initialised.
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>()) }
}

/// How a compiled profile meets an exec from memory (`exec.fileless`, already resolved
/// against the mode and `on_violation` by the compiler).
pub fn fileless_act(c: &agent_common::policy::ProfileConfig) -> Option<Act> {
    use agent_common::policy::{FILELESS_ALERT, FILELESS_BLOCK, FILELESS_KILL};
    match c.fileless {
        FILELESS_ALERT => Some(Act::Alert),
        FILELESS_BLOCK => Some(Act::Block),
        FILELESS_KILL => Some(Act::Kill),
        _ => None,
    }
}

/// The acts of a compiled profile's config, `[exec, file]`, where the profile's `ask`
/// (the kernel only records what an `ask` rule matches) does not hold instead.
pub fn acts_of(
    c: &agent_common::policy::ProfileConfig,
    p: &crate::policy::Profile,
) -> [Option<Act>; 2] {
    let mut a = acts(c);
    if p.file.mode == crate::policy::Mode::Enforce {
        // `[exec, files]`: the network's `ask` is the holding endpoint's.
        for (i, ask) in p.ask.iter().take(2).enumerate() {
            if let Some(rule) = ask {
                a[i] = Some(Act::Ask(*rule));
            }
        }
    }
    a
}

/// The acts of a compiled profile's config: `[exec, file]`.
pub fn acts(c: &agent_common::policy::ProfileConfig) -> [Option<Act>; 2] {
    // `block` (with or without `fallback: kill`) is refused here: the fallback is for
    // what no layer can refuse. `kill` refuses and kills. Both flags are 0 outside
    // enforce mode.
    let act = |block: u8, kill: u8| match (block, kill) {
        (1, _) => Some(Act::Block),
        (_, 1) => Some(Act::Kill),
        _ => None,
    };
    [
        act(c.exec_block, c.exec_kill),
        act(c.file_block, c.file_kill),
    ]
}

#[cfg(test)]
mod tests {
    use agent_common::policy::CATEGORY_FILE;

    use super::*;
    use crate::event::path_text;

    /// A mark is passed once every notice offered before it is done with, whatever was
    /// offered after it (a flood elsewhere holds no session's end); a notice the full
    /// queue refused is in neither count.
    #[test]
    fn a_mark_waits_for_the_notices_offered_before_it_only() {
        let (tx, mut rx) = tokio::sync::mpsc::channel(2);
        let records = Records::new(tx);
        let counts = records.counts();
        assert!(counts.passed(counts.mark()));
        assert!(records.try_send(Notice::Record(vec![1])));
        let mark = counts.mark();
        assert!(!counts.passed(mark));
        assert!(records.try_send(Notice::Record(vec![2])));
        // The queue holds two: the third is dropped, and counted nowhere.
        assert!(!records.try_send(Notice::Record(vec![3])));
        assert!(!counts.passed(mark));
        assert_eq!(records.queued(), 2);
        assert!(matches!(rx.try_recv(), Ok(Notice::Record(b)) if b == [1]));
        assert!(!counts.passed(mark), "taken is not yet recorded");
        counts.done();
        assert!(counts.passed(mark));
        assert!(!counts.passed(counts.mark()), "the second is outstanding");
        let _ = rx.try_recv();
        counts.done();
        assert!(counts.passed(counts.mark()));
    }

    fn entry(profile_id: u32, owner_uid: u32) -> SessionEntry {
        SessionEntry {
            session_id: 9,
            profile_id,
            flags: 0,
            owner_uid,
            _pad: 0,
        }
    }

    #[test]
    fn judged_by_inode_then_by_tree_for_the_session_profile_and_owner() {
        let b = |profile_id, category, rule_id| Binding {
            profile_id,
            owner_uid: 1000,
            category,
            rule_id,
        };
        let mut t = Table::default();
        t.by_inode.insert((1, 10), vec![b(2, CATEGORY_FILE, 5)]);
        t.trees
            .push(("/home/a/.ssh".into(), b(2, CATEGORY_FILE, 6)));
        t.by_inode.insert((1, 11), vec![b(3, CATEGORY_EXEC, 7)]);
        t.acts.insert(2, [None, Some(Act::Block)]);
        t.acts.insert(3, [Some(Act::Kill), None]);
        let none = || None;
        let s = entry(2, 1000);
        assert_eq!(
            t.judge(&s, (1, 10), &none).map(|r| r.binding.rule_id),
            Some(5)
        );
        // Another owner's expansion of the same profile does not apply.
        assert_eq!(t.judge(&entry(2, 0), (1, 10), &none), None);
        // A file the binding has not seen yet, below a denied tree, by path.
        let newer = || Some("/home/a/.ssh/id_new".to_owned());
        assert_eq!(
            t.judge(&s, (1, 99), &newer).map(|r| r.binding.rule_id),
            Some(6)
        );
        // The tree's directory itself (a listing of it).
        let root = || Some("/home/a/.ssh".to_owned());
        assert_eq!(
            t.judge(&s, (1, 98), &root).map(|r| r.binding.rule_id),
            Some(6)
        );
        let sibling = || Some("/home/a/.sshfoo/x".to_owned());
        assert_eq!(t.judge(&s, (1, 99), &sibling), None);
        let r = t.judge(&entry(3, 1000), (1, 11), &none).unwrap();
        assert_eq!((r.act, r.binding.category), (Act::Kill, CATEGORY_EXEC));
        // A profile this layer does not act for (monitor, alert): allowed here.
        assert_eq!(t.judge(&entry(4, 1000), (1, 10), &none), None);
    }

    #[test]
    fn kpath_is_what_the_kernel_sends() {
        let k = kpath("/home/a/.ssh/id_rsa");
        let p = path_text(&k);
        assert_eq!((p.path.as_str(), p.resolved), ("/home/a/.ssh/id_rsa", true));
    }
}
