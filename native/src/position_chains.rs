//! Lists of ascending log positions that grow by one at a time, each named by one `u64` word its
//! owner keeps: the minute cells' record positions (`series_cells.rs`) and the event index's
//! positions of an account's hour (`event_index.rs`). Both get an append per stored event.
//!
//! The layout is chosen for that append. A heap list per key (a `Vec` behind a header) put three scattered
//! cache lines on every event's path (the owner's word, the list's header, the tail of its
//! buffer) and a reallocation now and then. Here a word holds a lone position itself, or names the
//! newest of the list's 64-byte chunks in one arena and how full it is; a chunk holds 15 positions
//! of 32 bits and the number of the list's previous chunk. An append reads the word and writes one
//! chunk, which is where the list's last position (the duplicate check) is too. The arena grows by
//! pages of 64 chunks, so growing never copies what it holds (a doubling vector of chunks copied
//! megabytes at a time). Chunks of released lists go to a free list that new chains take from
//! first. A position past 32 bits (a partition's log past 4 GiB) moves its list to a plain vector
//! of 64-bit positions; a released one leaves an empty slot behind (a partition past 4 GiB has
//! few).

/// A word with this bit set is an index into `wide`.
const LIST_TAG: u64 = 1 << 63;
/// A word with this bit set names a chain: its newest chunk in the low 32 bits, and how many
/// positions that chunk holds in the 4 bits above. An untagged word is a lone position below
/// this (a log's positions are: it is 4 EiB); a lone one past it is a list.
const CHAIN_TAG: u64 = 1 << 62;
const COUNT_SHIFT: u32 = 32;
const CHUNK_POSITIONS: usize = 15;
const NO_CHUNK: u32 = u32::MAX;
const PAGE_CHUNKS: usize = 64;

/// One cache line: 15 positions, then the number of the chain's previous chunk (or of the next
/// free chunk, while on the free list).
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Chunk {
    positions: [u32; CHUNK_POSITIONS],
    previous: u32,
}

#[derive(Default)]
pub struct PositionChains {
    /// Chunk `n` is `pages[n / 64][n % 64]`; `n_chunks` of them are in use or free.
    pages: Vec<Box<[Chunk]>>,
    n_chunks: u32,
    free: Option<u32>,
    /// Lists holding a position past 32 bits.
    wide: Vec<Vec<u64>>,
}

fn chain_word(chunk: u32, count: usize) -> u64 {
    CHAIN_TAG | ((count as u64) << COUNT_SHIFT) | u64::from(chunk)
}

fn chain_of(word: u64) -> (u32, usize) {
    (word as u32, ((word & !CHAIN_TAG) >> COUNT_SHIFT) as usize)
}

impl PositionChains {
    /// The word of a list of one position.
    pub fn lone(&mut self, position: u64) -> u64 {
        if position < CHAIN_TAG {
            position
        } else {
            self.widened(vec![position])
        }
    }

    /// The word of a list of `positions` (ascending); None if there are none.
    pub fn word_of(&mut self, positions: &[u64]) -> Option<u64> {
        let (&first, rest) = positions.split_first()?;
        let mut word = self.lone(first);
        for &position in rest {
            self.add(&mut word, position);
        }
        Some(word)
    }

    /// Append `position` (not below the list's last) to `word`'s list, unless it is its last.
    pub fn add(&mut self, word: &mut u64, position: u64) {
        if *word & LIST_TAG != 0 {
            let list = &mut self.wide[(*word & !LIST_TAG) as usize];
            if list.last() != Some(&position) {
                list.push(position);
            }
        } else if *word & CHAIN_TAG == 0 {
            if *word == position {
                return;
            }
            match (u32::try_from(*word), u32::try_from(position)) {
                (Ok(first), Ok(second)) => {
                    let chunk = self.new_chunk(NO_CHUNK);
                    let positions = &mut self.chunk_mut(chunk).positions;
                    positions[0] = first;
                    positions[1] = second;
                    *word = chain_word(chunk, 2);
                }
                _ => *word = self.widened(vec![*word, position]),
            }
        } else {
            let (newest, count) = chain_of(*word);
            let chunk = self.chunk_mut(newest);
            if u64::from(chunk.positions[count - 1]) == position {
                return;
            }
            let Ok(narrow) = u32::try_from(position) else {
                let mut all = self.chain_positions(newest, count);
                all.push(position);
                self.free_chain(newest);
                *word = self.widened(all);
                return;
            };
            if count < CHUNK_POSITIONS {
                chunk.positions[count] = narrow;
                *word = chain_word(newest, count + 1);
            } else {
                let next = self.new_chunk(newest);
                self.chunk_mut(next).positions[0] = narrow;
                *word = chain_word(next, 1);
            }
        }
    }

