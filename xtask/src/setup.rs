//! `cargo xtask setup`: checks, and installs when absent, what building and testing dt need.
//! Idempotent; when everything is in place it only runs a few quick queries.

use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::cmd;

/// Debian packages the tests need, checked with dpkg-query and installed with apt-get.
/// - `bpftool`: inspecting loaded programs, maps and pins when a kernel test fails.
/// - `iproute2`: `ss` and `ip`, used by tests and by hand to see the hooked connections.
/// - `python3-venv`: `python3 -m venv` for tests that check edited requests against Python's
///   HTTP and OTLP parsers (it also pulls in Debian's python3).
pub const DEBIAN_PACKAGES: &[&str] = &["bpftool", "iproute2", "python3-venv"];

/// The bpf-linker release that works with the installed nightly (see TOOLCHAIN.md): 0.10.x
/// loads LLVM from the rustup nightly at run time.
const BPF_LINKER_VERSION: &str = "0.10.4";

const BPFFS: &str = "/sys/fs/bpf";

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
