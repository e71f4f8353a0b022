//! The dedup loop of `Partition.ingest` over a native `EventBatch`: the loop of
//! `py_partition_batch::dedup_record` (and of its reference, `node.partition_engine.
//! python_dedup_batch`) with every event already a Rust struct, so it touches no Python object
//! and runs with the GIL released (`py_batch_ingest`). Each event's dedup key (its id's, else its
//! content's if it has its own time, else none) is probed in the batch's earlier keys and in the
//! partition's index, which is only read; a new event gets the next offset, the arrival time if
//! it has none, and its row is packed into the event record as it goes.

use crate::dedup_key::{derived_key, event_key, DerivedKeyInput};
use crate::dedup_table::DedupTable;
use crate::event_batch::{BatchEvent, EventBatch, KeyAhead};
use crate::int_hash::IntMap;
use crate::msgpack_writer::MsgpackWriter;

/// What the loop found: `python_dedup_batch`'s lists, the stored events, and their packed rows.
///
/// A partition's ingest keeps one and hands it to every part (`dedup_batch` clears it first), so
/// that a part allocates only what it hands on (its offsets, its stored events): the keys, the
/// batch's own key map and the packed rows (a kilobyte or more, a request of glibc's large bins
/// that first consolidates every small chunk freed since) reuse the last part's buffers.
#[derive(Debug, Default)]
pub struct BatchDedup {
    /// Each event's offset (a duplicate's is its original's).
    pub offsets: Vec<u64>,
    /// The events to store, stamped ones with the arrival time.
    pub stored: Vec<BatchEvent>,
    /// Indexes in `stored` of the stamped events.
    pub stamped: Vec<usize>,
    /// `(request index, original offset)` per duplicate.
    pub duplicates: Vec<(usize, u64)>,
    pub new_keys: Vec<u64>,
    pub key_offsets: Vec<u64>,
    /// The stored events' msgpack rows, one after the other (the record's bulk).
    pub packed_rows: MsgpackWriter,
    /// Each event's key, computed before any is probed.
    keys: Vec<Option<u64>>,
    /// The batch's own keys so far, and their offsets.
    batch_keys: IntMap<u64, u64>,
}

/// Parts of up to this many events leave their buffers for the next part; a larger one's are
/// freed, so that one huge request does not pin its buffers in every partition it reached.
const KEPT_FOR_EVENTS: usize = 4096;

impl BatchDedup {
    /// Free the buffers if a part larger than `KEPT_FOR_EVENTS` grew them.
    pub fn release_if_large(&mut self) {
        if self.keys.capacity() > KEPT_FOR_EVENTS {
            *self = Self::default();
        }
    }
}

/// The dedup key of an event under its metric's `generation` (None: no id and no time of its
/// own, so never a duplicate): the one computed ahead if it was for that generation.
pub fn key_of(batch: &EventBatch, e: &BatchEvent, generation: u64) -> Option<u64> {
    match e.key {
        Some(ahead) if ahead.generation == generation => ahead.key,
        _ => compute_key(batch, e, generation),
    }
}

/// Compute, ahead of the partition, the dedup key of each event of `batch` whose metric has a
/// generation in `generation_of` (by code).
pub fn compute_keys_ahead(batch: &mut EventBatch, generation_of: impl Fn(&str) -> Option<u64>) {
    let generations: Vec<Option<u64>> = batch.codes().map(generation_of).collect();
    let keys: Vec<Option<KeyAhead>> = batch
        .events
        .iter()
        .map(|e| {
            generations[e.code as usize]
                .map(|generation| KeyAhead { generation, key: compute_key(batch, e, generation) })
        })
        .collect();
    for (e, key) in batch.events.iter_mut().zip(keys) {
        e.key = key;
    }
}

fn compute_key(batch: &EventBatch, e: &BatchEvent, generation: u64) -> Option<u64> {
    let code = batch.code(e);
    let event_id = batch.event_id(e);
    if !event_id.is_empty() {
        return Some(event_key(e.account, code, generation, event_id));
    }
    if e.time == 0 {
        return None;
    }
    Some(derived_key(DerivedKeyInput {
        account_id: e.account,
        metric_code: code,
        generation,
        time_unix_nano: e.time,
        value: e.value,
        operation: e.operation,
        properties: batch.properties(e).collect(),
    }))
}

