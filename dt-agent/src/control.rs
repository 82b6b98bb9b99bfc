//! The control socket: one JSON request per connection, one JSON answer.
//!
//! The socket is created with mode 0600, and every connection's peer credentials
//! (SO_PEERCRED) are checked: only root is served, even if the mode was widened.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
};

use crate::{Stats, daemon::Daemon};

/// Where the control socket lives unless `--socket` says otherwise.
pub const DEFAULT_SOCKET: &str = "/run/dt/agent.sock";

/// A rule file sent by `push`: the path the user gave (for error messages) and its text.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PushedFile {
    pub path: PathBuf,
    pub text: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "verb", rename_all = "snake_case")]
pub enum Request {
    Stats,
    Rules,
    Push { files: Vec<PushedFile> },
    Disable,
    Enable,
    Uninstall,
}

/// One active rule, as `rules` lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleInfo {
    pub name: String,
    pub action: String,
    pub hook: String,
    /// The rule's file and the line of its `[[rule]]` header.
    pub file: PathBuf,
    pub line: usize,
}

/// The `rules --json` document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RulesInfo {
    pub generation: u64,
    pub enabled: bool,
    pub rules_dir: PathBuf,
    pub rules: Vec<RuleInfo>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    /// What went wrong; for a refused push, one `file:line:column: message` per line.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stats: Option<Stats>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rules: Option<RulesInfo>,
    /// The active generation after a push.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    /// How far `uninstall` is: done, or what it still waits for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uninstall: Option<crate::drain::UninstallStatus>,
}

impl Response {
    fn ok() -> Response {
        Response {
            ok: true,
            ..Response::default()
        }
    }

    fn error(message: String) -> Response {
        Response {
            ok: false,
            error: Some(message),
            ..Response::default()
        }
    }
}

/// Binds the control socket (mode 0600), replacing a stale socket file nobody listens on.
pub fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
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
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("setting the mode of {}", path.display()))?;
    Ok(listener)
}

/// Serves requests until the task is dropped.
pub async fn serve(listener: UnixListener, daemon: Arc<Daemon>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let daemon = daemon.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(stream, daemon).await {
                log::debug!("control connection: {e:#}");
            }
        });
    }
}

async fn handle(stream: UnixStream, daemon: Arc<Daemon>) -> anyhow::Result<()> {
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
    if client_gone(&reader.into_inner().into_inner()) {
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
                let uninstall = matches!(request, Request::Uninstall);
                let d = daemon.clone();
                let r = tokio::task::spawn_blocking(move || answer(&d, request)).await?;
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
        daemon.shutdown.notify_one();
    }
    written?;
    Ok(())
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

fn answer(daemon: &Arc<Daemon>, request: Request) -> Response {
    let result = match request {
        Request::Stats => daemon.stats().map(|s| Response {
            stats: Some(s),
            ..Response::ok()
        }),
        Request::Rules => daemon.rules().map(|r| Response {
            rules: Some(r),
            ..Response::ok()
        }),
        Request::Push { files } => daemon.push(&files).map(|g| Response {
            generation: Some(g),
            ..Response::ok()
        }),
        Request::Disable => daemon.set_enabled(false).map(|_| Response::ok()),
        Request::Enable => daemon.set_enabled(true).map(|_| Response::ok()),
        Request::Uninstall => daemon.uninstall().map(|u| Response {
            uninstall: Some(u),
            ..Response::ok()
        }),
    };
    result.unwrap_or_else(|e| Response::error(format!("{e:#}")))
}

/// How long a verb waits for the agent's answer (connecting included) when it has a fallback or
/// nothing slow to ask: `disable`, `enable`, `stats`, `rules`. A hung agent (stopped, deadlocked)
/// must not hang the rip cord.
pub const ANSWER_DEADLINE: Duration = Duration::from_secs(2);
/// How long `push` waits: the agent compiles and checks the whole set in the kernel first.
pub const PUSH_DEADLINE: Duration = Duration::from_secs(30);
/// How long `uninstall` waits: the agent drains held requests before it detaches.
pub const UNINSTALL_DEADLINE: Duration = Duration::from_secs(120);

/// Why a call failed: the agent is not there, it did not answer in time, or it answered with an
/// error.
#[derive(Debug)]
pub enum CallError {
    /// Nothing listens on the socket (it does not exist, or nobody accepts on it).
    NoAgent(anyhow::Error),
    /// Connecting to the socket was refused by the file system: it is root's.
    Denied(anyhow::Error),
    /// Something listens on the socket but did not answer within `waited`: the agent is hung
    /// (stopped, deadlocked, or swamped). `pid` is the process that listens, when known (from
    /// the connection's SO_PEERCRED, which the kernel fills in even if that process is stopped).
    NoAnswer {
        pid: Option<u32>,
        waited: Duration,
    },
    /// The agent refused; the message is what it said.
    Refused(String),
    Other(anyhow::Error),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::NoAgent(e) | CallError::Denied(e) | CallError::Other(e) => {
                write!(f, "{e:#}")
            }
            CallError::NoAnswer { pid, waited } => {
                match pid {
                    Some(pid) => write!(f, "the agent (pid {pid})")?,
                    None => write!(f, "the agent")?,
                }
                write!(
                    f,
                    " did not answer within {}s (is it stopped or hung?)",
                    waited.as_secs_f32()
                )
            }
            CallError::Refused(m) => write!(f, "{m}"),
        }
    }
}

