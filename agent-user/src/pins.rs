//! The kernel side pinned under bpffs, so that it outlives the daemon: every map (the
//! session map, the compiled profiles, the ring buffer, the counters) and every link (a
//! link holds its program). A daemon that dies leaves each session tracked and each
//! kernel decision in force; the next one loads its programs against the same maps,
//! attaches them, and switches the acting generation in one map write (see
//! `agent_common::config::DaemonState`), then drops the previous generation's links.
//!
//! Layout under the pin directory (default `/sys/fs/bpf/agentwarden`):
//! `maps/<MAP>` and `links/<generation>/<program>`. `agentwarden unload` (or
//! `daemon --detach-on-exit`) removes it all, which detaches every program.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
};

use agent_common::{config::DaemonState, maps};
use anyhow::{Context as _, Result, anyhow, bail};
use aya::maps::{Array, Map, MapData, MapInfo};

/// Where bpffs is mounted by convention (mounted there when the host has none).
pub const BPFFS: &str = "/sys/fs/bpf";
/// The default pin directory.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/agentwarden";
/// `statfs` magic of bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// A map's shape: what must match between a pinned map and this build's definition for
/// the programs to read it right.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "type {}, key {} B, value {} B, {} entries",
            self.map_type, self.key_size, self.value_size, self.max_entries
        )
    }
}

/// Mismatches between pinned maps and the shapes this build wants (empty: compatible).
/// A pinned map this build does not have is left alone; one it has and that is not
/// pinned yet is created.
pub fn mismatches(
    pinned: &BTreeMap<String, Shape>,
    wanted: &BTreeMap<String, Shape>,
) -> Vec<String> {
    wanted
        .iter()
        .filter_map(|(name, want)| {
            let have = pinned.get(name)?;
            (have != want).then(|| format!("map {name}: pinned {have}; this daemon needs {want}"))
        })
        .collect()
}

/// The pin directory of one daemon instance.
#[derive(Clone, Debug)]
pub struct PinDir {
    root: PathBuf,
}

