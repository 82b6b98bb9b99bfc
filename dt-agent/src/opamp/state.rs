//! What the OpAMP client keeps in `<state_dir>/opamp/` across restarts: the agent's
//! `instance_uid` (as a UUID, one line of text) and the last remote config that was applied
//! (`remote_config.pb`, the `AgentRemoteConfig` message as the server sent it). Every file is
//! written whole or not at all (a temporary file, synced, then renamed over the old one).

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, anyhow, bail};
use prost::Message as _;

use super::proto::AgentRemoteConfig;

const UID_FILE: &str = "instance_uid";
const REMOTE_FILE: &str = "remote_config.pb";

/// `<state_dir>/opamp`, created (mode 0700) when opened.
#[derive(Clone, Debug)]
pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    pub fn open(state_dir: &Path) -> anyhow::Result<StateDir> {
        use std::os::unix::fs::DirBuilderExt as _;
        let dir = state_dir.join("opamp");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .with_context(|| {
                format!(
                    "state_dir: cannot create {} (the OpAMP client keeps its instance id and \
                     the last remote config there)",
                    dir.display()
                )
            })?;
        Ok(StateDir { dir })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The kept instance id, or a new UUID v7, kept before it is returned.
    pub fn instance_uid(&self) -> anyhow::Result<[u8; 16]> {
        let path = self.dir.join(UID_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => match parse_uuid(text.trim()) {
                Some(uid) => return Ok(uid),
                None => log::warn!(
                    "{}: not a UUID ({:?}); the agent takes a new instance id",
                    path.display(),
                    text.trim()
                ),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => bail!("reading {}: {e}", path.display()),
        }
        let uid = new_uuid_v7()?;
        self.set_instance_uid(uid)?;
        Ok(uid)
    }

    /// Keeps `uid` as the instance id (the server may assign one).
    pub fn set_instance_uid(&self, uid: [u8; 16]) -> anyhow::Result<()> {
        write_atomic(
            &self.dir.join(UID_FILE),
            format!("{}\n", format_uuid(&uid)).as_bytes(),
        )
    }

    /// The last applied remote config, if one was kept. An unreadable or undecodable file is
    /// an error (the caller logs it and goes on without).
    pub fn load_remote(&self) -> anyhow::Result<Option<AgentRemoteConfig>> {
        let path = self.dir.join(REMOTE_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => bail!("reading {}: {e}", path.display()),
        };
        AgentRemoteConfig::decode(bytes.as_slice())
            .map(Some)
            .map_err(|e| anyhow!("{}: not a remote config: {e}", path.display()))
    }

    pub fn save_remote(&self, config: &AgentRemoteConfig) -> anyhow::Result<()> {
        write_atomic(&self.dir.join(REMOTE_FILE), &config.encode_to_vec())
    }
}

/// Writes `bytes` to `path` whole or not at all: a temporary file beside it, synced, renamed
/// over it, and the directory synced.
fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp"));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    };
    write().with_context(|| format!("writing {}", path.display()))
}

/// A UUID v7 (RFC 9562): 48 bits of Unix milliseconds, then random bits, with the version and
/// variant set. The OpAMP spec asks for a 16-byte instance id, preferably so made.
pub fn new_uuid_v7() -> anyhow::Result<[u8; 16]> {
    let mut uid = [0u8; 16];
    let mut urandom = std::fs::File::open("/dev/urandom").context("opening /dev/urandom")?;
    std::io::Read::read_exact(&mut urandom, &mut uid[6..]).context("reading /dev/urandom")?;
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    uid[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    uid[6] = 0x70 | (uid[6] & 0x0f);
    uid[8] = 0x80 | (uid[8] & 0x3f);
    Ok(uid)
}

/// The canonical text form, `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` (lower case).
pub fn format_uuid(uid: &[u8; 16]) -> String {
    let hex: String = uid.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

pub fn parse_uuid(text: &str) -> Option<[u8; 16]> {
    let hex: String = text.chars().filter(|c| *c != '-').collect();
    if hex.len() != 32 || text.len() != 36 {
        return None;
    }
    let mut uid = [0u8; 16];
    for (i, b) in uid.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(uid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_are_v7_and_round_trip() {
        let uid = new_uuid_v7().unwrap();
        assert_eq!(uid[6] >> 4, 7, "version 7");
        assert_eq!(uid[8] >> 6, 0b10, "RFC variant");
        let text = format_uuid(&uid);
        assert_eq!(text.len(), 36);
        assert_eq!(parse_uuid(&text), Some(uid));
        assert_eq!(parse_uuid("not-a-uuid"), None);
        assert_ne!(new_uuid_v7().unwrap(), uid);
    }

    #[test]
    fn the_instance_uid_and_remote_config_survive_a_reopen() {
        let tmp = tempfile::tempdir().unwrap();
        let state = StateDir::open(&tmp.path().join("state")).unwrap();
        let uid = state.instance_uid().unwrap();
        assert!(state.load_remote().unwrap().is_none());
        let config = AgentRemoteConfig {
            config: None,
            config_hash: vec![1, 2, 3],
        };
        state.save_remote(&config).unwrap();
        let again = StateDir::open(&tmp.path().join("state")).unwrap();
        assert_eq!(again.instance_uid().unwrap(), uid);
        assert_eq!(again.load_remote().unwrap(), Some(config));
        // A damaged id file gives a new id, kept.
        std::fs::write(again.path().join(UID_FILE), "garbage\n").unwrap();
        let new = again.instance_uid().unwrap();
        assert_ne!(new, uid);
        assert_eq!(again.instance_uid().unwrap(), new);
    }
}
