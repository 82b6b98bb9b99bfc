//! `cargo xtask setup`: checks, and installs when absent, what building and testing dt need.
//! Idempotent; when everything is in place it only runs a few quick queries.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::{cmd, workspace_root};

/// Debian packages the tests need, checked with dpkg-query and installed with apt-get.
/// - `bpftool`: inspecting loaded programs, maps and pins when a kernel test fails.
/// - `iproute2`: `ss` and `ip`, used by tests and by hand to see the hooked connections.
/// - `python3-venv`: `python3 -m venv` for tests that check edited requests against Python's
///   HTTP and OTLP parsers (it also pulls in Debian's python3).
/// - `buildah`, `podman`, `runc`: `cargo xtask image` builds the agent's image offline, and a
///   test runs it as the Kubernetes DaemonSet does (podman needs runc here: crun refuses this
///   machine kind's hybrid cgroup layout; see TOOLCHAIN.md).
/// - `gcc`, `libc6-dev`, `binutils`: the uprobe tests build their C targets (one statically
///   linked) and read their symbols with `nm`.
pub const DEBIAN_PACKAGES: &[&str] = &[
    "bpftool",
    "gcc",
    "libc6-dev",
    "binutils",
    "iproute2",
    "python3-venv",
    "buildah",
    "podman",
    "runc",
];

/// The bpf-linker release that works with the installed nightly (see TOOLCHAIN.md): 0.10.x
/// loads LLVM from the rustup nightly at run time.
const BPF_LINKER_VERSION: &str = "0.10.4";

const BPFFS: &str = "/sys/fs/bpf";

/// The tests' Python venv, relative to the workspace root (`target/` is git-ignored, so a fresh
/// clone gets it from setup). The tests look for `<venv>/bin/python` there, or at `DT_PYTHON`.
pub const PYTHON_VENV: &str = "target/python-venv";

/// The pinned packages of that venv, relative to the workspace root.
pub const PYTHON_REQUIREMENTS: &str = "tests/python/requirements.txt";

/// Inside the venv: what it was built from (a hash of the requirements). When it matches, pip is
/// not run again.
const PYTHON_MARKER: &str = "dt-requirements.stamp";

/// The oldest Python the pinned packages support.
const PYTHON_MIN: (u32, u32) = (3, 10);

/// Imports what the test scripts import, and prints the interpreter's version and protobuf's
/// backend, which must be upb (the second decoder the tests compare against prost).
const PYTHON_CHECK: &str = "\
import sys
from google.protobuf.internal import api_implementation
import opentelemetry.sdk._logs, opentelemetry.sdk._logs.export
import opentelemetry.exporter.otlp.proto.http._log_exporter
import opentelemetry.proto.collector.logs.v1.logs_service_pb2
import google.protobuf
print('%d.%d.%d' % sys.version_info[:3], google.protobuf.__version__, api_implementation.Type())
";

/// The tests' Node.js client, relative to the workspace root: `npm ci` of [`NODE_PACKAGE`] and
/// [`NODE_LOCK`] there. The tests run `tests/node/*.js` with `NODE_PATH=<it>/node_modules`.
pub const NODE_CLIENT: &str = "target/node-client";

/// The pinned packages of the Node.js client, relative to the workspace root.
pub const NODE_PACKAGE: &str = "tests/node/package.json";
pub const NODE_LOCK: &str = "tests/node/package-lock.json";

/// Inside [`NODE_CLIENT`]: what it was installed from (a hash of package.json and the lock, and
/// node's version). When it matches, npm is not run again.
const NODE_MARKER: &str = "dt-package.stamp";

/// The Node.js versions the pinned packages support (their `engines`: ^18.19.0 || >=20.6.0;
/// Debian 12's own nodejs is 18.19).
fn node_supported((major, minor): (u32, u32)) -> bool {
    (major == 18 && minor >= 19) || (major, minor) >= (20, 6)
}

