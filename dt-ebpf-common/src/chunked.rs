//! HTTP/1.1 chunked body framing (`Transfer-Encoding: chunked`), followed as far as dt needs:
//! where each chunk's data is, and where the request ends.
//!
//! A step machine like the walker: [`Chunked::step`] looks at one byte of a size line, or jumps
//! over one chunk's data, so the kernel drives it from a `bpf_loop` callback. It runs over the
//! bytes of the request that are here so far (the kernel corks the request step by step); when
//! it runs out, [`Chunked::need`] says how many bytes the request has at least, so corking up to
//! there never holds back more than the request (the client would wait for its response).
//!
//! Followed: up to [`MAX_CHUNKS`] data chunks, size lines (hex digits, then `;extensions`) of
//! up to [`MAX_SIZE_LINE`] bytes before their CRLF, the last chunk (`0`, with extensions) and an
//! empty trailer section. Anything else (trailer fields, a bare LF, more chunks, longer lines,
//! a size over 2^28) is [`Scan::Unsupported`].

use crate::wire::Source;

/// Data chunks followed in one request.
pub const MAX_CHUNKS: u32 = 64;
/// Bytes of a chunk-size line before its CRLF (size digits and extensions).
pub const MAX_SIZE_LINE: u32 = 64;
/// Steps a whole scan can take: each chunk's line byte by byte, its data in one jump, its CRLF.
pub const MAX_SCAN_STEPS: u32 = (MAX_CHUNKS + 1) * (MAX_SIZE_LINE + 6) + 8;

// States.
const C_SIZE: u8 = 0;
const C_EXT: u8 = 1;
const C_LF: u8 = 2;
const C_DATA: u8 = 3;
const C_DATA_CR: u8 = 4;
const C_DATA_LF: u8 = 5;
const C_TRAILER_CR: u8 = 6;
const C_TRAILER_LF: u8 = 7;
const C_DONE: u8 = 8;
const C_BAD: u8 = 9;

/// What a step found.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Scan {
    /// Go on.
    More,
    /// The bytes here are used up; the request has at least [`Chunked::need`] bytes.
    Need,
    /// The request ends at [`Chunked::end`].
    Done,
    /// Framing dt does not follow.
    Unsupported,
}

/// The scan's state (socket storage in the kernel).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct Chunked {
    pub state: u8,
    /// Hex digits of the current size line, leading zeros included, and without them.
    pub digits: u8,
    pub sig: u8,
    pub _pad: u8,
    /// The next byte to look at.
    pub pos: u32,
    /// Where the current size line starts.
    pub line_start: u32,
    /// The size being read, then the chunk's data length.
    pub size: u32,
    /// Data chunks seen.
    pub n_chunks: u32,
    /// Data bytes in all chunks.
    pub data_len: u32,
    /// The first data chunk: its data, and its size digits (offset and count: the last ten,
    /// when leading zeros make more).
    pub first_off: u32,
    pub first_len: u32,
    pub first_digits_off: u32,
    pub first_digits: u32,
    /// One past the request's last byte, once done.
    pub end: u32,
    pub _pad2: u32,
}

impl Chunked {
    /// A scan of a body starting at `start` (right after the head).
    pub fn start(&mut self, start: u32) {
        *self = Chunked {
            state: C_SIZE,
            pos: start,
            line_start: start,
            ..Chunked::default()
        };
    }

