//! HTTP/1.1 request-head parser, fed one byte at a time so that the kernel can drive it from a
//! `bpf_loop` callback. It records only what dt needs to decide a request's fate.

use crate::wire::Source;

pub const CTYPE_NONE: u8 = 0;
pub const CTYPE_PROTOBUF: u8 = 1;
pub const CTYPE_JSON: u8 = 2;
pub const CTYPE_OTHER: u8 = 3;

/// What the head says. Filled in as lines complete.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct Head {
    /// Length of the head including the blank line; 0 until it is complete.
    pub len: u32,
    /// Start of the current line.
    pub line: u32,
    /// Offset of the current line's first ':' (0 = none yet).
    pub colon: u32,
    pub content_length: u32,
    /// Offset and count of the Content-Length digits.
    pub cl_off: u32,
    pub cl_digits: u32,
    /// Method is POST and the target is `/v1/logs` (optionally with a query).
    pub post_logs: u8,
    pub has_cl: u8,
    pub chunked: u8,
    pub compressed: u8,
    pub ctype: u8,
    pub expect: u8,
    /// The head is not HTTP/1.x as dt understands it.
    pub bad: u8,
    pub _pad: u8,
}

/// Result of feeding one byte.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Feed {
    More,
    /// The head ended (see [`Head::len`]) or is bad (see [`Head::bad`]).
    Done,
}

const NAME_CL: &[u8] = b"content-length";
const NAME_CT: &[u8] = b"content-type";
const NAME_CE: &[u8] = b"content-encoding";
const NAME_TE: &[u8] = b"transfer-encoding";
const NAME_EXPECT: &[u8] = b"expect";

#[inline(always)]
fn lower(b: u8) -> u8 {
    if b.is_ascii_uppercase() { b | 0x20 } else { b }
}

/// Compares `len` bytes at `off` with `lit`, ASCII case-insensitively. `lit` is lower-case.
#[inline(always)]
fn eq_ci<S: Source>(s: &mut S, off: u32, len: u32, lit: &[u8]) -> bool {
    if len as usize != lit.len() {
        return false;
    }
    let mut i = 0usize;
    while i < 24 {
        if i >= lit.len() {
            return true;
        }
        match s.byte(off + i as u32) {
            Some(b) if lower(b) == lit[i] => {}
            _ => return false,
        }
        i += 1;
    }
    false
}

/// Whether the `len` bytes at `off` start with `lit` (case-insensitive) followed by the end, a
/// space, a tab or ';'.
#[inline(always)]
fn media_type_is<S: Source>(s: &mut S, off: u32, len: u32, lit: &[u8]) -> bool {
    if (len as usize) < lit.len() {
        return false;
    }
    let mut i = 0usize;
    while i < 24 {
        if i >= lit.len() {
            break;
        }
        match s.byte(off + i as u32) {
            Some(b) if lower(b) == lit[i] => {}
            _ => return false,
        }
        i += 1;
    }
    if len as usize == lit.len() {
        return true;
    }
    matches!(s.byte(off + lit.len() as u32), Some(b' ' | b'\t' | b';'))
}

impl Head {
    /// Feeds the byte `b` at offset `off` (offsets start at 0 and go up by one).
    #[inline(always)]
    pub fn feed<S: Source>(&mut self, s: &mut S, off: u32, b: u8) -> Feed {
        if b == b':' && self.colon == 0 {
            self.colon = off;
            return Feed::More;
        }
        if b != b'\n' {
            return Feed::More;
        }
        // A line ends at `off`. It must end in CRLF.
        if off == self.line || s.byte(off - 1) != Some(b'\r') {
            self.bad = 1;
            return Feed::Done;
        }
        let end = off - 1; // the CR
        if end == self.line {
            // Blank line: the head is complete.
            self.len = off + 1;
            return Feed::Done;
        }
        if self.line == 0 {
            self.request_line(s, end);
        } else {
            self.header_line(s, end);
        }
        self.line = off + 1;
        self.colon = 0;
        if self.bad != 0 { Feed::Done } else { Feed::More }
    }

    fn request_line<S: Source>(&mut self, s: &mut S, end: u32) {
        // "METHOD SP target SP HTTP/1.x". The first ':' may be inside the target; forget it.
        if end < 14 || !eq_ci(s, end - 8, 7, b"http/1.") || s.byte(end - 9) != Some(b' ') {
            self.bad = 1;
            return;
        }
        match s.byte(end - 1) {
            Some(b'0' | b'1') => {}
            _ => {
                self.bad = 1;
                return;
            }
        }
        let post = matches!(
            (s.byte(0), s.byte(1), s.byte(2), s.byte(3), s.byte(4)),
            (Some(b'P'), Some(b'O'), Some(b'S'), Some(b'T'), Some(b' '))
        );
        if !post {
            return;
        }
        let path = b"/v1/logs";
        let mut i = 0u32;
        while i < 8 {
            if s.byte(5 + i) != Some(path[i as usize]) {
                return;
            }
            i += 1;
        }
        if matches!(s.byte(13), Some(b' ' | b'?')) {
            self.post_logs = 1;
        }
    }