/// Deduplicate and stamp `batch` against `table` into `out` (whatever it held is cleared);
/// `generations[c]` is the generation of the batch's code `c`, the first new event gets
/// `first_offset`.
pub fn dedup_batch(
    out: &mut BatchDedup,
    table: &DedupTable,
    batch: &EventBatch,
    generations: &[u64],
    first_offset: u64,
    arrival: i64,
) {
    let n = batch.len();
    for column in [&mut out.offsets, &mut out.new_keys, &mut out.key_offsets] {
        column.clear();
        column.reserve(n);
    }
    out.stored.clear();
    out.stored.reserve(n);
    out.stamped.clear();
    out.duplicates.clear();
    out.packed_rows.buf.clear();
    out.packed_rows.buf.reserve(64 * n);
    out.batch_keys.clear();
    out.batch_keys.reserve(n);
    // Every key first, their table slots prefetched, then the probes: the misses overlap.
    out.keys.clear();
    out.keys.extend(batch.events.iter().map(|e| key_of(batch, e, generations[e.code as usize])));
    for &key in out.keys.iter().flatten() {
        table.prefetch(key);
    }
    let mut next_offset = first_offset;
    for (i, (e, &key)) in batch.events.iter().zip(&out.keys).enumerate() {
        if let Some(key) = key {
            if let Some(original) = out.batch_keys.get(&key).copied().or_else(|| table.get(key)) {
                out.offsets.push(original);
                out.duplicates.push((i, original));
                continue;
            }
            out.batch_keys.insert(key, next_offset);
            out.new_keys.push(key);
            out.key_offsets.push(next_offset);
        }
        let mut stored = *e;
        if e.time == 0 {
            out.stamped.push(out.stored.len());
            stored = stored.stamped(arrival);
        }
        batch.pack_row(&mut out.packed_rows, &stored);
        out.stored.push(stored);
        out.offsets.push(next_offset);
        next_offset += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event_batch::EventBatchBuilder;
    use crate::ingest_request::Event;

    const WINDOW: i64 = 1_000_000_000;

    fn batch(events: &[(u64, &str, i64, &str)]) -> EventBatch {
        let events: Vec<Event<'_>> = events
            .iter()
            .map(|&(account, code, time, id)| Event {
                account_id: account,
                metric_code: code,
                value: 3,
                time_unix_nano: time,
                event_id: id,
                ..Event::default()
            })
            .collect();
        let mut builder = EventBatchBuilder::for_events(events.iter());
        for e in &events {
            builder.push(e);
        }
        builder.finish()
    }

    #[test]
    fn a_key_computed_ahead_serves_its_generation_only() {
        let mut b = batch(&[(1, "m", 9, "a"), (2, "n", 0, ""), (3, "m", 5, "")]);
        let fresh: Vec<_> = b.events.iter().map(|e| key_of(&b, e, 7)).collect();
        compute_keys_ahead(&mut b, |code| (code == "m").then_some(7));
        let ahead: Vec<_> = b.events.iter().map(|e| e.key).collect();
        assert_eq!(ahead[0], Some(KeyAhead { generation: 7, key: fresh[0] }));
        assert_eq!(ahead[1], None); // metric "n" has no generation known ahead
        assert_eq!(ahead[2], Some(KeyAhead { generation: 7, key: fresh[2] }));
        // A key ahead is what the loop uses, for its generation and no other.
        b.events[0].key = Some(KeyAhead { generation: 7, key: Some(12_345) });
        assert_eq!(key_of(&b, &b.events[0], 7), Some(12_345));
        assert_eq!(key_of(&b, &b.events[0], 8), compute_key(&b, &b.events[0], 8));
        assert_ne!(compute_key(&b, &b.events[0], 8), fresh[0]);
    }

    #[test]
    fn duplicates_in_the_batch_and_in_the_index_get_their_originals_offsets() {
        let mut table = DedupTable::new(WINDOW);
        let earlier = batch(&[(1, "m", 50, "seen")]);
        let seen = key_of(&earlier, &earlier.events[0], 7).unwrap();
        table.add(10, &[seen], &[4]).unwrap();
        // ids "a", "a" again, "seen" (in the index), a content key twice, a row without time or id.
        let b = batch(&[
            (1, "m", 9, "a"),
            (1, "m", 9, "a"),
            (1, "m", 9, "seen"),
            (2, "m", 5, ""),
            (2, "m", 5, ""),
            (3, "m", 0, ""),
        ]);
        let mut out = BatchDedup::default();
        dedup_batch(&mut out, &table, &b, &[7], 10, 99);
        assert_eq!(out.offsets, [10, 10, 4, 11, 11, 12]);
        assert_eq!(out.duplicates, [(1, 10), (2, 4), (4, 11)]);
        assert_eq!(out.stamped, [2]);
        assert_eq!(
            out.stored.iter().map(|e| (e.account, e.time)).collect::<Vec<_>>(),
            [(1, 9), (2, 5), (3, 99)]
        );
        assert_eq!(out.key_offsets, [10, 11]);
        assert_eq!(out.new_keys.len(), 2);
    }

    #[test]
    fn a_reused_outcome_answers_as_a_fresh_one() {
        let table = DedupTable::new(WINDOW);
        let first = batch(&[(1, "m", 9, "a"), (1, "m", 9, "a"), (2, "m", 0, ""), (3, "m", 5, "")]);
        let second = batch(&[(4, "m", 0, ""), (1, "m", 9, "b")]);
        let mut reused = BatchDedup::default();
        dedup_batch(&mut reused, &table, &first, &[7], 10, 99);
        dedup_batch(&mut reused, &table, &second, &[7], 20, 98);
        let mut fresh = BatchDedup::default();
        dedup_batch(&mut fresh, &table, &second, &[7], 20, 98);
        assert_eq!(reused.offsets, fresh.offsets);
        assert_eq!(reused.stored, fresh.stored);
        assert_eq!(reused.stamped, fresh.stamped);
        assert_eq!(reused.duplicates, fresh.duplicates);
        assert_eq!((&reused.new_keys, &reused.key_offsets), (&fresh.new_keys, &fresh.key_offsets));
        assert_eq!(reused.packed_rows.buf, fresh.packed_rows.buf);
        assert_eq!(reused.stamped, [0]);

        let huge: Vec<(u64, &str, i64, &str)> =
            (0..=KEPT_FOR_EVENTS as u64).map(|a| (a, "m", 5, "")).collect();
        dedup_batch(&mut reused, &table, &batch(&huge), &[7], 30, 97);
        reused.release_if_large();
        assert_eq!(reused.keys.capacity(), 0);
    }

    #[test]
    fn a_generation_is_part_of_the_key() {
        let b = batch(&[(1, "m", 9, "a")]);
        assert_ne!(key_of(&b, &b.events[0], 1), key_of(&b, &b.events[0], 2));
        assert_eq!(key_of(&b, &b.events[0], 1), Some(event_key(1, "m", 1, "a")));
        let unkeyed = batch(&[(1, "m", 0, "")]);
        assert_eq!(key_of(&unkeyed, &unkeyed.events[0], 1), None);
    }
}
