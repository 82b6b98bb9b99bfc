//! `[enrich]`'s `container.id` and `k8s.pod.uid`: which cgroups name a container or a pod.
//!
//! The kernel knows the sending task's cgroup id (`bpf_get_current_cgroup_id`), not its path.
//! The agent keeps `CGROUP_IDS` (cgroup id → container id, pod uid) up to date from the cgroup v2
//! hierarchy: a thread reads the whole tree every [`SCAN_EVERY`] while the active rule set wants
//! either attribute (a cgroup's id is its directory's inode number, which `readdir` gives without
//! a `stat`), adding the cgroups whose path names a container or pod and removing those gone. A
//! sender in a cgroup created a second ago is attributed; one created in the last
//! [`SCAN_EVERY`] may not be yet.

use std::collections::HashMap as StdHashMap;
use std::os::unix::fs::DirEntryExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use aya::maps::{HashMap, MapData};
use dt_ebpf_common::{CgroupIds, EnrichStr, MAX_CGROUP_IDS};

/// How often the hierarchy is read while it is wanted.
pub const SCAN_EVERY: Duration = Duration::from_millis(250);

/// Cgroup directories read at most in one pass (deeper or further ones wait for the next).
const MAX_DIRS: usize = 200_000;

/// The container id and pod uid a cgroup path names. The deepest container id wins (a cgroup
/// inside a container's is the container's); a pod uid comes from a `kubepods` component.
///
/// Container scopes: Docker (`docker-<id>.scope`, `/docker/<id>`), containerd
/// (`cri-containerd-<id>.scope`, `/kubepods/.../pod<uid>/<id>`), CRI-O (`crio-<id>.scope`) and
/// Podman (`libpod-<id>.scope`), the id being 64 hex digits. `*-conmon-*` scopes are the
/// runtimes' monitors, not containers. Pods: `kubepods[-<qos>]-pod<uid>.slice` (systemd driver,
/// `_` for `-`) or `pod<uid>` (cgroupfs driver).
pub fn ids_of(path: &str) -> (Option<String>, Option<String>) {
    let mut container = None;
    let mut pod = None;
    for comp in path.split('/').filter(|c| !c.is_empty()) {
        let base = comp.strip_suffix(".scope").unwrap_or(comp);
        for prefix in ["docker-", "cri-containerd-", "crio-", "libpod-", ""] {
            if let Some(id) = base.strip_prefix(prefix)
                && is_container_id(id)
                && (!prefix.is_empty() || base == comp)
            {
                container = Some(id.to_string());
            }
        }
        if let Some(rest) = comp.strip_prefix("kubepods")
            && let Some(slice) = rest.strip_suffix(".slice")
            && let Some(i) = slice.find("-pod")
        {
            let uid = slice[i + 4..].replace('_', "-");
            if is_uid(&uid) {
                pod = Some(uid);
            }
        } else if let Some(uid) = comp.strip_prefix("pod")
            && is_uid(uid)
        {
            pod = Some(uid.to_string());
        }
    }
    (container, pod)
}

fn is_container_id(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn is_uid(s: &str) -> bool {
    s.len() == 36
        && s.bytes().enumerate().all(|(i, b)| {
            if matches!(i, 8 | 13 | 18 | 23) {
                b == b'-'
            } else {
                b.is_ascii_hexdigit()
            }
        })
}

/// Every cgroup at or under `root` that names a container or pod: its id and what it names.
/// Paths are read whole, from `root`'s own path down, so a cgroup below a container's (or the
/// hooked cgroup being one) is attributed to it.
pub fn scan(root: &Path) -> StdHashMap<u64, CgroupIds> {
    let mut found = StdHashMap::new();
    let root_path = root.to_string_lossy().into_owned();
    if let Ok(meta) = std::fs::metadata(root) {
        use std::os::unix::fs::MetadataExt as _;
        if let Some(ids) = cgroup_ids(&root_path) {
            found.insert(meta.ino(), ids);
        }
    }
    let mut stack: Vec<(PathBuf, String)> = vec![(root.to_path_buf(), root_path)];
    let mut dirs = 0;
    while let Some((dir, rel)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            dirs += 1;
            if dirs > MAX_DIRS {
                return found;
            }
            let name = e.file_name().to_string_lossy().into_owned();
            let path = format!("{rel}/{name}");
            if let Some(ids) = cgroup_ids(&path) {
                found.insert(e.ino(), ids);
            }
            stack.push((e.path(), path));
        }
    }
    found
}

