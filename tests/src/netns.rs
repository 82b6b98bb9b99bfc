//! A network namespace joined to the host's by a veth pair: a sender in it reaches a receiver on
//! the host over a real link (MTU 1500, segmentation, the veth's queue) instead of loopback, as
//! an app in a container or pod reaches a collector on its node. Its processes stay in the test's
//! cgroup, so dt's sock_ops program sees their sockets as it sees any other.

use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// A namespace and its veth pair; both are deleted when dropped.
pub struct Netns {
    pub name: String,
    host_if: String,
    /// The host end's address (where receivers listen) and the namespace end's.
    pub host: IpAddr,
    pub inner: IpAddr,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("running ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Netns {
    /// A fresh namespace `dt-test-<pid>-<n>` and a veth pair `dtv<n><pid>h` (host) /
    /// `...n` (namespace) with a free /30 `198.18.x.0`: host .1, namespace .2. `Err` says why
    /// it could not be made (no `ip`, no CAP_NET_ADMIN).
    pub fn new() -> Result<Netns, String> {
        sweep_stale();
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id() % 100_000;
        let name = format!("dt-test-{pid}-{n}");
        // Interface names have at most 15 bytes.
        let host_if = format!("dtv{n}h{pid}");
        let ns_if = format!("dtv{n}n{pid}");
        // A /30 of 198.18.0.0/15 (set aside for tests of network devices, RFC 2544) that no
        // interface here has yet: another test process may be using one.
        let used = Command::new("ip")
            .args(["-o", "-4", "addr", "show"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let start = pid * 7 + n;
        let (host, inner) = (0..256u32)
            .map(|k| (start + k) % 256)
            .map(|third| {
                (
                    Ipv4Addr::new(198, 18, third as u8, 1),
                    Ipv4Addr::new(198, 18, third as u8, 2),
                )
            })
            .find(|(h, _)| !used.contains(&format!("inet {h}/")))
            .ok_or("no free 198.18.x.0/30 for a veth pair")?;
        let ns = Netns {
            name: name.clone(),
            host_if: host_if.clone(),
            host: host.into(),
            inner: inner.into(),
        };
        ip(&["netns", "add", &name])?;
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if,
        ])?;
        ip(&["link", "set", &ns_if, "netns", &name])?;
        ip(&["addr", "add", &format!("{host}/30"), "dev", &host_if])?;
        ip(&["link", "set", &host_if, "up"])?;
        let exec = |args: &[&str]| {
            let mut a = vec!["netns", "exec", name.as_str(), "ip"];
            a.extend_from_slice(args);
            ip(&a)
        };
        exec(&["addr", "add", &format!("{inner}/30"), "dev", &ns_if])?;
        exec(&["link", "set", &ns_if, "up"])?;
        exec(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Bytes the host's end of the pair has received: what the namespace sent it.
    pub fn host_rx_bytes(&self) -> u64 {
        std::fs::read_to_string(format!(
            "/sys/class/net/{}/statistics/rx_bytes",
            self.host_if
        ))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
    }

    /// `cmd` run inside the namespace (`ip netns exec`), with its environment.
    pub fn wrap(&self, cmd: &Command) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name])
            .arg(cmd.get_program())
            .args(cmd.get_args());
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => c.env(k, v),
                None => c.env_remove(k),
            };
        }
        if let Some(d) = cmd.get_current_dir() {
            c.current_dir(d);
        }
        c
    }
}

/// Deletes the namespaces of test processes that are gone (killed before their drop ran); their
/// veth pairs go with them.
fn sweep_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(pid) = name
            .strip_prefix("dt-test-")
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        // The name keeps the pid modulo 100,000: a live process with that remainder keeps it.
        let alive = std::fs::read_dir("/proc").is_ok_and(|d| {
            d.flatten().any(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|s| s.parse::<u32>().ok())
                    .is_some_and(|p| p % 100_000 == pid)
            })
        });
        if !alive {
            let _ = ip(&["netns", "del", name]);
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace deletes its veth end, and with it the pair.
        let _ = ip(&["netns", "del", &self.name]);
        let _ = ip(&["link", "del", &self.host_if]);
    }
}
