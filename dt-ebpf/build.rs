use which::which;

/// Rebuild the eBPF object when bpf-linker changes (as aya-template does).
fn main() {
    if let Ok(linker) = which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
