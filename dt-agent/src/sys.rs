//! The few system interfaces aya does not wrap: the cgroup v2 and bpffs mounts (from
//! `/proc/mounts`), mounting bpffs, `BPF_LINK_UPDATE` on a pinned link, RLIMIT_MEMLOCK, and
//! this host's identity (host name, Kubernetes node name, kernel release).

use std::{
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    sync::OnceLock,
};

use anyhow::{Context as _, anyhow};

/// The mount point of the cgroup v2 hierarchy, from /proc/mounts.
pub fn cgroup2_root() -> anyhow::Result<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_dev, path, fstype) = (f.next()?, f.next()?, f.next()?);
            (fstype == "cgroup2").then(|| PathBuf::from(path))
        })
        .next()
        .ok_or_else(|| {
            anyhow!("no cgroup v2 hierarchy is mounted (see /proc/mounts); give --cgroup")
        })
}

/// Whether `dir` (open) is a directory of a cgroup v2 hierarchy, where sock_ops attaches.
pub fn is_cgroup2(dir: &std::fs::File) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd as _;
    const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: fstatfs(2) on an open descriptor, into a statfs it may fill.
    if unsafe { libc::fstatfs(dir.as_raw_fd(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st.f_type as i64 == CGROUP2_SUPER_MAGIC)
}

/// Mounts bpffs at /sys/fs/bpf when `root` lies under it and it is not mounted yet.
pub fn ensure_bpffs(root: &Path) -> anyhow::Result<()> {
    let bpffs = Path::new("/sys/fs/bpf");
    if !root.starts_with(bpffs) {
        return Ok(());
    }
    let mounts = std::fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    let mounted = mounts.lines().any(|l| {
        let mut f = l.split_whitespace();
        matches!(
            (f.next(), f.next(), f.next()),
            (_, Some("/sys/fs/bpf"), Some("bpf"))
        )
    });
    if mounted {
        return Ok(());
    }
    std::fs::create_dir_all(bpffs).ok();
    let c = |s: &str| std::ffi::CString::new(s).unwrap();
    let (src, target, fstype) = (c("bpf"), c("/sys/fs/bpf"), c("bpf"));
    // SAFETY: valid NUL-terminated strings; no data argument.
    let ret = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if ret != 0 {
        return Err(std::io::Error::last_os_error()).context("mounting bpffs at /sys/fs/bpf");
    }
    log::info!("mounted bpffs at /sys/fs/bpf");
    Ok(())
}

/// Swaps the program of the link pinned at `path` (BPF_OBJ_GET, then BPF_LINK_UPDATE: aya 0.14
/// has no wrapper for either on links).
pub fn link_update(path: &Path, new_prog_fd: i32) -> anyhow::Result<()> {
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt as _;
    const BPF_OBJ_GET: libc::c_long = 7;
    const BPF_LINK_UPDATE: libc::c_long = 29;
    #[repr(C)]
    struct ObjGetAttr {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }
    #[repr(C)]
    struct LinkUpdateAttr {
        link_fd: u32,
        new_prog_fd: u32,
        flags: u32,
        old_prog_fd: u32,
    }
    let cpath = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    let get = ObjGetAttr {
        pathname: cpath.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
    };
    // SAFETY: a valid bpf_attr prefix for BPF_OBJ_GET, with its size; `cpath` outlives the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET,
            &get as *const ObjGetAttr,
            std::mem::size_of::<ObjGetAttr>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("BPF_OBJ_GET");
    }
    // SAFETY: a new file descriptor the kernel just returned, owned from here on.
    let link = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let update = LinkUpdateAttr {
        link_fd: link.as_raw_fd() as u32,
        new_prog_fd: new_prog_fd as u32,
        flags: 0,
        old_prog_fd: 0,
    };
    // SAFETY: a valid bpf_attr prefix for BPF_LINK_UPDATE, with its size.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_UPDATE,
            &update as *const LinkUpdateAttr,
            std::mem::size_of::<LinkUpdateAttr>(),
        )
    };
    if ret != 0 {
        return Err(std::io::Error::last_os_error()).context("BPF_LINK_UPDATE");
    }
    Ok(())
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK.
pub fn bump_memlock() {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit with a valid pointer.
    let ret = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) };
    if ret != 0 {
        log::debug!("could not raise RLIMIT_MEMLOCK");
    }
}

