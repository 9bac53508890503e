//! Exec and file deny rules decided in the kernel on the resolved path. Rules are keyed
//! by the FNV-1a hash of an absolute path (exact), of a directory (prefix: the directory
//! and everything below it) or of a file name; one scan of the path buffer computes the
//! hash of every directory on the way, the whole path and the leaf name, with one map
//! lookup each. Runs under `bpf_loop`, like the walk. Rules that named an existing file
//! are also bound to its inode, so other names of the same file are denied too.
//!
//! Two layers use the same match: the BPF-LSM hooks refuse before the operation
//! ([`lsm_decide`]); the tracepoints after it can only kill ([`enforce`]).

use core::ffi::c_void;

use agent_common::{
    event::{KPath, KernelVerdict, PATH_FLAG_RAW, PATH_FLAG_TRUNCATED, PATH_MAX},
    policy::{
        CATEGORY_EXEC, FNV_OFFSET, FORM_EXACT, FORM_NAME, FORM_PREFIX, InodeRuleKey,
        InodeRuleValue, PATH_RULE_ALWAYS, PathRuleKey, PathRuleValue, fnv_step,
    },
    selector::SELECTOR_PROFILE,
    session::SessionEntry,
    stats::Stat,
    vocab::{Action, Layer, Mode},
};
use aya_ebpf::{
    helpers::generated::{bpf_loop, bpf_send_signal},
    macros::map,
    maps::{HashMap, PerCpuArray},
};

use crate::{
    kernel::{off, read, read_ptr},
    maps::count,
    netpolicy::PROFILES,
};

/// Deny rules of all profiles, keyed by path hash.
#[map]
pub static PATH_RULES: HashMap<PathRuleKey, PathRuleValue> = HashMap::with_max_entries(16_384, 0);

/// Deny rules bound to the files they named, keyed by inode.
#[map]
pub static INODE_RULES: HashMap<InodeRuleKey, InodeRuleValue> =
    HashMap::with_max_entries(16_384, 0);

const SIGKILL: u32 = 9;
const EPERM: i32 = 1;

/// Mutable scan state. It lives in map memory so the verifier sees unknown scalars and
/// the callback converges after a few iterations instead of being walked byte by byte.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ScanState {
    key: PathRuleKey,
    h: u64,
    name: u64,
    /// Index of the `/` that ends the current component.
    end: i64,
    /// Backward search position (phase 0) or next byte to hash (phase 1).
    pos: i64,
    start: i64,
    /// Bit d: a deny tree is rooted at depth d (from the profile).
    depths: u64,
    /// Components hashed so far.
    depth: u32,
    rule: u32,
    /// The matched rule's `PATH_RULE_*` flags.
    flags: u32,
    hit: u32,
    /// 0: looking backwards for the start of the component ending at `end`;
    /// 1: hashing its bytes forwards; 2: finished.
    phase: u32,
    /// 1: every match's `rule_id` is a bit set ORed into `bits` and the scan goes on
    /// (selectors: several may match one executable).
    collect: u32,
    bits: u32,
}

#[map]
static SCAN: PerCpuArray<ScanState> = PerCpuArray::with_max_entries(1, 0);

/// What the callback gets: both pointers stay typed for the verifier on the stack.
struct Scan {
    path: *const KPath,
    st: *mut ScanState,
}

#[inline(always)]
fn lookup(s: &mut ScanState, form: u8, hash: u64) -> bool {
    s.key.form = form;
    s.key.hash = hash;
    // SAFETY: value copied out.
    if let Some(v) = unsafe { PATH_RULES.get(s.key) } {
        if s.collect != 0 {
            s.bits |= v.rule_id;
            return false;
        }
        s.rule = v.rule_id;
        s.flags = v.flags;
        s.hit = 1;
        return true;
    }
    false
}

/// Whether a deny tree of the profile is rooted `depth` components deep.
#[inline(always)]
fn tree_at(s: &ScanState, depth: u32) -> bool {
    depth < 64 && s.depths & (1u64 << depth) != 0
}

