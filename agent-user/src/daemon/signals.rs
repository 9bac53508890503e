//! The daemon's signals, taken by a thread of their own with `sigwait(2)`: no signal
//! handler runs anywhere in the process.
//!
//! A handler runs on whichever thread the kernel picks, and tokio's writes a wake-up
//! byte to a descriptor *number*. The audit writer, its companions and the drift
//! analyser have descriptor tables of their own (see `audit::store`), where that number
//! is closed or is an SQLite file: a SIGTERM handled there was lost, or written into the
//! store. And a handler only wakes the daemon if a runtime worker is free to poll its
//! I/O driver. Here the three signals are blocked in every thread (the mask is inherited
//! from the thread that starts the runtime), one thread waits for them, and a SIGTERM or
//! SIGINT arms the stop watch the moment it arrives: a daemon whose runtime does not act
//! on it says so, with every thread's stack, instead of waiting in silence.

use std::mem::MaybeUninit;

use anyhow::{Context as _, Result};
use tokio::sync::mpsc;

use super::start::StopWatch;

/// What the signal thread passes on.
pub(super) enum Received {
    /// SIGTERM or SIGINT: stop. The watch has run since the signal arrived.
    Stop(&'static str, StopWatch),
    /// SIGHUP: reload the profiles.
    Reload,
}

/// The signals the daemon handles, waited for by their own thread.
pub struct Signals {
    rx: mpsc::UnboundedReceiver<Received>,
}

/// The signals taken from their default actions.
const HANDLED: [libc::c_int; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

fn handled_set() -> libc::sigset_t {
    let mut set = MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigemptyset initialises the set; sigaddset adds valid signal numbers.
    unsafe {
        libc::sigemptyset(set.as_mut_ptr());
        for s in HANDLED {
            libc::sigaddset(set.as_mut_ptr(), s);
        }
        set.assume_init()
    }
}

impl Signals {
    /// Blocks the handled signals in the calling thread, and so in every thread it
    /// starts after, and starts the thread that waits for them. Call before any other
    /// thread of the daemon starts (a thread started before would still take them by
    /// their default action). A process the daemon spawns inherits the mask
    /// (`std::process::Command` keeps it): it must call [`unblock_handled_signals`]
    /// before its exec.
    pub fn take() -> Result<Self> {
        let set = handled_set();
        // SAFETY: a valid, initialised set; no old mask is asked for.
        let r = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
        if r != 0 {
            return Err(std::io::Error::from_raw_os_error(r)).context("blocking the signals");
        }
        let (tx, rx) = mpsc::unbounded_channel();
        std::thread::Builder::new()
            .name("aw-signals".into())
            .spawn(move || wait_for_signals(set, tx))
            .context("starting the signal thread")?;
        Ok(Self { rx })
    }

    /// The next signal; `None` only if the signal thread ended.
    pub(super) async fn recv(&mut self) -> Option<Received> {
        self.rx.recv().await
    }
}

/// Unblocks the signals [`Signals::take`] blocked, for a child between fork and exec
/// (a `pre_exec` hook: only async-signal-safe calls), so that it can be stopped.
pub fn unblock_handled_signals() -> std::io::Result<()> {
    let set = handled_set();
    // SAFETY: a valid, initialised set; no old mask is asked for.
    let r = unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut()) };
    if r != 0 {
        return Err(std::io::Error::from_raw_os_error(r));
    }
    Ok(())
}

fn wait_for_signals(set: libc::sigset_t, tx: mpsc::UnboundedSender<Received>) {
    // A second SIGTERM while stopping is only logged: the first one's watch goes on.
    let mut stopping = false;
    loop {
        let mut sig: libc::c_int = 0;
        // SAFETY: a valid set of blocked signals and a place for the one taken.
        let r = unsafe { libc::sigwait(&set, &mut sig) };
        if r != 0 {
            tracing::warn!(error = %std::io::Error::from_raw_os_error(r), "sigwait failed");
            continue;
        }
        let received = match sig {
            libc::SIGHUP => Received::Reload,
            libc::SIGTERM | libc::SIGINT => {
                let name = if sig == libc::SIGTERM {
                    "SIGTERM"
                } else {
                    "SIGINT"
                };
                if stopping {
                    tracing::info!(signal = name, "already stopping");
                    continue;
                }
                stopping = true;
                Received::Stop(
                    name,
                    StopWatch::arm("waiting for the runtime to act on the signal"),
                )
            }
            _ => continue,
        };
        if tx.send(received).is_err() {
            return;
        }
    }
}