/// Loads what `tests/node/export_logs.js` loads, and prints the exporter's version.
const NODE_CHECK: &str = "\
require('@opentelemetry/sdk-logs'); require('@opentelemetry/resources');
require('@opentelemetry/otlp-transformer'); require('@opentelemetry/core');
require('@opentelemetry/exporter-logs-otlp-proto');
const fs = require('fs'), path = require('path');
const dir = process.env.NODE_PATH;
const v = (p) => JSON.parse(fs.readFileSync(path.join(dir, p, 'package.json'), 'utf8')).version;
console.log(process.versions.node, v('@opentelemetry/exporter-logs-otlp-proto'));
";

/// A real OpenTelemetry collector, pinned: Rotel, whose PyPI wheel carries the `rotel-agent`
/// binary (with its Python logs processor, linked to CPython 3.11). The tests send through it
/// (its OTLP/HTTP exporter as a client of a hooked port) and the bench's scenario (l) filters with
/// it. The OpenTelemetry Collector itself is on no registry this machine kind reaches.
pub const COLLECTOR_PACKAGE: &str = "rotel==0.0.1a15";
/// Its venv, relative to the workspace root; the tests look for
/// `<venv>/lib/*/site-packages/rotel/rotel-agent` there, or at `DT_COLLECTOR`.
pub const COLLECTOR_VENV: &str = "target/collector-venv";
/// Inside [`COLLECTOR_VENV`]: the package it was installed from.
const COLLECTOR_MARKER: &str = "dt-collector.stamp";

/// What a setup step found.
enum Done {
    Ok(String),
    Installed(String),
    Skipped(String),
}

fn report(done: Done) {
    let (word, what) = match done {
        Done::Ok(w) => ("ok", w),
        Done::Installed(w) => ("installed", w),
        Done::Skipped(w) => ("skipped", w),
    };
    println!("{word:<9} {what}");
}

pub fn setup() -> Result<()> {
    report(rust_src()?);
    report(bpf_linker()?);
    for done in debian_packages()? {
        report(done);
    }
    report(bpffs()?);
    report(python_venv()?);
    report(node_client()?);
    // Only the tests that send through it need it (they fail, or skip outside CI, without
    // it), and the bench's scenario (l): everything else works without.
    report(collector().unwrap_or_else(|e| {
        Done::Skipped(format!(
            "collector ({COLLECTOR_PACKAGE}): {e:#}; the tests that send through it cannot run \
             and the bench leaves scenario (l) out"
        ))
    }));
    Ok(())
}

fn need_root(step: &str, how: &str) -> Result<()> {
    if !cmd::is_root() {
        bail!(
            "setup step `{step}` needs root: run `sudo -E env PATH=\"$PATH\" cargo xtask setup` \
             (or do it by hand: {how})"
        );
    }
    Ok(())
}

/// (a) The nightly toolchain's rust-src component (`-Z build-std=core` for the eBPF crate).
fn rust_src() -> Result<Done> {
    let what = "rust-src (nightly toolchain)".to_string();
    let list = cmd::stdout(cmd::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .context("listing the nightly toolchain's components (is it installed? `rustup toolchain install nightly`)")?;
    if list.lines().any(|l| l.trim().starts_with("rust-src")) {
        return Ok(Done::Ok(what));
    }
    cmd::run(cmd::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))?;
    Ok(Done::Installed(what))
}

/// (b) bpf-linker, on PATH or in cargo's bin directory (which every child gets on its PATH).
fn bpf_linker() -> Result<Done> {
    if let Some(p) = cmd::find_in_path("bpf-linker") {
        return Ok(Done::Ok(format!("bpf-linker ({})", p.display())));
    }
    // Run outside the workspace so its .cargo/config.toml plays no part in the install.
    cmd::run(
        cmd::new("cargo")
            .args(["+nightly", "install", "bpf-linker"])
            .args(["--version", BPF_LINKER_VERSION, "--locked"])
            .current_dir(std::env::temp_dir()),
    )?;
    let Some(p) = cmd::find_in_path("bpf-linker") else {
        bail!(
            "bpf-linker was installed but is not in {}: is CARGO_HOME set differently for cargo?",
            cmd::cargo_bin_dir()
                .map(|d| d.display().to_string())
                .unwrap_or_else(|| "$CARGO_HOME/bin".into())
        );
    };
    Ok(Done::Installed(format!(
        "bpf-linker {BPF_LINKER_VERSION} ({})",
        p.display()
    )))
}

