//! Loading and attaching the embedded eBPF object, driven by a declarative table: each
//! program names its hook and whether the daemon can run without it. `status` shows what
//! was attached, what was left out, and why.

use std::{collections::BTreeMap, path::Path};

use agent_common::{config::KernelOffsets, maps};
use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Btf, Ebpf, EbpfLoader,
    programs::{
        BtfTracePoint, CgroupAttachMode, CgroupSock, CgroupSockAddr, Lsm, PerfEvent, TracePoint,
        links::FdLink,
    },
};
use serde::{Deserialize, Serialize};

use crate::{
    pins::{PinDir, Shape, mismatches},
    probe::HostProbe,
    startup::Startup,
};

/// The eBPF object built by `build.rs` (aya-build), embedded so the daemon is one binary.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/agent-ebpf"));

/// Where a program attaches.
#[derive(Clone, Copy, Debug)]
pub enum Hook {
    /// BTF-enabled tracepoint (`tp_btf`), cheaper than classic ones.
    BtfTracepoint(&'static str),
    /// Classic tracepoint `category/name` (syscall tracepoints exist only in this form).
    Tracepoint(&'static str, &'static str),
    /// BPF-LSM hook.
    Lsm(&'static str),
    /// cgroup sock_addr program, attached to the cgroup v2 root.
    CgroupSockAddr,
    /// cgroup sock program (socket creation), attached to the cgroup v2 root.
    CgroupSock,
    /// A timer: a software perf event (`cpu-clock`) on CPU 0 with this period.
    Timer(u64),
}

/// A kernel feature a program needs beyond what every supported kernel has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Feature {
    /// The `bpf` LSM is active (`lsm=...,bpf` on the kernel command line).
    BpfLsm,
    /// A cgroup v2 hierarchy is mounted (and sock_addr programs load).
    CgroupSockAddr,
}

impl Feature {
    fn available(self, host: &HostProbe) -> Result<(), String> {
        match self {
            Feature::BpfLsm if host.bpf_lsm_active => Ok(()),
            Feature::CgroupSockAddr if host.cgroup2_mount.is_some() && host.cgroup_sock_addr => {
                Ok(())
            }
            Feature::CgroupSockAddr => {
                Err("needs cgroup v2 (mounted) and cgroup sock_addr programs".to_owned())
            }
            Feature::BpfLsm => Err(format!(
                "needs BPF-LSM: `bpf` is not in the active LSM list ({}); boot with lsm=...,bpf",
                if host.active_lsms.is_empty() {
                    "empty"
                } else {
                    &host.active_lsms
                }
            )),
        }
    }
}

/// One row of the program table.
#[derive(Clone, Copy, Debug)]
pub struct ProgramSpec {
    /// Function name in the eBPF object.
    pub name: &'static str,
    pub hook: Hook,
    /// Feature the program needs; without it the program is left out (never required).
    pub needs: Option<Feature>,
    /// Without a required program the daemon refuses to start; an optional one is left
    /// out with its reason (e.g. a syscall this kernel does not have).
    pub required: bool,
    /// What covers for an optional program that is left out.
    pub fallback: &'static str,
}

const fn tp(name: &'static str, required: bool) -> ProgramSpec {
    ProgramSpec {
        name,
        hook: Hook::Tracepoint("syscalls", name),
        needs: None,
        required,
        fallback: if required {
            "none: required"
        } else {
            "none: these opens are not observed"
        },
    }
}

const fn cgroup(name: &'static str) -> ProgramSpec {
    ProgramSpec {
        name,
        hook: Hook::CgroupSockAddr,
        needs: Some(Feature::CgroupSockAddr),
        required: false,
        fallback: "profiles that block network destinations are refused at enrolment",
    }
}

const fn lsm_self_protection(name: &'static str) -> ProgramSpec {
    ProgramSpec {
        name,
        hook: Hook::Lsm(name),
        needs: Some(Feature::BpfLsm),
        required: false,
        fallback: "signals, ptrace, bpf(), perf_event_open and module loading: refused by \
                   the seccomp filter in `run` sessions, SIGKILL at the call's entry in \
                   attached ones (the call itself runs)",
    }
}

const fn names(name: &'static str) -> ProgramSpec {
    ProgramSpec {
        name,
        hook: Hook::Lsm(name),
        needs: Some(Feature::BpfLsm),
        required: false,
        fallback: "creating, removing, renaming or truncating a denied name is not refused \
                   (only opens are); the daemon pins again what is removed from its pin \
                   directory",
    }
}

/// The BPF-LSM self-protection hooks; with all of them attached the syscall-entry
/// program leaves their calls to them (`DAEMON_FLAG_LSM_SELF_PROTECTION`).
pub const LSM_SELF_PROTECTION: [&str; 6] = [
    "task_kill",
    "ptrace_access_check",
    "bpf",
    "perf_event_open",
    "kernel_load_data",
    "kernel_read_file",
];

pub const PROGRAMS: &[ProgramSpec] = &[
    ProgramSpec {
        name: "sched_process_fork",
        hook: Hook::BtfTracepoint("sched_process_fork"),
        needs: None,
        required: true,
        fallback: "none: required",
    },
    ProgramSpec {
        name: "sched_process_exit",
        hook: Hook::BtfTracepoint("sched_process_exit"),
        needs: None,
        required: true,
        fallback: "none: required",
    },
    ProgramSpec {
        name: "sched_process_exec",
        hook: Hook::BtfTracepoint("sched_process_exec"),
        needs: None,
        required: true,
        fallback: "none: required",
    },
    // Enrolment by selector of cgroups created after the profiles were loaded.
    ProgramSpec {
        name: "cgroup_mkdir",
        hook: Hook::BtfTracepoint("cgroup_mkdir"),
        needs: None,
        required: false,
        fallback: "a `match: cgroup:` selector covers only cgroups that existed when the \
                   profiles were loaded (and those the daemon finds at its next reload)",
    },
    tp("sys_enter_openat", true),
    tp("sys_exit_openat", true),
    tp("sys_enter_openat2", false),
    tp("sys_exit_openat2", false),
    tp("sys_enter_open", false),
    tp("sys_exit_open", false),
    tp("sys_enter_creat", false),
    tp("sys_exit_creat", false),
    tp("sys_enter_connect", true),
    tp("sys_exit_connect", true),
    // `kill` of network operations: the cgroup layer refuses, these exits send SIGKILL.
    tp("sys_exit_sendto", true),
    tp("sys_exit_sendmsg", true),
    tp("sys_exit_sendmmsg", true),
    // Raw and ICMP sockets: refused at creation where the network default is
    // deny (no destination rule can judge their traffic); a `kill` signals at the exit.
    ProgramSpec {
        name: "sock_create",
        hook: Hook::CgroupSock,
        needs: Some(Feature::CgroupSockAddr),
        required: false,
        fallback: "raw and ICMP sockets of sessions are not refused",
    },
    ProgramSpec {
        name: "sys_exit_socket",
        hook: Hook::Tracepoint("syscalls", "sys_exit_socket"),
        needs: None,
        required: false,
        fallback: "a `kill` of a raw or ICMP socket refuses it without the signal",
    },
    // Packet sockets: below IP, never seen by sock_create; refused by BPF-LSM, else the
    // process is killed once the socket exists (syscall or io_uring alike).
    ProgramSpec {
        name: "socket_create",
        hook: Hook::Lsm("socket_create"),
        needs: Some(Feature::BpfLsm),
        required: false,
        fallback: "packet sockets of sessions are killed at socket(2)'s exit",
    },
    ProgramSpec {
        name: "sys_enter_socket",
        hook: Hook::Tracepoint("syscalls", "sys_enter_socket"),
        needs: None,
        required: false,
        fallback: "packet sockets of sessions are not stopped without BPF-LSM",
    },
    // Syscall rules: seccomp refuses in `run` sessions, the exit records its refusals;
    // the entry kills or records in sessions without the filter (`attach`).
    ProgramSpec {
        name: "sys_exit",
        hook: Hook::BtfTracepoint("sys_exit"),
        needs: None,
        required: false,
        fallback: "seccomp refusals in `run` sessions happen but are not recorded",
    },
    ProgramSpec {
        name: "sys_enter",
        hook: Hook::BtfTracepoint("sys_enter"),
        needs: None,
        required: false,
        fallback: "syscall rules of `attach` sessions and `alert` rules are not met; \
                   profiles that kill for them are refused at attach",
    },
    // The daemon's self-protection inside the calls (attached sessions too).
    lsm_self_protection("task_kill"),
    lsm_self_protection("ptrace_access_check"),
    lsm_self_protection("bpf"),
    lsm_self_protection("perf_event_open"),
    lsm_self_protection("kernel_load_data"),
    lsm_self_protection("kernel_read_file"),
    cgroup("connect4"),
    cgroup("connect6"),
    cgroup("sendmsg4"),
    cgroup("sendmsg6"),
    // Where BPF-LSM is missing, `block` of execs and opens is carried out only by a
    // profile's `fallback: kill` (signal layer); without one the profile is refused.
    ProgramSpec {
        name: "bprm_check_security",
        hook: Hook::Lsm("bprm_check_security"),
        needs: Some(Feature::BpfLsm),
        required: false,
        fallback: "exec `block` only through `fallback: kill` (signal layer); else refused",
    },
    ProgramSpec {
        name: "file_open",
        hook: Hook::Lsm("file_open"),
        needs: Some(Feature::BpfLsm),
        required: false,
        fallback: "file `block` only through `fallback: kill` (signal layer); else refused",
    },
    // Changes to the names file rules cover: creating, removing, renaming, linking and
    // truncating them (the daemon's state, pin and socket directories among them).
    names("path_unlink"),
    names("path_rmdir"),
    names("path_mkdir"),
    names("path_mknod"),
    names("path_symlink"),
    names("path_link"),
    names("path_rename"),
    names("path_truncate"),
    // Reports the repeats of opens the kernel counted, for processes that stopped
    // opening a file and do not exit.
    ProgramSpec {
        name: "repeats_timer",
        hook: Hook::Timer(agent_common::config::REPEATS_TIMER_NS),
        needs: None,
        required: false,
        fallback: "counted repeats of opens are reported when the process opens the file \
                   again a second later, when another file takes its slot, or at its exit",
    },
];

/// Programs attached only while a session runs: the raw syscall tracepoints run for
/// every syscall on the host (some 200 ns each on these machines, see the README), a
/// price a host with no agent running must not pay. Loaded (verified) at start.
pub const ON_DEMAND: &[&str] = &["sys_exit", "sys_enter"];

/// `ProgramStatus::state` of an [`ON_DEMAND`] program: loaded, attached while a session
/// runs.
pub const STATE_ON_DEMAND: &str = "on demand";

/// What happened to one program at load.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProgramStatus {
    pub name: String,
    pub kind: String,
    pub attach_point: String,
    /// `attached` or `left out`.
    pub state: String,
    pub reason: Option<String>,
    /// What covers for it when left out.
    pub fallback: Option<String>,
    /// Microseconds its load (the verifier) and attach took.
    #[serde(default)]
    pub load_us: Option<u64>,
}

