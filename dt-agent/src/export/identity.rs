//! Who the agent's own metrics say they come from: the `service.instance.id` of their OTLP
//! resource (beside `service.name` = `dt-agent` and `host.name`), so that the counters of two
//! hosts' agents stay apart in a backend (an OpenTelemetry Collector's Prometheus exporter makes
//! it the `instance` label; without it every agent's series would be one).
//!
//! Which value, the first there is:
//! 1. the OpAMP client's instance uid (with `[opamp]`): kept in `<state_dir>/opamp/instance_uid`,
//!    or assigned by the server, and set here by the client ([`set_opamp_instance_uid`]), so the
//!    metrics and the OpAMP server name the agent alike;
//! 2. a UUID derived from the host's machine id (`/proc/1/root/etc/machine-id`, the host's when
//!    the agent shares the host's PID namespace as in its container image's setups, else
//!    `/etc/machine-id`) as systemd's `sd_id128_get_machine_app_specific()` derives one: an
//!    HMAC-SHA256 keyed with the machine id of [`APP_ID`], its first 16 bytes as a UUID v4.
//!    Stable across restarts and upgrades, one per host, and the machine id itself, which
//!    `machine-id(5)` asks not to expose, is not shown (`systemd-id128 machine-id
//!    --app-specific=fbb35291-fd53-4fe9-a1b2-b0c1957d121f` prints the same value on the host);
//! 3. without a machine id: the same, keyed with `host.name=` and the host's name.
//!
//! Not in the captured calls' and flushed recorders' resources: those describe the application
//! that logged (its `service.name`), not the agent.

use std::sync::{Mutex, OnceLock};

/// The application id the host's id is derived with (a random UUID, fixed for dt-agent's
/// `service.instance.id`).
pub const APP_ID: [u8; 16] = [
    0xfb, 0xb3, 0x52, 0x91, 0xfd, 0x53, 0x4f, 0xe9, 0xa1, 0xb2, 0xb0, 0xc1, 0x95, 0x7d, 0x12, 0x1f,
];

static OPAMP_UID: Mutex<Option<String>> = Mutex::new(None);

/// Called by the OpAMP client with its instance uid (text form), at start and whenever the
/// server assigns another: the metrics' `service.instance.id` from then on.
pub fn set_opamp_instance_uid(uid: &str) {
    *OPAMP_UID.lock().unwrap_or_else(|e| e.into_inner()) = Some(uid.to_string());
}

/// The `service.instance.id` of the agent's metrics now.
pub(crate) fn instance_id() -> String {
    if let Some(uid) = OPAMP_UID.lock().unwrap_or_else(|e| e.into_inner()).clone() {
        return uid;
    }
    host_instance_id().to_string()
}

/// The host's id (see the module's 2. and 3.), read once.
fn host_instance_id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        let machine_id = ["/proc/1/root/etc/machine-id", "/etc/machine-id"]
            .iter()
            .find_map(|p| parse_machine_id(&std::fs::read_to_string(p).ok()?));
        derive_instance_id(machine_id, crate::sys::hostname())
    })
}

/// The machine id in `text` (32 hex digits, a newline after), or `None` (empty,
/// `uninitialized`, anything else).
pub(crate) fn parse_machine_id(text: &str) -> Option<[u8; 16]> {
    let hex = text.trim();
    if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut id = [0u8; 16];
    for (i, b) in id.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    (id != [0u8; 16]).then_some(id)
}

/// The instance id of a host with `machine_id` (or, without one, named `hostname`).
pub(crate) fn derive_instance_id(machine_id: Option<[u8; 16]>, hostname: &str) -> String {
    let key = match machine_id {
        Some(id) => id.to_vec(),
        None => format!("host.name={hostname}").into_bytes(),
    };
    let mac = hmac_sha256(&key, &APP_ID);
    let mut uid: [u8; 16] = mac[..16].try_into().unwrap_or_default();
    uid[6] = (uid[6] & 0x0f) | 0x40;
    uid[8] = (uid[8] & 0x3f) | 0x80;
    crate::opamp::format_uuid(&uid)
}

/// SHA-256, by the TLS library's provider (ring) the agent links already.
fn sha256(data: &[u8]) -> Vec<u8> {
    rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256
        .tls13()
        .map(|s| s.common.hash_provider.hash(data).as_ref().to_vec())
        .unwrap_or_default()
}

/// HMAC-SHA256 (RFC 2104) of `message` keyed with `key`.
fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
    const BLOCK: usize = 64;
    let mut k = if key.len() > BLOCK {
        sha256(key)
    } else {
        key.to_vec()
    };
    k.resize(BLOCK, 0);
    let pad = |x: u8| k.iter().map(|b| b ^ x).collect::<Vec<u8>>();
    let mut inner = pad(0x36);
    inner.extend_from_slice(message);
    let mut outer = pad(0x5c);
    outer.extend_from_slice(&sha256(&inner));
    sha256(&outer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn sha256_and_hmac_match_their_test_vectors() {
        assert_eq!(
            hex(&sha256(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        // RFC 4231, test cases 2 and 6 (a key longer than the block).
        assert_eq!(
            hex(&hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(
            hex(&hmac_sha256(
                &[0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First"
            )),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    /// As `systemd-id128 machine-id --app-specific=fbb35291-fd53-4fe9-a1b2-b0c1957d121f` on a
    /// host whose machine id is 0123456789abcdef0123456789abcdef (computed with Python's hmac,
    /// and checked against systemd-id128 on a real host).
    #[test]
    fn the_host_id_is_systemds_app_specific_machine_id() {
        let machine = parse_machine_id("0123456789abcdef0123456789abcdef\n");
        assert_eq!(
            derive_instance_id(machine, "ignored"),
            "dc4b1e27-ad6c-402c-964c-4a8eaadf4be7"
        );
        // Without a machine id, from the host's name.
        assert_eq!(
            derive_instance_id(None, "web-1"),
            "1320809c-8275-4347-8832-df7c068eaa3c"
        );
        assert_ne!(
            derive_instance_id(None, "web-1"),
            derive_instance_id(None, "web-2")
        );
        for bad in [
            "",
            "\n",
            "uninitialized\n",
            "0123",
            &"0".repeat(32),
            &"g".repeat(32),
        ] {
            assert_eq!(parse_machine_id(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_id_is_stable_and_a_uuid() {
        let a = host_instance_id();
        assert_eq!(a, host_instance_id());
        assert!(crate::opamp::parse_uuid(a).is_some(), "{a}");
    }

    /// With OpAMP, its instance uid, and the one the server assigns after it. (The only test
    /// that sets it: the others see either value, a UUID.)
    #[test]
    fn the_opamp_instance_uid_comes_first() {
        set_opamp_instance_uid("0190d7a1-0000-7000-8000-000000000001");
        assert_eq!(instance_id(), "0190d7a1-0000-7000-8000-000000000001");
        set_opamp_instance_uid("0190d7a1-0000-7000-8000-000000000002");
        assert_eq!(instance_id(), "0190d7a1-0000-7000-8000-000000000002");
    }
}
