//! `cargo xtask image`: an OCI image of the agent, built offline with buildah `FROM scratch`.
//!
//! The image holds the release `dt-agent`, the shared libraries it links (from `ldd`: glibc,
//! libm, libgcc_s and the loader), the default rules at `/etc/dt/rules`, the build host's CA
//! certificates at `/etc/ssl/certs/ca-certificates.crt` (for `https://` endpoints), and the
//! empty directories it writes to (`/run/dt` for the control socket, `/var/lib/dt`, `/tmp`). Nothing
//! is pulled: no base image exists offline. The last line printed is the image reference.
//! buildah keeps it in containers-storage with the vfs driver (`--storage-driver vfs`), where
//! `podman --storage-driver vfs` finds it.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::cmd;

/// The image's name; its tag is the agent's version.
pub const IMAGE_NAME: &str = "localhost/dt-agent";

/// Builds the image of the release agent, or of the binary `agent` when given (then nothing
/// is built).
pub fn image(agent: Option<PathBuf>) -> Result<()> {
    let (root, agent) = match agent {
        Some(agent) => {
            if !agent.is_file() {
                bail!("--agent {}: no such file", agent.display());
            }
            (crate::workspace_root()?, std::fs::canonicalize(&agent)?)
        }
        None => crate::run::release_agent()?,
    };
    let stage = root.join("target/image");
    let _ = std::fs::remove_dir_all(&stage);
    let rootfs = stage.join("root");
    for dir in [
        "usr/local/bin",
        "etc/dt/rules",
        "run/dt",
        "var/lib/dt",
        "tmp",
    ] {
        std::fs::create_dir_all(rootfs.join(dir))?;
    }
    std::fs::copy(&agent, rootfs.join("usr/local/bin/dt-agent"))
        .with_context(|| format!("copying {}", agent.display()))?;
    for lib in linked_libraries(&agent)? {
        let to = rootfs.join(lib.strip_prefix("/").unwrap_or(&lib));
        std::fs::create_dir_all(to.parent().unwrap())?;
        // The file itself, not the symlink (`libc.so.6` is one on some systems).
        std::fs::copy(&lib, &to).with_context(|| format!("copying {}", lib.display()))?;
    }
    // The CA bundle `https://` endpoints are checked against (where Debian, Fedora and Alpine
    // keep it; the agent looks in the first place of these too).
    match CA_BUNDLES.iter().map(Path::new).find(|p| p.is_file()) {
        Some(bundle) => {
            let to = rootfs.join("etc/ssl/certs/ca-certificates.crt");
            std::fs::create_dir_all(to.parent().unwrap())?;
            std::fs::copy(bundle, &to).with_context(|| format!("copying {}", bundle.display()))?;
        }
        None => eprintln!(
            "no CA bundle on this host ({}): the image has none, so https:// endpoints need \
             SSL_CERT_FILE",
            CA_BUNDLES.join(", ")
        ),
    }
    for entry in std::fs::read_dir(root.join("rules"))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "toml") {
            std::fs::copy(
                &path,
                rootfs.join("etc/dt/rules").join(path.file_name().unwrap()),
            )?;
        }
    }
    // Tagged with the agent's version, as it says it.
    let version = cmd::stdout(cmd::new(&agent).arg("--version"))?;
    let version = version.split_whitespace().last().unwrap_or("0").to_string();
    let reference = format!("{IMAGE_NAME}:{version}");
    std::fs::write(
        stage.join("Containerfile"),
        "FROM scratch\n\
         COPY root/ /\n\
         ENTRYPOINT [\"/usr/local/bin/dt-agent\"]\n\
         CMD [\"run\", \"--rules\", \"/etc/dt/rules\"]\n",
    )?;
    cmd::run(
        cmd::new("buildah")
            .args([
                "--storage-driver",
                "vfs",
                "bud",
                "--quiet",
                "--layers=false",
            ])
            .args(["--tag", &reference, "--file", "Containerfile", "."])
            .current_dir(&stage),
    )?;
    println!("{reference}");
    Ok(())
}

/// Where distributions keep the system's CA bundle.
const CA_BUNDLES: [&str; 3] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

/// The shared libraries `binary` loads, as `ldd` resolves them (the loader included).
fn linked_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let out = cmd::stdout(cmd::new("ldd").arg(binary))?;
    let mut libs = Vec::new();
    for line in out.lines() {
        // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)` or `/lib64/ld-linux-x86-64.so.2 (0x...)`.
        let path = match line.split_once("=>") {
            Some((_, right)) => right.split_whitespace().next(),
            None => line
                .split_whitespace()
                .next()
                .filter(|p| p.starts_with('/')),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            libs.push(PathBuf::from(p));
        }
    }
    if !libs
        .iter()
        .any(|l| l.to_string_lossy().contains("ld-linux"))
    {
        bail!("ldd {}: no dynamic loader in\n{out}", binary.display());
    }
    Ok(libs)
}