impl PinDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn maps(&self) -> PathBuf {
        self.root.join("maps")
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.maps().join(name)
    }

    fn links_root(&self) -> PathBuf {
        self.root.join("links")
    }

    /// The directory of one generation's links.
    pub fn links(&self, generation: u64) -> PathBuf {
        self.links_root().join(format!("{generation:016x}"))
    }

    /// Makes sure the directory is on bpffs (mounting bpffs at [`BPFFS`] when the host
    /// has not) and exists.
    pub fn prepare(&self) -> Result<()> {
        if !on_bpffs(Path::new(BPFFS)) {
            fs::create_dir_all(BPFFS).with_context(|| format!("creating {BPFFS}"))?;
            // Daemons starting side by side (tests, a second instance) must not each
            // mount one: a second mount would hide the first one's pins. The lock is on
            // the directory under the mount point; whoever gets it second sees the mount.
            let dir = fs::File::open(BPFFS).with_context(|| format!("opening {BPFFS}"))?;
            rustix::fs::flock(&dir, rustix::fs::FlockOperation::LockExclusive)?;
            if !on_bpffs(Path::new(BPFFS)) {
                rustix::mount::mount(
                    "bpf",
                    BPFFS,
                    "bpf",
                    rustix::mount::MountFlags::empty(),
                    None,
                )
                .with_context(|| format!("mounting bpffs at {BPFFS} (to pin the kernel side)"))?;
                tracing::info!("mounted bpffs at {BPFFS}");
            }
        }
        if let Ok(rest) = self.root.strip_prefix(BPFFS)
            && rest.to_string_lossy().contains('.')
        {
            bail!(
                "pin directory {}: bpffs refuses names with a dot",
                self.root.display()
            );
        }
        fs::create_dir_all(self.maps())
            .with_context(|| format!("creating {}", self.maps().display()))?;
        fs::create_dir_all(self.links_root())?;
        if !on_bpffs(&self.root) {
            bail!(
                "pin directory {} is not on a bpf filesystem (mount one there, or choose a \
                 directory under {BPFFS})",
                self.root.display()
            );
        }
        Ok(())
    }

    /// The shapes of the maps pinned here.
    pub fn pinned_shapes(&self) -> BTreeMap<String, Shape> {
        let Ok(dir) = fs::read_dir(self.maps()) else {
            return BTreeMap::new();
        };
        dir.filter_map(|e| e.ok())
            .filter_map(|e| {
                let info = MapInfo::from_pin(e.path()).ok()?;
                let shape = Shape {
                    map_type: info.map_type().map_or(u32::MAX, |t| t as u32),
                    key_size: info.key_size(),
                    value_size: info.value_size(),
                    max_entries: info.max_entries(),
                };
                Some((e.file_name().to_string_lossy().into_owned(), shape))
            })
            .collect()
    }

    /// The state the last daemon left in the pinned `DAEMON` map, if any is pinned.
    pub fn previous(&self) -> Option<DaemonState> {
        let path = self.map(maps::DAEMON);
        let data = MapData::from_pin(&path).ok()?;
        let array: Array<MapData, DaemonState> = Array::try_from(Map::Array(data)).ok()?;
        array.get(&0, 0).ok().filter(|s| s.generation != 0)
    }

    /// Generations whose links are pinned here.
    pub fn generations(&self) -> Vec<u64> {
        let Ok(dir) = fs::read_dir(self.links_root()) else {
            return Vec::new();
        };
        dir.filter_map(|e| e.ok())
            .filter_map(|e| u64::from_str_radix(&e.file_name().to_string_lossy(), 16).ok())
            .collect()
    }

    /// Removes the links of every generation but `keep`: their programs detach (the
    /// pins were their last holders once their daemon is gone).
    pub fn retire_except(&self, keep: u64) -> Result<usize> {
        let mut retired = 0;
        for g in self.generations().into_iter().filter(|g| *g != keep) {
            fs::remove_dir_all(self.links(g))
                .with_context(|| format!("removing {}", self.links(g).display()))?;
            retired += 1;
        }
        Ok(retired)
    }

    /// Removes everything pinned: programs detach and maps go once no process holds
    /// them. The end of enforcement for every session: the explicit way out.
    pub fn remove(&self) -> Result<bool> {
        match fs::remove_dir_all(&self.root) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(anyhow!(e).context(format!("removing {}", self.root.display()))),
        }
    }
}

/// Holds a descriptor of every object pinned at start, so that a pin removed behind the
/// daemon's back (a root process with a known name: `maps/SESSIONS`) detaches nothing
/// while the daemon runs, and is pinned again at the next sweep.
#[derive(Debug, Default)]
pub struct Keeper {
    held: Vec<(PathBuf, std::os::fd::OwnedFd)>,
}

impl Keeper {
    /// Takes hold of every object pinned under the maps directory and `links`.
    pub fn hold(pins: &PinDir, links: &Path) -> Result<Self> {
        let mut held = Vec::new();
        for dir in [pins.maps(), links.to_path_buf()] {
            for e in fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
                let path = e?.path();
                let fd =
                    obj::get(&path).with_context(|| format!("opening pin {}", path.display()))?;
                held.push((path, fd));
            }
        }
        Ok(Self { held })
    }

    /// Takes hold of one more pinned object.
    pub fn hold_path(&mut self, path: &Path) -> Result<()> {
        let fd = obj::get(path).with_context(|| format!("opening pin {}", path.display()))?;
        self.held.push((path.to_owned(), fd));
        Ok(())
    }

    /// Lets go of an object whose pin was removed on purpose (it detaches once no one
    /// else holds it).
    pub fn release(&mut self, path: &Path) {
        self.held.retain(|(p, _)| p != path);
    }

    /// Pins again whatever pin is gone; returns their paths (and the failures).
    pub fn restore(&self) -> (Vec<PathBuf>, Vec<String>) {
        let mut restored = Vec::new();
        let mut failed = Vec::new();
        for (path, fd) in &self.held {
            if fs::symlink_metadata(path).is_ok() {
                continue;
            }
            let pinned = path
                .parent()
                .map_or(Ok(()), fs::create_dir_all)
                .map_err(anyhow::Error::from)
                .and_then(|()| obj::pin(fd, path).map_err(anyhow::Error::from));
            match pinned {
                Ok(()) => restored.push(path.clone()),
                Err(e) => failed.push(format!("{}: {e:#}", path.display())),
            }
        }
        (restored, failed)
    }
}