/// The loaded object and the outcome per program.
pub struct Loaded {
    pub ebpf: Ebpf,
    pub programs: Vec<ProgramStatus>,
}

/// Where the kernel's tracing filesystem is mounted by convention.
const TRACEFS: &str = "/sys/kernel/tracing";

/// Classic tracepoints are found through tracefs; mount it when the host has not (minimal
/// hosts and containers often do not).
fn ensure_tracefs() -> Result<()> {
    let mounted = std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split_whitespace().nth(2) == Some("tracefs"));
    if mounted {
        return Ok(());
    }
    rustix::mount::mount(
        "tracefs",
        TRACEFS,
        "tracefs",
        rustix::mount::MountFlags::empty(),
        None,
    )
    .with_context(|| format!("mounting tracefs at {TRACEFS} (needed for syscall tracepoints)"))?;
    tracing::info!("mounted tracefs at {TRACEFS}");
    Ok(())
}

/// The maps of the embedded object (not the sections of globals, which belong to one
/// load) and their shapes, with the sizes this daemon configures.
pub fn object_maps(max_tracked: u32, ring_bytes: u32) -> Result<BTreeMap<String, Shape>> {
    let obj = aya_obj::Object::parse(EBPF_OBJECT).context("parsing the embedded object")?;
    Ok(obj
        .maps
        .iter()
        .filter(|(name, _)| !name.starts_with('.'))
        .map(|(name, m)| {
            let max_entries = match name.as_str() {
                maps::SESSIONS => max_tracked,
                maps::EVENTS => ring_bytes,
                _ => m.max_entries(),
            };
            let shape = Shape {
                map_type: m.map_type(),
                key_size: m.key_size(),
                value_size: m.value_size(),
                max_entries,
            };
            (name.clone(), shape)
        })
        .collect())
}

