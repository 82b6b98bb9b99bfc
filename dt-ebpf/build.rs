use which::which;

/// Rebuild the eBPF object when bpf-linker changes (as aya-template does). `dt_fire`,
/// `dt_fast_record`, `dt_fast_lookups`, `dt_group_notes`, `dt_enrich`, `dt_scan_chunk` and `dt_head_feed` stay
/// global functions: the verifier checks each once, on its own (see
/// `dynamic.rs` and `sk_msg.rs`).
fn main() {
    if let Ok(linker) = which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
    println!("cargo:rustc-link-arg-bins=--export=dt_fire");
    println!("cargo:rustc-link-arg-bins=--export=dt_fast_record");
    println!("cargo:rustc-link-arg-bins=--export=dt_fast_lookups");
    println!("cargo:rustc-link-arg-bins=--export=dt_group_notes");
    println!("cargo:rustc-link-arg-bins=--export=dt_enrich");
    println!("cargo:rustc-link-arg-bins=--export=dt_scan_chunk");
    println!("cargo:rustc-link-arg-bins=--export=dt_head_feed");
}