#[inline(always)]
fn byte_at(path: *const KPath, i: i64) -> u8 {
    // SAFETY: `path` points at a live per-CPU map value; the index is masked.
    unsafe { (*path).bytes[i as usize & (PATH_MAX - 1)] }
}

/// The buffer holds components leaf-first (`c/b/a/`), each in normal order. To hash the
/// absolute path root-first (`/a/b/c`) the scan finds each component's start walking
/// backwards from its trailing `/`, then hashes its bytes forwards; after every
/// directory the hash so far is looked up as a prefix rule.
extern "C" fn scan_step(_i: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `Scan` passed to bpf_loop by `matches`.
    let c = unsafe { &*ctx.cast::<Scan>() };
    // SAFETY: a live per-CPU map value.
    let s = unsafe { &mut *c.st };
    match s.phase {
        0 => {
            if s.pos < 0 || byte_at(c.path, s.pos) == b'/' {
                s.start = s.pos + 1;
                s.pos = s.start;
                s.h = fnv_step(s.h, b'/');
                s.name = FNV_OFFSET;
                s.phase = 1;
            } else {
                s.pos -= 1;
            }
            0
        }
        1 => {
            if s.pos < s.end {
                let b = byte_at(c.path, s.pos);
                s.h = fnv_step(s.h, b);
                s.name = fnv_step(s.name, b);
                s.pos += 1;
                return 0;
            }
            if s.start <= 0 {
                // The leaf is done: exact, directory and name lookups follow.
                s.phase = 2;
                return 1;
            }
            s.depth += 1;
            let h = s.h;
            if tree_at(s, s.depth) && lookup(s, FORM_PREFIX, h) {
                return 1;
            }
            s.end = s.start - 1;
            s.pos = s.end - 1;
            s.phase = 0;
            0
        }
        _ => 1,
    }
}

/// The deny rule of `category` that matches `path`, if any, with its flags.
#[inline(always)]
fn matches(path: &KPath, entry: &SessionEntry, category: u8, depths: u64) -> Option<Hit> {
    scan(path, entry.profile_id, entry.owner_uid, category, depths, 0).and_then(|s| {
        (s.hit != 0).then_some(Hit {
            rule: s.rule,
            flags: s.flags,
        })
    })
}

/// The selectors whose executable rule (exact or directory) matches `path`: the bits
/// of every matching rule of [`SELECTOR_PROFILE`], ORed.
#[inline(always)]
pub fn selector_bits(path: &KPath, depths: u64) -> u32 {
    scan(path, SELECTOR_PROFILE, 0, CATEGORY_EXEC, depths, 1).map_or(0, |s| s.bits)
}

/// Scans `path` against the rules of one profile and owner; the state it ends in.
#[inline(always)]
fn scan(
    path: &KPath,
    profile_id: u32,
    owner_uid: u32,
    category: u8,
    depths: u64,
    collect: u32,
) -> Option<&'static ScanState> {
    if path.len == 0 || path.flags & (PATH_FLAG_TRUNCATED | PATH_FLAG_RAW) != 0 {
        return None;
    }
    let st = SCAN.get_ptr_mut(0)?;
    // SAFETY: this CPU's slot, exclusively ours while the program runs.
    let s = unsafe { &mut *st };
    let end = i64::from(path.len) - 1;
    s.key = PathRuleKey {
        hash: 0,
        profile_id,
        owner_uid,
        category,
        form: 0,
        _pad: [0; 6],
    };
    s.collect = collect;
    s.bits = 0;
    s.depths = depths;
    s.depth = 0;
    s.h = FNV_OFFSET;
    s.name = FNV_OFFSET;
    s.rule = 0;
    s.flags = 0;
    s.hit = 0;
    s.phase = 0;
    s.end = end;
    s.pos = end - 1;
    s.start = 0;
    let mut c = Scan {
        path: path as *const KPath,
        st,
    };
    // Every byte is visited twice (find, hash) plus one step per component.
    // SAFETY: `scan_step` matches the callback ABI; `c` outlives the call.
    unsafe {
        bpf_loop(
            3 * PATH_MAX as u32,
            scan_step as *mut c_void,
            (&mut c as *mut Scan).cast(),
            0,
        );
    }
    // SAFETY: as above.
    let s = unsafe { &mut *st };
    if s.hit == 0 && s.phase == 2 {
        let (h, name) = (s.h, s.name);
        // `/dir/**` also matches `/dir` itself.
        let leaf_tree = tree_at(s, s.depth + 1);
        if !(lookup(s, FORM_EXACT, h) || (leaf_tree && lookup(s, FORM_PREFIX, h))) {
            lookup(s, FORM_NAME, name);
        }
    }
    Some(s)
}