/// Loads the embedded object with `offsets` against the maps pinned in `pins` (created
/// and pinned where none are), and attaches every program of [`PROGRAMS`], pinning each
/// link under `generation`. The programs act only once the daemon writes `generation`
/// to the `DAEMON` map.
///
/// `max_tracked` sizes the `SESSIONS` map (processes across all sessions), `ring_bytes`
/// the `EVENTS` ring buffer; pinned maps of another shape are refused, named.
#[allow(
    clippy::too_many_arguments,
    reason = "one call site; each is a separate input"
)]
pub fn load(
    offsets: KernelOffsets,
    btf_bytes: &[u8],
    max_tracked: u32,
    ring_bytes: u32,
    host: &HostProbe,
    pins: &PinDir,
    generation: u64,
    startup: &mut Startup,
) -> Result<Loaded> {
    ensure_tracefs()?;
    pins.prepare()?;
    let wanted = object_maps(max_tracked, ring_bytes)?;
    let wrong = mismatches(&pins.pinned_shapes(), &wanted);
    if !wrong.is_empty() {
        bail!(
            "the maps pinned in {} do not fit this daemon ({}); start it with the sizes \
             they were made with, or remove them with `agentwarden unload --pin-dir {}` \
             (which ends the enforcement of running sessions)",
            pins.root().display(),
            wrong.join("; "),
            pins.root().display()
        );
    }
    let btf = Btf::parse(btf_bytes, aya::Endianness::default()).context("parsing kernel BTF")?;
    startup.mark("btf (aya)");
    let pin_paths: Vec<(&str, std::path::PathBuf)> = wanted
        .keys()
        .map(|name| (name.as_str(), pins.map(name)))
        .collect();
    let binder = std::process::id();
    let mut loader = EbpfLoader::new();
    loader
        .btf(Some(&btf))
        .override_global(maps::OFFSETS, &offsets, true)
        // Only the daemon's own opens are recorded for binding rules to inodes.
        .override_global(maps::BINDER_TGID, &binder, true)
        .override_global(maps::GENERATION, &generation, true)
        .map_max_entries(maps::SESSIONS, max_tracked)
        .map_max_entries(maps::EVENTS, ring_bytes);
    for (name, path) in &pin_paths {
        loader.map_pin_path(name, path.as_path());
    }
    let mut ebpf = loader
        .load(EBPF_OBJECT)
        .context("loading the eBPF object")?;
    startup.mark("object and maps");
    let links = pins.links(generation);
    std::fs::create_dir_all(&links).with_context(|| format!("creating {}", links.display()))?;
    let mut programs = Vec::new();
    for spec in PROGRAMS {
        let (kind, point) = match spec.hook {
            Hook::BtfTracepoint(f) => ("tp_btf", f.to_owned()),
            Hook::Tracepoint(c, n) => ("tracepoint", format!("{c}/{n}")),
            Hook::Lsm(h) => ("lsm", h.to_owned()),
            Hook::CgroupSock => (
                "cgroup_sock",
                host.cgroup2_mount
                    .as_ref()
                    .map_or("cgroup v2 root".to_owned(), |m| m.display().to_string()),
            ),
            Hook::CgroupSockAddr => (
                "cgroup_sock_addr",
                host.cgroup2_mount
                    .as_ref()
                    .map_or("cgroup v2 root".to_owned(), |m| m.display().to_string()),
            ),
            Hook::Timer(ns) => (
                "perf_event",
                format!("cpu-clock, CPU 0, every {} ms", ns / 1_000_000),
            ),
        };
        let began = std::time::Instant::now();
        let on_demand = ON_DEMAND.contains(&spec.name);
        let outcome = match spec.needs.map(|f| f.available(host)) {
            Some(Err(why)) => Err(anyhow!(why)),
            _ if on_demand => load_only(&mut ebpf, spec, &btf),
            _ => attach(&mut ebpf, spec, &btf, host, &links.join(spec.name)),
        };
        let load_us = Some(crate::startup::us(began.elapsed()));
        let (state, reason) = match outcome {
            Ok(()) if on_demand => (STATE_ON_DEMAND, None),
            Ok(()) => ("attached", None),
            Err(e) if !spec.required => ("left out", Some(format!("{e:#}"))),
            Err(e) => {
                return Err(e.context(format!("attaching required program {}", spec.name)));
            }
        };
        programs.push(ProgramStatus {
            name: spec.name.to_owned(),
            kind: kind.to_owned(),
            attach_point: point,
            state: state.to_owned(),
            fallback: reason.as_ref().map(|_| spec.fallback.to_owned()),
            reason,
            load_us,
        });
    }
    startup.mark("programs (verify, attach)");
    Ok(Loaded { ebpf, programs })
}

