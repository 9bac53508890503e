//! Giving memory back to the system while the daemon is idle. mimalloc keeps what a
//! thread freed in that thread's heap; a collection returns it, but only the calling
//! thread's. So the sweeper, finding the daemon idle, asks every thread that allocates
//! to collect at its own next idle moment: the runtime's workers when they park, the
//! audit writer when its queue is quiet. Under load nothing is collected: pages given
//! back would be faulted (and zeroed) straight back in.

use std::{
    cell::Cell,
    sync::atomic::{AtomicU64, Ordering::Relaxed},
};

/// Bumped each time the daemon is found idle.
static ASKED: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// The last request this thread answered.
    static ANSWERED: Cell<u64> = const { Cell::new(0) };
}

/// Asks every allocating thread to collect (and collects on this one now).
pub fn ask_collect() {
    ASKED.fetch_add(1, Relaxed);
    collect_if_asked();
}

/// Collects this thread's heap if asked since it last did: one atomic load otherwise,
/// cheap enough for every park of a runtime worker.
pub fn collect_if_asked() {
    let asked = ASKED.load(Relaxed);
    if ANSWERED.get() != asked {
        ANSWERED.set(asked);
        collect();
    }
}

/// Returns what this thread freed to the system.
pub fn collect() {
    // SAFETY: a plain call into the allocator, valid on any thread at any time.
    unsafe { libmimalloc_sys::mi_collect(true) };
}
