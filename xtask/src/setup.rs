//! Idempotent toolchain installation. Each step checks first and only acts when
//! something is missing; a second run reports everything in place within seconds.

use std::process::{Command, Stdio};

use anyhow::{Result, bail};

use crate::{run_cmd, vm};

/// Debian packages: what bpf-linker's LLVM 22 backend links against, netcat (the
/// program every shipped agent profile denies: the agent tests try to run it), and venv
/// for the agents from PyPI.
const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "netcat-openbsd",
    "python3-venv",
    // systemd-analyze checks the shipped unit, and systemd-nspawn boots a container with
    // systemd as its init to run the unit under it (the deploy tests).
    "systemd",
    "systemd-container",
    // The OTLP collector of the export test (rotel) links against it.
    "libpython3.11",
    // containerd (with its `ctr` client and runc): the container tests run it on a
    // socket of their own, and the daemon asks it for containers' labels; busybox is
    // the root filesystem of the image they build.
    "containerd",
    "busybox-static",
    // The peers `cargo xtask bench` measures agentwarden beside: the Linux audit
    // daemon, bpftrace, and bubblewrap (the Landlock peer is awload's own sandbox).
    "auditd",
    "bpftrace",
    "bubblewrap",
    // `perf`, for the daemon's profile (`cargo xtask bench --only profile`).
    "linux-perf",
    // A daemon that does not stop in a test is reported with every thread's user stack
    // (which lock each waits on), not only its kernel stack.
    "gdb",
];
const NIGHTLY_COMPONENTS: &[&str] = &["rust-src", "rustfmt", "clippy"];
const BPF_LINKER_VERSION: &str = "0.13";
/// The real agents the end-to-end kernel tests run under their shipped profiles, pinned
/// (each test scripts the agent's tool calls and reads its output format), each in a
/// cache directory of its own under `AGENTS_DIR`.
pub const AGENTS_DIR: &str = "/var/cache/agentwarden/agents";

/// Where an agent comes from.
enum Registry {
    /// `npm install --prefix <dir> <package>@<version>`.
    Npm,
    /// A virtualenv of its own: `<dir>/bin/pip install <package>==<version>`.
    PyPi,
}

pub struct Agent {
    /// Its directory under `AGENTS_DIR`, and what the tests call it.
    pub dir: &'static str,
    package: &'static str,
    pub version: &'static str,
    registry: Registry,
    /// What must work before the install counts (a postinstall step can fail quietly).
    check: Check,
}

