//! What a user would pick instead of agentwarden, measured by `cargo xtask bench` as
//! extra conditions of the same rounds, on the same workloads (`cargo xtask setup`
//! installs them from the distribution):
//!
//! - observing the same processes' exec, open and connect with their results: the Linux
//!   audit subsystem (`auditd` with syscall rules) and a `bpftrace` script writing to a
//!   file. Both select the workload by its audit login id ([`AUID`]), which the harness
//!   gives it as a login would: the one session concept both tools have;
//! - enforcing what they can express of the bench profile: a bubblewrap sandbox (the
//!   denied files and programs masked, loopback only: a network namespace of its own)
//!   and a Landlock-only sandbox (`awload sandbox`: reads, execs and TCP connects
//!   granted by allow lists, which leave out the denied files, and TCP only to the
//!   workload's listener).
//!
//! Each peer is started before a round's blocks and stopped after them, with no daemon of
//! agentwarden running. A peer that cannot run here (an audit daemon of the host's own is
//! running, a kernel without Landlock's network rules) is reported with the reason, not
//! left out silently.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, Result, bail};

/// The audit login id the observing peers select the workload by.
pub const AUID: u32 = 4242;

/// The audit rule's key, which names the bench's records in the log.
const AUDIT_KEY: &str = "awbench";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peer {
    Auditd,
    Bpftrace,
    Bwrap,
    Landlock,
    /// Not a tool: a program that does nothing on every syscall tracepoint agentwarden
    /// attaches (`agentwarden bench-floor`), the hooks' own cost on this kernel; what
    /// agentwarden's untracked overhead is judged against.
    Floor,
}

impl Peer {
    pub const ALL: [Peer; 5] = [
        Peer::Auditd,
        Peer::Bpftrace,
        Peer::Bwrap,
        Peer::Landlock,
        Peer::Floor,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Peer::Auditd => "auditd",
            Peer::Bpftrace => "bpftrace",
            Peer::Bwrap => "bwrap",
            Peer::Landlock => "landlock",
            Peer::Floor => "floor",
        }
    }

    /// What the peer does in the bench, against agentwarden's tracked condition
    /// (which records and enforces the whole profile).
    pub fn does(self) -> &'static str {
        match self {
            Peer::Auditd => {
                "records exec, open and connect of the workload (syscall rules by auid) to its log; enforces nothing"
            }
            Peer::Bpftrace => {
                "records exec, open and connect of the workload (syscall tracepoints by auid, with results) to a file; enforces nothing"
            }
            Peer::Bwrap => {
                "masks the denied files and programs, loopback only (a network namespace of its own); records nothing"
            }
            Peer::Landlock => {
                "grants reads, execs and TCP connects by allow lists (leaving out the denied files; programs cannot be denied one by one); records nothing"
            }
            Peer::Floor => {
                "a program that does nothing on each syscall tracepoint agentwarden attaches (open family, connect, send*, socket): the hooks' own cost, the floor of agentwarden's untracked overhead"
            }
        }
    }

    /// Whether it records what the workload does (and so must have written something
    /// after each block).
    pub fn observes(self) -> bool {
        matches!(self, Peer::Auditd | Peer::Bpftrace)
    }
}

/// What the peers need of the bench's set-up.
pub struct Ctx<'a> {
    /// Where the peers keep their files (logs, scripts).
    pub dir: &'a Path,
    /// The daemon's binary (`bench-floor`).
    pub agentwarden: &'a Path,
    pub awload: &'a Path,
    /// The file the open loop opens.
    pub allowed: &'a Path,
    /// Files and programs the bench profile denies.
    pub denied_files: Vec<PathBuf>,
    pub denied_programs: Vec<PathBuf>,
    /// The listener's port of the connect loops (fixed, so Landlock can name it).
    pub port: u16,
    /// What the real-workload scenario (a cargo build) writes and reads.
    pub build_dirs: Vec<PathBuf>,
    /// What it only reads (cargo's configuration in the directories above it).
    pub build_reads: Vec<PathBuf>,
}