fn dpkg_installed(pkg: &str) -> Result<bool> {
    let out = cmd::query(cmd::new("dpkg-query").args(["-W", "-f=${Status}", pkg]))?;
    // "install ok installed" (or "hold ok installed"); unknown packages exit 1.
    Ok(out.status.success()
        && String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .nth(2)
            == Some("installed"))
}

/// (c) The Debian packages in [`DEBIAN_PACKAGES`].
fn debian_packages() -> Result<Vec<Done>> {
    if cmd::find_in_path("dpkg-query").is_none() {
        return Ok(vec![Done::Skipped(format!(
            "Debian packages (no dpkg-query here: install the equivalents of {} yourself)",
            DEBIAN_PACKAGES.join(", ")
        ))]);
    }
    let mut missing = Vec::new();
    for pkg in DEBIAN_PACKAGES {
        if !dpkg_installed(pkg)? {
            missing.push(*pkg);
        }
    }
    if !missing.is_empty() {
        let list = missing.join(" ");
        need_root(
            &format!("install Debian packages: {list}"),
            &format!("apt-get update && apt-get install -y --no-install-recommends {list}"),
        )?;
        cmd::run(apt_get().arg("update"))?;
        cmd::run(
            apt_get()
                .args(["install", "-y", "--no-install-recommends"])
                .args(&missing),
        )?;
        for pkg in &missing {
            if !dpkg_installed(pkg)? {
                bail!("apt-get install finished but package {pkg} is still not installed");
            }
        }
    }
    Ok(DEBIAN_PACKAGES
        .iter()
        .map(|pkg| {
            let what = format!("{pkg} (Debian package)");
            if missing.contains(pkg) {
                Done::Installed(what)
            } else {
                Done::Ok(what)
            }
        })
        .collect())
}

fn apt_get() -> Command {
    let mut c = cmd::new("apt-get");
    c.env("DEBIAN_FRONTEND", "noninteractive");
    c
}

fn bpffs_mounted() -> Result<bool> {
    let mounts = std::fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    Ok(mounts.lines().any(|line| {
        let mut f = line.split_whitespace();
        let (_dev, dir, fstype) = (f.next(), f.next(), f.next());
        dir == Some(BPFFS) && fstype == Some("bpf")
    }))
}

/// (d) bpffs at /sys/fs/bpf, where the agent pins maps and programs (not mounted at boot here).
fn bpffs() -> Result<Done> {
    let what = format!("bpffs at {BPFFS}");
    if bpffs_mounted()? {
        return Ok(Done::Ok(what));
    }
    need_root(
        &format!("mount {what}"),
        &format!("mount -t bpf bpf {BPFFS}"),
    )?;
    cmd::run(cmd::new("mount").args(["-t", "bpf", "bpf", BPFFS]))?;
    if !bpffs_mounted()? {
        bail!(
            "`mount -t bpf bpf {BPFFS}` succeeded but {BPFFS} is not listed as bpf in /proc/mounts"
        );
    }
    Ok(Done::Installed(what))
}

