//! The control socket: one JSON request per connection, one JSON answer.
//!
//! `{"verb":"stats"}` → `{"ok":true,"stats":{...}}`; errors → `{"ok":false,"error":"..."}`.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use anyhow::{Context as _, anyhow, bail};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
};

use crate::{Agent, Stats};

/// Where the control socket lives unless `--socket` says otherwise.
pub const DEFAULT_SOCKET: &str = "/run/dt/agent.sock";

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "verb", rename_all = "snake_case")]
pub enum Request {
    Stats,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stats: Option<Stats>,
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
pub async fn serve(listener: UnixListener, agent: Arc<Mutex<Agent>>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let agent = agent.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(stream, agent).await {
                log::debug!("control connection: {e:#}");
            }
        });
    }
}

async fn handle(stream: UnixStream, agent: Arc<Mutex<Agent>>) -> anyhow::Result<()> {
    let (rd, mut wr) = stream.into_split();
    let mut line = String::new();
    BufReader::new(rd).read_line(&mut line).await?;
    let response = match serde_json::from_str::<Request>(&line) {
        Err(e) => Response::error(format!("bad request: {e}")),
        Ok(Request::Stats) => {
            let agent = agent.lock().map_err(|_| anyhow!("agent lock poisoned"))?;
            match agent.stats() {
                Ok(stats) => Response {
                    ok: true,
                    error: None,
                    stats: Some(stats),
                },
                Err(e) => Response::error(format!("{e:#}")),
            }
        }
    };
    let mut out = serde_json::to_vec(&response)?;
    out.push(b'\n');
    wr.write_all(&out).await?;
    Ok(())
}

impl Response {
    fn error(message: String) -> Response {
        Response {
            ok: false,
            error: Some(message),
            stats: None,
        }
    }
}

/// Sends one request to the agent serving `path` and returns its answer.
pub fn call(path: &Path, request: &Request) -> anyhow::Result<Response> {
    use std::io::{BufRead, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(path).with_context(|| {
        format!(
            "no agent is serving {} (is `dt-agent run` running? give --socket if it uses another path)",
            path.display()
        )
    })?;
    let mut req = serde_json::to_vec(request)?;
    req.push(b'\n');
    stream.write_all(&req)?;
    let mut line = String::new();
    std::io::BufReader::new(stream).read_line(&mut line)?;
    let response: Response = serde_json::from_str(&line)
        .with_context(|| format!("unreadable answer from the agent: {line:?}"))?;
    if !response.ok {
        bail!(
            "{}",
            response.error.unwrap_or_else(|| "the agent refused".into())
        );
    }
    Ok(response)
}

/// The socket path: the flag, or the default.
pub fn socket_path(flag: Option<PathBuf>) -> PathBuf {
    flag.unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET))
}
