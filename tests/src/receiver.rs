//! An OTLP/HTTP collector stand-in on hyper 1.x: the independent check that what leaves the
//! kernel is valid HTTP/1.1 and valid OTLP protobuf.
//!
//! It keeps, per connection, every byte read from the socket, and per request the method, path,
//! headers, body, and for `POST /v1/logs` with `application/x-protobuf` the decoded
//! ExportLogsServiceRequest (after gunzip when `Content-Encoding: gzip`). It answers 200 with an
//! empty ExportLogsServiceResponse, or 400 when such a body does not decode.

use std::convert::Infallible;
use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use prost::Message;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::record::{ReceivedRecord, flatten};

/// One request as the receiver got it.
#[derive(Clone, Debug)]
pub struct Received {
    /// Connection number, in accept order from 0.
    pub conn: u64,
    /// Request number on its connection, from 0.
    pub seq_on_conn: u64,
    pub method: String,
    pub path: String,
    pub version: String,
    /// Header names as hyper gives them (lower case), values as sent.
    pub headers: Vec<(String, String)>,
    /// The body after transfer decoding (chunks joined), before content decoding.
    pub body: Vec<u8>,
    /// Whether the body came chunked.
    pub chunked: bool,
    /// Size of the request on the wire, rebuilt as `request line + "name: value\r\n"... + CRLF +
    /// body` (exact for clients that write one space after the colon; `None` when chunked).
    pub wire_len: Option<usize>,
    /// The decoded request, for protobuf `/v1/logs` bodies that decode.
    pub logs: Option<ExportLogsServiceRequest>,
    /// Why a protobuf `/v1/logs` body did not decode (or could not be read).
    pub decode_error: Option<String>,
    /// The status the receiver answered.
    pub status: u16,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The decoded records (empty when not decoded).
    pub fn records(&self) -> Vec<ReceivedRecord> {
        self.logs.as_ref().map(flatten).unwrap_or_default()
    }

    /// Whether this is a protobuf logs request the receiver tried to decode.
    pub fn is_protobuf_logs(&self) -> bool {
        self.method == "POST"
            && self.path == "/v1/logs"
            && self
                .header("content-type")
                .is_some_and(|ct| media_type(ct) == "application/x-protobuf")
    }
}

/// `type/subtype`, lower-cased, without parameters.
pub fn media_type(ct: &str) -> String {
    ct.split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

#[derive(Default)]
struct State {
    requests: Vec<Received>,
    /// Raw bytes read, per connection.
    conns: Vec<Arc<Mutex<Vec<u8>>>>,
}

struct Shared {
    state: Mutex<State>,
    cv: Condvar,
}

pub struct Receiver {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Receiver {
    /// Serves on `listener` (IPv4 or IPv6) until dropped.
    pub fn start(listener: TcpListener) -> Receiver {
        let addr = listener.local_addr().expect("local_addr");
        listener.set_nonblocking(true).expect("nonblocking");
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            cv: Condvar::new(),
        });
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let sh = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("receiver-{}", addr.port()))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("tokio runtime");
                rt.block_on(serve(listener, sh, rx));
                rt.shutdown_timeout(Duration::from_secs(1));
            })
            .expect("spawn receiver");
        Receiver {
            addr,
            shared,
            shutdown: Some(tx),
            thread: Some(thread),
        }
    }

    /// A receiver on a fresh `127.0.0.1` port.
    pub fn start_v4() -> Receiver {
        Receiver::start(crate::net::listener_v4())
    }

    /// A receiver on a fresh `[::1]` port.
    pub fn start_v6() -> Receiver {
        Receiver::start(crate::net::listener_v6())
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `http://<addr>/v1/logs`.
    pub fn logs_url(&self) -> String {
        format!("http://{}/v1/logs", self.addr)
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Received> {
        self.shared.state.lock().unwrap().requests.clone()
    }

    /// Waits until at least `n` requests have been handled; panics after `timeout`.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        let mut st = self.shared.state.lock().unwrap();
        while st.requests.len() < n {
            let now = Instant::now();
            if now >= deadline {
                panic!(
                    "receiver on {}: waited {timeout:?} for {n} requests, got {}: {:?}",
                    self.addr,
                    st.requests.len(),
                    st.requests
                        .iter()
                        .map(|r| (&r.method, &r.path, r.body.len(), r.status))
                        .collect::<Vec<_>>()
                );
            }
            st = self.shared.cv.wait_timeout(st, deadline - now).unwrap().0;
        }
        st.requests.clone()
    }

    /// Waits `quiet` and asserts no more than `n` requests came (nothing unexpected trails).
    pub fn assert_no_more(&self, n: usize, quiet: Duration) {
        std::thread::sleep(quiet);
        let got = self.shared.state.lock().unwrap().requests.len();
        assert_eq!(
            got, n,
            "receiver on {}: more requests than expected",
            self.addr
        );
    }

    /// Every decoded record, in arrival order.
    pub fn records(&self) -> Vec<ReceivedRecord> {
        self.requests().iter().flat_map(|r| r.records()).collect()
    }

    /// `(request index, error)` for every protobuf logs request that failed to decode.
    pub fn decode_failures(&self) -> Vec<(usize, String)> {
        self.requests()
            .iter()
            .enumerate()
            .filter_map(|(i, r)| r.decode_error.clone().map(|e| (i, e)))
            .collect()
    }

    /// Raw bytes read on each connection, in accept order.
    pub fn connection_bytes(&self) -> Vec<Vec<u8>> {
        let st = self.shared.state.lock().unwrap();
        st.conns.iter().map(|c| c.lock().unwrap().clone()).collect()
    }

    /// Total bytes read over all connections.
    pub fn total_bytes(&self) -> u64 {
        let st = self.shared.state.lock().unwrap();
        st.conns
            .iter()
            .map(|c| c.lock().unwrap().len() as u64)
            .sum()
    }

    pub fn connections(&self) -> usize {
        self.shared.state.lock().unwrap().conns.len()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut shutdown: tokio::sync::oneshot::Receiver<()>,
) {
    let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
    loop {
        let (stream, _peer) = tokio::select! {
            _ = &mut shutdown => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    eprintln!("receiver accept: {e}");
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let raw = Arc::new(Mutex::new(Vec::new()));
        let conn_id = {
            let mut st = shared.state.lock().unwrap();
            st.conns.push(raw.clone());
            (st.conns.len() - 1) as u64
        };
        let io = TokioIo::new(Recording { inner: stream, raw });
        let sh = shared.clone();
        let seq = Arc::new(AtomicU64::new(0));
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let sh = sh.clone();
                let n = seq.fetch_add(1, Ordering::SeqCst);
                async move { Ok::<_, Infallible>(handle(req, sh, conn_id, n).await) }
            });
            let mut b = hyper::server::conn::http1::Builder::new();
            b.keep_alive(true).header_read_timeout(None);
            if let Err(e) = b.serve_connection(io, svc).await {
                // A client closing mid-request ends up here; the tests see it as a missing request.
                eprintln!("receiver connection {conn_id}: {e}");
            }
        });
    }
}

