//! Minimal HTTP/1.1 framing over blocking sockets: enough for keep-alive requests and responses
//! framed by `Content-Length` (what OTLP/HTTP exporters and collectors use), and requests with
//! `Transfer-Encoding: chunked` (what the Node.js SDK sends).

use std::io::{self, Read};

/// Bytes read per `read` call at most (and the buffer's starting size).
const CHUNK: usize = 256 * 1024;
/// A head longer than this is an error.
const MAX_HEAD: usize = 64 * 1024;

/// `read` calls made by every [`Reader`] of this process (how many pieces data arrived in).
static READ_CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

pub fn read_calls() -> u64 {
    READ_CALLS.load(std::sync::atomic::Ordering::Relaxed)
}

/// The parts of a message head the bench needs.
#[derive(Clone, Copy, Debug)]
pub struct Head {
    /// Bytes of the head, blank line included.
    pub len: usize,
    pub content_length: usize,
    /// `Transfer-Encoding: chunked`: the body is read with [`Reader::chunked_body`].
    pub chunked: bool,
    /// The status code of a response (0 for a request).
    pub status: u16,
    /// `Content-Encoding: gzip` (what a collector's OTLP/HTTP exporter sends by default).
    pub gzip: bool,
}

/// A read buffer for one connection.
pub struct Reader {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Default for Reader {
    fn default() -> Self {
        Self::new()
    }
}

impl Reader {
    pub fn new() -> Reader {
        Reader {
            buf: vec![0; CHUNK],
            start: 0,
            end: 0,
        }
    }

