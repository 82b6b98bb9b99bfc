//! Minimal HTTP/1.1 framing over blocking sockets: enough for keep-alive requests and responses
//! framed by `Content-Length` (what OTLP/HTTP exporters and collectors use).

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
    /// The status code of a response (0 for a request).
    pub status: u16,
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
    for line in lines {
        if let Some((k, v)) = line.split_once(':')
            && k.trim().eq_ignore_ascii_case("content-length")
        {
            content_length = v.trim().parse().map_err(|_| bad("bad Content-Length"))?;
        }
    }
    Ok(Head {
        len: head.len(),
        content_length,
        status,
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
}