    /// One step over the first `avail` bytes of the message.
    #[inline(always)]
    pub fn step<S: Source>(&mut self, s: &mut S, avail: u32) -> Scan {
        match self.state {
            C_DONE => return Scan::Done,
            C_BAD => return Scan::Unsupported,
            C_DATA => {
                // Jump over the data.
                self.pos += self.size;
                self.state = C_DATA_CR;
                return Scan::More;
            }
            _ => {}
        }
        let pos = self.pos;
        if pos >= avail {
            return Scan::Need;
        }
        if !s.ensure(pos, 1) {
            return self.bad();
        }
        let Some(b) = s.byte(pos) else {
            return self.bad();
        };
        self.pos = pos + 1;
        match self.state {
            C_SIZE => {
                let d = hex(b);
                if d < 16 {
                    // Leading zeros are allowed (and count against the line's length only).
                    if pos.wrapping_sub(self.line_start) >= MAX_SIZE_LINE {
                        return self.bad();
                    }
                    if self.size != 0 || d != 0 {
                        if self.sig >= 7 {
                            return self.bad();
                        }
                        self.sig += 1;
                    }
                    self.size = self.size << 4 | d as u32;
                    self.digits += 1;
                } else if self.digits == 0 {
                    return self.bad();
                } else if b == b';' && pos.wrapping_sub(self.line_start) < MAX_SIZE_LINE {
                    // Only `;` may follow the digits. HTTP allows whitespace before it, but
                    // servers disagree (hyper takes it, Go's net/http and llhttp refuse a size
                    // followed by a space): dt does not follow what a server may read
                    // differently.
                    self.state = C_EXT;
                } else if b == b'\r' {
                    self.state = C_LF;
                } else {
                    return self.bad();
                }
            }
            C_EXT => {
                if b == b'\r' {
                    self.state = C_LF;
                } else if b == b'\n' || pos.wrapping_sub(self.line_start) >= MAX_SIZE_LINE {
                    return self.bad();
                }
            }
            C_LF => {
                if b != b'\n' {
                    return self.bad();
                }
                return self.line_done();
            }
            C_DATA_CR => {
                if b != b'\r' {
                    return self.bad();
                }
                self.state = C_DATA_LF;
            }
            C_DATA_LF => {
                if b != b'\n' {
                    return self.bad();
                }
                self.state = C_SIZE;
                self.line_start = self.pos;
                self.digits = 0;
                self.sig = 0;
                self.size = 0;
            }
            C_TRAILER_CR => {
                // A trailer field instead of the empty line: not followed.
                if b != b'\r' {
                    return self.bad();
                }
                self.state = C_TRAILER_LF;
            }
            _ => {
                // C_TRAILER_LF
                if b != b'\n' {
                    return self.bad();
                }
                self.state = C_DONE;
                self.end = self.pos;
                return Scan::Done;
            }
        }
        Scan::More
    }

    /// After [`Scan::Need`] on a request that passes piece by piece: the `by` bytes scanned so
    /// far are gone, and positions count from the next piece's first byte. (The start of a size
    /// line cut by the piece's end wraps below zero; only its distance to `pos` is used.)
    #[inline(always)]
    pub fn rebase(&mut self, by: u32) {
        self.pos -= by;
        self.line_start = self.line_start.wrapping_sub(by);
    }

    /// A size line has ended (its LF just read).
    #[inline(always)]
    fn line_done(&mut self) -> Scan {
        if self.size == 0 {
            self.state = C_TRAILER_CR;
            return Scan::More;
        }
        if self.n_chunks >= MAX_CHUNKS {
            return self.bad();
        }
        if self.n_chunks == 0 {
            self.first_off = self.pos;
            self.first_len = self.size;
            // The last ten digits at most: leading zeros before them stay as they are.
            let d = self.digits as u32;
            let (off, n) = if d > 10 { (d - 10, 10) } else { (0, d) };
            self.first_digits_off = self.line_start.wrapping_add(off);
            self.first_digits = n;
        }
        self.n_chunks += 1;
        self.data_len += self.size;
        self.state = C_DATA;
        Scan::More
    }

    #[inline(always)]
    fn bad(&mut self) -> Scan {
        self.state = C_BAD;
        Scan::Unsupported
    }

    /// The next step jumps over a chunk's data: where the data is and how long (the data of
    /// the chunks before it is `data_len - size` bytes).
    #[inline(always)]
    pub fn at_data(&self) -> bool {
        self.state == C_DATA
    }

    /// How a scan over the first `avail` bytes ended.
    #[inline(always)]
    pub fn outcome(&self, avail: u32) -> Scan {
        match self.state {
            C_DONE => Scan::Done,
            C_BAD => Scan::Unsupported,
            _ if self.pos >= avail => Scan::Need,
            // The step bound ran out first (it cannot, for framing within the limits).
            _ => Scan::Unsupported,
        }
    }

