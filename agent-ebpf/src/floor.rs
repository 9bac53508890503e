//! A program that does nothing, for `cargo xtask bench`'s `floor` condition: attached
//! (by `agentwarden bench-floor`, never by the daemon) to every classic syscall
//! tracepoint the daemon attaches, it measures what those hooks cost on this kernel
//! before any program does any work: the least a tracepoint-based tool can add, and so
//! what agentwarden's untracked overhead is judged against.

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};

#[tracepoint]
pub fn floor(_ctx: TracePointContext) -> u32 {
    0
}
