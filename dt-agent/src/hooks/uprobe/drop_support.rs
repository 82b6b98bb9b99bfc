//! Whether this kernel lets a uprobe program skip the probed call (what `drop` on a uprobe hook
//! needs), found once at start-up.

use aya::{Ebpf, programs::UProbe};

/// The program that is only loaded, to learn whether a uprobe may skip a call.
const SKIP_PROGRAM: &str = "dt_uprobe_skip";
/// Why `drop` is refused on uprobe hooks on kernels like this one.
pub const NO_SKIP: &str = "this kernel does not let a uprobe program skip a call \
                           (the verifier refuses writing registers)";

/// Whether this kernel lets a uprobe program skip the probed call, found at start-up by loading
/// `dt_uprobe_skip` (which writes the registers).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DropSupport {
    pub supported: bool,
    /// What the kernel said.
    pub detail: String,
}

/// Loads `dt_uprobe_skip` (never attached) and unloads it again.
pub fn detect(ebpf: &mut Ebpf) -> DropSupport {
    let prog: Option<&mut UProbe> = ebpf
        .program_mut(SKIP_PROGRAM)
        .and_then(|p| p.try_into().ok());
    let Some(prog) = prog else {
        return DropSupport {
            supported: false,
            detail: format!("program {SKIP_PROGRAM} is missing from the eBPF object"),
        };
    };
    match prog.load() {
        Ok(()) => {
            let _ = prog.unload();
            DropSupport {
                supported: true,
                detail: "the verifier accepts a uprobe program that writes registers".into(),
            }
        }
        Err(e) => {
            let text = format!("{e}");
            // The verifier's reason is its log's last complaint, e.g. "invalid bpf_context
            // access off=152 size=8"; else the syscall's error.
            let line = text
                .lines()
                .map(str::trim)
                .find(|l| l.starts_with("invalid "))
                .or_else(|| text.split(". Verifier output").next())
                .unwrap_or("")
                .to_string();
            DropSupport {
                supported: false,
                detail: format!(
                    "the verifier refused a uprobe program that writes registers: {line}"
                ),
            }
        }
    }
}
