//! The Aho-Corasick automaton the kernel runs over string bodies for `body_contains`.
//!
//! The kernel reads it as a complete DFA: for each byte `b` of a body,
//! `bits |= row[state].out; state = row[state].next[b]`, and after the last byte
//! `bits |= row[state].out`. State 0 is the root.

use std::collections::VecDeque;

use dt_ebpf_common::{AcRow, MAX_AC_STATES};

const ROOT: u16 = 0;

/// The automaton would need more than `MAX_AC_STATES` states.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) struct TooManyStates;

/// Builds the automaton: first a trie of the needles ([`AcBuilder::insert`]), then failure
/// links and the complete transition table ([`AcBuilder::build`]).
pub(crate) struct AcBuilder {
    /// While inserting, `next` holds trie edges only: 0 means "no edge" (no edge leads back to
    /// the root in a trie).
    rows: Vec<AcRow>,
}

impl AcBuilder {
    /// A builder holding only the root.
    pub fn new() -> AcBuilder {
        AcBuilder {
            rows: vec![empty_row()],
        }
    }

    /// States so far, the root included.
    #[cfg(test)]
    pub fn states(&self) -> usize {
        self.rows.len()
    }

    /// Adds `needle` (non-empty), whose matches set output bit `bit` (< 64). Nothing is added
    /// when the automaton would exceed `MAX_AC_STATES` states.
    pub fn insert(&mut self, needle: &[u8], bit: u32) -> Result<(), TooManyStates> {
        debug_assert!(!needle.is_empty() && bit < u64::BITS);
        let (mut state, matched) = self.longest_prefix(needle);
        let needed = needle.len() - matched;
        if self.rows.len() + needed > MAX_AC_STATES as usize {
            return Err(TooManyStates);
        }
        for &b in &needle[matched..] {
            // Cannot fail: the count is bounded by MAX_AC_STATES, checked above.
            let new = u16::try_from(self.rows.len()).map_err(|_| TooManyStates)?;
            self.rows.push(empty_row());
            self.rows[usize::from(state)].next[usize::from(b)] = new;
            state = new;
        }
        self.rows[usize::from(state)].out |= 1u64 << bit;
        Ok(())
    }

    /// The state reached by the longest prefix of `needle` already in the trie, and its length.
    fn longest_prefix(&self, needle: &[u8]) -> (u16, usize) {
        let mut state = ROOT;
        for (i, &b) in needle.iter().enumerate() {
            let next = self.rows[usize::from(state)].next[usize::from(b)];
            if next == ROOT {
                return (state, i);
            }
            state = next;
        }
        (state, needle.len())
    }

    /// Computes failure links breadth first and turns the trie into a complete DFA whose `out`
    /// holds the bits of every needle ending at a state or anywhere on its failure chain.
    pub fn build(mut self) -> Vec<AcRow> {
        let mut fail = vec![ROOT; self.rows.len()];
        let mut queue: VecDeque<u16> = self.rows[usize::from(ROOT)]
            .next
            .iter()
            .copied()
            .filter(|&child| child != ROOT)
            .collect();
        // Root's missing edges already lead to the root (0).
        while let Some(state) = queue.pop_front() {
            let s = usize::from(state);
            // The failure state is shallower, so its row is already complete.
            let fallback = self.rows[usize::from(fail[s])];
            self.rows[s].out |= fallback.out;
            for (b, next) in self.rows[s].next.iter_mut().enumerate() {
                if *next == ROOT {
                    *next = fallback.next[b];
                } else {
                    fail[usize::from(*next)] = fallback.next[b];
                    queue.push_back(*next);
                }
            }
        }
        self.rows
    }
}

fn empty_row() -> AcRow {
    AcRow {
        out: 0,
        next: [ROOT; 256],
    }
}

/// Runs the automaton over `haystack` exactly as the kernel does; returns the output bits.
#[cfg(test)]
pub(crate) fn scan(rows: &[AcRow], haystack: &[u8]) -> u64 {
    let mut state = usize::from(ROOT);
    let mut bits = 0;
    for &b in haystack {
        bits |= rows[state].out;
        state = usize::from(rows[state].next[usize::from(b)]);
    }
    bits | rows[state].out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::tests::Rng;

    fn automaton(needles: &[&[u8]]) -> Vec<AcRow> {
        let mut builder = AcBuilder::new();
        for (bit, needle) in needles.iter().enumerate() {
            builder.insert(needle, bit as u32).unwrap();
        }
        builder.build()
    }

    fn naive(needles: &[Vec<u8>], haystack: &[u8]) -> u64 {
        needles
            .iter()
            .enumerate()
            .filter(|(_, n)| haystack.windows(n.len()).any(|w| w == n.as_slice()))
            .fold(0, |bits, (i, _)| bits | 1 << i)
    }

    #[test]
    fn finds_overlapping_and_nested_needles() {
        let rows = automaton(&[b"he", b"she", b"his", b"hers"]);
        assert_eq!(scan(&rows, b"ushers"), 0b1011);
        assert_eq!(scan(&rows, b"his"), 0b0100);
        assert_eq!(scan(&rows, b"h"), 0);
        assert_eq!(scan(&rows, b""), 0);
        assert_eq!(scan(&rows, b"xxhe"), 0b0001);
    }

    #[test]
    fn a_needle_at_the_very_end_is_found() {
        let rows = automaton(&[b"end"]);
        assert_eq!(scan(&rows, b"the end"), 1);
        assert_eq!(scan(&rows, b"en"), 0);
    }

    #[test]
    fn shared_prefixes_share_states() {
        let mut builder = AcBuilder::new();
        builder.insert(b"abc", 0).unwrap();
        builder.insert(b"abd", 1).unwrap();
        builder.insert(b"ab", 2).unwrap();
        assert_eq!(builder.states(), 5);
    }

    #[test]
    fn refuses_to_grow_past_the_state_limit() {
        let mut builder = AcBuilder::new();
        let long = vec![b'x'; MAX_AC_STATES as usize - 1];
        builder.insert(&long, 0).unwrap();
        assert_eq!(builder.states(), MAX_AC_STATES as usize);
        assert_eq!(builder.insert(b"y", 1), Err(TooManyStates));
        // A needle that needs no new state still fits.
        builder.insert(b"xx", 1).unwrap();
        assert_eq!(builder.states(), MAX_AC_STATES as usize);
    }

    #[test]
    fn matches_naive_search_on_random_inputs() {
        let mut rng = Rng::new(0x5eed);
        for round in 0..2000 {
            // Small alphabets make overlaps and shared prefixes common.
            let alphabet: &[u8] = match round % 3 {
                0 => b"ab",
                1 => b"abc\xff",
                _ => b"abcdefgh\x00 ",
            };
            let n_needles = 1 + rng.below(64) as usize;
            let needles: Vec<Vec<u8>> = (0..n_needles)
                .map(|_| {
                    let len = 1 + rng.below(6) as usize;
                    rng.string(alphabet, len)
                })
                .collect();
            let mut builder = AcBuilder::new();
            for (bit, needle) in needles.iter().enumerate() {
                builder.insert(needle, bit as u32).unwrap();
            }
            let rows = builder.build();
            for _ in 0..20 {
                let len = rng.below(40) as usize;
                let haystack = rng.string(alphabet, len);
                assert_eq!(
                    scan(&rows, &haystack),
                    naive(&needles, &haystack),
                    "needles {needles:?} haystack {haystack:?}"
                );
            }
        }
    }
}
