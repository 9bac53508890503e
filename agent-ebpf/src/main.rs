//! agentwarden kernel programs. One module per concern; all decisions about which
//! process belongs to which session are taken here from the `SESSIONS` map.
#![no_std]
#![no_main]
// `atomic_xadd`: the BPF target has no atomic read-modify-write types (no CAS), but
// the instruction set has an atomic add (`lock +=`), which this intrinsic lowers to.
#![feature(core_intrinsics)]
#![allow(
    internal_features,
    reason = "core_intrinsics, for the atomic add above"
)]

mod bind;
mod emit;
mod exec;
mod file;
mod fileless;
mod floor;
mod kernel;
mod lsm;
mod maps;
mod names;
mod net;
mod netpolicy;
mod packet;
mod path;
mod pathrules;
mod repeats;
mod selector;
mod selfprotect;
mod session;
mod syscalls;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable in a verified program: the verifier rejects code that could get here.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
