//! The rip cord pulled on dt's kernel state directly, for when the agent cannot pull it: the agent
//! is hung (stopped, deadlocked) and does not answer on its control socket.
//!
//! The agent's control map is found through the agent's own file descriptors: the client learns
//! the pid of the process that listens on the control socket (SO_PEERCRED, which the kernel fills
//! in at connect even when that process is stopped), reads the map ids of its descriptors from
//! `/proc/PID/fdinfo`, and opens, by id, the one that is dt's `CONTROL` map. Going by pid matters:
//! several agents (tests, or hosts running more than one) each have a `CONTROL` map of their own,
//! and only the hung agent's must be touched. Root may open any map by id.

use std::{collections::BTreeSet, path::Path};

use anyhow::{Context as _, bail};
use aya::maps::{Array, Map, MapData, MapInfo, MapType};
use dt_ebpf_common::{Control, LAYOUT_VERSION};

/// The kernel name of dt's control map: the `CONTROL` static of `dt-ebpf/src/maps.rs` (BPF object
/// names keep 15 bytes; this one fits).
pub const CONTROL_MAP_NAME: &str = "CONTROL";

/// Map ids of every BPF map process `pid` holds a file descriptor for.
pub fn map_ids_of(pid: u32) -> anyhow::Result<BTreeSet<u32>> {
    let dir = format!("/proc/{pid}/fdinfo");
    let mut ids = BTreeSet::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        let Ok(entry) = entry else { continue };
        // A descriptor may be closed between listing and reading: skip it.
        let Ok(text) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        ids.extend(text.lines().filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == "map_id").then(|| v.trim().parse::<u32>().ok())?
        }));
    }
    Ok(ids)
}

/// Whether `info` describes dt's control map: its name, type and sizes.
fn is_control(info: &MapInfo) -> bool {
    info.name_as_str() == Some(CONTROL_MAP_NAME)
        && matches!(info.map_type(), Ok(MapType::Array))
        && info.key_size() == 4
        && info.value_size() == size_of::<Control>() as u32
        && info.max_entries() == 1
}

/// The ids of dt's control maps among `ids` (maps that went away meanwhile are left out).
fn control_maps_among(ids: impl IntoIterator<Item = u32>) -> Vec<u32> {
    ids.into_iter()
        .filter(|id| MapInfo::from_id(*id).is_ok_and(|info| is_control(&info)))
        .collect()
}

/// dt's control maps that process `pid` holds (one for a dt agent).
pub fn control_maps_of(pid: u32) -> anyhow::Result<Vec<u32>> {
    Ok(control_maps_among(map_ids_of(pid)?))
}

/// Every dt control map loaded on this host, whoever holds it. Needs root.
pub fn loaded_control_maps() -> anyhow::Result<Vec<u32>> {
    let mut ids = Vec::new();
    for info in aya::maps::loaded_maps() {
        let info = info.context("listing the BPF maps of this host")?;
        if is_control(&info) {
            ids.push(info.id());
        }
    }
    Ok(ids)
}

/// Which of `ports` other dt agents already hook (their `PORTS` maps, loaded in the kernel,
/// other than `own`, the pinned map this agent adopts), and the processes holding those maps
/// (none: a pinned filter whose agent is gone).
pub fn ports_hooked_elsewhere(ports: &[u16], own: Option<u32>) -> (BTreeSet<u16>, Vec<u32>) {
    let mut taken = BTreeSet::new();
    let mut ids = Vec::new();
    for info in aya::maps::loaded_maps().flatten() {
        let is_ports = info.name_as_str() == Some("PORTS")
            && matches!(info.map_type(), Ok(MapType::Hash))
            && info.key_size() == 4
            && info.value_size() == 1;
        if !is_ports || Some(info.id()) == own {
            continue;
        }
        let Ok(data) = MapData::from_id(info.id()) else {
            continue;
        };
        let Ok(map) = aya::maps::HashMap::<_, u32, u8>::try_from(Map::HashMap(data)) else {
            continue;
        };
        let mut hit = false;
        for port in map.keys().flatten() {
            if let Ok(p) = u16::try_from(port)
                && ports.contains(&p)
            {
                taken.insert(p);
                hit = true;
            }
        }
        if hit {
            ids.push(info.id());
        }
    }
    let holders = if ids.is_empty() {
        Vec::new()
    } else {
        holders_of(&ids)
    };
    (taken, holders)
}