/// How an installed agent is checked, by a path in its directory.
enum Check {
    /// `<path> --version` names the pinned version.
    Version(&'static str),
    /// The program is there (servers without a version flag).
    Exists(&'static str),
}

pub const AGENTS: &[Agent] = &[
    Agent {
        dir: "claude-code",
        package: "@anthropic-ai/claude-code",
        version: "2.1.332",
        registry: Registry::Npm,
        check: Check::Version("node_modules/.bin/claude"),
    },
    Agent {
        dir: "codex-cli",
        package: "@openai/codex",
        version: "0.171.0",
        registry: Registry::Npm,
        check: Check::Version("node_modules/.bin/codex"),
    },
    Agent {
        dir: "gemini-cli",
        package: "@google/gemini-cli",
        version: "0.61.0",
        registry: Registry::Npm,
        check: Check::Version("node_modules/.bin/gemini"),
    },
    Agent {
        dir: "aider",
        package: "aider-chat",
        version: "0.86.2",
        registry: Registry::PyPi,
        check: Check::Version("bin/aider"),
    },
    // MCP servers: the reference filesystem, git and fetch servers.
    Agent {
        dir: "mcp-filesystem",
        package: "@modelcontextprotocol/server-filesystem",
        version: "2026.8.31",
        registry: Registry::Npm,
        check: Check::Exists("node_modules/@modelcontextprotocol/server-filesystem/dist/index.js"),
    },
    Agent {
        dir: "mcp-git",
        package: "mcp-server-git",
        version: "2026.10.19",
        registry: Registry::PyPi,
        check: Check::Exists("bin/mcp-server-git"),
    },
    Agent {
        dir: "mcp-fetch",
        package: "mcp-server-fetch",
        version: "2026.10.24",
        registry: Registry::PyPi,
        check: Check::Exists("bin/mcp-server-fetch"),
    },
    // Not an agent: the OpenTelemetry collector (rotel, a Rust collector shipped on
    // PyPI) the OTLP export test sends to on loopback.
    Agent {
        dir: "otel-collector",
        package: "rotel",
        version: "0.0.1a15",
        registry: Registry::PyPi,
        check: Check::Exists(ROTEL),
    },
    // Not an agent either: the Kubernetes schema validator (the API's OpenAPI schemas
    // of each release, bundled) the deploy test checks the manifests with.
    Agent {
        dir: "kubernetes-validate",
        package: "kubernetes-validate",
        version: "1.37.0",
        registry: Registry::PyPi,
        check: Check::Exists("bin/kubernetes-validate"),
    },
];

/// The collector's binary in its directory.
pub const ROTEL: &str = "lib/python3.11/site-packages/rotel/rotel-agent";

pub fn run() -> Result<()> {
    let mut did = Vec::new();
    let mut packages: Vec<&str> = APT_PACKAGES.to_vec();
    packages.extend(vm::HOST_PACKAGES);
    // A kernel of the matrix whose image is missing is (re)installed, never skipped.
    let missing_kernels: Vec<&str> = vm::MATRIX
        .iter()
        .filter(|k| vm::vmlinuz(k).is_none())
        .map(|k| k.package)
        .collect();
    apt(&packages, &missing_kernels, &mut did)?;
    for k in vm::MATRIX {
        if vm::vmlinuz(k).is_none() {
            bail!(
                "kernel {} still missing after installing {}",
                k.label,
                k.package
            );
        }
    }
    nightly(&mut did)?;
    bpf_linker(&mut did)?;
    virtme_ng(&mut did)?;
    agents(&mut did)?;
    matplotlib(&mut did)?;
    if did.is_empty() {
        eprintln!(
            "setup: everything in place (LLVM 22, nightly {NIGHTLY_COMPONENTS:?}, bpf-linker, \
             qemu, virtme-ng, agents {}, matplotlib, kernels {})",
            AGENTS
                .iter()
                .map(|a| format!("{}@{}", a.package, a.version))
                .collect::<Vec<_>>()
                .join(" "),
            vm::MATRIX
                .iter()
                .map(|k| k.label)
                .collect::<Vec<_>>()
                .join(" ")
        );
    } else {
        eprintln!("setup: installed {}", did.join(", "));
    }
    Ok(())
}

fn quiet(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn output(cmd: &mut Command) -> String {
    cmd.stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

fn apt(packages: &[&str], reinstall: &[&str], did: &mut Vec<String>) -> Result<()> {
    let mut missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| {
            !output(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]))
                .contains("install ok installed")
        })
        .collect();
    missing.extend(reinstall);
    if missing.is_empty() {
        return Ok(());
    }
    let sudo = !is_root();
    let apt = |args: &[&str]| {
        let mut c = if sudo {
            Command::new("sudo")
        } else {
            Command::new("apt-get")
        };
        if sudo {
            c.arg("apt-get");
        }
        c.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        c
    };
    run_cmd(&mut apt(&["update", "-q"]))?;
    let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
    if !reinstall.is_empty() {
        args.push("--reinstall");
    }
    args.extend(&missing);
    run_cmd(&mut apt(&args))?;
    did.push(format!("apt: {}", missing.join(" ")));
    Ok(())
}

fn nightly(did: &mut Vec<String>) -> Result<()> {
    if !quiet(Command::new("rustup").args(["run", "nightly", "rustc", "--version"])) {
        run_cmd(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
        did.push("nightly toolchain".into());
    }
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        "nightly",
    ]));
    for c in NIGHTLY_COMPONENTS {
        if !installed.lines().any(|l| l.starts_with(c)) {
            run_cmd(Command::new("rustup").args([
                "component",
                "add",
                c,
                "--toolchain",
                "nightly",
            ]))?;
            did.push(format!("nightly {c}"));
        }
    }
    Ok(())
}

