//! A raw HTTP/1.1 capture listener: records the exact bytes a client sends and how it frames
//! them (request line, headers, Content-Length or the chunk-size lines of a chunked body), and
//! answers every request `200 OK` with an empty `application/x-protobuf` body. No kernel needed:
//! it shows what real clients put on the wire, which is what dt's sk_msg program has to walk.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One request as it came on the wire.
#[derive(Clone, Debug)]
pub struct CapturedRequest {
    /// Which accepted connection (0, 1, ...) and its position on it.
    pub conn: usize,
    pub seq_on_conn: usize,
    /// `POST /v1/logs HTTP/1.1`, without CRLF.
    pub request_line: String,
    /// In order, as sent.
    pub headers: Vec<(String, String)>,
    /// Every byte of the request: head, chunk framing and body.
    pub raw: Vec<u8>,
    /// The body's length on the wire (with chunk framing) and the head's (through the blank
    /// line).
    pub head_len: usize,
    /// For a chunked body: each chunk-size line as sent (without CRLF), the terminating `0`
    /// included, and the trailer lines (normally none).
    pub chunk_lines: Vec<String>,
    pub trailers: Vec<String>,
    /// The body after transfer decoding.
    pub body: Vec<u8>,
}

impl CapturedRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn is_chunked(&self) -> bool {
        self.header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    }

    /// Data chunks (the terminating zero-size chunk not counted).
    pub fn data_chunks(&self) -> usize {
        self.chunk_lines.len().saturating_sub(1)
    }

    /// The sizes of the data chunks.
    pub fn chunk_sizes(&self) -> Vec<usize> {
        self.chunk_lines
            .iter()
            .map(|l| chunk_size(l).unwrap_or(usize::MAX))
            .filter(|&n| n != 0)
            .collect()
    }

    /// A readable summary of the framing: request line, headers, and the chunk-size lines or
    /// Content-Length, and how the request ends.
    pub fn framing(&self) -> String {
        let mut s = format!(
            "conn {} request {}: {}\n",
            self.conn, self.seq_on_conn, self.request_line
        );
        for (k, v) in &self.headers {
            s += &format!("  {k}: {v}\n");
        }
        if self.is_chunked() {
            s += &format!(
                "  body: {} bytes in {} data chunk(s), size lines {:?}, trailers {:?}, ends with {:?}\n",
                self.body.len(),
                self.data_chunks(),
                self.chunk_lines,
                self.trailers,
                String::from_utf8_lossy(&self.raw[self.raw.len().saturating_sub(5)..]),
            );
        } else {
            s += &format!("  body: {} bytes (Content-Length)\n", self.body.len());
        }
        s
    }
}

/// The size a chunk-size line gives (hex, extensions after `;` ignored).
pub fn chunk_size(line: &str) -> Option<usize> {
    let hex = line.split(';').next()?.trim();
    usize::from_str_radix(hex, 16).ok()
}

/// The listener; serves on threads until dropped.
pub struct CaptureListener {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<CapturedRequest>>>,
    errors: Arc<Mutex<Vec<String>>>,
    connections: Arc<Mutex<usize>>,
}