    /// The positions of `word`'s list, ascending.
    pub fn get(&self, word: u64) -> Vec<u64> {
        if word & LIST_TAG != 0 {
            self.wide[(word & !LIST_TAG) as usize].clone()
        } else if word & CHAIN_TAG == 0 {
            vec![word]
        } else {
            let (newest, count) = chain_of(word);
            self.chain_positions(newest, count)
        }
    }

    /// Give back what `word`'s list holds; the word is not to be used again.
    pub fn release(&mut self, word: u64) {
        if word & LIST_TAG != 0 {
            self.wide[(word & !LIST_TAG) as usize] = Vec::new();
        } else if word & CHAIN_TAG != 0 {
            self.free_chain(chain_of(word).0);
        }
    }

    /// Bytes held (capacity).
    pub fn memory_bytes(&self) -> usize {
        let wide: usize = self.wide.iter().map(|l| l.capacity() * 8 + 24).sum();
        self.pages.len() * PAGE_CHUNKS * std::mem::size_of::<Chunk>() + wide
    }

    fn widened(&mut self, positions: Vec<u64>) -> u64 {
        self.wide.push(positions);
        LIST_TAG | (self.wide.len() - 1) as u64
    }

    fn chain_positions(&self, newest: u32, count: usize) -> Vec<u64> {
        let mut chunks = vec![(newest, count)];
        let mut previous = self.chunk(newest).previous;
        while previous != NO_CHUNK {
            chunks.push((previous, CHUNK_POSITIONS));
            previous = self.chunk(previous).previous;
        }
        let mut positions = Vec::with_capacity(chunks.len() * CHUNK_POSITIONS);
        for &(chunk, count) in chunks.iter().rev() {
            positions.extend(self.chunk(chunk).positions[..count].iter().map(|&p| u64::from(p)));
        }
        positions
    }

    fn new_chunk(&mut self, previous: u32) -> u32 {
        let chunk = Chunk { positions: [0; CHUNK_POSITIONS], previous };
        let number = match self.free {
            Some(free) => {
                let next = self.chunk(free).previous;
                self.free = (next != NO_CHUNK).then_some(next);
                free
            }
            None => {
                let number = self.n_chunks;
                assert!(number != NO_CHUNK, "fewer than 2^32 - 1 chunks");
                if number as usize == self.pages.len() * PAGE_CHUNKS {
                    // Built in place: `Box::new` of an array would build it on the stack and copy it.
                    let empty = Chunk { positions: [0; CHUNK_POSITIONS], previous: NO_CHUNK };
                    self.pages.push(vec![empty; PAGE_CHUNKS].into_boxed_slice());
                }
                self.n_chunks += 1;
                number
            }
        };
        *self.chunk_mut(number) = chunk;
        number
    }

    fn chunk(&self, number: u32) -> &Chunk {
        let n = number as usize;
        &self.pages[n / PAGE_CHUNKS][n % PAGE_CHUNKS]
    }

    fn chunk_mut(&mut self, number: u32) -> &mut Chunk {
        let n = number as usize;
        &mut self.pages[n / PAGE_CHUNKS][n % PAGE_CHUNKS]
    }