/// The object's program that does nothing (`agent-ebpf/src/floor.rs`).
const FLOOR: &str = "floor";

/// `agentwarden bench-floor`: the object's program that does nothing, attached to every
/// classic syscall tracepoint of [`PROGRAMS`] (the hooks an untracked process's opens
/// and connects pass through); nothing else is loaded and nothing is pinned, so the
/// attachments end with the returned object (or the process). The hooks attached.
pub fn attach_floor() -> Result<(Ebpf, Vec<String>)> {
    ensure_tracefs()?;
    let mut ebpf = EbpfLoader::new()
        .load(EBPF_OBJECT)
        .context("loading the eBPF object")?;
    let p: &mut TracePoint = ebpf
        .program_mut(FLOOR)
        .ok_or_else(|| anyhow!("program {FLOOR} missing from the object"))?
        .try_into()?;
    p.load().context("loading floor")?;
    let mut hooks = Vec::new();
    for spec in PROGRAMS {
        if let Hook::Tracepoint(category, name) = spec.hook {
            // A syscall this kernel lacks (the daemon leaves its program out too).
            if p.attach(category, name).is_ok() {
                hooks.push(format!("{category}/{name}"));
            }
        }
    }
    if hooks.is_empty() {
        bail!("no syscall tracepoint took the floor program");
    }
    Ok((ebpf, hooks))
}

