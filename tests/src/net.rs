//! Per-test ports. Every test binds its own listeners on port 0 and keeps them open for its whole
//! run, so the kernel never hands the same port to another test (not even as an ephemeral client
//! port) and tests can run in parallel.

use std::net::TcpListener;

/// A listener on `127.0.0.1:<free port>`.
pub fn listener_v4() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0")
}

/// A listener on `[::1]:<free port>`.
pub fn listener_v6() -> TcpListener {
    TcpListener::bind("[::1]:0").expect("bind [::1]:0 (is IPv6 loopback configured?)")
}

/// A port nobody else gets while the returned listener lives (nothing accepts on it).
pub fn reserve_port() -> (TcpListener, u16) {
    let l = listener_v4();
    let port = l.local_addr().expect("local_addr").port();
    (l, port)
}
