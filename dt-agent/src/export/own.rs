//! The agent's own connections are never hooked: a capture, a flush or a metrics push to a
//! hooked port (the normal case: the apps' collector) would otherwise go through the agent's
//! own rules. Every connection the agent opens is taken out of the `SOCKS` map of every agent
//! of this process as soon as it is connected, before a byte is sent.

use std::{
    os::fd::AsRawFd,
    sync::{Mutex, MutexGuard},
};

use aya::maps::{MapData, SockHash};

/// The `SOCKS` maps of the agents of this process, by an id of each agent.
static SOCKS: Mutex<Vec<(u64, SockHash<MapData, u64>)>> = Mutex::new(Vec::new());

fn registry() -> MutexGuard<'static, Vec<(u64, SockHash<MapData, u64>)>> {
    SOCKS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Registers an agent's `SOCKS` map (a handle of its own) under `id`.
pub fn register(id: u64, socks: SockHash<MapData, u64>) {
    registry().push((id, socks));
}

/// Forgets the map registered under `id`.
pub fn unregister(id: u64) {
    registry().retain(|(i, _)| *i != id);
}

/// Takes the connected socket `stream` out of every registered `SOCKS` map (it was put there
/// when its connection was established, if its port is hooked).
pub fn exclude(stream: &impl AsRawFd) {
    let Some(cookie) = cookie(stream.as_raw_fd()) else {
        return;
    };
    for (_, socks) in registry().iter_mut() {
        // Not there (another agent's port, or no hooked port): nothing to do.
        let _ = socks.remove(&cookie);
    }
}

/// The socket's cookie (`SO_COOKIE`): the key sock_ops put it under.
fn cookie(fd: i32) -> Option<u64> {
    let mut cookie = 0u64;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cookie`.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    (r == 0).then_some(cookie)
}