/// What a cgroup path names, if anything.
fn cgroup_ids(path: &str) -> Option<CgroupIds> {
    let (container, pod) = ids_of(path);
    if container.is_none() && pod.is_none() {
        return None;
    }
    let none = EnrichStr::NONE;
    Some(CgroupIds {
        container: container.map_or(none, |c| EnrichStr::of(c.as_bytes())),
        pod: pod.map_or(none, |p| EnrichStr::of(p.as_bytes())),
    })
}

/// The thread that keeps `CGROUP_IDS` up to date; stops when dropped.
pub struct Tracker {
    /// Whether the active rule set wants container ids or pod uids.
    pub wanted: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Tracker {
    pub fn start(mut map: HashMap<MapData, u64, CgroupIds>, root: PathBuf) -> Tracker {
        let wanted = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (w, s) = (wanted.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("dt-cgroups".into())
            .spawn(move || {
                let mut known: StdHashMap<u64, CgroupIds> =
                    map.iter().filter_map(Result::ok).collect();
                while !s.load(Ordering::Relaxed) {
                    if w.load(Ordering::Relaxed) {
                        sync(&mut map, &mut known, scan(&root));
                    }
                    // Woken at once when the tracker drops.
                    std::thread::park_timeout(SCAN_EVERY);
                }
            })
            .ok();
        Tracker {
            wanted,
            stop,
            thread,
        }
    }
}

/// Makes the map hold `now`: new and changed entries written, gone ones removed.
fn sync(
    map: &mut HashMap<MapData, u64, CgroupIds>,
    known: &mut StdHashMap<u64, CgroupIds>,
    now: StdHashMap<u64, CgroupIds>,
) {
    let gone: Vec<u64> = known
        .keys()
        .filter(|k| !now.contains_key(k))
        .copied()
        .collect();
    for k in gone {
        let _ = map.remove(&k);
        known.remove(&k);
    }
    for (k, v) in now {
        if known.get(&k) == Some(&v) || known.len() >= MAX_CGROUP_IDS as usize {
            continue;
        }
        if map.insert(k, v, 0).is_ok() {
            known.insert(k, v);
        }
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ids_of;

    const ID: &str = "4c01db0b339c8ef5f1e5d23b0a10e0c4a2a4b9f1e3e0c4bb1b4b0c9a8f7e6d5c";
    const UID: &str = "8a4b3c2d-1e0f-4a5b-9c8d-7e6f5a4b3c2d";

    #[test]
    fn container_scopes_of_each_runtime() {
        for path in [
            format!("/system.slice/docker-{ID}.scope"),
            format!("/docker/{ID}"),
            format!("/system.slice/crio-{ID}.scope"),
            format!("/machine.slice/libpod-{ID}.scope"),
            format!("/machine.slice/libpod-{ID}.scope/container"),
            format!("/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope"),
        ] {
            assert_eq!(ids_of(&path), (Some(ID.to_string()), None), "{path}");
        }
    }

    #[test]
    fn kubernetes_pods_and_their_containers() {
        let systemd_uid = UID.replace('-', "_");
        let p = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{systemd_uid}.slice/cri-containerd-{ID}.scope"
        );
        assert_eq!(ids_of(&p), (Some(ID.into()), Some(UID.into())));
        let p = format!("/kubepods/besteffort/pod{UID}/{ID}");
        assert_eq!(ids_of(&p), (Some(ID.into()), Some(UID.into())));
        // The pod's own cgroup (its pause container aside) names the pod only.
        let p = format!("/kubepods.slice/kubepods-pod{systemd_uid}.slice");
        assert_eq!(ids_of(&p), (None, Some(UID.into())));
    }

    #[test]
    fn other_cgroups_name_nothing() {
        for path in [
            "/",
            "/system.slice/sshd.service",
            "/user.slice/user-1000.slice/session-3.scope",
            "/system.slice/docker.service",
            "/machine.slice/libpod-conmon-4c01db0b339c8ef5f1e5d23b0a10e0c4a2a4b9f1e3e0c4bb1b4b0c9a8f7e6d5c.scope",
            "/system.slice/docker-4c01db0b.scope",
            "/kubepods.slice/kubepods-burstable.slice",
            "/podcast.service",
        ] {
            assert_eq!(ids_of(path), (None, None), "{path}");
        }
    }
}
