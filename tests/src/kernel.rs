//! Whether this process can run kernel tests (root and a cgroup v2 mount).

use std::io::Write;
use std::path::PathBuf;

/// Env var that turns a skip into a failure (CI sets it: no silent skips).
pub const REQUIRE_ENV: &str = "DT_REQUIRE_KERNEL_TESTS";

/// The first cgroup v2 mount point, read from `/proc/self/mountinfo` (never hard-coded: a hybrid
/// layout mounts it at `/sys/fs/cgroup/unified`, a unified one at `/sys/fs/cgroup`).
pub fn cgroup2_mount() -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    for line in info.lines() {
        // `<id> <parent> <maj:min> <root> <mount point> <options> [optional...] - <fstype> <source> <super options>`
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        if right.split_whitespace().next() != Some("cgroup2") {
            continue;
        }
        if let Some(mount_point) = left.split_whitespace().nth(4) {
            return Some(PathBuf::from(unescape_mountinfo(mount_point)));
        }
    }
    None
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let v = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Why kernel tests cannot run here, if they cannot.
pub fn kernel_unavailable_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        return Some(format!("needs root (euid is {euid})"));
    }
    if cgroup2_mount().is_none() {
        return Some("no cgroup v2 mount in /proc/self/mountinfo".into());
    }
    None
}

/// What a test needs (`found`), or `None` after printing `SKIPPED <test>: <reason>` to stderr;
/// a panic instead when `DT_REQUIRE_KERNEL_TESTS=1` (CI never skips silently).
pub fn needed_or_skip<T>(test: &str, found: Result<T, String>) -> Option<T> {
    match found {
        Ok(t) => Some(t),
        Err(reason) => {
            if std::env::var(REQUIRE_ENV).as_deref() == Ok("1") {
                panic!("{test}: {reason} (and {REQUIRE_ENV}=1)");
            }
            // Straight to fd 2: libtest captures `eprintln!`, and a skip must be seen.
            let line = format!("SKIPPED {test}: {reason}\n");
            let _ = std::io::stderr().lock().write_all(line.as_bytes());
            None
        }
    }
}

/// `true` when the kernel test `test` can run. Otherwise prints `SKIPPED <test>: <reason>` to
/// stderr and returns `false`, or panics when `DT_REQUIRE_KERNEL_TESTS=1`.
pub fn kernel_or_skip(test: &str) -> bool {
    match kernel_unavailable_reason() {
        None => true,
        Some(reason) => {
            if std::env::var(REQUIRE_ENV).as_deref() == Ok("1") {
                panic!("{test}: kernel test cannot run ({reason}) and {REQUIRE_ENV}=1");
            }
            // Straight to fd 2: libtest captures `eprintln!`, and a skip must be seen.
            let line = format!("SKIPPED {test}: {reason}\n");
            let _ = std::io::stderr().lock().write_all(line.as_bytes());
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_mountinfo() {
        assert_eq!(unescape_mountinfo(r"/a\040b"), "/a b");
        assert_eq!(unescape_mountinfo("/sys/fs/cgroup"), "/sys/fs/cgroup");
    }
}
