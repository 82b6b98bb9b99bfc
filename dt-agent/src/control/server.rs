//! The control socket's server side. The socket is created with mode 0600, and every
//! connection's peer credentials (SO_PEERCRED) are checked: only root is served, even if the mode
//! was widened. What a request does is the [`Handler`]'s business (the running agent's).

use std::{os::unix::fs::PermissionsExt, path::Path};

use anyhow::{Context as _, bail};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
};

use super::protocol::{Request, Response};

/// What answers the requests: called on a blocking thread, one request at a time per
/// connection.
pub trait Handler: Clone + Send + Sync + 'static {
    /// Carries out `request` and says how it went.
    fn answer(&self, request: Request) -> Response;
    /// Called once the answer to an `uninstall` that is done has been written: the agent stops.
    fn stop(&self);
    /// While the agent is still starting (loading and checking its kernel programs), what it
    /// is doing: `uninstall` then waits until it is up; every other request goes to
    /// [`Handler::answer`], which answers it as a starting agent can.
    fn starting(&self) -> Option<String> {
        None
    }
}

/// The socket file [`bind`] made: removed at exit only while it is still that file, so that an
/// agent never removes a socket it did not make (another agent's, which would leave that one
/// running with no way to reach it).
pub struct SocketFile {
    path: std::path::PathBuf,
    dev: u64,
    ino: u64,
    /// `<socket>.lock`, locked (flock) from before the socket is looked at until the agent
    /// exits: two agents starting at once on a stale socket cannot both take it.
    _lock: std::fs::File,
}

impl SocketFile {
    fn of(path: &Path, lock: std::fs::File) -> anyhow::Result<SocketFile> {
        use std::os::unix::fs::MetadataExt as _;
        let m = std::fs::symlink_metadata(path)
            .with_context(|| format!("reading {}", path.display()))?;
        Ok(SocketFile {
            path: path.to_path_buf(),
            dev: m.dev(),
            ino: m.ino(),
            _lock: lock,
        })
    }

    /// Removes the socket file if it is still the one this agent bound.
    pub fn remove(&self) {
        use std::os::unix::fs::MetadataExt as _;
        match std::fs::symlink_metadata(&self.path) {
            Ok(m) if m.dev() == self.dev && m.ino() == self.ino => {
                let _ = std::fs::remove_file(&self.path);
            }
            _ => {}
        }
    }
}

/// Binds the control socket (mode 0600), replacing a stale socket file nobody listens on.
pub fn bind(path: &Path) -> anyhow::Result<(UnixListener, SocketFile)> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let lock = lock_beside(path)?;
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!(
                "another agent is already serving {} (give another --socket to run a second one)",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing stale socket {}", path.display()))?;
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    let file = SocketFile::of(path, lock)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("setting the mode of {}", path.display()))?;
    Ok((listener, file))
}

/// Takes `<path>.lock` (created when missing, mode 0600) with an exclusive `flock`, or says
/// which agent has it.
fn lock_beside(path: &Path) -> anyhow::Result<std::fs::File> {
    use std::os::fd::AsRawFd as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    let lock_path = std::path::PathBuf::from(name);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&lock_path)
        .with_context(|| format!("opening {}", lock_path.display()))?;
    // SAFETY: flock(2) on a descriptor this function owns.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            bail!(
                "another agent is already serving {} (give another --socket to run a second one)",
                path.display()
            );
        }
        return Err(e).with_context(|| format!("locking {}", lock_path.display()));
    }
    Ok(file)
}

/// Serves requests until the task is dropped.
pub async fn serve<H: Handler>(listener: UnixListener, handler: H) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(stream, handler).await {
                log::debug!("control connection: {e:#}");
            }
        });
    }
}

async fn handle<H: Handler>(stream: UnixStream, handler: H) -> anyhow::Result<()> {
    use tokio::io::AsyncReadExt as _;
    let peer = stream
        .peer_cred()
        .context("reading the peer's credentials")?;
    let (rd, mut wr) = stream.into_split();
    // Read the request before answering, refused or not: closing a connection whose request was
    // never read makes the client's write fail (EPIPE) before it can read the refusal.
    let mut line = String::new();
    let mut reader = BufReader::new(rd.take(MAX_REQUEST_BYTES));
    reader.read_line(&mut line).await?;
    // A client that gave up waiting (this agent was stopped or busy) has closed its end: its
    // request is stale and is not carried out. Carried out now, an old `enable` would undo the
    // `disable` the client then made on the kernel state directly.
    let rd = reader.into_inner().into_inner();
    if client_gone(&rd) {
        if line.is_empty() {
            return Ok(());
        }
        log::warn!(
            "ignored a control request whose client had given up waiting (pid {:?}): {}",
            peer.pid(),
            line.trim_end().chars().take(80).collect::<String>()
        );
        return Ok(());
    }
    let mut stop_after = false;
    let response = if peer.uid() != 0 {
        log::warn!(
            "refused a control connection from uid {} (pid {:?}): only root may control dt",
            peer.uid(),
            peer.pid()
        );
        Response::error(format!(
            "permission denied: dt's control socket serves root only (you are uid {})",
            peer.uid()
        ))
    } else {
        match serde_json::from_str::<Request>(&line) {
            Err(e) => Response::error(format!("bad request: {e}")),
            Ok(request) => {
                if waits_for_start(&request) && handler.starting().is_some() {
                    while handler.starting().is_some() {
                        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    }
                    // As for a request found waiting in the backlog: one whose client gave up
                    // meanwhile is not carried out.
                    if client_gone(&rd) {
                        log::warn!(
                            "ignored a control request whose client had given up waiting for \
                             the agent to start (pid {:?}): {}",
                            peer.pid(),
                            line.trim_end().chars().take(80).collect::<String>()
                        );
                        return Ok(());
                    }
                }
                let uninstall = matches!(request, Request::Uninstall | Request::UninstallNow);
                let h = handler.clone();
                let r = tokio::task::spawn_blocking(move || h.answer(request)).await?;
                stop_after = uninstall && r.uninstall.as_ref().is_some_and(|u| u.done);
                r
            }
        }
    };
    let mut out = serde_json::to_vec(&response)?;
    out.push(b'\n');
    let written = wr.write_all(&out).await;
    // After uninstall the agent stops, but only once the caller has its answer.
    if stop_after {
        handler.stop();
    }
    written?;
    Ok(())
}

/// Whether `request`, sent while the agent starts, waits until it is up (`uninstall`, whose
/// client waits long) rather than being answered at once by the handler (that the agent is
/// starting; the rip cord, pulled on the pins and kept for when it is up).
fn waits_for_start(request: &Request) -> bool {
    matches!(request, Request::Uninstall | Request::UninstallNow)
}

/// Whether the client closed its end of the connection (POLLHUP: fully closed, not merely shut
/// down for writing).
fn client_gone(rd: &tokio::net::unix::OwnedReadHalf) -> bool {
    use std::os::fd::AsRawFd as _;
    let mut p = libc::pollfd {
        fd: rd.as_ref().as_raw_fd(),
        events: 0,
        revents: 0,
    };
    // SAFETY: poll(2) on one valid pollfd, with no wait.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n == 1 && p.revents & libc::POLLHUP != 0
}

/// The longest request line read (a push carries whole rule files).
const MAX_REQUEST_BYTES: u64 = 16 << 20;