/// A peer running (or, for the sandboxes, ready to wrap the workload).
pub struct Running {
    pub peer: Peer,
    child: Option<Child>,
    /// The file or directory its records go to.
    out: PathBuf,
    /// The audit status before the bench touched it: `enabled` to restore.
    audit_enabled: Option<String>,
}

impl Peer {
    /// Starts the peer; an error says why it cannot run here.
    pub fn start(self, cx: &Ctx) -> Result<Running> {
        let dir = cx.dir.join(self.name());
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir)?;
        let mut r = Running {
            peer: self,
            child: None,
            out: dir.clone(),
            audit_enabled: None,
        };
        match self {
            Peer::Auditd => r.start_auditd(&dir)?,
            Peer::Bpftrace => r.start_bpftrace(&dir)?,
            Peer::Floor => r.start_floor(cx, &dir)?,
            Peer::Bwrap => {
                which("bwrap")?;
            }
            Peer::Landlock => {
                // The sandbox refuses to run where the kernel cannot enforce all of it.
                let out = r
                    .wrap(cx)
                    .arg("/bin/true")
                    .stderr(Stdio::piped())
                    .output()?;
                if !out.status.success() {
                    bail!("{}", String::from_utf8_lossy(&out.stderr).trim());
                }
            }
        }
        // The login id must be settable (unset, or a root that may change it).
        if self.observes() {
            let out = r.wrap(cx).arg("/bin/true").output()?;
            if !out.status.success() {
                bail!(
                    "the workload cannot be given audit login id {AUID} (/proc/self/loginuid): {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
        }
        Ok(r)
    }
}

impl Running {
    fn start_auditd(&mut self, dir: &Path) -> Result<()> {
        which("auditd")?;
        let status = audit_status()?;
        if let Some(pid) = status_field(&status, "pid").filter(|p| p != "0") {
            bail!(
                "an audit daemon is already running (pid {pid}); the bench leaves the host's audit set-up alone"
            );
        }
        self.audit_enabled = status_field(&status, "enabled");
        // The distribution's configuration, with the log in the bench's directory.
        let base = fs::read_to_string("/etc/audit/auditd.conf").unwrap_or_default();
        let mut conf: Vec<String> = base
            .lines()
            .filter(|l| !l.trim_start().starts_with("log_file"))
            .map(str::to_owned)
            .collect();
        conf.push(format!("log_file = {}", dir.join("audit.log").display()));
        fs::write(dir.join("auditd.conf"), conf.join("\n") + "\n")?;
        let child = Command::new("auditd")
            .arg("-n")
            .arg("-c")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(fs::File::create(dir.join("auditd.stderr"))?)
            .spawn()
            .context("starting auditd")?;
        let pid = child.id().to_string();
        self.child = Some(child);
        let start = Instant::now();
        while status_field(&audit_status()?, "pid").as_deref() != Some(pid.as_str()) {
            if start.elapsed() > Duration::from_secs(10) {
                bail!(
                    "auditd did not register with the kernel: {}",
                    fs::read_to_string(dir.join("auditd.stderr")).unwrap_or_default()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
        // Debian's own rules file sets these: a backlog that holds bursts, and a
        // process that waits for room instead of losing records.
        auditctl(&["-b", "8192", "--backlog_wait_time", "60000"])?;
        auditctl(&audit_rule("-a"))?;
        Ok(())
    }

    fn start_floor(&mut self, cx: &Ctx, dir: &Path) -> Result<()> {
        let out = dir.join("floor.out");
        let child = Command::new(cx.agentwarden)
            .arg("bench-floor")
            .stdout(fs::File::create(&out)?)
            .stderr(fs::File::create(dir.join("floor.stderr"))?)
            .spawn()
            .context("starting agentwarden bench-floor")?;
        self.child = Some(child);
        self.wait_for_word(&out, "attached", &dir.join("floor.stderr"))?;
        self.out = out;
        Ok(())
    }

    /// Waits until the peer's `out` says `word` (it is ready), failing with its
    /// `stderr` if it exits first, or after a minute.
    fn wait_for_word(&mut self, out: &Path, word: &str, stderr: &Path) -> Result<()> {
        let name = self.peer.name();
        let start = Instant::now();
        while !fs::read_to_string(out).unwrap_or_default().contains(word) {
            if let Some(st) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!(
                    "{name} exited ({st}): {}",
                    fs::read_to_string(stderr).unwrap_or_default()
                );
            }
            if start.elapsed() > Duration::from_secs(60) {
                bail!("{name} did not say `{word}` within 60 s");
            }
            thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    fn start_bpftrace(&mut self, dir: &Path) -> Result<()> {
        which("bpftrace")?;
        let filter = format!("/curtask->loginuid.val == {AUID}/");
        let mut script = String::new();
        for (call, what, arg) in [
            ("execve", "exec", "str(args->filename)"),
            ("execveat", "exec", "str(args->filename)"),
            // The open loop's opens are open(2): rustix calls it on x86_64.
            ("open", "open", "str(args->filename)"),
            ("openat", "open", "str(args->filename)"),
            ("openat2", "open", "str(args->filename)"),
            ("connect", "connect", "args->fd"),
        ] {
            let fmt = if arg.starts_with("str") { "%s" } else { "%d" };
            script.push_str(&format!(
                "tracepoint:syscalls:sys_enter_{call} {filter} {{ printf(\"%d {what} {fmt}\\n\", pid, {arg}); }}\n\
                 tracepoint:syscalls:sys_exit_{call} {filter} {{ printf(\"%d {what} = %d\\n\", pid, args->ret); }}\n"
            ));
        }
        fs::write(dir.join("trace.bt"), script)?;
        let out = dir.join("trace.out");
        let child = Command::new("bpftrace")
            .arg("-o")
            .arg(&out)
            .arg(dir.join("trace.bt"))
            .stdout(Stdio::null())
            .stderr(fs::File::create(dir.join("bpftrace.stderr"))?)
            .spawn()
            .context("starting bpftrace")?;
        self.child = Some(child);
        // It says so once every probe is attached.
        self.wait_for_word(&out, "Attaching", &dir.join("bpftrace.stderr"))?;
        // Attaching is said before the last probe is in place.
        thread::sleep(Duration::from_millis(500));
        self.out = out;
        Ok(())
    }

    /// The command the workload runs under, ready for its program and arguments.
    pub fn wrap(&self, cx: &Ctx) -> Command {
        match self.peer {
            Peer::Auditd | Peer::Bpftrace => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(format!("echo {AUID} > /proc/self/loginuid && exec \"$@\""))
                    .arg("awbench");
                c
            }
            Peer::Bwrap => {
                let mut c = Command::new("bwrap");
                c.args(["--dev-bind", "/", "/", "--unshare-net", "--die-with-parent"]);
                // Masked where they resolve to (bwrap cannot mount over a link such as
                // /usr/bin/nc -> /etc/alternatives/nc), each once.
                let mut masked: Vec<PathBuf> = cx
                    .denied_files
                    .iter()
                    .chain(&cx.denied_programs)
                    .filter_map(|f| fs::canonicalize(f).ok())
                    .collect();
                masked.sort();
                masked.dedup();
                for f in masked {
                    if f.is_dir() {
                        c.arg("--tmpfs").arg(f);
                    } else {
                        c.arg("--ro-bind").arg("/dev/null").arg(f);
                    }
                }
                c.arg("--");
                c
            }
            Peer::Landlock => {
                let mut c = Command::new(cx.awload);
                c.arg("sandbox");
                let system = ["/usr", "/bin", "/lib", "/lib64", "/etc", "/proc", "/sys"];
                for p in system.iter().map(Path::new).filter(|p| p.exists()) {
                    c.arg("--read").arg(p);
                }
                c.arg("--read").arg(cx.awload).arg("--read").arg(cx.allowed);
                for d in &cx.build_reads {
                    c.arg("--read").arg(d);
                }
                c.arg("--write").arg("/dev");
                for d in &cx.build_dirs {
                    c.arg("--write").arg(d);
                }
                c.arg("--tcp-port").arg(cx.port.to_string());
                c.arg("--");
                c
            }
            // Nothing around the workload (`env` only runs it).
            Peer::Floor => Command::new("env"),
        }
    }

    /// Events the peer lost so far (audit: the kernel's `lost` counter; bpftrace: the
    /// `Lost N events` lines it writes).
    pub fn lost(&self) -> u64 {
        match self.peer {
            Peer::Auditd => audit_status()
                .ok()
                .and_then(|s| status_field(&s, "lost"))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            Peer::Bpftrace => fs::read_to_string(&self.out)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| {
                    l.strip_prefix("Lost ")?
                        .split_whitespace()
                        .next()?
                        .parse::<u64>()
                        .ok()
                })
                .sum(),
            Peer::Bwrap | Peer::Landlock | Peer::Floor => 0,
        }
    }

    /// How much it has written (bytes, newest modification), to check that an observing
    /// peer recorded each block.
    pub fn written(&self) -> (u64, Option<SystemTime>) {
        let files: Vec<PathBuf> = if self.out.is_dir() {
            fs::read_dir(&self.out)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .collect()
        } else {
            vec![self.out.clone()]
        };
        files
            .iter()
            .filter_map(|f| fs::metadata(f).ok())
            .fold((0, None), |(n, t), m| {
                (n + m.len(), t.max(m.modified().ok()))
            })
    }

    /// Stops the peer and undoes what it changed.
    pub fn stop(mut self) -> Result<()> {
        self.undo()
    }

    fn undo(&mut self) -> Result<()> {
        if self.peer == Peer::Auditd {
            let _ = auditctl(&audit_rule("-d"));
        }
        if let Some(mut child) = self.child.take() {
            // SIGTERM (auditd) or SIGINT (bpftrace prints its losses and exits).
            let sig = if self.peer == Peer::Bpftrace {
                "-INT"
            } else {
                "-TERM"
            };
            let _ = Command::new("kill")
                .args([sig, &child.id().to_string()])
                .status();
            let start = Instant::now();
            while child.try_wait()?.is_none() {
                if start.elapsed() > Duration::from_secs(20) {
                    let _ = child.kill();
                    let _ = child.wait();
                    bail!("{} did not stop within 20 s", self.peer.name());
                }
                thread::sleep(Duration::from_millis(50));
            }
        }
        if let Some(enabled) = self.audit_enabled.take() {
            // The kernel keeps auditing after its daemon went: as it was before.
            auditctl(&["-e", &enabled])?;
        }
        Ok(())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.undo();
    }
}

/// The bench's audit rule, for `-a` (add) or `-d` (delete): only this one is removed
/// again, never the host's own.
fn audit_rule(op: &str) -> Vec<String> {
    let mut r: Vec<String> = [op, "always,exit", "-F", "arch=b64"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    for call in ["execve", "execveat", "open", "openat", "openat2", "connect"] {
        r.push("-S".into());
        r.push(call.into());
    }
    r.extend([
        "-F".into(),
        format!("auid={AUID}"),
        "-k".into(),
        AUDIT_KEY.into(),
    ]);
    r
}

fn auditctl<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Result<()> {
    let out = Command::new("auditctl").args(args).output()?;
    if !out.status.success() {
        bail!(
            "auditctl {:?}: {}",
            args.iter()
                .map(|a| a.as_ref().to_owned())
                .collect::<Vec<_>>(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn audit_status() -> Result<String> {
    let out = Command::new("auditctl").arg("-s").output()?;
    if !out.status.success() {
        bail!(
            "auditctl -s: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `NAME VALUE` from `auditctl -s`.
fn status_field(status: &str, name: &str) -> Option<String> {
    status.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == name).then(|| v.trim().to_owned())
    })
}

fn which(program: &str) -> Result<()> {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
        .unwrap_or(false)
        || Path::new("/usr/sbin").join(program).is_file();
    if !found {
        bail!("{program} is not installed (`cargo xtask setup` installs it)");
    }
    Ok(())
}
