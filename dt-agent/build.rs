//! Builds dt's eBPF object (the `dt-ebpf` package, for `bpfel-unknown-none` with nightly and
//! bpf-linker) into OUT_DIR, where `agent.rs` embeds it.

use anyhow::{Context as _, anyhow};
use aya_build::Toolchain;

fn main() -> anyhow::Result<()> {
    let cargo_metadata::Metadata { packages, .. } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = packages
        .into_iter()
        .find(|p| p.name.as_str() == "dt-ebpf")
        .ok_or_else(|| anyhow!("dt-ebpf package not found"))?;
    let root = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", ebpf.manifest_path))?;
    // The eBPF object is built from dt-ebpf and the shared code it uses: rebuild on either.
    if let Some(common) = root.parent().map(|ws| ws.join("dt-ebpf-common")) {
        println!("cargo:rerun-if-changed={common}");
    }
    let package = aya_build::Package {
        name: ebpf.name.as_str(),
        root_dir: root.as_str(),
        ..Default::default()
    };
    aya_build::build_ebpf([package], Toolchain::default())
}