/// Loads (verifies) an [`ON_DEMAND`] program without attaching it.
fn load_only(ebpf: &mut Ebpf, spec: &ProgramSpec, btf: &Btf) -> Result<()> {
    let prog = ebpf
        .program_mut(spec.name)
        .ok_or_else(|| anyhow!("program {} missing from the object", spec.name))?;
    match spec.hook {
        Hook::BtfTracepoint(func) => {
            let p: &mut BtfTracePoint = prog.try_into()?;
            p.load(func, btf).context("load")
        }
        _ => bail!("only BTF tracepoints are attached on demand"),
    }
}

fn attach(
    ebpf: &mut Ebpf,
    spec: &ProgramSpec,
    btf: &Btf,
    host: &HostProbe,
    pin: &Path,
) -> Result<()> {
    let prog = ebpf
        .program_mut(spec.name)
        .ok_or_else(|| anyhow!("program {} missing from the object", spec.name))?;
    // Every link is pinned: the program stays attached when the daemon is gone.
    let link: FdLink = match spec.hook {
        Hook::BtfTracepoint(func) => {
            let p: &mut BtfTracePoint = prog.try_into()?;
            p.load(func, btf).context("load")?;
            let id = p.attach().context("attach")?;
            p.take_link(id)?.into()
        }
        Hook::Tracepoint(cat, name) => {
            let p: &mut TracePoint = prog.try_into()?;
            p.load().context("load")?;
            let id = p.attach(cat, name).context("attach")?;
            FdLink::try_from(p.take_link(id)?)
                .context("a tracepoint link this kernel cannot pin (needs bpf_link, 5.15+)")?
        }
        // A bpf_link (what aya creates for cgroup programs) coexists with other links on
        // the same cgroup, so several daemons (tests, upgrades) can attach side by side.
        Hook::CgroupSock => {
            let p: &mut CgroupSock = prog.try_into()?;
            p.load().context("load")?;
            let id = p
                .attach(cgroup_root(host)?, CgroupAttachMode::Single)
                .context("attach")?;
            FdLink::try_from(p.take_link(id)?).context("a cgroup attachment without bpf_link")?
        }
        Hook::CgroupSockAddr => {
            let p: &mut CgroupSockAddr = prog.try_into()?;
            p.load().context("load")?;
            let id = p
                .attach(cgroup_root(host)?, CgroupAttachMode::Single)
                .context("attach")?;
            FdLink::try_from(p.take_link(id)?).context("a cgroup attachment without bpf_link")?
        }
        Hook::Lsm(hook) => {
            let p: &mut Lsm = prog.try_into()?;
            p.load(hook, btf).context("load")?;
            let id = p.attach().context("attach")?;
            p.take_link(id)?.into()
        }
        Hook::Timer(period_ns) => {
            use aya::programs::perf_event::{
                PerfEventConfig, PerfEventScope, SamplePolicy, SoftwareEvent,
            };
            let p: &mut PerfEvent = prog.try_into()?;
            p.load().context("load")?;
            // CPU 0 is always online; `cpu-clock` counts wall time there, idle or not.
            let id = p
                .attach(
                    PerfEventConfig::Software(SoftwareEvent::CpuClock),
                    PerfEventScope::AllProcessesOneCpu { cpu: 0 },
                    SamplePolicy::Period(period_ns),
                    false,
                )
                .context("attach")?;
            FdLink::try_from(p.take_link(id)?)
                .context("a perf event link this kernel cannot pin (needs bpf_link, 5.15+)")?
        }
    };
    link.pin(pin)
        .with_context(|| format!("pinning its link at {}", pin.display()))?;
    Ok(())
}

