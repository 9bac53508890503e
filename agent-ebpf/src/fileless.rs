//! Programs run from memory: the executable has no name in any filesystem (its inode's
//! link count is 0 — a `memfd`, an `O_TMPFILE` file, a deleted file). No path or inode
//! rule can name it, so the profile's `exec.fileless` decides. The daemon's fanotify
//! layer refuses such execs on real filesystems first; memory files live on a kernel-
//! internal filesystem it cannot mark, and are decided here.

use agent_common::{
    event::KernelVerdict,
    policy::{FILELESS_ALERT, FILELESS_ALLOW, FILELESS_BLOCK, FILELESS_KILL, ProfileConfig},
    session::SessionEntry,
    vocab::{Action, Layer},
};

use crate::{
    kernel::{off, read, read_ptr},
    netpolicy::PROFILES,
    pathrules::kill_current,
};

const EPERM: i32 = 1;

/// The profile's setting and rule, when it is not `allow`.
#[inline(always)]
fn setting(entry: &SessionEntry) -> Option<&'static ProfileConfig> {
    let cfg = PROFILES.get(entry.profile_id)?;
    (cfg.loaded != 0 && cfg.fileless != FILELESS_ALLOW).then_some(cfg)
}

/// Whether `file` has no name left in any filesystem.
#[inline(always)]
fn unnamed(file: *const u8) -> bool {
    read_ptr(file, off!(file_f_inode))
        .and_then(|inode| read::<u32>(inode, off!(inode_i_nlink)))
        .is_some_and(|n| n == 0)
}

/// Whether the LSM hook has a fileless decision to take for this session.
#[inline(always)]
pub fn lsm_wanted(entry: &SessionEntry) -> bool {
    setting(entry).is_some_and(|c| c.fileless >= FILELESS_BLOCK)
}

/// Tracepoint layer, after the exec: records an alert, or kills (`block` where no LSM
/// refused it before, and `kill`) before the new image runs in user mode.
#[inline(always)]
pub fn enforce(file: *const u8, entry: &SessionEntry, out: &mut KernelVerdict) {
    let Some(cfg) = setting(entry) else { return };
    if !unnamed(file) {
        return;
    }
    out.rule_id = cfg.fileless_rule;
    out.denied = 1;
    if cfg.fileless == FILELESS_ALERT {
        out.action = Action::Alerted as u8;
        out.enforced_by = Layer::None as u8;
    } else {
        kill_current();
        out.action = Action::Killed as u8;
        out.enforced_by = Layer::Signal as u8;
    }
}

/// LSM layer, before the exec: `-EPERM` for `block` and `kill` (which also kills).
#[inline(always)]
pub fn lsm_decide(file: *const u8, entry: &SessionEntry, out: &mut KernelVerdict) -> i32 {
    let Some(cfg) = setting(entry) else { return 0 };
    if cfg.fileless < FILELESS_BLOCK || !unnamed(file) {
        return 0;
    }
    out.rule_id = cfg.fileless_rule;
    out.denied = 1;
    out.enforced_by = Layer::Lsm as u8;
    out.action = if cfg.fileless == FILELESS_KILL {
        kill_current();
        Action::Killed as u8
    } else {
        Action::Blocked as u8
    };
    -EPERM
}