/// `BPF_OBJ_PIN` and `BPF_OBJ_GET` on descriptors aya does not lend out (a link's).
mod obj {
    use std::{
        ffi::CString,
        os::{
            fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
            unix::ffi::OsStrExt as _,
        },
        path::Path,
    };

    const BPF_OBJ_PIN: libc::c_long = 6;
    const BPF_OBJ_GET: libc::c_long = 7;

    /// The `obj_pin`/`obj_get` member of `union bpf_attr` (its fields up to `path_fd`).
    #[repr(C)]
    struct ObjAttr {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
        path_fd: i32,
        /// Explicit: the kernel refuses an attribute whose bytes past the command's
        /// fields are not zero, and padding would be left undefined.
        _pad: u32,
    }

    fn call(cmd: libc::c_long, path: &Path, bpf_fd: u32) -> std::io::Result<libc::c_long> {
        let c = CString::new(path.as_os_str().as_bytes())?;
        let attr = ObjAttr {
            pathname: c.as_ptr() as u64,
            bpf_fd,
            file_flags: 0,
            path_fd: 0,
            _pad: 0,
        };
        // SAFETY: `attr` and the string it points to outlive the call; the kernel reads
        // `size_of::<ObjAttr>()` bytes of it.
        let r = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                cmd,
                &attr as *const ObjAttr,
                std::mem::size_of::<ObjAttr>(),
            )
        };
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(r)
    }

    pub fn get(path: &Path) -> std::io::Result<OwnedFd> {
        let fd = call(BPF_OBJ_GET, path, 0)?;
        // SAFETY: a new descriptor the kernel just returned, owned by nobody else.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
    }

    pub fn pin(fd: &OwnedFd, path: &Path) -> std::io::Result<()> {
        call(BPF_OBJ_PIN, path, fd.as_raw_fd() as u32).map(|_| ())
    }
}

/// True when `path` is on a bpf filesystem.
pub fn on_bpffs(path: &Path) -> bool {
    // `f_type`'s integer type differs between architectures' `statfs`.
    #[allow(
        clippy::unnecessary_cast,
        reason = "i64 on x86_64, not on every target"
    )]
    rustix::fs::statfs(path).is_ok_and(|s| s.f_type as i64 == BPF_FS_MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(max_entries: u32) -> Shape {
        Shape {
            map_type: 1,
            key_size: 4,
            value_size: 24,
            max_entries,
        }
    }

    #[test]
    fn a_pinned_map_of_another_shape_is_named() {
        let wanted = BTreeMap::from([("SESSIONS".to_owned(), shape(65_536))]);
        assert!(mismatches(&BTreeMap::new(), &wanted).is_empty());
        assert!(mismatches(&wanted, &wanted).is_empty());
        let pinned = BTreeMap::from([
            ("SESSIONS".to_owned(), shape(1024)),
            ("GONE".to_owned(), shape(1)),
        ]);
        let m = mismatches(&pinned, &wanted);
        assert_eq!(m.len(), 1, "{m:?}");
        assert!(
            m[0].contains("SESSIONS") && m[0].contains("1024 entries"),
            "{m:?}"
        );
    }
}