/// A matched deny rule.
#[derive(Clone, Copy)]
struct Hit {
    rule: u32,
    /// `PATH_RULE_*`.
    flags: u32,
}

impl Hit {
    /// The daemon's self-protection: refused whatever the profile's mode.
    #[inline(always)]
    fn always(&self) -> bool {
        self.flags & PATH_RULE_ALWAYS != 0
    }
}

/// The deny rule bound to the inode of `file`, if any: catches a hard link, a rename or a
/// bind mount of a file a rule named, whatever path reaches it now.
#[inline(always)]
fn inode_matches(file: *const u8, entry: &SessionEntry, category: u8) -> Option<Hit> {
    inode_rule(read_ptr(file, off!(file_f_inode))?, entry, category)
}

/// The deny rule bound to `inode`, if any.
#[inline(always)]
fn inode_rule(inode: *const u8, entry: &SessionEntry, category: u8) -> Option<Hit> {
    let ino = read::<u64>(inode, off!(inode_i_ino))?;
    let sb = read_ptr(inode, off!(inode_i_sb))?;
    let dev = read::<u32>(sb, off!(super_block_s_dev))?;
    let key = InodeRuleKey {
        ino,
        dev,
        profile_id: entry.profile_id,
        owner_uid: entry.owner_uid,
        category,
        _pad: [0; 3],
    };
    // SAFETY: value copied out.
    let v = unsafe { INODE_RULES.get(key) }.copied()?;
    // Read only on a hit (most opens miss): another file under a freed number of a
    // bound one is not the file the rule named.
    let generation = read::<u32>(inode, off!(inode_i_generation))?;
    (v.generation == generation).then_some(Hit {
        rule: v.rule_id,
        flags: v.flags,
    })
}

/// What a profile says about denials of one category.
struct Actions {
    mode: u8,
    kill: u8,
    block: u8,
    depths: u64,
}

#[inline(always)]
fn actions(entry: &SessionEntry, category: u8) -> Option<Actions> {
    let cfg = PROFILES.get(entry.profile_id)?;
    if cfg.loaded == 0 {
        return None;
    }
    Some(if category == CATEGORY_EXEC {
        Actions {
            mode: cfg.mode,
            kill: cfg.exec_kill,
            block: cfg.exec_block,
            depths: cfg.exec_prefix_depths,
        }
    } else {
        Actions {
            mode: cfg.mode,
            kill: cfg.file_kill,
            block: cfg.file_block,
            depths: cfg.file_prefix_depths,
        }
    })
}

/// The deny rule of `category` that matches the file: by path, then by inode.
#[inline(always)]
fn judge(
    file: *const u8,
    path: &KPath,
    entry: &SessionEntry,
    a: &Actions,
    category: u8,
) -> Option<Hit> {
    matches(path, entry, category, a.depths).or_else(|| inode_matches(file, entry, category))
}

#[inline(always)]
pub fn kill_current() {
    // SAFETY: signals the current task; allowed from tracepoints and LSM hooks.
    unsafe { bpf_send_signal(SIGKILL) };
    count(Stat::Kills);
}

