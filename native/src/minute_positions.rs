//! The record positions of each minute cell of a series metric's slot 0, for the raw edge minutes
//! of range queries (docs/design.md, "Memory per stored event"): entry `e` is the `e`-th minute
//! cell of the slot's `CellMap`, and its positions ascend.
//!
//! Every event appends to its minute cell's positions, so the layout is chosen for that append.
//! One heap list per cell (`Positions`) put three scattered cache lines on every event's path
//! (the cell's word, the list's header, the tail of its buffer) and a reallocation now and then.
//! Here a cell's word holds a lone position itself, or names the newest of the cell's 64-byte
//! chunks in one arena and how full it is; a chunk holds 15 positions of 32 bits and the number
//! of the cell's previous chunk. An append reads the word and writes one chunk, which is where the
//! cell's last position (the duplicate check) is too. The arena grows by pages of 64 chunks, so
//! growing never copies what it holds (a doubling vector of chunks copied megabytes at a time).
//! Chunks of dropped cells go to a free list that new chains take from first. A position past 32
//! bits (a partition's log past 4 GiB) moves its cell to a `Positions` list, which widens.

use crate::positions::Positions;

/// A word with this bit set is an index into `lists`.
const LIST_TAG: u64 = 1 << 63;
/// A word with this bit set names a chain: its newest chunk in the low 32 bits, and how many
/// positions that chunk holds in the 4 bits above.
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

type Page = [Chunk; PAGE_CHUNKS];

#[derive(Default)]
pub struct MinutePositions {
    words: Vec<u64>,
    /// Chunk `n` is `pages[n / 64][n % 64]`; `n_chunks` of them are in use or free.
    pages: Vec<Box<Page>>,
    n_chunks: u32,
    free: Option<u32>,
    lists: Vec<Positions>,
}

fn chain_word(chunk: u32, count: usize) -> u64 {
    CHAIN_TAG | ((count as u64) << COUNT_SHIFT) | u64::from(chunk)
}

fn chain_of(word: u64) -> (u32, usize) {
    (word as u32, ((word & !CHAIN_TAG) >> COUNT_SHIFT) as usize)
}

impl MinutePositions {
    pub fn len(&self) -> usize {
        self.words.len()
    }

    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    /// A new entry, fed by the record at `position` (below 2^62, as every log position is).
    pub fn push(&mut self, position: u64) {
        debug_assert!(position < CHAIN_TAG);
        self.words.push(position);
    }

    /// A new entry with `positions` (ascending, at least one); Err if one is 2^62 or more,
    /// which no log reaches (a snapshot that says so is damaged).
    pub fn push_sorted(&mut self, positions: &[u64]) -> Result<(), String> {
        if positions.is_empty() || positions.iter().any(|&p| p >= CHAIN_TAG) {
            return Err("aggregates snapshot: a minute cell without record positions".to_owned());
        }
        let mut iter = positions.iter();
        self.words.push(*iter.next().expect("not empty"));
        let entry = self.words.len() - 1;
        for &position in iter {
            self.add(entry, position);
        }
        Ok(())
    }

    /// Append `position` (not below the entry's last) to `entry`, unless it is its last already.
    pub fn add(&mut self, entry: usize, position: u64) {
        let word = self.words[entry];
        if word & LIST_TAG != 0 {
            self.lists[(word & !LIST_TAG) as usize].push_new(position);
        } else if word & CHAIN_TAG == 0 {
            if word == position {
                return;
            }
            match (u32::try_from(word), u32::try_from(position)) {
                (Ok(first), Ok(second)) => {
                    let chunk = self.new_chunk(NO_CHUNK);
                    let positions = &mut self.chunk_mut(chunk).positions;
                    positions[0] = first;
                    positions[1] = second;
                    self.words[entry] = chain_word(chunk, 2);
                }
                _ => self.widen(entry, vec![word, position]),
            }
        } else {
            let (newest, count) = chain_of(word);
            let chunk = self.chunk_mut(newest);
            if u64::from(chunk.positions[count - 1]) == position {
                return;
            }
            let Ok(narrow) = u32::try_from(position) else {
                let mut all = self.chain_positions(newest, count);
                all.push(position);
                self.free_chain(newest);
                return self.widen(entry, all);
            };
            if count < CHUNK_POSITIONS {
                chunk.positions[count] = narrow;
                self.words[entry] = chain_word(newest, count + 1);
            } else {
                let next = self.new_chunk(newest);
                self.chunk_mut(next).positions[0] = narrow;
                self.words[entry] = chain_word(next, 1);
            }
        }
    }

    /// The positions of `entry`, ascending.
    pub fn get(&self, entry: usize) -> Vec<u64> {
        let word = self.words[entry];
        if word & LIST_TAG != 0 {
            self.lists[(word & !LIST_TAG) as usize].to_vec()
        } else if word & CHAIN_TAG == 0 {
            vec![word]
        } else {
            let (newest, count) = chain_of(word);
            self.chain_positions(newest, count)
        }
    }

