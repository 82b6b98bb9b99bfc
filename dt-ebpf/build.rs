use which::which;

/// Rebuild the eBPF object when bpf-linker changes (as aya-template does). `dt_fire` stays a
/// global function: the verifier checks it once, on its own (see `dynamic.rs`).
fn main() {
    if let Ok(linker) = which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
    println!("cargo:rustc-link-arg-bins=--export=dt_fire");
}