/// Tracepoint layer, after the operation: judges the opened `file` (resolved as `path`)
/// and, where the profile says kill (or says block and no daemon runs to refuse), sends
/// SIGKILL so the process never returns to user mode with the result. Where the LSM
/// layer runs, a denied open never gets here.
#[inline(always)]
pub fn enforce(
    file: *const u8,
    path: &KPath,
    entry: &SessionEntry,
    category: u8,
    out: &mut KernelVerdict,
) {
    *out = KernelVerdict::default();
    let Some(a) = actions(entry, category) else {
        return;
    };
    let Some(hit) = judge(file, path, entry, &a, category) else {
        return;
    };
    out.rule_id = hit.rule;
    out.denied = 1;
    // A `block` got here because no refusal layer stopped it: where BPF-LSM runs that
    // cannot happen, elsewhere the refusal was the daemon's (fanotify). With no daemon
    // alive, killing is the only way left to keep the decision.
    let enforced = a.mode == Mode::Enforce as u8 || hit.always();
    let stand_in = (a.block != 0 || hit.always()) && !crate::maps::daemon_alive();
    if (a.kill != 0 || stand_in) && enforced {
        kill_current();
        out.action = Action::Killed as u8;
        out.enforced_by = Layer::Signal as u8;
    } else {
        out.action = Action::Alerted as u8;
        out.enforced_by = Layer::None as u8;
    }
}

/// Whether the LSM layer has anything to refuse for this session and category:
/// enforce-mode profiles with `block` or `kill` (monitor and alert are recorded by the
/// tracepoints after the operation), and for files every profile (the daemon's
/// self-protection rules are refused in every mode).
#[inline(always)]
pub fn lsm_wanted(entry: &SessionEntry, category: u8) -> bool {
    actions(entry, category).is_some_and(|a| {
        category != CATEGORY_EXEC
            || (a.mode == Mode::Enforce as u8 && (a.block != 0 || a.kill != 0))
    })
}

/// The LSM verdict on a matched rule: `block` refuses; `kill` refuses and sends SIGKILL;
/// the daemon's self-protection is refused in every mode; otherwise let through (the
/// tracepoints record it).
#[inline(always)]
fn lsm_verdict(a: &Actions, hit: Hit, out: &mut KernelVerdict) -> i32 {
    out.rule_id = hit.rule;
    out.denied = 1;
    out.enforced_by = Layer::Lsm as u8;
    let enforcing = a.mode == Mode::Enforce as u8;
    if hit.always() || (enforcing && a.block != 0) {
        out.action = Action::Blocked as u8;
    } else if enforcing && a.kill != 0 {
        kill_current();
        out.action = Action::Killed as u8;
    } else {
        *out = KernelVerdict::default();
        return 0;
    }
    -EPERM
}

/// LSM layer, before the operation: `-EPERM` when a deny rule matches. `block` refuses;
/// `kill` refuses and sends SIGKILL, so the process neither gets the file nor runs on.
#[inline(always)]
pub fn lsm_decide(
    file: *const u8,
    path: &KPath,
    entry: &SessionEntry,
    category: u8,
    out: &mut KernelVerdict,
) -> i32 {
    *out = KernelVerdict::default();
    let Some(a) = actions(entry, category) else {
        return 0;
    };
    let Some(hit) = judge(file, path, entry, &a, category) else {
        return 0;
    };
    lsm_verdict(&a, hit, out)
}

/// LSM layer for a change to a name (create, remove, rename, link, truncate): `-EPERM`
/// when the name's full path (`path`, resolved from the directory's mount and the
/// entry's dentry) matches a file deny rule, or when the file it names (`inode`, absent
/// for a name being created) is bound to one. A deny rule keeps its files from being
/// removed, replaced, renamed away or truncated, and a deny tree from gaining or losing
/// names, by whatever call reaches the hook.
#[inline(always)]
pub fn lsm_decide_name(
    path: &KPath,
    inode: Option<*const u8>,
    entry: &SessionEntry,
    out: &mut KernelVerdict,
) -> i32 {
    *out = KernelVerdict::default();
    let category = agent_common::policy::CATEGORY_FILE;
    let Some(a) = actions(entry, category) else {
        return 0;
    };
    let Some(hit) = matches(path, entry, category, a.depths)
        .or_else(|| inode.and_then(|i| inode_rule(i, entry, category)))
    else {
        return 0;
    };
    lsm_verdict(&a, hit, out)
}
