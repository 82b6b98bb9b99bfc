//! A raw TCP HTTP/1.1 client: it writes exactly the given bytes, split where the test says, with
//! a pause between writes, and reads the responses one by one so several requests can share a
//! keep-alive connection.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::http::HttpRequest;

/// How a request is cut into `write` calls (each one its own sendmsg: Nagle is off).
#[derive(Clone, Debug)]
pub enum Split {
    /// One write.
    Whole,
    /// The head alone, then the body in `pieces` nearly equal writes, `delay` apart.
    HeadThenBody { pieces: usize, delay: Duration },
    /// Cut at these byte offsets of the whole request, `delay` apart.
    At {
        offsets: Vec<usize>,
        delay: Duration,
    },
}

impl Split {
    /// Head, then the body in `pieces`, 20 ms apart.
    pub fn head_then_body(pieces: usize) -> Split {
        Split::HeadThenBody {
            pieces,
            delay: Duration::from_millis(20),
        }
    }

    /// The write boundaries for `req`, as ranges.
    pub fn pieces(&self, req: &HttpRequest) -> (Vec<std::ops::Range<usize>>, Duration) {
        let n = req.len();
        match self {
            Split::Whole => (std::iter::once(0..n).collect(), Duration::ZERO),
            Split::HeadThenBody { pieces, delay } => {
                let mut cuts = vec![0, req.head_len];
                let body = n - req.head_len;
                let pieces = (*pieces).max(1);
                for i in 1..pieces {
                    cuts.push(req.head_len + body * i / pieces);
                }
                cuts.push(n);
                cuts.dedup();
                (cuts.windows(2).map(|w| w[0]..w[1]).collect(), *delay)
            }
            Split::At { offsets, delay } => {
                let mut cuts = vec![0];
                cuts.extend(offsets.iter().copied().filter(|&o| o > 0 && o < n));
                cuts.push(n);
                cuts.sort_unstable();
                cuts.dedup();
                (cuts.windows(2).map(|w| w[0]..w[1]).collect(), *delay)
            }
        }
    }
}

/// One HTTP response.
#[derive(Clone, Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// How long a read may wait for the peer.
const READ_TIMEOUT: Duration = Duration::from_secs(20);

/// Reads that came back with EAGAIN before [`READ_TIMEOUT`] (see [`RawClient::fill`]).
pub static SPURIOUS_EAGAIN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

pub struct RawClient {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Every byte written so far.
    pub sent: Vec<u8>,
}

impl RawClient {
    /// Connects with Nagle off and a [`READ_TIMEOUT`] read timeout.
    pub fn connect(addr: SocketAddr) -> RawClient {
        let stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        stream.set_nodelay(true).expect("nodelay");
        stream
            .set_read_timeout(Some(READ_TIMEOUT))
            .expect("read timeout");
        RawClient {
            stream,
            buf: Vec::new(),
            sent: Vec::new(),
        }
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.stream.local_addr().expect("local_addr")
    }

    /// Writes each chunk with one `write_all`, sleeping `delay` between them.
    pub fn write_chunks(&mut self, chunks: &[&[u8]], delay: Duration) {
        for (i, c) in chunks.iter().enumerate() {
            if i > 0 && !delay.is_zero() {
                std::thread::sleep(delay);
            }
            self.stream.write_all(c).expect("write");
            self.sent.extend_from_slice(c);
        }
    }

    /// Writes `req` as `split` says.
    pub fn send(&mut self, req: &HttpRequest, split: &Split) {
        let (ranges, delay) = split.pieces(req);
        let chunks: Vec<&[u8]> = ranges.into_iter().map(|r| &req.bytes[r]).collect();
        self.write_chunks(&chunks, delay);
    }

    /// Sends `req` and reads its response.
    pub fn roundtrip(&mut self, req: &HttpRequest, split: &Split) -> HttpResponse {
        self.send(req, split);
        self.read_response()
    }

    /// One `read`, waiting up to [`READ_TIMEOUT`] in all. A blocking read on a socket in dt's
    /// sockhash goes through the kernel's sockmap receive path (`tcp_bpf_recvmsg`), which
    /// returns EAGAIN when something other than data wakes it, such as send-buffer space freed
    /// by ACKs after a large write: like the clients dt serves (non-blocking ones, and CPython
    /// and Java with a timeout), this retries until the time is up.
    fn fill(&mut self) -> usize {
        let mut tmp = [0u8; 16384];
        let deadline = std::time::Instant::now() + READ_TIMEOUT;
        loop {
            match self.stream.read(&mut tmp) {
                Ok(n) => {
                    self.buf.extend_from_slice(&tmp[..n]);
                    return n;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        && std::time::Instant::now() < deadline =>
                {
                    SPURIOUS_EAGAIN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    continue;
                }
                Err(e) => panic!(
                    "reading the response: {e} (have {} bytes: {:?})",
                    self.buf.len(),
                    String::from_utf8_lossy(&self.buf)
                ),
            }
        }
    }

    /// Reads one response: status line, headers, and a body framed by Content-Length or chunked.
    pub fn read_response(&mut self) -> HttpResponse {
        let head_end = loop {
            if let Some(p) = find(&self.buf, b"\r\n\r\n") {
                break p + 4;
            }
            if self.fill() == 0 {
                panic!(
                    "connection closed before a response head (have {:?})",
                    String::from_utf8_lossy(&self.buf)
                );
            }
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap_or_default();
        assert!(
            version.starts_with("HTTP/1."),
            "bad status line {status_line:?}"
        );
        let status: u16 = parts
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let headers: Vec<(String, String)> = lines
            .filter(|l| !l.is_empty())
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect();
        self.buf.drain(..head_end);
        let get = |n: &str| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(n))
                .map(|(_, v)| v.clone())
        };
        let body = if get("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
        {
            self.read_chunked()
        } else {
            let len: usize = get("content-length")
                .map(|v| v.parse().expect("content-length"))
                .unwrap_or(0);
            while self.buf.len() < len {
                if self.fill() == 0 {
                    panic!("connection closed inside a response body");
                }
            }
            self.buf.drain(..len).collect()
        };
        HttpResponse {
            status,
            headers,
            body,
        }
    }

    fn read_chunked(&mut self) -> Vec<u8> {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(p) = find(&self.buf, b"\r\n") {
                    break p;
                }
                assert!(self.fill() > 0, "closed inside chunked body");
            };
            let line = String::from_utf8_lossy(&self.buf[..line_end]).into_owned();
            let size = usize::from_str_radix(line.split(';').next().unwrap().trim(), 16)
                .expect("chunk size");
            self.buf.drain(..line_end + 2);
            if size == 0 {
                // Trailers until the blank line.
                loop {
                    if let Some(p) = find(&self.buf, b"\r\n") {
                        let empty = p == 0;
                        self.buf.drain(..p + 2);
                        if empty {
                            return body;
                        }
                    } else {
                        assert!(self.fill() > 0, "closed inside trailers");
                    }
                }
            }
            while self.buf.len() < size + 2 {
                assert!(self.fill() > 0, "closed inside a chunk");
            }
            body.extend_from_slice(&self.buf[..size]);
            self.buf.drain(..size + 2);
        }
    }

    /// Closes the write side and checks the server sends nothing more.
    pub fn finish(mut self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Write);
        let mut rest = Vec::new();
        let _ = self.stream.read_to_end(&mut rest);
        self.buf.extend_from_slice(&rest);
        assert!(
            self.buf.is_empty(),
            "unexpected bytes after the last response: {:?}",
            String::from_utf8_lossy(&self.buf)
        );
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