    /// Reads more bytes after `end`; Ok(0) at EOF.
    fn fill(&mut self, s: &mut impl Read) -> io::Result<usize> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.buf.len() - self.end < 4096 {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            } else {
                self.buf.resize(self.buf.len() * 2, 0);
            }
        }
        loop {
            READ_CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            match s.read(&mut self.buf[self.end..]) {
                Ok(n) => {
                    self.end += n;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // The bench's sockets are blocking, without a timeout: EAGAIN is the kernel's
                // sockmap receive path (`tcp_bpf_recvmsg`) woken by something other than data,
                // such as send-buffer space. Read again, as real clients do.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads and consumes one message head. Ok(None) at EOF before its first byte.
    pub fn read_head(&mut self, s: &mut impl Read) -> io::Result<Option<Head>> {
        let mut scanned = 0;
        loop {
            let avail = &self.buf[self.start..self.end];
            if let Some(i) = find_blank_line(avail, scanned) {
                let head = parse_head(&avail[..i + 4])?;
                self.start += head.len;
                return Ok(Some(head));
            }
            scanned = avail.len().saturating_sub(3);
            if avail.len() > MAX_HEAD {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "head too long"));
            }
            if self.fill(s)? == 0 {
                return if self.start == self.end {
                    Ok(None)
                } else {
                    Err(io::ErrorKind::UnexpectedEof.into())
                };
            }
        }
    }

    /// Consumes `n` body bytes without keeping them.
    pub fn skip(&mut self, s: &mut impl Read, mut n: usize) -> io::Result<()> {
        loop {
            let take = n.min(self.end - self.start);
            self.start += take;
            n -= take;
            if n == 0 {
                return Ok(());
            }
            if self.fill(s)? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    /// Consumes `n` body bytes and returns them (valid until the next call).
    pub fn body(&mut self, s: &mut impl Read, n: usize) -> io::Result<&[u8]> {
        if self.buf.len() - self.start < n {
            // Make room for the whole body after `start`.
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            if self.buf.len() < n {
                self.buf.resize(n.next_power_of_two(), 0);
            }
        }
        while self.end - self.start < n {
            if self.fill(s)? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        let b = &self.buf[self.start..self.start + n];
        self.start += n;
        Ok(b)
    }
}

/// What [`Reader::chunked_body`] consumed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chunked {
    /// Bytes on the wire after the head: size lines, data, CRLFs, the last chunk and the trailer
    /// section's blank line.
    pub wire_len: usize,
    /// Data bytes (the body).
    pub body_len: usize,
    /// Data chunks (the last, zero-size one not counted).
    pub data_chunks: usize,
    /// Whether the last chunk was followed by trailer fields.
    pub trailers: bool,
}

impl Reader {
    /// The length of the line at `start`, CRLF included, reading more as needed (not consumed).
    fn line_len(&mut self, s: &mut impl Read) -> io::Result<usize> {
        let mut scanned = 0;
        loop {
            let avail = &self.buf[self.start..self.end];
            if let Some(i) = avail[scanned..].windows(2).position(|w| w == b"\r\n") {
                return Ok(scanned + i + 2);
            }
            scanned = avail.len().saturating_sub(1);
            if avail.len() > MAX_HEAD {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "line too long"));
            }
            if self.fill(s)? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    /// Consumes a chunked body (after its head): every chunk, the last chunk and the trailer
    /// section. With `out`, the data bytes are appended to it; without, they are skipped.
    pub fn chunked_body(
        &mut self,
        s: &mut impl Read,
        mut out: Option<&mut Vec<u8>>,
    ) -> io::Result<Chunked> {
        let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidData, m.to_string());
        let mut c = Chunked {
            wire_len: 0,
            body_len: 0,
            data_chunks: 0,
            trailers: false,
        };
        loop {
            let len = self.line_len(s)?;
            let line = &self.buf[self.start..self.start + len - 2];
            let digits = line.split(|&b| b == b';').next().unwrap_or(&[]);
            let size = std::str::from_utf8(digits)
                .ok()
                .and_then(|d| usize::from_str_radix(d.trim(), 16).ok())
                .ok_or_else(|| bad("bad chunk size"))?;
            self.start += len;
            c.wire_len += len;
            if size == 0 {
                break;
            }
            c.data_chunks += 1;
            c.body_len += size;
            match out.as_deref_mut() {
                None => self.skip(s, size)?,
                Some(out) => {
                    let mut n = size;
                    while n > 0 {
                        if self.start == self.end && self.fill(s)? == 0 {
                            return Err(io::ErrorKind::UnexpectedEof.into());
                        }
                        let take = n.min(self.end - self.start);
                        out.extend_from_slice(&self.buf[self.start..self.start + take]);
                        self.start += take;
                        n -= take;
                    }
                }
            }
            if self.line_len(s)? != 2 {
                return Err(bad("chunk data not followed by CRLF"));
            }
            self.start += 2;
            c.wire_len += size + 2;
        }
        // The trailer section: fields until a blank line.
        loop {
            let len = self.line_len(s)?;
            self.start += len;
            c.wire_len += len;
            if len == 2 {
                return Ok(c);
            }
            c.trailers = true;
        }
    }
}

/// Index of the `\r\n\r\n` in `b`, searching from `from`.
fn find_blank_line(b: &[u8], from: usize) -> Option<usize> {
    if b.len() < 4 {
        return None;
    }
    (from..=b.len() - 4).find(|&i| &b[i..i + 4] == b"\r\n\r\n")
}

fn parse_head(head: &[u8]) -> io::Result<Head> {
    let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidData, m.to_string());
    let text = std::str::from_utf8(head).map_err(|_| bad("head is not UTF-8"))?;
    let mut lines = text.split("\r\n");
    let first = lines.next().unwrap_or("");
    let status = if let Some(rest) = first.strip_prefix("HTTP/1.1 ") {
        rest.get(..3)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| bad("bad status line"))?
    } else {
        0
    };
    let mut content_length = 0;
    let mut chunked = false;
    let mut gzip = false;
    for line in lines {
        if let Some((k, v)) = line.split_once(':') {
            let k = k.trim();
            if k.eq_ignore_ascii_case("content-length") {
                content_length = v.trim().parse().map_err(|_| bad("bad Content-Length"))?;
            } else if k.eq_ignore_ascii_case("transfer-encoding") {
                if !v.trim().eq_ignore_ascii_case("chunked") {
                    return Err(bad("Transfer-Encoding other than chunked"));
                }
                chunked = true;
            } else if k.eq_ignore_ascii_case("content-encoding") {
                gzip = v.trim().eq_ignore_ascii_case("gzip");
            }
        }
    }
    if chunked && content_length != 0 {
        return Err(bad("both Content-Length and Transfer-Encoding"));
    }
    Ok(Head {
        len: head.len(),
        content_length,
        chunked,
        status,
        gzip,
    })
}