    /// Put the chain ending at `newest` on the free list.
    fn free_chain(&mut self, newest: u32) {
        let mut oldest = newest;
        while self.chunk(oldest).previous != NO_CHUNK {
            oldest = self.chunk(oldest).previous;
        }
        self.chunk_mut(oldest).previous = self.free.unwrap_or(NO_CHUNK);
        self.free = Some(newest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list_of(chains: &mut PositionChains, values: &[u64]) -> u64 {
        let mut word = chains.lone(values[0]);
        for &p in &values[1..] {
            chains.add(&mut word, p);
        }
        word
    }

    #[test]
    fn a_lone_position_needs_no_chunk_and_repeats_are_kept_once() {
        let mut chains = PositionChains::default();
        let mut word = list_of(&mut chains, &[7, 7, 7]);
        assert_eq!(chains.get(word), vec![7]);
        assert_eq!(chains.n_chunks, 0);
        chains.add(&mut word, 9);
        chains.add(&mut word, 9);
        assert_eq!(chains.get(word), vec![7, 9]);
    }

    #[test]
    fn chains_grow_past_a_chunk_and_lists_interleave() {
        let mut chains = PositionChains::default();
        let (mut a, mut b) = (chains.lone(0), chains.lone(1));
        for p in 1..=40u64 {
            chains.add(&mut a, p * 10);
            chains.add(&mut a, p * 10); // the same record again: kept once
            chains.add(&mut b, p * 10 + 1);
        }
        let expected_a: Vec<u64> = std::iter::once(0).chain((1..=40).map(|p| p * 10)).collect();
        let expected_b: Vec<u64> = std::iter::once(1).chain((1..=40).map(|p| p * 10 + 1)).collect();
        assert_eq!(chains.get(a), expected_a);
        assert_eq!(chains.get(b), expected_b);
        assert_eq!(chains.n_chunks, 6); // 41 positions each: three chunks each
    }

    #[test]
    fn a_position_past_32_bits_moves_the_list_to_a_wide_one() {
        let mut chains = PositionChains::default();
        let from_lone = list_of(&mut chains, &[5, 1 << 33]);
        let mut chained = list_of(&mut chains, &(0..20).collect::<Vec<u64>>());
        chains.add(&mut chained, 1 << 40);
        chains.add(&mut chained, (1 << 40) + 1);
        chains.add(&mut chained, (1 << 40) + 1); // a wide list keeps a repeat once too
        assert_eq!(chains.get(from_lone), vec![5, 1 << 33]);
        let mut expected: Vec<u64> = (0..20).collect();
        expected.extend([1 << 40, (1 << 40) + 1]);
        assert_eq!(chains.get(chained), expected);
        // The chain's two chunks were freed: the next chain takes them.
        let next = list_of(&mut chains, &[1, 2]);
        assert_eq!(chains.get(next), vec![1, 2]);
        assert_eq!(chains.n_chunks, 2);
    }

    #[test]
    fn released_chunks_are_taken_before_the_arena_grows() {
        let mut chains = PositionChains::default();
        let values: Vec<Vec<u64>> =
            vec![(0..30).collect(), vec![3], (100..140).collect(), vec![1, 1 << 35], (200..203).collect()];
        let words: Vec<u64> = values.iter().map(|v| list_of(&mut chains, v)).collect();
        let chunks = chains.n_chunks;
        for &i in &[0, 2, 3] {
            chains.release(words[i]);
        }
        // 2 + 3 chunks were freed: 5 chains of 2 positions take them.
        let new: Vec<u64> = (0..5).map(|i| list_of(&mut chains, &[i, i + 1])).collect();
        assert_eq!(chains.n_chunks, chunks);
        assert_eq!(chains.get(new[4]), vec![4, 5]);
        assert_eq!(chains.get(words[1]), values[1]);
        assert_eq!(chains.get(words[4]), values[4]);
    }

    #[test]
    fn word_of_builds_a_list_and_any_u64_is_a_position() {
        let mut chains = PositionChains::default();
        let many: Vec<u64> = (0..50).map(|p| p * 3).collect();
        let word = chains.word_of(&many).unwrap();
        assert_eq!(chains.get(word), many);
        assert_eq!(chains.word_of(&[9]), Some(9));
        assert_eq!(chains.word_of(&[]), None);
        for huge in [vec![1 << 62], vec![1, 1 << 62, u64::MAX], vec![(1 << 62) + 1, u64::MAX]] {
            let word = chains.word_of(&huge).unwrap();
            assert_eq!(chains.get(word), huge);
        }
        let mut word = chains.lone(u64::MAX - 1);
        chains.add(&mut word, u64::MAX);
        assert_eq!(chains.get(word), vec![u64::MAX - 1, u64::MAX]);
    }
}
