//! The OTLP hook on the agent's side: `dt_sockops` attached to a cgroup (adds connections to
//! the configured ports to the `SOCKS` SockHash) and `dt_msg` attached to that SockHash (walks
//! the requests), the `PORTS` map, and the hook's maps.

use std::{
    fs::File,
    os::fd::{AsFd, AsRawFd},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, anyhow, bail};
use aya::{
    Ebpf,
    maps::{HashMap, MapData, SockHash},
    programs::{
        SkMsg, SockOps,
        links::{CgroupAttachMode, FdLink, PinnedLink},
        sk_msg::SkMsgLink,
    },
};

use crate::sys::link_update;

/// Every map of the OTLP hook (all pinned in pinned mode).
pub const MAPS: [&str; 19] = [
    "CONTROL",
    "PORTS",
    "SOCKS",
    "RULESETS",
    "STRINGS",
    "ATTR_HASHES",
    "AC_FLAT",
    "SAMPLES",
    "RATES",
    "RULE_COUNTERS",
    "TOTALS",
    "NAMES",
    "SOCK_STATE",
    "HELD",
    "GROUPS",
    "GROUP_COUNT",
    "GROUP_NOTES",
    "ENRICH_HOST",
    "CGROUP_IDS",
];
/// The pinned sock_ops cgroup link.
pub const SOCKOPS_LINK: &str = "sockops_link";

/// The sock_ops attachment: a pinned link in pinned mode, else one that detaches on drop.
pub enum SockOpsAttachment {
    Owned(#[allow(dead_code)] FdLink),
    Pinned(PinnedLink),
}

/// Makes `ports` the hooked ports (the `PORTS` map), dropping any others (adopted pins).
pub fn write_ports(ebpf: &mut Ebpf, ports: &[u16]) -> anyhow::Result<()> {
    let mut map: HashMap<_, u32, u8> = HashMap::try_from(
        ebpf.map_mut("PORTS")
            .ok_or_else(|| anyhow!("map PORTS missing from the eBPF object"))?,
    )?;
    let old: Vec<u32> = map.keys().filter_map(Result::ok).collect();
    for p in old {
        map.remove(&p)?;
    }
    for p in ports {
        map.insert(*p as u32, 1, 0)?;
    }
    Ok(())
}

/// Takes the `SOCKS` SockHash out of the object: held by the agent, so the SockHash (and the
/// sk_msg attachment to it) lives as long as the agent.
/// A second handle on the `SOCKS` map (for taking the agent's own sockets out of it).
pub fn socks_handle(ebpf: &Ebpf) -> anyhow::Result<SockHash<MapData, u64>> {
    let Some(aya::maps::Map::SockHash(data)) = ebpf.map("SOCKS") else {
        bail!("map SOCKS missing");
    };
    let id = data.info()?.id();
    Ok(SockHash::try_from(aya::maps::Map::SockHash(
        MapData::from_id(id)?,
    ))?)
}

pub fn take_socks(ebpf: &mut Ebpf) -> anyhow::Result<SockHash<MapData, u64>> {
    Ok(SockHash::try_from(
        ebpf.take_map("SOCKS")
            .ok_or_else(|| anyhow!("map SOCKS missing"))?,
    )?)
}

/// Loads `dt_msg` and attaches it to the SockHash.
pub fn attach_sk_msg(ebpf: &mut Ebpf, socks: &SockHash<MapData, u64>) -> anyhow::Result<SkMsgLink> {
    let fd = socks.fd().try_clone()?;
    let prog: &mut SkMsg = ebpf
        .program_mut("dt_msg")
        .ok_or_else(|| anyhow!("program dt_msg missing"))?
        .try_into()?;
    let started = std::time::Instant::now();
    prog.load().context("loading the sk_msg program")?;
    // What the verifier took: most of the agent's start, and the room left for the program
    // to grow (the kernel refuses one that takes more than 1M instructions to check).
    if let Some(n) = prog
        .info()
        .ok()
        .and_then(|i| i.verified_instruction_count())
    {
        log::info!(
            "sk_msg program loaded in {:.1} s: the verifier checked {n} instructions (its \
             limit is 1000000)",
            started.elapsed().as_secs_f64()
        );
    }
    // On a SockHash that already has a program (adopted pins), this replaces it: sockets
    // that join from now on run the new one.
    let id = prog
        .attach(&fd)
        .context("attaching sk_msg to the SockHash")?;
    Ok(prog.take_link(id)?)
}

/// Loads `dt_sockops` and attaches it to `cgroup`; with `pinned` (the link's pin path), a link
/// pinned there by an earlier agent gets the new program in place, and a new link is pinned.
pub fn attach_sock_ops(
    ebpf: &mut Ebpf,
    pinned: Option<PathBuf>,
    cgroup_file: File,
    cgroup: &Path,
) -> anyhow::Result<SockOpsAttachment> {
    let prog: &mut SockOps = ebpf
        .program_mut("dt_sockops")
        .ok_or_else(|| anyhow!("program dt_sockops missing"))?
        .try_into()?;
    prog.load().context("loading the sock_ops program")?;
    if let Some(path) = pinned.as_deref().filter(|p| p.exists()) {
        // A pinned link from an earlier agent: swap its program for ours in place, so there
        // is never a second sock_ops program beside it.
        let prog_fd = prog.fd()?.as_fd().as_raw_fd();
        link_update(path, prog_fd)
            .with_context(|| format!("replacing the program of {}", path.display()))?;
        let link = PinnedLink::from_pin(path)
            .with_context(|| format!("opening the pinned link {}", path.display()))?;
        return Ok(SockOpsAttachment::Pinned(link));
    }
    let id = prog
        .attach(cgroup_file, CgroupAttachMode::Single)
        .with_context(|| format!("attaching sock_ops to {}", cgroup.display()))?;
    let link: FdLink = prog.take_link(id)?.try_into()?;
    Ok(match pinned {
        Some(path) => SockOpsAttachment::Pinned(
            link.pin(&path)
                .with_context(|| format!("pinning {}", path.display()))?,
        ),
        None => SockOpsAttachment::Owned(link),
    })
}