/// The response of the sink and the proxy: an empty ExportLogsServiceResponse.
pub const OK_RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n";

/// The head of a forwarded request whose body is `len` bytes.
pub fn request_head(out: &mut Vec<u8>, len: usize) {
    use std::io::Write;
    let _ = write!(
        out,
        "POST /v1/logs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-protobuf\r\n\
         Content-Length: {len}\r\n\r\n"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_and_bodies_across_reads() {
        let mut wire = Vec::new();
        for i in 0..3 {
            let body = vec![b'x'; 1000 * (i + 1)];
            wire.extend_from_slice(&crate::workload::http_request("/v1/logs", &body));
        }
        wire.extend_from_slice(OK_RESPONSE);
        // A reader that hands out 7 bytes at a time.
        struct Slow<'a>(&'a [u8]);
        impl Read for Slow<'_> {
            fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
                let n = b.len().min(7).min(self.0.len());
                b[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let mut s = Slow(&wire);
        let mut r = Reader::new();
        let h = r.read_head(&mut s).unwrap().unwrap();
        assert_eq!(h.content_length, 1000);
        r.skip(&mut s, h.content_length).unwrap();
        let h = r.read_head(&mut s).unwrap().unwrap();
        assert_eq!(r.body(&mut s, h.content_length).unwrap().len(), 2000);
        let h = r.read_head(&mut s).unwrap().unwrap();
        assert!(
            r.body(&mut s, h.content_length)
                .unwrap()
                .iter()
                .all(|&b| b == b'x')
        );
        let h = r.read_head(&mut s).unwrap().unwrap();
        assert_eq!((h.status, h.content_length), (200, 0));
        assert!(r.read_head(&mut s).unwrap().is_none());
    }

    #[test]
    fn chunked_bodies_across_reads() {
        let mut wire = Vec::new();
        let mut lens = Vec::new();
        for i in 0..3 {
            let body: Vec<u8> = (0..700 * (i + 1)).map(|j| j as u8).collect();
            let (req, split) = crate::workload::http_request_chunked("/v1/logs", &body);
            assert_eq!(&req[split..], crate::workload::LAST_CHUNK);
            lens.push(req.len());
            wire.extend_from_slice(&req);
        }
        // Two chunks with an extension and a trailer field.
        wire.extend_from_slice(
            b"POST /v1/logs HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\
              3;x=y\r\nabc\r\n02\r\nde\r\n0\r\nX-T: 1\r\n\r\n",
        );
        struct Slow<'a>(&'a [u8]);
        impl Read for Slow<'_> {
            fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
                let n = b.len().min(5).min(self.0.len());
                b[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let mut s = Slow(&wire);
        let mut r = Reader::new();
        for (i, len) in lens.iter().enumerate() {
            let h = r.read_head(&mut s).unwrap().unwrap();
            assert!(h.chunked);
            let mut body = Vec::new();
            let c = if i == 1 {
                r.chunked_body(&mut s, None).unwrap()
            } else {
                r.chunked_body(&mut s, Some(&mut body)).unwrap()
            };
            assert_eq!(
                (c.body_len, c.data_chunks, c.trailers),
                (700 * (i + 1), 1, false)
            );
            assert_eq!(h.len + c.wire_len, *len);
            if i != 1 {
                assert!(body.iter().enumerate().all(|(j, &b)| b == j as u8));
            }
        }
        let h = r.read_head(&mut s).unwrap().unwrap();
        let mut body = Vec::new();
        let c = r.chunked_body(&mut s, Some(&mut body)).unwrap();
        assert_eq!(body, b"abcde");
        assert_eq!((c.data_chunks, c.trailers), (2, true));
        assert_eq!(h.len, 54);
        assert_eq!(c.wire_len, 33);
        assert!(r.read_head(&mut s).unwrap().is_none());
    }
}
