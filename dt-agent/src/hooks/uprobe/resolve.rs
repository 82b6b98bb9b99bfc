//! Finding what a `[[probe]]` names on this host: its file (an absolute path, or a library
//! resolved as the dynamic linker would) and the functions' symbols in that ELF file.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

/// The file a probe's `binary` names: an absolute path as is, or a library name (`"libc"`,
/// `"libssl.so.3"`) as the dynamic linker finds it: first in the ld.so cache (`ldconfig -p`,
/// entries of this machine's architecture, in cache order), then in the standard directories.
/// A name without `.so` matches `NAME.so` and `NAME.so.*`.
pub fn resolve_binary(name: &str) -> Result<PathBuf, String> {
    if name.starts_with('/') {
        let path = Path::new(name);
        return match std::fs::metadata(path) {
            Ok(m) if m.is_file() => Ok(path.to_path_buf()),
            Ok(_) => Err(format!("binary {name} is not a file")),
            Err(e) => Err(format!("binary {name}: {e}")),
        };
    }
    if let Some(path) = ld_cache()
        .into_iter()
        .find(|(soname, path)| library_matches(name, soname) && is_elf(path))
        .map(|(_, path)| path)
    {
        return Ok(path);
    }
    let mut found: Vec<PathBuf> = Vec::new();
    for dir in standard_lib_dirs() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut here: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .filter(|e| {
                e.file_name()
                    .to_str()
                    .is_some_and(|f| library_matches(name, f))
            })
            .map(|e| e.path())
            .filter(|p| is_elf(p))
            .collect();
        // The versioned name (`libc.so.6`, what programs load) before the development link.
        here.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
        found.extend(here);
        if !found.is_empty() {
            break;
        }
    }
    found.into_iter().next().ok_or_else(|| {
        format!(
            "no library \"{name}\" in the ld.so cache or the standard library directories; \
             give binary as an absolute path"
        )
    })
}

/// Whether a library file name answers to `name`.
fn library_matches(name: &str, file: &str) -> bool {
    if file == name {
        return true;
    }
    if name.contains(".so") {
        return false;
    }
    let Some(rest) = file.strip_prefix(name) else {
        return false;
    };
    rest == ".so" || rest.starts_with(".so.")
}

fn is_elf(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && magic == *b"\x7fELF"
}

/// `(soname, path)` of every ld.so cache entry of this architecture, in cache order.
fn ld_cache() -> Vec<(String, PathBuf)> {
    let arch_flag = match std::env::consts::ARCH {
        "x86_64" => Some("x86-64"),
        "aarch64" => Some("AArch64"),
        _ => None,
    };
    let output = ["/sbin/ldconfig", "/usr/sbin/ldconfig", "ldconfig"]
        .iter()
        .find_map(|cmd| std::process::Command::new(cmd).arg("-p").output().ok())
        .filter(|o| o.status.success());
    let Some(output) = output else {
        return Vec::new();
    };
    let text = String::from_utf8_lossy(&output.stdout);
    parse_ld_cache(&text, arch_flag)
}

/// Parses `ldconfig -p` lines: `\tlibc.so.6 (libc6,x86-64) => /lib/x86_64-linux-gnu/libc.so.6`.
fn parse_ld_cache(text: &str, arch_flag: Option<&str>) -> Vec<(String, PathBuf)> {
    text.lines()
        .filter_map(|line| {
            let (left, path) = line.trim().split_once(" => ")?;
            let (soname, flags) = left.split_once(" (")?;
            let flags = flags.trim_end_matches(')');
            if let Some(arch) = arch_flag
                && !flags.split(',').any(|f| f.trim() == arch)
            {
                return None;
            }
            Some((soname.trim().to_string(), PathBuf::from(path.trim())))
        })
        .collect()
}