    /// After [`Scan::Need`]: how long the request is at least, counting from the message's first
    /// byte. Every state is counted to the shortest way the body can still end: for data, its
    /// rest, CRLF and `0\r\n\r\n`.
    #[inline(always)]
    pub fn need(&self) -> u32 {
        let p = self.pos;
        match self.state {
            C_SIZE if self.digits == 0 => self.line_start + 5,
            C_SIZE | C_EXT => p + 4,
            C_LF => p + 3,
            C_DATA => p + self.size + 7,
            C_DATA_CR => p + 7,
            C_DATA_LF => p + 6,
            C_TRAILER_CR => p + 2,
            C_TRAILER_LF => p + 1,
            _ => p + 1,
        }
    }
}

#[inline(always)]
fn hex(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        b'A'..=b'F' => b - b'A' + 10,
        _ => 16,
    }
}

/// Scans `bytes` from `start` (host side): the state after running out, finishing or failing.
pub fn scan(bytes: &[u8], start: u32) -> (Chunked, Scan) {
    let mut c = Chunked::default();
    c.start(start);
    let mut s = crate::wire::SliceSource(bytes);
    let mut steps = 0;
    loop {
        let r = c.step(&mut s, bytes.len() as u32);
        if r != Scan::More || steps >= MAX_SCAN_STEPS {
            return (c, r);
        }
        steps += 1;
    }
}