    /// Keep only the entries `kept` (ascending), renumbered from 0 in that order; the chunks and
    /// lists of the others are freed.
    pub fn retain(&mut self, kept: &[usize]) {
        let words = std::mem::take(&mut self.words);
        let mut lists = std::mem::take(&mut self.lists);
        let mut next_kept = kept.iter().peekable();
        for (entry, &word) in words.iter().enumerate() {
            let keep = next_kept.next_if_eq(&&entry).is_some();
            if word & LIST_TAG != 0 {
                if keep {
                    let list = std::mem::replace(&mut lists[(word & !LIST_TAG) as usize], Positions::empty());
                    self.words.push(LIST_TAG | self.lists.len() as u64);
                    self.lists.push(list);
                }
            } else {
                if keep {
                    self.words.push(word);
                } else if word & CHAIN_TAG != 0 {
                    self.free_chain(chain_of(word).0);
                }
            }
        }
    }

    /// Bytes held (capacity).
    pub fn memory_bytes(&self) -> usize {
        let lists: usize = self.lists.iter().map(|l| l.memory_bytes() + 32).sum();
        self.words.capacity() * 8 + self.pages.len() * std::mem::size_of::<Page>() + lists
    }

    fn widen(&mut self, entry: usize, positions: Vec<u64>) {
        self.words[entry] = LIST_TAG | self.lists.len() as u64;
        self.lists.push(Positions::from_sorted(&positions));
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
                    let empty = Chunk { positions: [0; CHUNK_POSITIONS], previous: NO_CHUNK };
                    self.pages.push(Box::new([empty; PAGE_CHUNKS]));
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

    fn entry_with(positions: &mut MinutePositions, values: &[u64]) -> usize {
        positions.push(values[0]);
        let entry = positions.len() - 1;
        for &p in &values[1..] {
            positions.add(entry, p);
        }
        entry
    }

    #[test]
    fn a_lone_position_needs_no_chunk_and_repeats_are_kept_once() {
        let mut positions = MinutePositions::default();
        let entry = entry_with(&mut positions, &[7, 7, 7]);
        assert_eq!(positions.get(entry), vec![7]);
        assert_eq!(positions.n_chunks, 0);
        positions.add(entry, 9);
        positions.add(entry, 9);
        assert_eq!(positions.get(entry), vec![7, 9]);
    }

    #[test]
    fn chains_grow_past_a_chunk_and_cells_interleave() {
        let mut positions = MinutePositions::default();
        let a = entry_with(&mut positions, &[0]);
        let b = entry_with(&mut positions, &[1]);
        for p in 1..=40u64 {
            positions.add(a, p * 10);
            positions.add(a, p * 10); // the same record again: kept once
            positions.add(b, p * 10 + 1);
        }
        let expected_a: Vec<u64> = std::iter::once(0).chain((1..=40).map(|p| p * 10)).collect();
        let expected_b: Vec<u64> = std::iter::once(1).chain((1..=40).map(|p| p * 10 + 1)).collect();
        assert_eq!(positions.get(a), expected_a);
        assert_eq!(positions.get(b), expected_b);
        assert_eq!(positions.n_chunks, 6); // 41 positions each: three chunks each
    }

    #[test]
    fn a_position_past_32_bits_moves_the_cell_to_a_wide_list() {
        let mut positions = MinutePositions::default();
        let lone = entry_with(&mut positions, &[5, 1 << 33]);
        let chained = entry_with(&mut positions, &(0..20).collect::<Vec<u64>>());
        positions.add(chained, 1 << 40);
        positions.add(chained, (1 << 40) + 1);
        assert_eq!(positions.get(lone), vec![5, 1 << 33]);
        let mut expected: Vec<u64> = (0..20).collect();
        expected.extend([1 << 40, (1 << 40) + 1]);
        assert_eq!(positions.get(chained), expected);
        // The chain's two chunks were freed: the next chain takes them.
        let next = entry_with(&mut positions, &[1, 2]);
        assert_eq!(positions.get(next), vec![1, 2]);
        assert_eq!(positions.n_chunks, 2);
    }

    #[test]
    fn retain_keeps_the_chosen_entries_in_order_and_reuses_the_dropped_chunks() {
        let mut positions = MinutePositions::default();
        let values: Vec<Vec<u64>> =
            vec![(0..30).collect(), vec![3], (100..140).collect(), vec![1, 1 << 35], (200..203).collect()];
        for v in &values {
            entry_with(&mut positions, v);
        }
        let chunks = positions.n_chunks;
        positions.retain(&[1, 3, 4]);
        assert_eq!(positions.len(), 3);
        assert_eq!(positions.get(0), values[1]);
        assert_eq!(positions.get(1), values[3]);
        assert_eq!(positions.get(2), values[4]);
        // 2 + 3 chunks were freed: 5 chains of 2 positions take them before the arena grows.
        for i in 0..5 {
            entry_with(&mut positions, &[i, i + 1]);
        }
        assert_eq!(positions.n_chunks, chunks);
        assert_eq!(positions.get(7), vec![4, 5]);
        assert_eq!(positions.get(2), values[4]);
    }

    #[test]
    fn push_sorted_loads_a_snapshot_list_and_refuses_what_no_log_has() {
        let mut positions = MinutePositions::default();
        let many: Vec<u64> = (0..50).map(|p| p * 3).collect();
        assert_eq!(positions.push_sorted(&many), Ok(()));
        assert_eq!(positions.push_sorted(&[9]), Ok(()));
        assert_eq!(positions.get(0), many);
        assert_eq!(positions.get(1), vec![9]);
        assert!(positions.push_sorted(&[]).is_err());
        assert!(positions.push_sorted(&[1, 1 << 62]).is_err());
        assert_eq!(positions.len(), 2);
    }
}