    fn header_line<S: Source>(&mut self, s: &mut S, end: u32) {
        let line = self.line;
        if matches!(s.byte(line), Some(b' ' | b'\t')) || self.colon == 0 {
            // obs-fold or no colon: not something to edit around.
            self.bad = 1;
            return;
        }
        let name_len = self.colon - line;
        // Trim optional whitespace around the value.
        let mut v = self.colon + 1;
        let mut i = 0;
        while i < 64 && v < end && matches!(s.byte(v), Some(b' ' | b'\t')) {
            v += 1;
            i += 1;
        }
        let mut e = end;
        i = 0;
        while i < 64 && e > v && matches!(s.byte(e - 1), Some(b' ' | b'\t')) {
            e -= 1;
            i += 1;
        }
        let vlen = e - v;
        let first = s.byte(line).map(lower);
        match first {
            Some(b'c') => {
                if eq_ci(s, line, name_len, NAME_CL) {
                    self.content_length_value(s, v, vlen);
                } else if eq_ci(s, line, name_len, NAME_CT) {
                    self.ctype = if media_type_is(s, v, vlen, b"application/x-protobuf") {
                        CTYPE_PROTOBUF
                    } else if media_type_is(s, v, vlen, b"application/json") {
                        CTYPE_JSON
                    } else {
                        CTYPE_OTHER
                    };
                } else if eq_ci(s, line, name_len, NAME_CE) && !eq_ci(s, v, vlen, b"identity") {
                    self.compressed = 1;
                }
            }
            Some(b't') => {
                if eq_ci(s, line, name_len, NAME_TE) {
                    self.chunked = 1;
                }
            }
            Some(b'e') => {
                if eq_ci(s, line, name_len, NAME_EXPECT) && eq_ci(s, v, vlen, b"100-continue") {
                    self.expect = 1;
                }
            }
            _ => {}
        }
    }

    fn content_length_value<S: Source>(&mut self, s: &mut S, v: u32, vlen: u32) {
        if self.has_cl != 0 || vlen == 0 || vlen > 9 {
            // Repeated, empty, or more than 999,999,999: not a request dt follows.
            self.bad = 1;
            return;
        }
        let mut n: u32 = 0;
        let mut i = 0u32;
        while i < 9 {
            if i >= vlen {
                break;
            }
            match s.byte(v + i) {
                Some(d @ b'0'..=b'9') => n = n * 10 + (d - b'0') as u32,
                _ => {
                    self.bad = 1;
                    return;
                }
            }
            i += 1;
        }
        self.has_cl = 1;
        self.content_length = n;
        self.cl_off = v;
        self.cl_digits = vlen;
    }
}

/// Parses a whole head from a source of `len` bytes (host side; the kernel feeds bytes itself).
pub fn parse<S: Source>(s: &mut S, len: u32) -> Head {
    let mut h = Head::default();
    let mut off = 0u32;
    while off < len && off < crate::MAX_HEAD_LEN {
        let Some(b) = s.byte(off) else { break };
        if h.feed(s, off, b) == Feed::Done {
            break;
        }
        off += 1;
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::SliceSource;

    fn head(text: &str) -> Head {
        parse(&mut SliceSource(text.as_bytes()), text.len() as u32)
    }

    #[test]
    fn recognises_otlp_logs_post() {
        let t = "POST /v1/logs HTTP/1.1\r\nhost: x\r\ncontent-type: application/x-protobuf\r\ncontent-length: 1234\r\n\r\nBODY";
        let h = head(t);
        assert_eq!(h.len as usize, t.len() - 4);
        assert_eq!(h.post_logs, 1);
        assert_eq!(h.ctype, CTYPE_PROTOBUF);
        assert_eq!((h.has_cl, h.content_length, h.cl_digits), (1, 1234, 4));
        assert_eq!(&t[h.cl_off as usize..][..4], "1234");
        assert_eq!((h.bad, h.chunked, h.compressed, h.expect), (0, 0, 0, 0));
    }

    #[test]
    fn header_names_are_case_insensitive_and_values_trimmed() {
        let t = "POST /v1/logs?x=1 HTTP/1.1\r\nContent-Type:Application/X-Protobuf; charset=x\r\nCONTENT-LENGTH:   7  \r\nContent-Encoding: gzip\r\nExpect: 100-Continue\r\n\r\n";
        let h = head(t);
        assert_eq!((h.post_logs, h.ctype, h.content_length), (1, CTYPE_PROTOBUF, 7));
        assert_eq!((h.compressed, h.expect), (1, 1));
        assert_eq!(&t[h.cl_off as usize..][..1], "7");
    }

    #[test]
    fn other_requests() {
        let h = head("POST /v1/traces HTTP/1.1\r\ncontent-length: 3\r\n\r\n");
        assert_eq!((h.post_logs, h.bad), (0, 0));
        let h = head("GET /v1/logs HTTP/1.1\r\n\r\n");
        assert_eq!((h.post_logs, h.has_cl, h.bad), (0, 0, 0));
        let h = head("POST /v1/logsx HTTP/1.1\r\n\r\n");
        assert_eq!(h.post_logs, 0);
        let h = head("POST /v1/logs HTTP/1.1\r\ntransfer-encoding: chunked\r\ncontent-type: application/json\r\n\r\n");
        assert_eq!((h.chunked, h.ctype), (1, CTYPE_JSON));
        let h = head("POST /v1/logs HTTP/1.1\r\ncontent-encoding: identity\r\n\r\n");
        assert_eq!(h.compressed, 0);
    }

    #[test]
    fn bad_heads() {
        assert_eq!(head("hello world\r\n\r\n").bad, 1);
        assert_eq!(head("POST /v1/logs HTTP/1.1\nx: y\n\n").bad, 1);
        assert_eq!(head("POST /v1/logs HTTP/1.1\r\ncontent-length: 1x\r\n\r\n").bad, 1);
        assert_eq!(head("POST /v1/logs HTTP/1.1\r\ncontent-length: 1\r\ncontent-length: 1\r\n\r\n").bad, 1);
        assert_eq!(head("POST /v1/logs HTTP/1.1\r\nx: y\r\n folded\r\n\r\n").bad, 1);
        let h = head("POST /v1/logs HTTP/1.1\r\ncontent-length: 5\r\n");
        assert_eq!((h.len, h.bad), (0, 0), "incomplete head");
    }
}