/// FNV-1a, 64 bits: a stable hash for the venv's marker (std's hashers may change).
fn fnv1a64(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Runs [`PYTHON_CHECK`] with the venv's interpreter: `(python version, protobuf version)`.
fn check_venv(python: &Path) -> Result<(String, String)> {
    let out = cmd::stdout(cmd::new(python).args(["-c", PYTHON_CHECK]))?;
    let f: Vec<&str> = out.split_whitespace().collect();
    let [py, pb, backend] = f[..] else {
        bail!("unexpected output from the venv check: {out:?}");
    };
    if backend != "upb" {
        bail!(
            "protobuf {pb} in {} uses the {backend:?} backend, not \"upb\" \
             (is PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION set?)",
            python.display()
        );
    }
    Ok((py.to_owned(), pb.to_owned()))
}

/// `python3` on PATH, checked to be at least [`PYTHON_MIN`].
fn base_python() -> Result<PathBuf> {
    let Some(python3) = cmd::find_in_path("python3") else {
        bail!(
            "python3 is not on PATH: install Python >= {}.{} (on Debian: apt-get install python3 python3-venv)",
            PYTHON_MIN.0,
            PYTHON_MIN.1
        );
    };
    let v = cmd::stdout(
        cmd::new(&python3).args(["-c", "import sys; print('%d %d' % sys.version_info[:2])"]),
    )?;
    let mut it = v.split_whitespace().map(|x| x.parse::<u32>().unwrap_or(0));
    let found = (it.next().unwrap_or(0), it.next().unwrap_or(0));
    if found < PYTHON_MIN {
        bail!(
            "{} is Python {}.{}; the tests' packages need >= {}.{}",
            python3.display(),
            found.0,
            found.1,
            PYTHON_MIN.0,
            PYTHON_MIN.1
        );
    }
    Ok(python3)
}

/// (e) A Python venv with the pinned packages of [`PYTHON_REQUIREMENTS`] at [`PYTHON_VENV`]: the
/// OpenTelemetry Python SDK and exporter and the upb protobuf runtime, which the tests use as a
/// second client, HTTP stack and decoder. Rebuilt from scratch when the requirements change (or
/// the venv no longer runs); otherwise only checked, without pip.
fn python_venv() -> Result<Done> {
    let root = workspace_root()?;
    let venv = root.join(PYTHON_VENV);
    let req_path = root.join(PYTHON_REQUIREMENTS);
    let reqs =
        std::fs::read(&req_path).with_context(|| format!("reading {}", req_path.display()))?;
    let stamp = format!(
        "requirements {PYTHON_REQUIREMENTS} fnv1a64={:016x}\n",
        fnv1a64(&reqs)
    );
    let python = venv.join("bin").join("python");
    let marker = venv.join(PYTHON_MARKER);
    let describe = |(py, pb): (String, String)| {
        format!("Python venv {PYTHON_VENV} (Python {py}, protobuf {pb} upb, {PYTHON_REQUIREMENTS})")
    };

    if std::fs::read_to_string(&marker).ok().as_deref() == Some(stamp.as_str()) {
        match check_venv(&python) {
            Ok(v) => return Ok(Done::Ok(describe(v))),
            Err(e) => eprintln!(
                "the Python venv at {} is broken, rebuilding it: {e:#}",
                venv.display()
            ),
        }
    }

    fresh_venv(&venv)?;
    let installed = cmd::run(
        pip_install(&python)
            .args(["--require-virtualenv", "-r"])
            .arg(&req_path),
    );
    if let Err(e) = installed {
        // No marker: the next setup starts over.
        return Err(e.context(format!(
            "installing {PYTHON_REQUIREMENTS} into {} (needs access to PyPI)",
            venv.display()
        )));
    }
    let v = check_venv(&python).context("checking the new venv")?;
    std::fs::write(&marker, stamp).with_context(|| format!("writing {}", marker.display()))?;
    Ok(Done::Installed(describe(v)))
}

/// An empty venv at `venv` (whatever was there removed), made with [`base_python`].
fn fresh_venv(venv: &Path) -> Result<()> {
    let python3 = base_python()?;
    if venv.exists() {
        std::fs::remove_dir_all(venv)
            .with_context(|| format!("removing the old venv {}", venv.display()))?;
    }
    let made = cmd::run(cmd::new(&python3).arg("-m").arg("venv").arg(venv));
    if let Err(e) = made {
        let _ = std::fs::remove_dir_all(venv);
        return Err(e.context(format!(
            "creating the venv {} with {} (on Debian, `python3 -m venv` needs the python3-venv \
             package)",
            venv.display(),
            python3.display()
        )));
    }
    Ok(())
}

/// `python -m pip install`, quiet about prompts and pip's own version; the packages follow.
fn pip_install(python: &Path) -> Command {
    let mut c = cmd::new(python);
    c.args([
        "-m",
        "pip",
        "install",
        "--no-input",
        "--disable-pip-version-check",
    ]);
    c
}

/// `node --version` as (major, minor), and the path of node.
fn node_version(node: &Path) -> Result<(u32, u32, String)> {
    let v = cmd::stdout(cmd::new(node).arg("--version"))?;
    let v = v.trim().trim_start_matches('v').to_owned();
    let mut it = v.split('.').map(|x| x.parse::<u32>().unwrap_or(0));
    Ok((it.next().unwrap_or(0), it.next().unwrap_or(0), v))
}

/// `node` and `npm` on PATH, installed from Debian's `nodejs` (and `npm`, when nodejs does not
/// bring it) when absent; node checked to be a version the packages support.
fn node_and_npm() -> Result<(PathBuf, PathBuf)> {
    for pkg in ["nodejs", "npm"] {
        let tool = if pkg == "nodejs" { "node" } else { "npm" };
        if cmd::find_in_path(tool).is_some() {
            continue;
        }
        need_root(
            &format!("install Debian package {pkg} (for `{tool}`)"),
            &format!("apt-get update && apt-get install -y --no-install-recommends {pkg}"),
        )?;
        cmd::run(apt_get().arg("update"))?;
        cmd::run(apt_get().args(["install", "-y", "--no-install-recommends", pkg]))?;
        if cmd::find_in_path(tool).is_none() {
            bail!("apt-get install {pkg} finished but `{tool}` is still not on PATH");
        }
    }
    let node = cmd::find_in_path("node").context("node is not on PATH")?;
    let npm = cmd::find_in_path("npm").context("npm is not on PATH")?;
    let (major, minor, v) = node_version(&node)?;
    if !node_supported((major, minor)) {
        bail!(
            "{} is Node.js {v}; the tests' packages need ^18.19.0 or >= 20.6.0",
            node.display()
        );
    }
    Ok((node, npm))
}

/// Runs [`NODE_CHECK`]: `(node version, exporter version)`.
fn check_node_client(node: &Path, dir: &Path) -> Result<(String, String)> {
    let out = cmd::stdout(
        cmd::new(node)
            .args(["-e", NODE_CHECK])
            .env("NODE_PATH", dir.join("node_modules")),
    )?;
    let f: Vec<&str> = out.split_whitespace().collect();
    let [nv, ev] = f[..] else {
        bail!("unexpected output from the Node.js client check: {out:?}");
    };
    Ok((nv.to_owned(), ev.to_owned()))
}

/// (f) The tests' Node.js client at [`NODE_CLIENT`]: `npm ci` of the pinned [`NODE_PACKAGE`] and
/// [`NODE_LOCK`] (the OpenTelemetry Node.js SDK and its http/protobuf log exporter, a client that
/// sends chunked requests). Reinstalled from scratch when they or node change (or the install
/// no longer loads); otherwise only checked, without npm.
fn node_client() -> Result<Done> {
    let root = workspace_root()?;
    let dir = root.join(NODE_CLIENT);
    let (node, npm) = node_and_npm()?;
    let mut hashed = Vec::new();
    for f in [NODE_PACKAGE, NODE_LOCK] {
        let p = root.join(f);
        hashed.extend(std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?);
    }
    let (_, _, node_v) = node_version(&node)?;
    let stamp = format!(
        "{NODE_PACKAGE} {NODE_LOCK} fnv1a64={:016x} node {node_v}\n",
        fnv1a64(&hashed)
    );
    let marker = dir.join(NODE_MARKER);
    let describe = |(nv, ev): (String, String)| {
        format!(
            "Node.js client {NODE_CLIENT} (Node.js {nv}, @opentelemetry/exporter-logs-otlp-proto {ev}, {NODE_LOCK})"
        )
    };

    if std::fs::read_to_string(&marker).ok().as_deref() == Some(stamp.as_str()) {
        match check_node_client(&node, &dir) {
            Ok(v) => return Ok(Done::Ok(describe(v))),
            Err(e) => eprintln!(
                "the Node.js client at {} is broken, reinstalling it: {e:#}",
                dir.display()
            ),
        }
    }

    if dir.exists() {
        std::fs::remove_dir_all(&dir)
            .with_context(|| format!("removing the old {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for f in [NODE_PACKAGE, NODE_LOCK] {
        let from = root.join(f);
        let name = from.file_name().context("a file name")?;
        std::fs::copy(&from, dir.join(name))
            .with_context(|| format!("copying {} to {}", from.display(), dir.display()))?;
    }
    let installed = cmd::run(
        cmd::new(&npm)
            .args(["ci", "--ignore-scripts", "--no-audit", "--no-fund"])
            .args(["--loglevel=error", "--omit=dev"])
            .current_dir(&dir),
    );
    if let Err(e) = installed {
        // No marker: the next setup starts over.
        return Err(e.context(format!(
            "installing {NODE_LOCK} into {} (needs access to the npm registry)",
            dir.display()
        )));
    }
    let v = check_node_client(&node, &dir).context("checking the new Node.js client")?;
    std::fs::write(&marker, stamp).with_context(|| format!("writing {}", marker.display()))?;
    Ok(Done::Installed(describe(v)))
}

/// `rotel-agent` in the collector's venv, if installed.
fn collector_path(venv: &Path) -> Option<PathBuf> {
    std::fs::read_dir(venv.join("lib"))
        .ok()?
        .flatten()
        .map(|d| d.path().join("site-packages/rotel/rotel-agent"))
        .find(|p| p.is_file())
}

/// The installed collector's binary (after [`collector`] ran).
pub fn collector_bin() -> Result<PathBuf> {
    let venv = workspace_root()?.join(COLLECTOR_VENV);
    collector_path(&venv).with_context(|| {
        format!(
            "no rotel-agent under {} (run `cargo xtask setup`)",
            venv.display()
        )
    })
}

/// `rotel-agent --version`, which also shows that it runs here.
fn check_collector(bin: &Path) -> Result<String> {
    let v = cmd::stdout(cmd::new(bin).arg("--version"))?;
    Ok(v.trim().to_owned())
}

/// (g) The collector of [`COLLECTOR_PACKAGE`] in its own venv at [`COLLECTOR_VENV`] (the wheel
/// only, no dependencies: the tests and the bench run its binary, not its Python module).
/// Reinstalled when the pin changes or the binary no longer runs; otherwise only checked.
fn collector() -> Result<Done> {
    let venv = workspace_root()?.join(COLLECTOR_VENV);
    let stamp = format!("{COLLECTOR_PACKAGE}\n");
    let marker = venv.join(COLLECTOR_MARKER);
    let describe = |v: String| format!("collector {COLLECTOR_VENV} ({v}, {COLLECTOR_PACKAGE})");
    if std::fs::read_to_string(&marker).ok().as_deref() == Some(stamp.as_str())
        && let Some(bin) = collector_path(&venv)
    {
        match check_collector(&bin) {
            Ok(v) => return Ok(Done::Ok(describe(v))),
            Err(e) => eprintln!(
                "the collector at {} is broken, reinstalling it: {e:#}",
                bin.display()
            ),
        }
    }
    fresh_venv(&venv)?;
    let installed = cmd::run(pip_install(&venv.join("bin/python")).args([
        "--no-deps",
        "--only-binary=:all:",
        COLLECTOR_PACKAGE,
    ]));
    if let Err(e) = installed {
        // No marker: the next setup starts over.
        return Err(e.context(format!(
            "installing {COLLECTOR_PACKAGE} into {} (needs access to PyPI)",
            venv.display()
        )));
    }
    let bin = collector_path(&venv).context("no rotel/rotel-agent in the installed package")?;
    let v = check_collector(&bin).context("checking the installed collector")?;
    std::fs::write(&marker, stamp).with_context(|| format!("writing {}", marker.display()))?;
    Ok(Done::Installed(describe(v)))
}
