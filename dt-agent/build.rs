//! Builds dt's eBPF object (the `dt-ebpf` package, for `bpfel-unknown-none` with nightly and
//! bpf-linker) into OUT_DIR, where `agent.rs` embeds it; and generates the OpAMP messages from
//! the vendored `proto/opamp/v1/opamp.proto` (protox compiles it, so no `protoc` is needed;
//! prost-build writes the Rust types), which `src/opamp` includes.

use anyhow::{Context as _, anyhow};
use aya_build::Toolchain;

fn main() -> anyhow::Result<()> {
    opamp_messages()?;
    // A fuzzing build (cargo-fuzz sets `--cfg fuzzing`) never loads the programs: an empty
    // object stands in, and the eBPF build (about 40 s) is skipped.
    println!("cargo:rerun-if-env-changed=CARGO_CFG_FUZZING");
    if std::env::var_os("CARGO_CFG_FUZZING").is_some() {
        let out = std::env::var("OUT_DIR").context("OUT_DIR")?;
        std::fs::write(std::path::Path::new(&out).join("dt"), b"")
            .context("writing the empty eBPF object")?;
        return Ok(());
    }
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

fn opamp_messages() -> anyhow::Result<()> {
    let proto = "proto/opamp/v1/opamp.proto";
    println!("cargo:rerun-if-changed=proto/opamp");
    let descriptors = protox::compile([proto], ["proto"]).context("compiling opamp.proto")?;
    prost_build::Config::new()
        .compile_fds(descriptors)
        .context("generating the OpAMP messages")?;
    Ok(())
}
