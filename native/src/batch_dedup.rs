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
#[derive(Debug, Default, PartialEq, Eq)]
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
    pub packed_rows: Vec<u8>,
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

/// Deduplicate and stamp `batch` against `table`; `generations[c]` is the generation of the
/// batch's code `c`, the first new event gets `first_offset`.
pub fn dedup_batch(
    table: &DedupTable,
    batch: &EventBatch,
    generations: &[u64],
    first_offset: u64,
    arrival: i64,
) -> BatchDedup {
    let n = batch.len();
    let mut out = BatchDedup {
        offsets: Vec::with_capacity(n),
        stored: Vec::with_capacity(n),
        new_keys: Vec::with_capacity(n),
        key_offsets: Vec::with_capacity(n),
        ..BatchDedup::default()
    };
    let mut packed = MsgpackWriter::with_capacity(64 * n);
    // Every key first, their table slots prefetched, then the probes: the misses overlap.
    let keys: Vec<Option<u64>> =
        batch.events.iter().map(|e| key_of(batch, e, generations[e.code as usize])).collect();
    for &key in keys.iter().flatten() {
        table.prefetch(key);
    }
    let mut batch_keys: IntMap<u64, u64> = IntMap::with_capacity_and_hasher(n, Default::default());
    let mut next_offset = first_offset;
    for (i, (e, key)) in batch.events.iter().zip(keys).enumerate() {
        if let Some(key) = key {
            if let Some(original) = batch_keys.get(&key).copied().or_else(|| table.get(key)) {
                out.offsets.push(original);
                out.duplicates.push((i, original));
                continue;
            }
            batch_keys.insert(key, next_offset);
            out.new_keys.push(key);
            out.key_offsets.push(next_offset);
        }
        let mut stored = *e;
        if e.time == 0 {
            out.stamped.push(out.stored.len());
            stored = stored.stamped(arrival);
        }
        batch.pack_row(&mut packed, &stored);
        out.stored.push(stored);
        out.offsets.push(next_offset);
        next_offset += 1;
    }
    out.packed_rows = packed.buf;
    out
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
        let out = dedup_batch(&table, &b, &[7], 10, 99);
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
    fn a_generation_is_part_of_the_key() {
        let b = batch(&[(1, "m", 9, "a")]);
        assert_ne!(key_of(&b, &b.events[0], 1), key_of(&b, &b.events[0], 2));
        assert_eq!(key_of(&b, &b.events[0], 1), Some(event_key(1, "m", 1, "a")));
        let unkeyed = batch(&[(1, "m", 0, "")]);
        assert_eq!(key_of(&unkeyed, &unkeyed.events[0], 1), None);
    }
}