fn bpf_linker(did: &mut Vec<String>) -> Result<()> {
    let version = output(Command::new("bpf-linker").arg("--version"));
    if version.contains(&format!("bpf-linker {BPF_LINKER_VERSION}")) {
        return Ok(());
    }
    // Without LLVM_PREFIX the build cannot find libLLVM (`unable to find library -lLLVM`).
    run_cmd(
        Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--locked",
                "--version",
                &format!("~{BPF_LINKER_VERSION}"),
            ])
            .args(["--no-default-features", "--features", "llvm-22"])
            .env("LLVM_PREFIX", "/usr/lib/llvm-22"),
    )?;
    if !output(Command::new("bpf-linker").arg("--version")).contains("bpf-linker") {
        bail!("bpf-linker installed but not on PATH (is ~/.cargo/bin in PATH?)");
    }
    did.push("bpf-linker".into());
    Ok(())
}

pub fn is_root() -> bool {
    crate::rustix_is_root()
}

/// virtme-ng boots a kernel on the host's own filesystem under QEMU.
fn virtme_ng(did: &mut Vec<String>) -> Result<()> {
    if quiet(Command::new("vng").arg("--version")) {
        return Ok(());
    }
    run_cmd(Command::new("python3").args(["-m", "pip", "install", "-q", "virtme-ng"]))?;
    if !quiet(Command::new("vng").arg("--version")) {
        bail!("virtme-ng installed but `vng` is not on PATH");
    }
    did.push("virtme-ng".into());
    Ok(())
}

/// Every agent of `AGENTS`, installed side by side (each download is mostly waiting on
/// its registry). An agent counts as installed when its directory's stamp names the
/// pinned package and version: the stamp is written last, so a broken install is redone.
fn agents(did: &mut Vec<String>) -> Result<()> {
    let missing: Vec<&Agent> = AGENTS.iter().filter(|a| !a.installed()).collect();
    let results: Vec<Result<()>> = std::thread::scope(|s| {
        let handles: Vec<_> = missing
            .iter()
            .map(|a| s.spawn(move || a.install()))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| bail!("agent install panicked")))
            .collect()
    });
    for (a, r) in missing.iter().zip(results) {
        r.map_err(|e| anyhow::anyhow!("installing {}@{}: {e:#}", a.package, a.version))?;
        did.push(format!("{}@{}", a.package, a.version));
    }
    Ok(())
}

impl Agent {
    fn path(&self) -> std::path::PathBuf {
        std::path::Path::new(AGENTS_DIR).join(self.dir)
    }

    fn stamp(&self) -> String {
        format!("{}@{}\n", self.package, self.version)
    }

    fn installed(&self) -> bool {
        std::fs::read_to_string(self.path().join(".installed")).is_ok_and(|s| s == self.stamp())
    }

    fn install(&self) -> Result<()> {
        let dir = self.path();
        // A directory left by another version is replaced, not installed over.
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir_all(&dir)?;
        match self.registry {
            Registry::Npm => run_cmd(
                Command::new("npm")
                    .args(["install", "--prefer-online", "--no-fund", "--no-audit"])
                    .arg("--prefix")
                    .arg(&dir)
                    .arg(format!("{}@{}", self.package, self.version)),
            )?,
            Registry::PyPi => {
                // Debian's interpreter, not one under root's home (a pyenv there is
                // out of reach of the ordinary user the tests run the agent as).
                run_cmd(
                    Command::new("/usr/bin/python3")
                        .args(["-m", "venv"])
                        .arg(&dir),
                )?;
                run_cmd(
                    Command::new(dir.join("bin/pip"))
                        .args(["install", "-q", "--disable-pip-version-check"])
                        .arg(format!("{}=={}", self.package, self.version)),
                )?;
            }
        }
        match self.check {
            Check::Version(bin) => {
                let said = output(Command::new(dir.join(bin)).arg("--version"));
                if !said.contains(self.version) {
                    bail!("`{bin} --version` says `{}`", said.trim());
                }
            }
            Check::Exists(path) => {
                if !dir.join(path).exists() {
                    bail!("{path} is missing after the install");
                }
            }
        }
        std::fs::write(dir.join(".installed"), self.stamp())?;
        Ok(())
    }
}

/// matplotlib draws the benchmark's chart.
fn matplotlib(did: &mut Vec<String>) -> Result<()> {
    if quiet(Command::new("python3").args(["-c", "import matplotlib"])) {
        return Ok(());
    }
    run_cmd(Command::new("python3").args(["-m", "pip", "install", "-q", "matplotlib"]))?;
    if !quiet(Command::new("python3").args(["-c", "import matplotlib"])) {
        bail!("matplotlib installed but not importable by python3");
    }
    did.push("matplotlib".into());
    Ok(())
}