/// The environment variable the Kubernetes DaemonSet sets to the node's name (downward API).
pub const NODE_NAME_ENV: &str = "K8S_NODE_NAME";

/// The node's name when the agent runs on a Kubernetes node ([`NODE_NAME_ENV`]).
pub(crate) fn node_name() -> Option<&'static str> {
    static NAME: OnceLock<Option<String>> = OnceLock::new();
    NAME.get_or_init(|| std::env::var(NODE_NAME_ENV).ok())
        .as_deref()
}

/// This host's name (`gethostname`), or `unknown`.
pub(crate) fn hostname() -> &'static str {
    static NAME: OnceLock<String> = OnceLock::new();
    NAME.get_or_init(|| {
        let mut buf = [0u8; 256];
        // SAFETY: the buffer is valid for its length; the result is NUL-terminated unless
        // truncated, and the length is bounded by the buffer either way.
        let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
        let len = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
        if rc != 0 || len == 0 {
            return "unknown".to_string();
        }
        String::from_utf8_lossy(&buf[..len]).into_owned()
    })
}

/// The kernel's release (`uname -r`), or `unknown`.
pub(crate) fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".to_string())
}

/// Kernel memory of the BPF maps this process holds (`memlock` of each map in
/// `/proc/self/fdinfo`, each map counted once): dt's maps, recorders included.
pub(crate) fn bpf_map_memory() -> u64 {
    let Ok(fds) = std::fs::read_dir("/proc/self/fd") else {
        return 0;
    };
    let mut seen = std::collections::HashSet::new();
    let mut total = 0u64;
    for fd in fds.flatten() {
        let is_map = std::fs::read_link(fd.path())
            .is_ok_and(|l| l.to_string_lossy() == "anon_inode:bpf-map");
        if !is_map {
            continue;
        }
        let info = Path::new("/proc/self/fdinfo").join(fd.file_name());
        let Ok(text) = std::fs::read_to_string(info) else {
            continue;
        };
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        if let (Some(id), Some(bytes)) = (field("map_id:"), field("memlock:"))
            && seen.insert(id)
        {
            total += bytes;
        }
    }
    total
}

/// CPUs online (`sysconf(_SC_NPROCESSORS_ONLN)`), at least 1.
pub(crate) fn online_cpus() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    n.max(1) as u64
}

/// The largest send buffer `SO_SNDBUF` can give a socket: twice `net.core.wmem_max`.
pub(crate) fn max_send_buffer() -> Option<u64> {
    std::fs::read_to_string("/proc/sys/net/core/wmem_max")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map(|v| v * 2)
}

/// Tells systemd how the service is (`sd_notify(3)`: `READY=1`, `STOPPING=1`, `STATUS=...`)
/// when it runs the agent as a `Type=notify` unit, which sets `NOTIFY_SOCKET`: a datagram to
/// that socket (a path, or an abstract name written with a leading `@`). Without it, or on any
/// error, nothing happens: the agent runs the same without systemd.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(e) = notify_to(&path, state) {
        log::debug!("sd_notify to {}: {e}", path.to_string_lossy());
    }
}

fn notify_to(path: &std::ffi::OsStr, state: &str) -> std::io::Result<()> {
    use std::os::linux::net::SocketAddrExt as _;
    use std::os::unix::ffi::OsStrExt as _;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let bytes = path.as_bytes();
    let addr = match bytes.first() {
        Some(b'@') => SocketAddr::from_abstract_name(&bytes[1..])?,
        Some(b'/') => SocketAddr::from_pathname(path)?,
        _ => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "NOTIFY_SOCKET is neither a path nor an abstract name",
            ));
        }
    };
    let sock = UnixDatagram::unbound()?;
    sock.send_to_addr(state.as_bytes(), &addr)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::linux::net::SocketAddrExt as _;
    use std::os::unix::net::{SocketAddr, UnixDatagram};

    /// `NOTIFY_SOCKET` as systemd gives it: a path, or an abstract name after `@`.
    #[test]
    fn notify_reaches_a_path_and_an_abstract_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let at_path = UnixDatagram::bind(&path).unwrap();
        super::notify_to(path.as_os_str(), "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = at_path.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");

        let name = format!("dt-agent-test-notify-{}", std::process::id());
        let abstract_ =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap();
        super::notify_to(format!("@{name}").as_ref(), "STOPPING=1").unwrap();
        let n = abstract_.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");

        assert!(super::notify_to("relative".as_ref(), "READY=1").is_err());
    }
}