/// Scans `bytes` from `start` as the kernel does a request that passes piece by piece: each
/// piece (cut at `cuts`, ascending) scanned on its own, the state rebased after it. The
/// outcome, and where the request ends counted from `bytes`' first byte.
pub fn scan_pieces(bytes: &[u8], start: u32, cuts: &[usize]) -> (Scan, Option<usize>) {
    let mut c = Chunked::default();
    c.start(start);
    let mut from = 0;
    let ends = cuts.iter().copied().chain(core::iter::once(bytes.len()));
    let mut r = Scan::Need;
    for to in ends {
        let piece = &bytes[from..to];
        let mut s = crate::wire::SliceSource(piece);
        let mut steps = 0;
        r = loop {
            let r = c.step(&mut s, piece.len() as u32);
            if r != Scan::More || steps >= MAX_SCAN_STEPS {
                break c.outcome(piece.len() as u32);
            }
            steps += 1;
        };
        match r {
            Scan::Need => c.rebase(piece.len() as u32),
            Scan::Done => return (r, Some(from + c.end as usize)),
            _ => return (r, None),
        }
        from = to;
    }
    (r, None)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec::Vec;

    /// Every way of cutting a body in two and three pieces scans as the whole body does.
    #[test]
    fn a_body_in_pieces_scans_as_a_whole() {
        let bodies: [&[u8]; 7] = [
            b"7\r\nabcdefg\r\n0\r\n\r\n",
            b"A;name=value\r\n0123456789\r\n3;x\r\nabc\r\n0;last\r\n\r\nPOST /v1/logs",
            b"0000000000003\r\nabc\r\n0\r\n\r\n",
            b"3\r\nabc\r\n0\r\nX-Trailer: 1\r\n\r\n",
            b"3 ;x\r\nabc\r\n0\r\n\r\n",
            b"3\r\nabcd\r\n0\r\n\r\n",
            b"0\r\n\r\n",
        ];
        for body in bodies {
            let (whole, r) = scan(body, 0);
            let want = match r {
                Scan::Done => (Scan::Done, Some(whole.end as usize)),
                r => (r, None),
            };
            let n = body.len();
            for i in 1..n {
                assert_eq!(scan_pieces(body, 0, &[i]), want, "{body:?} cut at {i}");
                for j in i + 1..n {
                    assert_eq!(
                        scan_pieces(body, 0, &[i, j]),
                        want,
                        "{body:?} cut at {i}, {j}"
                    );
                }
            }
        }
        // A size line of 64 bytes across two pieces is still one line too long.
        let mut long = std::vec![b'0'; 64];
        long.extend_from_slice(b"3\r\nabc\r\n0\r\n\r\n");
        assert_eq!(scan(&long, 0).1, Scan::Unsupported);
        for i in 1..long.len() {
            assert_eq!(
                scan_pieces(&long, 0, &[i]).0,
                Scan::Unsupported,
                "cut at {i}"
            );
        }
    }

    #[test]
    fn one_chunk_as_node_sends_it() {
        let body = b"7\r\nabcdefg\r\n0\r\n\r\n";
        let (c, r) = scan(body, 0);
        assert_eq!(r, Scan::Done);
        assert_eq!(
            (
                c.n_chunks,
                c.first_off,
                c.first_len,
                c.first_digits_off,
                c.first_digits
            ),
            (1, 3, 7, 0, 1)
        );
        assert_eq!(c.end as usize, body.len());
    }

    #[test]
    fn several_chunks_with_extensions_and_pipelined_bytes() {
        let mut body = b"A;name=value\r\n0123456789\r\n3;x\r\nabc\r\n0;last\r\n\r\n".to_vec();
        let end = body.len();
        body.extend_from_slice(b"POST /v1/logs HTTP/1.1\r\n");
        let (c, r) = scan(&body, 0);
        assert_eq!(r, Scan::Done);
        assert_eq!((c.n_chunks, c.data_len, c.end as usize), (2, 13, end));
    }

    #[test]
    fn only_a_semicolon_or_crlf_follows_the_size() {
        // Whitespace after the size: servers read it differently (found by the `chunked`
        // fuzz target: "0 00" ended a body here, and Go's net/http refuses it).
        for body in [
            &b"0 00\r\n\r\n"[..],
            b"3 ;x\r\nabc\r\n0\r\n\r\n",
            b"3\t\r\nabc\r\n0\r\n\r\n",
            b"3 \r\nabc\r\n0\r\n\r\n",
        ] {
            assert_eq!(scan(body, 0).1, Scan::Unsupported, "{body:?}");
        }
    }

    #[test]
    fn a_size_line_is_at_most_64_bytes_extensions_included() {
        // 64 digits then `;`: the line is 65 bytes (found by the `chunked` fuzz target).
        let mut line = b"0".repeat(63);
        line.extend_from_slice(b"3;\r\nabc\r\n0\r\n\r\n");
        assert_eq!(scan(&line, 0).1, Scan::Unsupported);
        let mut line = b"0".repeat(62);
        line.extend_from_slice(b"3;\r\nabc\r\n0\r\n\r\n");
        assert_eq!(scan(&line, 0).1, Scan::Done);
    }

    #[test]
    fn need_never_runs_past_the_shortest_end() {
        // Every prefix of valid bodies: the bytes the scan says are needed never exceed the
        // whole body, and the body's own end is found once all of it is here.
        let bodies: [&[u8]; 4] = [
            b"0\r\n\r\n",
            b"1\r\nx\r\n0\r\n\r\n",
            b"10;e=1\r\n0123456789abcdef\r\n2\r\nxy\r\n0\r\n\r\n",
            b"7c8\r\n",
        ];
        for body in bodies {
            let complete = body.ends_with(b"0\r\n\r\n");
            for n in 0..=body.len() {
                let (c, r) = scan(&body[..n], 0);
                if complete && n == body.len() {
                    assert_eq!(r, Scan::Done, "{body:?}");
                    continue;
                }
                assert_eq!(r, Scan::Need, "{body:?} at {n}");
                assert!(c.need() as usize > n, "{body:?} at {n}: need {}", c.need());
                if complete {
                    assert!(
                        c.need() as usize <= body.len(),
                        "{body:?} at {n}: need {}",
                        c.need()
                    );
                }
            }
        }
    }

    #[test]
    fn leading_zeros_are_followed() {
        let body = b"000000000000005\r\nhello\r\n00\r\n\r\n";
        let (c, r) = scan(body, 0);
        assert_eq!(r, Scan::Done);
        assert_eq!(
            (c.first_len, c.first_digits_off, c.first_digits),
            (5, 5, 10)
        );
        let (_, r) = scan(b"00000005EE\r\n", 0);
        assert_eq!(r, Scan::Need);
    }

    #[test]
    fn what_is_not_followed() {
        let cases: [&[u8]; 6] = [
            b"0\r\nExpires: never\r\n\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"x\r\n",
            b"12345678\r\n",
            b"3\r\nabcXY0\r\n\r\n",
            b"1;xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\r\n",
        ];
        for body in cases {
            assert_eq!(scan(body, 0).1, Scan::Unsupported, "{body:?}");
        }
        let mut many = Vec::new();
        for _ in 0..=MAX_CHUNKS {
            many.extend_from_slice(b"1\r\nx\r\n");
        }
        many.extend_from_slice(b"0\r\n\r\n");
        assert_eq!(scan(&many, 0).1, Scan::Unsupported);
    }
}
