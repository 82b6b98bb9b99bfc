//! The sample and rate-limit decisions, pure: the kernel and the host model both call these,
//! so the two cannot disagree on which match of a rule is kept.
//!
//! Both are taken for a whole request at once, when its walk is known to commit: a request
//! that passes through untouched takes no sample numbers and no tokens. The numbers of one
//! request are a consecutive block, drawn with one atomic update of the rule's counter; match
//! `j` of the request (counted from 0) is match `base + j` of the rule over all CPUs.

/// Whether match `base + ordinal` of a `keep_one_in = n` rule is kept, given `base % n` (what
/// [`sample_draw`] returns): the first of every `n` matches is.
#[inline(always)]
pub fn sample_keeps(base_mod_n: u64, ordinal: u32, n: u64) -> bool {
    n <= 1 || (base_mod_n + ordinal as u64).is_multiple_of(n)
}

/// The counter's new value and `base % n`, for `m` matches drawn from counter value `base`.
#[inline(always)]
pub fn sample_draw(base: u64, m: u32, n: u64) -> (u64, u64) {
    let n = if n == 0 { 1 } else { n };
    (base + m as u64, base % n)
}

/// Nanoseconds between two tokens of a `per_second` rate_limit rule.
#[inline(always)]
pub fn rate_interval(per_second: u64) -> u64 {
    let i = 1_000_000_000 / if per_second == 0 { 1 } else { per_second };
    // At least 1, also for rates over 1e9 a second (the rules refuse them): a divisor.
    if i == 0 { 1 } else { i }
}

/// GCRA, the token bucket as one word (the theoretical arrival time, TAT): takes up to `want`
/// tokens at time `now` from a bucket of `per_second` tokens refilled at `per_second` a second.
/// Returns the new TAT and how many tokens were granted; the first `granted` matches of the
/// request are kept.
///
/// Each token pushes TAT one interval on; a token is there while TAT stays at most
/// `per_second - 1` intervals ahead of now (so a full bucket holds `per_second`).
#[inline(always)]
pub fn gcra_take(tat: u64, now: u64, per_second: u64, want: u32) -> (u64, u32) {
    let interval = rate_interval(per_second);
    let burst = interval * per_second.saturating_sub(1);
    let base = if tat > now { tat } else { now };
    let ahead = base - now;
    if ahead > burst || want == 0 {
        return (tat, 0);
    }
    let free = (burst - ahead) / interval + 1;
    let granted = if free < want as u64 {
        free as u32
    } else {
        want
    };
    (base + granted as u64 * interval, granted)
}

/// A trigger's threshold window, one word: `opened_ms << 24 | matches`. A match at `now_ms`
/// counts in the window if it opened at most `within_ms` before, else it opens a new one.
/// Returns the new word and the match's number in its window (from 1): the match whose number
/// is the threshold fires. (Counts stop at 2^24 - 1.)
#[inline(always)]
pub fn threshold_count(window: u64, now_ms: u64, within_ms: u32) -> (u64, u32) {
    let opened = window >> 24;
    let count = (window & 0xff_ffff) as u32;
    // A time before the window opened is a match on another CPU that read the clock before
    // the one that opened it and updated after: it counts in the window.
    if count == 0 || now_ms.saturating_sub(opened) > within_ms as u64 {
        return ((now_ms << 24) | 1, 1);
    }
    let next = if count < 0xff_ffff { count + 1 } else { count };
    ((opened << 24) | next as u64, next)
}

/// Whether a trigger that last fired at `last_ns` (0: never) may fire at `now_ns`. A `now_ns`
/// before `last_ns` is a match on another CPU that read the clock before the one that fired
/// and updated after: within the cooldown (it was fired "at the same instant").
#[inline(always)]
pub fn cooled_down(last_ns: u64, now_ns: u64, cooldown_ns: u64) -> bool {
    last_ns == 0 || now_ns.saturating_sub(last_ns) >= cooldown_ns
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_blocks_keep_exactly_one_in_n() {
        // Requests of any sizes, drawn in turn, keep ceil(total / n).
        for n in 1..7u64 {
            let mut counter = 0;
            let mut kept = 0;
            let mut total = 0;
            for m in [0u32, 1, 2, 5, 3, 1, 7, 0, 4] {
                let (next, base) = sample_draw(counter, m, n);
                kept += (0..m).filter(|&j| sample_keeps(base, j, n)).count() as u64;
                counter = next;
                total += m as u64;
            }
            assert_eq!(kept, total.div_ceil(n), "n = {n}");
        }
    }

    #[test]
    fn threshold_fires_on_the_count_th_match_of_a_window() {
        let mut w = 0;
        let mut numbers = [0; 6];
        for (i, t) in [1000u64, 1001, 1500, 1999, 2000, 2001]
            .into_iter()
            .enumerate()
        {
            let (nw, n) = threshold_count(w, t, 1000);
            w = nw;
            numbers[i] = n;
        }
        // The window opened at 1000 holds matches up to 2000; 2001 opens a new one.
        assert_eq!(numbers, [1, 2, 3, 4, 5, 1]);
        assert!(cooled_down(0, 5, 10));
        assert!(!cooled_down(100, 105, 10));
        assert!(cooled_down(100, 110, 10));
        // Two CPUs: the one that read the clock first updates last. Not a second firing.
        assert!(!cooled_down(105, 100, 10));
        // Likewise a match read just before its window opened counts in it.
        let (w, n) = threshold_count(0, 1000, 1000);
        assert_eq!(n, 1);
        assert_eq!(threshold_count(w, 999, 1000).1, 2);
    }

    #[test]
    fn gcra_grants_the_bucket_then_refills() {
        let ps = 10;
        let i = rate_interval(ps);
        // A full bucket: 10 tokens at once, then none.
        let (tat, g) = gcra_take(0, 1_000, ps, 25);
        assert_eq!(g, 10);
        let (tat, g) = gcra_take(tat, 1_000, ps, 1);
        assert_eq!(g, 0);
        // One interval later, one token.
        let (_, g) = gcra_take(tat, 1_000 + i, ps, 5);
        assert_eq!(g, 1);
        // Taking one at a time gives the same as taking a block.
        let mut t = 0;
        let mut one_by_one = 0;
        for _ in 0..25 {
            let (nt, g) = gcra_take(t, 1_000, ps, 1);
            t = nt;
            one_by_one += g;
        }
        assert_eq!(one_by_one, 10);
    }
}