impl std::error::Error for CallError {}

/// Sends one request to the agent serving `path` and returns its answer, waiting at most
/// [`ANSWER_DEADLINE`].
pub fn call(path: &Path, request: &Request) -> Result<Response, CallError> {
    call_within(path, request, ANSWER_DEADLINE)
}

/// Sends one request to the agent serving `path` and returns its answer; gives up with
/// [`CallError::NoAnswer`] when connecting and answering take longer than `deadline`.
pub fn call_within(
    path: &Path,
    request: &Request,
    deadline: Duration,
) -> Result<Response, CallError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CallError::Other(anyhow::Error::new(e).context("starting the client")))?;
    runtime.block_on(call_async(path, request, deadline))
}

async fn call_async(
    path: &Path,
    request: &Request,
    deadline: Duration,
) -> Result<Response, CallError> {
    use tokio::io::AsyncReadExt as _;
    let until = tokio::time::Instant::now() + deadline;
    let no_answer = |pid| CallError::NoAnswer {
        pid,
        waited: deadline,
    };
    // Connecting succeeds while the listener is stopped, as long as its backlog has room. A full
    // backlog fails at once (EAGAIN): the agent is not accepting, for now (busy) or for good
    // (hung, and every client that gave up stays queued), so try again until the deadline.
    let stream = loop {
        match tokio::time::timeout_at(until, UnixStream::connect(path)).await {
            Err(_) => return Err(no_answer(None)),
            Ok(Ok(s)) => break s,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if tokio::time::Instant::now() + BACKLOG_RETRY >= until {
                    tokio::time::sleep_until(until).await;
                    return Err(no_answer(None));
                }
                tokio::time::sleep(BACKLOG_RETRY).await;
            }
            Ok(Err(e)) => return Err(connect_error(path, e)),
        }
    };
    // The pid of the process that listens, even if it never runs again.
    let pid = stream
        .peer_cred()
        .ok()
        .and_then(|c| c.pid())
        .filter(|p| *p > 0)
        .map(|p| p as u32);
    let exchange = async {
        let (rd, mut wr) = stream.into_split();
        let mut req = serde_json::to_vec(request).map_err(|e| CallError::Other(e.into()))?;
        req.push(b'\n');
        wr.write_all(&req)
            .await
            .map_err(|e| CallError::Other(anyhow::Error::new(e).context("sending the request")))?;
        let mut line = String::new();
        BufReader::new(rd.take(MAX_ANSWER_BYTES))
            .read_line(&mut line)
            .await
            .map_err(|e| CallError::Other(anyhow::Error::new(e).context("reading the answer")))?;
        Ok::<_, CallError>(line)
    };
    let line = match tokio::time::timeout_at(until, exchange).await {
        Err(_) => return Err(no_answer(pid)),
        Ok(r) => r?,
    };
    if line.is_empty() {
        return Err(CallError::Other(anyhow::anyhow!(
            "the agent{} closed the connection without answering",
            pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
        )));
    }
    let response: Response = serde_json::from_str(&line).map_err(|e| {
        CallError::Other(anyhow::Error::new(e).context(format!("unreadable answer: {line:?}")))
    })?;
    if !response.ok {
        return Err(CallError::Refused(
            response.error.unwrap_or_else(|| "the agent refused".into()),
        ));
    }
    Ok(response)
}

/// How long a client waits before connecting again to a listener whose backlog is full.
const BACKLOG_RETRY: Duration = Duration::from_millis(20);

/// The longest answer read (stats of every rule, and their groups).
const MAX_ANSWER_BYTES: u64 = 64 << 20;

fn connect_error(path: &Path, e: std::io::Error) -> CallError {
    use std::io::ErrorKind;
    match e.kind() {
        ErrorKind::PermissionDenied => CallError::Denied(anyhow::Error::new(e).context(format!(
            "cannot connect to the control socket {}",
            path.display()
        ))),
        _ => CallError::NoAgent(anyhow::Error::new(e).context(format!(
            "no agent is serving {} (is `dt-agent run` running? give --socket if it uses another path)",
            path.display()
        ))),
    }
}
