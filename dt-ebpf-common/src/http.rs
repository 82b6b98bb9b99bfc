//! HTTP/1.1 request-head parser: a byte-at-a-time state machine with constant work per byte
//! (no loops, no look-back), so the kernel drives it from a `bpf_loop` callback that its
//! verifier checks once. It records only what dt needs to decide a request's fate.

pub const CTYPE_NONE: u8 = 0;
pub const CTYPE_PROTOBUF: u8 = 1;
pub const CTYPE_JSON: u8 = 2;
pub const CTYPE_OTHER: u8 = 3;

/// Header names dt reads, lower-case, and their bit in [`Head::names`].
const NAMES: [&[u8]; 5] = [
    b"content-length",
    b"content-type",
    b"content-encoding",
    b"transfer-encoding",
    b"expect",
];
const N_CL: u8 = 1 << 0;
const N_CT: u8 = 1 << 1;
const N_CE: u8 = 1 << 2;
const N_TE: u8 = 1 << 3;
const N_EXPECT: u8 = 1 << 4;
const ALL_NAMES: u8 = 0x1f;

/// Header values dt compares against, lower-case, and their bit in [`Head::values`].
const VALUES: [&[u8]; 4] = [
    b"application/x-protobuf",
    b"application/json",
    b"identity",
    b"100-continue",
];
/// The Transfer-Encoding value dt follows, packed as [`Head::te`] packs it.
const TE_CHUNKED: u64 = pack8(b"chunked");

const fn pack8(v: &[u8]) -> u64 {
    let mut x = 0u64;
    let mut i = 0;
    while i < v.len() {
        x = x << 8 | v[i] as u64;
        i += 1;
    }
    x
}
const V_PROTOBUF: u8 = 1 << 0;
const V_JSON: u8 = 1 << 1;
const V_IDENTITY: u8 = 1 << 2;
const V_CONTINUE: u8 = 1 << 3;

/// The request line dt edits starts with this; the next byte must be ' ' or '?'.
const LOGS_LINE: &[u8] = b"POST /v1/logs";

const S_NAME: u8 = 0;
const S_VALUE_WS: u8 = 1;
const S_VALUE: u8 = 2;

/// What the head says, and the parser's state. Lives in map memory in the kernel.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct Head {
    /// Length of the head including the blank line; 0 until it is complete.
    pub len: u32,
    pub content_length: u32,
    /// Offset and count of the Content-Length digits.
    pub cl_off: u32,
    pub cl_digits: u32,
    /// Method is POST and the target is `/v1/logs` (optionally with a query).
    pub post_logs: u8,
    pub has_cl: u8,
    /// Transfer-Encoding: 1 for `chunked` alone (once), 2 for anything else.
    pub chunked: u8,
    pub compressed: u8,
    pub ctype: u8,
    pub expect: u8,
    /// The head is not HTTP/1.x as dt understands it.
    pub bad: u8,
    /// Parser state: [`S_NAME`], [`S_VALUE_WS`] or [`S_VALUE`].
    pub state: u8,
    /// Index of the current line (0 = the request line) and bytes of it seen so far.
    pub line: u32,
    pub col: u32,
    /// Request line: 1 while it still reads "POST /v1/logs". Header line: the header names
    /// still possible while in the name, then the one it is.
    pub names: u8,
    /// Values still possible, and those complete and followed by ';' or whitespace.
    pub values: u8,
    pub values_done: u8,
    /// The Content-Length value has gone wrong (not digits, or digits after a space).
    pub cl_bad: u8,
    /// Where the current value starts, its bytes so far, and its length without trailing
    /// whitespace.
    pub vstart: u32,
    pub vlen: u32,
    pub vend: u32,
    /// Content-Length value so far.
    pub num: u32,
    /// The previous byte, and the last nine bytes of the request line.
    pub prev: u8,
    pub before8: u8,
    pub _pad: u16,
    pub _pad2: u32,
    pub last8: u64,
    /// The Transfer-Encoding value's non-blank bytes, lower-case, the last eight packed.
    pub te: u64,
}