async fn handle(
    req: Request<Incoming>,
    shared: Arc<Shared>,
    conn: u64,
    seq_on_conn: u64,
) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let chunked = parts
        .headers
        .get_all(hyper::header::TRANSFER_ENCODING)
        .iter()
        .any(|v| {
            v.to_str()
                .unwrap_or("")
                .to_ascii_lowercase()
                .contains("chunked")
        });
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| parts.uri.to_string());
    let version = format!("{:?}", parts.version);
    let (body, body_error) = match body.collect().await {
        Ok(c) => (c.to_bytes().to_vec(), None),
        Err(e) => (Vec::new(), Some(format!("reading body: {e}"))),
    };
    let wire_len = if chunked {
        None
    } else {
        let line = parts.method.as_str().len() + 1 + path.len() + 1 + "HTTP/1.1".len() + 2;
        let hdrs: usize = headers.iter().map(|(k, v)| k.len() + 2 + v.len() + 2).sum();
        Some(line + hdrs + 2 + body.len())
    };
    let mut r = Received {
        conn,
        seq_on_conn,
        method: parts.method.as_str().to_owned(),
        path,
        version,
        headers,
        body,
        chunked,
        wire_len,
        logs: None,
        decode_error: body_error,
        status: 200,
    };
    let mut resp_body = Vec::new();
    if r.is_protobuf_logs() && r.decode_error.is_none() {
        match decode_logs(&r) {
            Ok(req) => {
                r.logs = Some(req);
                resp_body = ExportLogsServiceResponse::default().encode_to_vec();
            }
            Err(e) => {
                r.decode_error = Some(e);
                r.status = 400;
            }
        }
    } else if r.decode_error.is_some() {
        r.status = 400;
    }
    let status = r.status;
    {
        let mut st = shared.state.lock().unwrap();
        st.requests.push(r);
    }
    shared.cv.notify_all();
    Response::builder()
        .status(status)
        .header("content-type", "application/x-protobuf")
        .body(Full::new(Bytes::from(resp_body)))
        .expect("response")
}

fn decode_logs(r: &Received) -> Result<ExportLogsServiceRequest, String> {
    let body: Vec<u8> = match r
        .header("content-encoding")
        .map(|v| v.trim().to_ascii_lowercase())
    {
        None => r.body.clone(),
        Some(e) if e == "identity" => r.body.clone(),
        Some(e) if e == "gzip" => {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(&r.body[..])
                .read_to_end(&mut out)
                .map_err(|e| format!("gunzip: {e}"))?;
            out
        }
        Some(e) => return Err(format!("unsupported content-encoding {e}")),
    };
    ExportLogsServiceRequest::decode(&body[..]).map_err(|e| format!("protobuf: {e}"))
}

/// A TcpStream that records every byte read.
struct Recording {
    inner: tokio::net::TcpStream,
    raw: Arc<Mutex<Vec<u8>>>,
}

impl AsyncRead for Recording {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &r {
            let new = &buf.filled()[before..];
            if !new.is_empty() {
                self.raw.lock().unwrap().extend_from_slice(new);
            }
        }
        r
    }
}

impl AsyncWrite for Recording {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