/// The cgroup v2 root, where the cgroup programs attach (they see every process).
fn cgroup_root(host: &HostProbe) -> Result<std::fs::File> {
    let root = host
        .cgroup2_mount
        .as_ref()
        .ok_or_else(|| anyhow!("no cgroup v2"))?;
    std::fs::File::open(root).with_context(|| format!("opening cgroup root {}", root.display()))
}

impl ProgramStatus {
    /// True when the program acts whenever a session needs it: attached, or attached on
    /// demand.
    pub fn in_effect(&self) -> bool {
        self.state == "attached" || self.state == STATE_ON_DEMAND
    }
}

/// Attaches the [`ON_DEMAND`] program `name` (loaded at start) and pins its link in
/// `links`; returns the pin, or `None` when the program was left out at load (its reason
/// is in the status).
pub fn attach_on_demand(
    ebpf: &mut Ebpf,
    name: &str,
    links: &Path,
) -> Result<Option<std::path::PathBuf>> {
    let Some(prog) = ebpf.program_mut(name) else {
        return Ok(None);
    };
    let p: &mut BtfTracePoint = prog.try_into()?;
    if p.fd().is_err() {
        return Ok(None);
    }
    let id = p.attach().with_context(|| format!("attaching {name}"))?;
    let link: FdLink = p.take_link(id)?.into();
    let pin = links.join(name);
    link.pin(&pin)
        .with_context(|| format!("pinning {name} at {}", pin.display()))?;
    Ok(Some(pin))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names userspace uses are the names in the object it embeds: every map the
    /// daemon takes, and every program of the table (and no program left out of it).
    #[test]
    fn map_and_program_names_match_the_embedded_object() {
        let obj = aya_obj::Object::parse(EBPF_OBJECT).expect("the embedded object parses");
        for name in agent_common::maps::DAEMON_MAPS {
            assert!(obj.maps.contains_key(*name), "no map {name} in the object");
        }
        let table: Vec<&str> = PROGRAMS.iter().map(|p| p.name).collect();
        for p in &table {
            assert!(
                obj.programs.contains_key(*p),
                "no program {p} in the object"
            );
        }
        // `floor` is the bench's (`attach_floor`), never the daemon's.
        for p in obj.programs.keys().filter(|p| p.as_str() != FLOOR) {
            assert!(
                table.contains(&p.as_str()),
                "program {p} is in no row of PROGRAMS"
            );
        }
        assert!(obj.programs.contains_key(FLOOR));
    }
}