/// Result of feeding one byte.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Feed {
    More,
    /// The head ended (see [`Head::len`]) or is bad (see [`Head::bad`]).
    Done,
}

#[inline(always)]
fn lower(b: u8) -> u8 {
    if b.is_ascii_uppercase() { b | 0x20 } else { b }
}

#[inline(always)]
fn is_ws(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// Clears the bits of `mask` whose literal in `table` does not have `b` at index `i`.
#[inline(always)]
fn narrow(mask: u8, table: &[&[u8]], i: u32, b: u8) -> u8 {
    let mut out = mask;
    let mut k = 0;
    while k < table.len() {
        let lit = table[k];
        let bit = 1u8 << k;
        if out & bit != 0 && lit.get(i as usize) != Some(&b) {
            out &= !bit;
        }
        k += 1;
    }
    out
}

/// Clears the bits of `mask` whose literal in `table` is not exactly `len` long.
#[inline(always)]
fn with_len(mask: u8, table: &[&[u8]], len: u32) -> u8 {
    let mut out = mask;
    let mut k = 0;
    while k < table.len() {
        if table[k].len() as u32 != len {
            out &= !(1u8 << k);
        }
        k += 1;
    }
    out
}

impl Head {
    /// Clears every field, field by field (no block fill: the BPF target would call memset).
    #[inline(always)]
    pub fn reset(&mut self) {
        // SAFETY: plain stores to fields of `self`.
        unsafe {
            use core::ptr::write_volatile as w;
            w(&mut self.len, 0);
            w(&mut self.content_length, 0);
            w(&mut self.cl_off, 0);
            w(&mut self.cl_digits, 0);
            w(&mut self.post_logs, 0);
            w(&mut self.has_cl, 0);
            w(&mut self.chunked, 0);
            w(&mut self.compressed, 0);
            w(&mut self.ctype, 0);
            w(&mut self.expect, 0);
            w(&mut self.bad, 0);
            w(&mut self.state, S_NAME);
            w(&mut self.line, 0);
            w(&mut self.col, 0);
            w(&mut self.names, 1);
            w(&mut self.values, 0);
            w(&mut self.values_done, 0);
            w(&mut self.cl_bad, 0);
            w(&mut self.vstart, 0);
            w(&mut self.vlen, 0);
            w(&mut self.vend, 0);
            w(&mut self.num, 0);
            w(&mut self.prev, 0);
            w(&mut self.before8, 0);
            w(&mut self._pad, 0);
            w(&mut self._pad2, 0);
            w(&mut self.last8, 0);
            w(&mut self.te, 0);
        }
    }

    /// A fresh parser.
    pub fn new() -> Head {
        let mut h = Head::default();
        h.reset();
        h
    }

    /// Feeds the byte `b` at offset `off` (offsets start at 0 and go up by one).
    #[inline(always)]
    pub fn feed(&mut self, off: u32, b: u8) -> Feed {
        let prev = self.prev;
        self.prev = b;
        if b == b'\n' {
            if prev != b'\r' {
                self.bad = 1;
                return Feed::Done;
            }
            return self.end_line(off);
        }
        if prev == b'\r' {
            // A bare CR inside a line.
            self.bad = 1;
            return Feed::Done;
        }
        if b == b'\r' {
            return Feed::More;
        }
        let col = self.col;
        self.col = col + 1;
        if self.line == 0 {
            self.request_line_byte(col, b);
        } else {
            self.header_byte(off, col, b);
        }
        if self.bad != 0 {
            Feed::Done
        } else {
            Feed::More
        }
    }

    #[inline(always)]
    fn request_line_byte(&mut self, col: u32, b: u8) {
        if col == 0 && !b.is_ascii_uppercase() {
            // Not an HTTP method: don't wait for more bytes of something that isn't HTTP.
            self.bad = 1;
            return;
        }
        if (col as usize) < LOGS_LINE.len() {
            if LOGS_LINE.get(col as usize) != Some(&b) {
                self.names = 0;
            }
        } else if col as usize == LOGS_LINE.len() && b != b' ' && b != b'?' {
            self.names = 0;
        }
        self.before8 = (self.last8 >> 56) as u8;
        self.last8 = (self.last8 << 8) | b as u64;
    }

    #[inline(always)]
    fn header_byte(&mut self, off: u32, col: u32, b: u8) {
        match self.state {
            S_NAME => {
                if b == b':' {
                    if col == 0 {
                        self.bad = 1;
                        return;
                    }
                    self.names = with_len(self.names, &NAMES, col);
                    self.values = match self.names {
                        N_CT => V_PROTOBUF | V_JSON,
                        N_CE => V_IDENTITY,
                        N_EXPECT => V_CONTINUE,
                        _ => 0,
                    };
                    self.state = S_VALUE_WS;
                    return;
                }
                if col == 0 && is_ws(b) {
                    // obs-fold: not something to edit around.
                    self.bad = 1;
                    return;
                }
                self.names = narrow(self.names, &NAMES, col, lower(b));
            }
            S_VALUE_WS if is_ws(b) => {}
            _ => {
                if self.state == S_VALUE_WS {
                    self.state = S_VALUE;
                    self.vstart = off;
                }
                self.value_byte(b);
            }
        }
    }

    #[inline(always)]
    fn value_byte(&mut self, b: u8) {
        let j = self.vlen;
        self.vlen = j + 1;
        let ws = is_ws(b);
        if self.names == N_CL && !ws {
            if b.is_ascii_digit() && self.vend == j && j < 9 {
                self.num = self.num * 10 + (b - b'0') as u32;
            } else {
                self.cl_bad = 1;
            }
        }
        if !ws {
            self.vend = j + 1;
            if self.names == N_TE {
                self.te = self.te << 8 | lower(b) as u64;
            }
        }
        let alive = self.values;
        if alive != 0 {
            let mut k = 0;
            while k < VALUES.len() {
                let bit = 1u8 << k;
                let len = VALUES[k].len() as u32;
                if alive & bit != 0 && j == len {
                    if ws || b == b';' {
                        self.values_done |= bit;
                    } else if self.values_done & bit == 0 {
                        self.values &= !bit;
                    }
                }
                k += 1;
            }
            // Values longer than `j` must match this byte; shorter ones were settled above.
            let short = self.short_of(j);
            self.values =
                (narrow(self.values, &VALUES, j, lower(b)) & !short) | (self.values & short);
        }
    }

    /// Bits of the values whose literal is shorter than or as long as `j` (past their end).
    #[inline(always)]
    fn short_of(&self, j: u32) -> u8 {
        let mut m = 0u8;
        let mut k = 0;
        while k < VALUES.len() {
            if VALUES[k].len() as u32 <= j {
                m |= 1 << k;
            }
            k += 1;
        }
        m
    }

    #[inline(always)]
    fn value_is(&self, bit: u8, len: u32) -> bool {
        self.values & bit != 0 && (self.vend == len || self.values_done & bit != 0)
    }

    #[inline(always)]
    fn end_line(&mut self, off: u32) -> Feed {
        let col = self.col; // bytes before the CR
        if col == 0 {
            if self.line == 0 {
                self.bad = 1;
            } else {
                self.len = off + 1;
            }
            return Feed::Done;
        }
        if self.line == 0 {
            // "METHOD SP target SP HTTP/1.x"; the last eight bytes were shifted into `last8`.
            let v11 = u64::from_be_bytes(*b"HTTP/1.1");
            let v10 = u64::from_be_bytes(*b"HTTP/1.0");
            if col < 14 || self.before8 != b' ' || (self.last8 != v11 && self.last8 != v10) {
                self.bad = 1;
                return Feed::Done;
            }
            self.post_logs = (self.names == 1 && col as usize >= LOGS_LINE.len() + 9) as u8;
        } else {
            if self.state == S_NAME {
                // No colon.
                self.bad = 1;
                return Feed::Done;
            }
            self.header_done();
            if self.bad != 0 {
                return Feed::Done;
            }
        }
        self.line += 1;
        self.col = 0;
        self.state = S_NAME;
        self.names = ALL_NAMES;
        self.values = 0;
        self.values_done = 0;
        self.vlen = 0;
        self.vend = 0;
        self.num = 0;
        self.cl_bad = 0;
        Feed::More
    }

    #[inline(always)]
    fn header_done(&mut self) {
        match self.names {
            N_CL => {
                if self.has_cl != 0 || self.cl_bad != 0 || self.vend == 0 {
                    // Repeated, empty, not digits, or over 999,999,999: not a request dt follows.
                    self.bad = 1;
                    return;
                }
                self.has_cl = 1;
                self.content_length = self.num;
                self.cl_off = self.vstart;
                self.cl_digits = self.vend;
            }
            N_CT => {
                self.ctype = if self.value_is(V_PROTOBUF, VALUES[0].len() as u32) {
                    CTYPE_PROTOBUF
                } else if self.value_is(V_JSON, VALUES[1].len() as u32) {
                    CTYPE_JSON
                } else {
                    CTYPE_OTHER
                };
            }
            N_CE => {
                let identity = self.values & V_IDENTITY != 0 && self.vend == VALUES[2].len() as u32;
                if !identity {
                    self.compressed = 1;
                }
            }
            N_TE => {
                // `chunked` alone is followed; other codings, or several headers, are not.
                let chunked = self.te == TE_CHUNKED && self.vend == 7;
                self.chunked = if chunked && self.chunked == 0 { 1 } else { 2 };
            }
            N_EXPECT if self.values & V_CONTINUE != 0 && self.vend == VALUES[3].len() as u32 => {
                self.expect = 1;
            }
            _ => {}
        }
    }
}

/// Parses a whole head from `bytes` (host side; the kernel feeds bytes itself).
pub fn parse(bytes: &[u8]) -> Head {
    let mut h = Head::new();
    let mut off = 0u32;
    while (off as usize) < bytes.len() && off < crate::MAX_HEAD_LEN {
        if h.feed(off, bytes[off as usize]) == Feed::Done {
            break;
        }
        off += 1;
    }
    h
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::format;

    fn head(text: &str) -> Head {
        parse(text.as_bytes())
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
        assert_eq!(
            (h.post_logs, h.ctype, h.content_length),
            (1, CTYPE_PROTOBUF, 7)
        );
        assert_eq!((h.compressed, h.expect, h.bad), (1, 1, 0));
        assert_eq!(&t[h.cl_off as usize..][..1], "7");
        assert_eq!(h.cl_digits, 1);
    }

    #[test]
    fn content_types() {
        let ct = |v: &str| {
            head(&format!(
                "POST /v1/logs HTTP/1.1\r\ncontent-type: {v}\r\n\r\n"
            ))
            .ctype
        };
        assert_eq!(ct("application/x-protobuf"), CTYPE_PROTOBUF);
        assert_eq!(ct("application/x-protobuf "), CTYPE_PROTOBUF);
        assert_eq!(ct("application/x-protobuf;q=1"), CTYPE_PROTOBUF);
        assert_eq!(ct("application/x-protobufs"), CTYPE_OTHER);
        assert_eq!(ct("application/x-proto"), CTYPE_OTHER);
        assert_eq!(ct("application/json"), CTYPE_JSON);
        assert_eq!(ct("Application/JSON; charset=utf-8"), CTYPE_JSON);
        assert_eq!(ct("text/plain"), CTYPE_OTHER);
        assert_eq!(head("POST /v1/logs HTTP/1.1\r\n\r\n").ctype, CTYPE_NONE);
    }

    #[test]
    fn other_requests() {
        let h = head("POST /v1/traces HTTP/1.1\r\ncontent-length: 3\r\n\r\n");
        assert_eq!((h.post_logs, h.bad, h.content_length), (0, 0, 3));
        let h = head("GET /v1/logs HTTP/1.1\r\n\r\n");
        assert_eq!((h.post_logs, h.has_cl, h.bad), (0, 0, 0));
        let h = head("POST /v1/logsx HTTP/1.1\r\n\r\n");
        assert_eq!(h.post_logs, 0);
        let h = head(
            "POST /v1/logs HTTP/1.1\r\ntransfer-encoding: chunked\r\ncontent-type: application/json\r\n\r\n",
        );
        assert_eq!((h.chunked, h.ctype), (1, CTYPE_JSON));
        for (te, want) in [
            ("Chunked ", 1),
            ("gzip, chunked", 2),
            ("chunkedx", 2),
            ("identity", 2),
        ] {
            let h = head(&format!(
                "POST /v1/logs HTTP/1.1\r\nTransfer-Encoding: {te}\r\n\r\n"
            ));
            assert_eq!(h.chunked, want, "{te:?}");
        }
        let h = head(
            "POST /v1/logs HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
        );
        assert_eq!(h.chunked, 2, "repeated");
        let h = head("POST /v1/logs HTTP/1.1\r\ncontent-encoding: identity\r\n\r\n");
        assert_eq!(h.compressed, 0);
        let h = head("POST /v1/logs HTTP/1.1\r\ncontent-encoding: identityx\r\n\r\n");
        assert_eq!(h.compressed, 1);
        let h = head("POST /v1/logs HTTP/1.1\r\nx-content-length: 5\r\ncontent-lengthx: 6\r\n\r\n");
        assert_eq!((h.has_cl, h.bad), (0, 0));
        let h = head("POST /v1/logs HTTP/1.0\r\nexpect: 100-continue-x\r\n\r\n");
        assert_eq!((h.expect, h.post_logs), (0, 1));
    }

    #[test]
    fn bad_heads() {
        assert_eq!(head("hello world\r\n\r\n").bad, 1);
        assert_eq!(head("POST /v1/logs HTTP/2.0\r\n\r\n").bad, 1);
        assert_eq!(head("POST /v1/logs HTTP/1.1\nx: y\n\n").bad, 1);
        assert_eq!(
            head("POST /v1/logs HTTP/1.1\r\ncontent-length: 1x\r\n\r\n").bad,
            1
        );
        assert_eq!(
            head("POST /v1/logs HTTP/1.1\r\ncontent-length: 1 2\r\n\r\n").bad,
            1
        );
        assert_eq!(
            head("POST /v1/logs HTTP/1.1\r\ncontent-length:\r\n\r\n").bad,
            1
        );
        assert_eq!(
            head("POST /v1/logs HTTP/1.1\r\ncontent-length: 1234567890\r\n\r\n").bad,
            1
        );
        assert_eq!(
            head("POST /v1/logs HTTP/1.1\r\ncontent-length: 1\r\ncontent-length: 1\r\n\r\n").bad,
            1
        );
        assert_eq!(
            head("POST /v1/logs HTTP/1.1\r\nx: y\r\n folded\r\n\r\n").bad,
            1
        );
        assert_eq!(head("POST /v1/logs HTTP/1.1\r\nno colon\r\n\r\n").bad, 1);
        assert_eq!(head("POST /v1/logs HTTP/1.1\r\nx: a\rb\r\n\r\n").bad, 1);
        let h = head("POST /v1/logs HTTP/1.1\r\ncontent-length: 5\r\n");
        assert_eq!((h.len, h.bad), (0, 0), "incomplete head");
    }
}
