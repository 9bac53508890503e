//! Child process trees that end with xtask: however xtask ends (a CI time limit, `timeout`,
//! Ctrl-C, SIGKILL), the QEMU guests it started must not run on as orphans.
//!
//! The tree runs in a process group of its own (so a stall can be ended as a whole)
//! under a small `sh` that the kernel signals when xtask dies (`PR_SET_PDEATHSIG`); its
//! trap kills the whole group, QEMU included, which signals aimed at xtask's own group
//! would never reach.

use std::{
    fs,
    os::unix::process::CommandExt,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

/// The wrapper: runs its arguments in the background and waits (a trapped signal ends
/// the wait at once); on TERM, HUP or INT it kills its process group.
const WRAPPER: &str = r#"trap 'trap - TERM HUP INT; kill -KILL 0' TERM HUP INT
"$@" &
wait $!"#;

/// Spawns `cmd` (program, arguments, environment, working directory) under the guard,
/// with stdin closed and stdout/stderr piped.
pub fn spawn(cmd: &Command) -> Result<Child> {
    let mut sh = Command::new("sh");
    sh.arg("-c").arg(WRAPPER).arg("agentwarden-guard");
    sh.arg(cmd.get_program()).args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => sh.env(k, v),
            None => sh.env_remove(k),
        };
    }
    sh.current_dir(
        cmd.get_current_dir()
            .map_or_else(crate::workspace_root, |d| d.to_owned()),
    );
    sh.process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: only an async-signal-safe prctl between fork and exec. The death signal
    // is tied to the spawning thread: callers spawn from a thread that outlives the
    // guest (it waits for it).
    unsafe {
        sh.pre_exec(|| {
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::TERM))
                .map_err(std::io::Error::from)
        });
    }
    sh.spawn()
        .with_context(|| format!("starting {:?}", cmd.get_program()))
}

/// SIGKILL to the process group led by `pid` (the guard, vng and the QEMU it started).
pub fn kill_group(pid: u32) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
}

/// The environment variable that marks a tree for [`tagged`].
pub const TAG_VAR: &str = "AGENTWARDEN_GUARD_TAG";

/// Pids of live processes whose environment holds `TAG_VAR=tag` (inherited by every
/// process of a tree, however it was re-parented).
pub fn tagged(tag: &str) -> Vec<u32> {
    let needle = format!("{TAG_VAR}={tag}");
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // A zombie is already dead: it only waits for its parent to reap it.
            let zombie = stat
                .rsplit(')')
                .next()
                .is_some_and(|r| r.trim_start().starts_with('Z'));
            !zombie
                && fs::read(format!("/proc/{pid}/environ"))
                    .is_ok_and(|env| env.split(|b| *b == 0).any(|v| v == needle.as_bytes()))
        })
        .collect()
}

/// Polls until `done` holds; false after `limit`.
pub fn wait_until(limit: Duration, done: impl Fn() -> bool) -> bool {
    let start = Instant::now();
    while !done() {
        if start.elapsed() > limit {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expect(what: &str, limit: Duration, done: impl Fn() -> bool) {
        assert!(wait_until(limit, done), "{what} within {limit:?}");
    }

    /// The guarded tree (a child that forked a grandchild, as vng starts QEMU) dies
    /// with the thread that spawned it, as it would with xtask.
    #[test]
    fn a_guarded_tree_ends_when_its_spawner_ends() {
        let tag = format!("{}-{}", std::process::id(), line!());
        let t = tag.clone();
        let spawner = thread::spawn(move || {
            let mut cmd = Command::new("sh");
            cmd.args(["-c", "sleep 300 & sleep 300"]).env(TAG_VAR, &t);
            let child = spawn(&cmd).expect("spawn");
            expect("the tree started", Duration::from_secs(10), || {
                tagged(&t).len() >= 3
            });
            child
        });
        let mut child = spawner.join().unwrap();
        // The spawning thread is gone: the guard was signalled and killed its group.
        expect("the tree ended", Duration::from_secs(10), || {
            tagged(&tag).is_empty()
        });
        let _ = child.wait();
    }

    #[test]
    fn kill_group_ends_the_whole_tree() {
        let tag = format!("{}-{}", std::process::id(), line!());
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "sleep 300 & sleep 300"]).env(TAG_VAR, &tag);
        let mut child = spawn(&cmd).expect("spawn");
        expect("the tree started", Duration::from_secs(10), || {
            tagged(&tag).len() >= 3
        });
        kill_group(child.id());
        let _ = child.wait();
        expect("the tree ended", Duration::from_secs(10), || {
            tagged(&tag).is_empty()
        });
    }
}
