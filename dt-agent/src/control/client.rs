//! The control socket's client side, for the verbs: one request, one answer, within a
//! deadline, and why not when it fails.

use std::{path::Path, time::Duration};

use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::UnixStream,
};

use super::protocol::{Request, Response};

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
    /// The agent is still starting (loading and checking its programs); the message says so.
    Starting(String),
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
            CallError::Refused(m) | CallError::Starting(m) => write!(f, "{m}"),
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
        let message = response.error.unwrap_or_else(|| "the agent refused".into());
        return Err(if response.starting {
            CallError::Starting(message)
        } else {
            CallError::Refused(message)
        });
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
