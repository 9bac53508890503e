//! Kernel tests: the real eBPF object in the real kernel, real processes in real sessions.
//!
//! Each test starts its own daemon (own socket, state directory and maps), so tests run in
//! parallel without seeing each other's sessions. They need root to load eBPF programs:
//! without it they skip with the reason, and under `CI=true` that is a failure.
//! Tests are laid out by concern, fixtures in `support`; which of them also run in the
//! VM tier's guests is `VM_TESTS` in `xtask/src/vm.rs`.

mod agents;
mod approvals;
mod audit;
mod containers;
mod control;
mod deploy;
mod drift;
mod environment;
mod export;
mod hooks;
mod inventory;
mod landlock;
mod network;
mod paths;
mod repeats;
mod routes;
mod selectors;
mod sessions;
mod succession;
mod support;
mod syscalls;