fn standard_lib_dirs() -> Vec<PathBuf> {
    let multiarch = format!("{}-linux-gnu", std::env::consts::ARCH);
    [
        format!("/lib/{multiarch}"),
        format!("/usr/lib/{multiarch}"),
        "/lib64".into(),
        "/usr/lib64".into(),
        "/lib".into(),
        "/usr/lib".into(),
    ]
    .into_iter()
    .map(PathBuf::from)
    .collect()
}

/// A function symbol of an ELF file.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct FnSym {
    /// ELF virtual address.
    pub addr: u64,
    /// Size in bytes (at least 1).
    pub size: u64,
    /// Offset in the file (where a uprobe is placed).
    pub offset: u64,
}

/// The defined functions named `names` in the ELF file at `path`, from its dynamic symbol table
/// first, then its static one.
pub fn elf_functions(path: &Path, names: &[&str]) -> Result<HashMap<String, FnSym>, String> {
    use object::{Object, ObjectSection, ObjectSymbol, SymbolKind};
    let data = std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let file = object::File::parse(&*data)
        .map_err(|e| format!("{} is not an ELF file dt can read: {e}", path.display()))?;
    let mut out = HashMap::new();
    for sym in file.dynamic_symbols().chain(file.symbols()) {
        if !sym.is_definition() || sym.kind() != SymbolKind::Text {
            continue;
        }
        let Ok(name) = sym.name() else {
            continue;
        };
        if !names.contains(&name) || out.contains_key(name) {
            continue;
        }
        let Some(index) = sym.section_index() else {
            continue;
        };
        let Ok(section) = file.section_by_index(index) else {
            continue;
        };
        let Some((file_offset, _)) = section.file_range() else {
            continue;
        };
        let Some(offset) = sym
            .address()
            .checked_sub(section.address())
            .map(|o| o + file_offset)
        else {
            continue;
        };
        out.insert(
            name.to_string(),
            FnSym {
                addr: sym.address(),
                size: sym.size().max(1),
                offset,
            },
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ld_cache_lines() {
        let text = "1234 libs found in cache `/etc/ld.so.cache'\n\
                    \tlibc.so.6 (libc6,x86-64) => /lib/x86_64-linux-gnu/libc.so.6\n\
                    \tlibc.so.6 (libc6) => /lib/i386-linux-gnu/libc.so.6\n\
                    \tlibz.so.1 (libc6,x86-64, OS ABI: Linux 3.2.0) => \
                    /lib/x86_64-linux-gnu/libz.so.1\n";
        let x86 = parse_ld_cache(text, Some("x86-64"));
        assert_eq!(
            x86,
            vec![
                ("libc.so.6".into(), "/lib/x86_64-linux-gnu/libc.so.6".into()),
                ("libz.so.1".into(), "/lib/x86_64-linux-gnu/libz.so.1".into()),
            ]
        );
        assert_eq!(parse_ld_cache(text, None).len(), 3);
    }

    #[test]
    fn library_names() {
        assert!(library_matches("libc", "libc.so.6"));
        assert!(library_matches("libc", "libc.so"));
        assert!(!library_matches("libc", "libcap.so.2"));
        assert!(!library_matches("libc", "libc_malloc_debug.so.0"));
        assert!(library_matches("libc.so.6", "libc.so.6"));
        assert!(!library_matches("libc.so", "libc.so.6"));
    }

    #[test]
    fn libc_resolves_like_the_dynamic_linker() {
        let path = resolve_binary("libc").expect("libc");
        assert!(is_elf(&path), "{}", path.display());
        assert!(
            path.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libc.so")),
            "{}",
            path.display()
        );
        let syms = elf_functions(&path, &["syslog", "vsyslog", "__syslog_chk"]).unwrap();
        assert!(syms.contains_key("syslog") && syms.contains_key("vsyslog"));
        assert!(syms.values().all(|s| s.size > 1 && s.offset > 0));
        let e = resolve_binary("libno-such-library-dt").unwrap_err();
        assert!(e.contains("no library \"libno-such-library-dt\""), "{e}");
        let e = resolve_binary("/no/such/file").unwrap_err();
        assert!(e.contains("/no/such/file"), "{e}");
    }
}