impl CaptureListener {
    /// Listens on 127.0.0.1, a free port.
    pub fn start() -> CaptureListener {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the capture listener");
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(Mutex::new(0usize));
        let (r, e, c) = (requests.clone(), errors.clone(), connections.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let conn = {
                    let mut n = c.lock().unwrap();
                    *n += 1;
                    *n - 1
                };
                let (r, e) = (r.clone(), e.clone());
                std::thread::spawn(move || {
                    if let Err(err) = serve(conn, stream, &r) {
                        e.lock().unwrap().push(format!("conn {conn}: {err}"));
                    }
                });
            }
        });
        CaptureListener {
            addr,
            requests,
            errors,
            connections,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/v1/logs", self.addr)
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The requests so far, in the order they completed.
    pub fn requests(&self) -> Vec<CapturedRequest> {
        self.requests.lock().unwrap().clone()
    }

    /// Framing errors (a malformed request ends its connection).
    pub fn errors(&self) -> Vec<String> {
        self.errors.lock().unwrap().clone()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        *self.connections.lock().unwrap()
    }

    /// Waits until `n` requests completed; panics after `timeout`.
    pub fn wait_requests(&self, n: usize, timeout: Duration) -> Vec<CapturedRequest> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.requests();
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "capture listener: {} of {n} requests after {timeout:?}; errors {:?}",
                got.len(),
                self.errors()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Reads one line through LF, recording it; `None` at a clean end of stream.
fn read_line(r: &mut impl BufRead, raw: &mut Vec<u8>) -> std::io::Result<Option<String>> {
    let mut line = Vec::new();
    let n = r.read_until(b'\n', &mut line)?;
    if n == 0 {
        return Ok(None);
    }
    raw.extend_from_slice(&line);
    if !line.ends_with(b"\r\n") {
        return Err(std::io::Error::other(format!(
            "line not ended by CRLF: {:?}",
            String::from_utf8_lossy(&line)
        )));
    }
    line.truncate(line.len() - 2);
    Ok(Some(String::from_utf8_lossy(&line).into_owned()))
}

fn read_exact_into(r: &mut impl Read, n: usize, raw: &mut Vec<u8>) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; n];
    r.read_exact(&mut buf)?;
    raw.extend_from_slice(&buf);
    Ok(buf)
}

fn serve(
    conn: usize,
    stream: TcpStream,
    into: &Mutex<Vec<CapturedRequest>>,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut writer = stream.try_clone()?;
    let mut r = BufReader::new(stream);
    for seq_on_conn in 0.. {
        let mut raw = Vec::new();
        let Some(request_line) = read_line(&mut r, &mut raw)? else {
            return Ok(());
        };
        let mut headers = Vec::new();
        loop {
            let line = read_line(&mut r, &mut raw)?
                .ok_or_else(|| std::io::Error::other("connection closed in the head"))?;
            if line.is_empty() {
                break;
            }
            let (k, v) = line
                .split_once(':')
                .ok_or_else(|| std::io::Error::other(format!("bad header line {line:?}")))?;
            headers.push((k.to_owned(), v.trim().to_owned()));
        }
        let head_len = raw.len();
        let mut req = CapturedRequest {
            conn,
            seq_on_conn,
            request_line,
            headers,
            raw: Vec::new(),
            head_len,
            chunk_lines: Vec::new(),
            trailers: Vec::new(),
            body: Vec::new(),
        };
        if req.is_chunked() {
            loop {
                let line = read_line(&mut r, &mut raw)?
                    .ok_or_else(|| std::io::Error::other("connection closed in the body"))?;
                let n = chunk_size(&line)
                    .ok_or_else(|| std::io::Error::other(format!("bad chunk line {line:?}")))?;
                req.chunk_lines.push(line);
                if n == 0 {
                    loop {
                        let t = read_line(&mut r, &mut raw)?
                            .ok_or_else(|| std::io::Error::other("closed in the trailers"))?;
                        if t.is_empty() {
                            break;
                        }
                        req.trailers.push(t);
                    }
                    break;
                }
                let data = read_exact_into(&mut r, n, &mut raw)?;
                req.body.extend_from_slice(&data);
                let crlf = read_exact_into(&mut r, 2, &mut raw)?;
                if crlf != b"\r\n" {
                    return Err(std::io::Error::other("chunk data not followed by CRLF"));
                }
            }
        } else if let Some(len) = req.header("content-length") {
            let n: usize = len
                .parse()
                .map_err(|_| std::io::Error::other(format!("bad Content-Length {len:?}")))?;
            req.body = read_exact_into(&mut r, n, &mut raw)?;
        }
        req.raw = raw;
        into.lock().unwrap().push(req);
        writer.write_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n",
        )?;
    }
    Ok(())
}
