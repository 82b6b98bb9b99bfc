//! Byte access and protobuf varints, over any [`Source`]: a slice on the host, a window of an
//! sk_msg in the kernel.

/// Random access to the bytes of one message, through a readable window.
///
/// The kernel can only read bytes it has pulled into a linear window; [`Source::ensure`] is the
/// one place that may pull, so that byte reads stay cheap for the verifier.
pub trait Source {
    /// Makes the bytes `off..off + len` readable, as far as the message goes. `false` when the
    /// kernel could not make them accessible.
    fn ensure(&mut self, off: u32, len: u32) -> bool;
    /// The byte at `off`, or `None` when it is past the end or outside the readable window.
    fn byte(&mut self, off: u32) -> Option<u8>;

    /// Sets every byte of a lookup key to zero. The kernel overrides this with one helper call
    /// (a loop of stores costs a store per byte there).
    #[inline(always)]
    fn zero_key(&mut self, dst: &mut [u8; crate::STR_KEY_BYTES]) {
        let mut i = 0;
        while i < crate::STR_KEY_BYTES {
            // SAFETY: a plain store; volatile so it stays a store, not a memset call.
            unsafe { core::ptr::write_volatile(&mut dst[i], 0) };
            i += 1;
        }
    }

    /// Copies the `len` bytes at `off` into `dst[at..]` (bytes past the end of `dst` are
    /// dropped). `false` when a byte could not be read. The kernel overrides this with a
    /// `bpf_loop`, which its verifier checks once instead of once per path into the loop.
    #[inline(always)]
    fn copy_into(
        &mut self,
        off: u32,
        len: u32,
        dst: &mut [u8; crate::STR_KEY_BYTES],
        at: u32,
    ) -> bool {
        if !self.ensure(off, len) {
            return false;
        }
        let mut i = 0u32;
        while i < crate::STR_KEY_BYTES as u32 {
            if i >= len {
                break;
            }
            let Some(b) = self.byte(off + i) else {
                return false;
            };
            let j = (at + i) as usize;
            if j < crate::STR_KEY_BYTES {
                dst[j] = b;
            }
            i += 1;
        }
        true
    }

    /// Copies the `len` (at most [`CHUNK_BYTES`]) bytes at `off` into `dst[..len]`, for a body
    /// scan: one range check and one copy a chunk instead of one a byte. `false` when a byte
    /// could not be read. The kernel overrides this with one helper call.
    #[inline(always)]
    fn copy_chunk(&mut self, off: u32, len: u32, dst: &mut [u8; CHUNK_BYTES]) -> bool {
        copy_bytes(self, off, len, dst)
    }

    /// Copies the `len` (at most [`RECORD_BYTES`]) bytes at `off` into `dst[..len]`: a
    /// LogRecord the walk's fast path takes whole. `false` when a byte could not be read. The
    /// kernel overrides this with one helper call.
    #[inline(always)]
    fn copy_record(&mut self, off: u32, len: u32, dst: &mut [u8; RECORD_BYTES]) -> bool {
        copy_bytes(self, off, len, dst)
    }
}

/// The `len` (at most `N`) bytes at `off` into `dst[..len]`, a byte at a time.
#[inline(always)]
fn copy_bytes<S: Source + ?Sized, const N: usize>(
    s: &mut S,
    off: u32,
    len: u32,
    dst: &mut [u8; N],
) -> bool {
    if len > N as u32 || !s.ensure(off, len) {
        return false;
    }
    let mut i = 0u32;
    while i < N as u32 {
        if i >= len {
            break;
        }
        let Some(b) = s.byte(off + i) else {
            return false;
        };
        dst[i as usize] = b;
        i += 1;
    }
    true
}

/// Bytes of a record the fast path copies at once ([`Source::copy_record`]).
pub const RECORD_BYTES: usize = 1024;

/// Bytes of a body scan's chunk ([`Source::copy_chunk`]).
pub const CHUNK_BYTES: usize = 64;

/// A [`Source`] over a byte slice (host side: tests and tools).
pub struct SliceSource<'a>(pub &'a [u8]);

impl Source for SliceSource<'_> {
    #[inline(always)]
    fn ensure(&mut self, _off: u32, _len: u32) -> bool {
        true
    }

    #[inline(always)]
    fn byte(&mut self, off: u32) -> Option<u8> {
        self.0.get(off as usize).copied()
    }
}

/// Why a walk or a parse stopped before the end.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Error {
    /// The bytes are not a valid encoding.
    Malformed,
    /// A byte could not be read (the kernel refused to pull it).
    Unreadable,
    /// The request needs more edits than the walk can hold.
    EditLimit,
    /// Messages nest deeper than the walk checks.
    TooDeep,
    /// `[enrich]` can't add the attributes (a length prefix too narrow for the new length, or
    /// too many ResourceLogs).
    Enrich,
}

/// Reads a varint at `off` that must end before `end`. Returns the value and its length. The
/// caller has made the bytes readable.
#[inline(always)]
pub fn varint<S: Source>(s: &mut S, off: u32, end: u32) -> Result<(u64, u32), Error> {
    let mut v: u64 = 0;
    let mut i: u32 = 0;
    while i < 10 {
        let at = off.wrapping_add(i);
        if at >= end || at < off {
            return Err(Error::Malformed);
        }
        let b = match s.byte(at) {
            Some(b) => b,
            None => return Err(Error::Unreadable),
        };
        if i == 9 && b > 1 {
            return Err(Error::Malformed);
        }
        v |= ((b & 0x7f) as u64) << (7 * i);
        if b < 0x80 {
            return Ok((v, i + 1));
        }
        i += 1;
    }
    Err(Error::Malformed)
}

/// Encodes `v` as a varint of exactly `n` bytes (1..=10), padding with continuation bytes.
/// Returns `false` when `v` does not fit. Decoders (prost, upb, protowire) accept padded varints.
#[inline(always)]
pub fn padded_varint(v: u64, n: u32, out: &mut [u8; 10]) -> bool {
    if n == 0 || n > 10 || (n < 10 && v >> (7 * n) != 0) {
        return false;
    }
    let mut i = 0u32;
    while i < 10 {
        if i < n {
            let mut b = ((v >> (7 * i)) & 0x7f) as u8;
            if i + 1 < n {
                b |= 0x80;
            }
            out[i as usize] = b;
        }
        i += 1;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip_padded() {
        for v in [
            0u64,
            1,
            127,
            128,
            300,
            16383,
            16384,
            1 << 28,
            u32::MAX as u64,
        ] {
            for n in 1..=10u32 {
                let mut out = [0u8; 10];
                let fits = padded_varint(v, n, &mut out);
                assert_eq!(fits, n == 10 || v >> (7 * n) == 0, "v={v} n={n}");
                if fits {
                    let (got, len) = varint(&mut SliceSource(&out[..n as usize]), 0, n).unwrap();
                    assert_eq!((got, len), (v, n));
                }
            }
        }
    }

    #[test]
    fn negative_int32_takes_ten_bytes() {
        let bytes = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
        let (v, n) = varint(&mut SliceSource(&bytes), 0, 10).unwrap();
        assert_eq!((v as i64, n), (-1, 10));
        let bad = [0xff; 10];
        assert_eq!(varint(&mut SliceSource(&bad), 0, 10), Err(Error::Malformed));
        assert_eq!(
            varint(&mut SliceSource(&bytes), 0, 5),
            Err(Error::Malformed)
        );
    }
}
