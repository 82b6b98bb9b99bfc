//! The control socket: one JSON request per connection, one JSON answer.
//!
//! The socket is created with mode 0600, and every connection's peer credentials
//! (SO_PEERCRED) are checked: only root is served, even if the mode was widened.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::Arc,
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
    BufReader::new(rd.take(MAX_REQUEST_BYTES))
        .read_line(&mut line)
        .await?;
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

/// Why a call failed: the agent is not there, or it answered with an error.
#[derive(Debug)]
pub enum CallError {
    /// Nothing listens on the socket.
    NoAgent(anyhow::Error),
    /// The agent refused; the message is what it said.
    Refused(String),
    Other(anyhow::Error),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::NoAgent(e) | CallError::Other(e) => write!(f, "{e:#}"),
            CallError::Refused(m) => write!(f, "{m}"),
        }
    }
}

impl std::error::Error for CallError {}

/// Sends one request to the agent serving `path` and returns its answer.
pub fn call(path: &Path, request: &Request) -> Result<Response, CallError> {
    use std::io::{BufRead, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(path).map_err(|e| {
        CallError::NoAgent(anyhow::Error::new(e).context(format!(
            "no agent is serving {} (is `dt-agent run` running? give --socket if it uses another path)",
            path.display()
        )))
    })?;
    let mut req = serde_json::to_vec(request).map_err(|e| CallError::Other(e.into()))?;
    req.push(b'\n');
    stream
        .write_all(&req)
        .map_err(|e| CallError::Other(e.into()))?;
    let mut line = String::new();
    std::io::BufReader::new(stream)
        .read_line(&mut line)
        .map_err(|e| CallError::Other(e.into()))?;
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