/// The processes holding a file descriptor of any of the maps `ids`.
pub fn holders_of(ids: &[u32]) -> Vec<u32> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = rd
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| map_ids_of(*pid).is_ok_and(|held| ids.iter().any(|id| held.contains(id))))
        .collect();
    pids.sort_unstable();
    pids
}

/// Turns rule evaluation on or off in the control map `id`: what the agent's `set_enabled` does,
/// without the agent. The map's layout is checked first.
pub fn set_enabled_by_id(id: u32, enabled: bool) -> anyhow::Result<()> {
    let data = MapData::from_id(id).with_context(|| format!("opening BPF map id {id}"))?;
    let mut control: Array<_, Control> =
        Array::try_from(Map::Array(data)).with_context(|| format!("BPF map id {id}"))?;
    let c = control.get(&0, 0)?;
    if c.layout != LAYOUT_VERSION {
        bail!(
            "BPF map id {id} has dt's map layout {}, this dt-agent knows {LAYOUT_VERSION}",
            c.layout
        );
    }
    crate::kernel::set_enabled_in(&mut control, enabled, dt_ebpf_common::OFF_BY_HAND)
}

/// What [`pull_for_hung_agent`] did.
pub enum Pulled {
    /// Set on these control maps, found among the agent's file descriptors.
    Maps(Vec<u32>),
    /// Set on the pinned state under this pin root.
    Pins,
}

/// Sets `enabled` on the kernel state of the hung agent `pid` (found by its file descriptors),
/// else, when its pid is unknown or holds no control map, on the pinned state under `pins`.
pub fn pull_for_hung_agent(pid: Option<u32>, pins: &Path, enabled: bool) -> anyhow::Result<Pulled> {
    let mut why_not = None;
    if let Some(pid) = pid {
        match control_maps_of(pid) {
            Ok(maps) if !maps.is_empty() => {
                for id in &maps {
                    set_enabled_by_id(*id, enabled)?;
                }
                return Ok(Pulled::Maps(maps));
            }
            Ok(_) => why_not = Some(format!("process {pid} holds no dt control map")),
            Err(e) => why_not = Some(format!("{e:#}")),
        }
    }
    if crate::kernel::has_pins(pins) {
        crate::kernel::pinned_set_enabled(pins, enabled)?;
        return Ok(Pulled::Pins);
    }
    bail!(
        "its kernel state could not be found: {}, and nothing is pinned under {}",
        why_not.unwrap_or_else(|| "its pid is unknown".into()),
        pins.display()
    )
}

/// The pid of the process listening on the unix socket `path`, found through `/proc/net/unix`
/// (the socket's inode) and the processes' `fd` links (`socket:[INODE]`). For when connecting
/// could not tell it: the listener's backlog is full (a hung agent accepts nothing, and every
/// client that gave up waiting stays queued).
pub fn listener_pid(path: &Path) -> Option<u32> {
    // `Num RefCount Protocol Flags Type St Inode Path`; a listener has __SO_ACCEPTCON (0x10000).
    const ACCEPTCON: u32 = 0x10000;
    let canonical = std::fs::canonicalize(path).ok();
    let table = std::fs::read_to_string("/proc/net/unix").ok()?;
    let inode = table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (flags, inode, bound) = (f.get(3)?, f.get(6)?, Path::new(f.get(7)?));
        let listening = u32::from_str_radix(flags, 16).ok()? & ACCEPTCON != 0;
        let same = bound == path || canonical.as_deref() == Some(bound);
        (listening && same).then(|| inode.parse::<u64>().ok())?
    })?;
    let link = format!("socket:[{inode}]");
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid = e.file_name().to_str()?.parse::<u32>().ok()?;
        let fds = std::fs::read_dir(e.path().join("fd")).ok()?;
        fds.flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == link.as_str()))
            .then_some(pid)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listener_pid_finds_this_process() {
        let dir = std::env::temp_dir().join(format!("dt-ripcord-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("listen.sock");
        let _ = std::fs::remove_file(&path);
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        assert_eq!(listener_pid(&path), Some(std::process::id()));
        drop(listener);
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(listener_pid(&path), None);
    }
}
