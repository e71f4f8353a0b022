//! An `IngestRequest` decoded and split by partition with no Python object, so that a worker
//! thread can do it while the event loop serves other calls (`py_decode_worker`); the loop then
//! only checks the metrics and hands the parts over (`decode_ingest`'s second half).
//!
//! The decoded events borrow their strings from the request bytes, which the parts own: the bytes
//! never move (`StableBytes`: a heap buffer, or a Python bytes object the worker was lent) and
//! outlive the events (`request` is dropped before `_data`), so the borrow is sound though Rust
//! cannot name its lifetime; `request()` lends it no longer than `self`.

use std::collections::HashMap;

use crate::batch_dedup::compute_keys_ahead;
use crate::event_batch::{EventBatch, EventBatchBuilder};
use crate::ingest_request::{decode_ingest_request, CodeNumbers, Event, IngestRequest};
use crate::int_hash::IntMap;
use crate::partitioning;
use crate::wire::Malformed;

/// A partition's share of a request: its events as a batch, and their indexes in the request.
pub struct Part {
    pub partition: u64,
    pub batch: EventBatch,
    pub indexes: Vec<usize>,
}

/// The events of `events` per partition, partitions in order of first appearance, each one's
/// events in request order.
pub fn split_by_partition(events: &[Event<'_>], partitions: u64) -> Vec<Part> {
    let mut slot_of: IntMap<u64, usize> = IntMap::default();
    let mut slots: Vec<(u64, Vec<usize>)> = Vec::new();
    // Room for twice a partition's even share, so that few of the lists are regrown.
    let share = 2 * events.len() / partitions.max(1) as usize + 4;
    for (i, event) in events.iter().enumerate() {
        let p = partitioning::partition_of(event.account_id, partitions);
        let slot = *slot_of.entry(p).or_insert_with(|| {
            slots.push((p, Vec::with_capacity(share)));
            slots.len() - 1
        });
        slots[slot].1.push(i);
    }
    slots
        .into_iter()
        .map(|(partition, indexes)| {
            let mut builder = EventBatchBuilder::for_events(indexes.iter().map(|&i| &events[i]));
            for &i in &indexes {
                builder.push(&events[i]);
            }
            Part { partition, batch: builder.finish(), indexes }
        })
        .collect()
}

/// Request bytes whose address stays put however their owner is moved: a heap buffer, or a
/// Python bytes object kept alive (`py_decode_worker`).
///
/// # Safety
///
/// `bytes()` must give the same slice, unchanged, for as long as the value lives, wherever it is
/// moved.
pub unsafe trait StableBytes: Send + Sync {
    fn bytes(&self) -> &[u8];
}

// SAFETY: a vector's bytes are on the heap; moving the vector moves only its pointer to them.
unsafe impl StableBytes for Vec<u8> {
    fn bytes(&self) -> &[u8] {
        self
    }
}

/// A request's bytes, decoded, its metric codes numbered, and its events split by partition.
pub struct RequestParts {
    // Declared (so dropped) before `_data`, which they borrow.
    request: IngestRequest<'static>,
    numbers: CodeNumbers<'static>,
    pub parts: Vec<Part>,
    /// Held only for `request` to borrow.
    _data: Box<dyn StableBytes>,
}

impl RequestParts {
    /// Decode `data`, split its events over `partitions` (which must be at least 1), and compute
    /// the dedup key of each event whose metric has a generation in `generations` (by code).
    pub fn decode(
        data: impl StableBytes + 'static,
        partitions: u64,
        generations: &HashMap<String, u64>,
    ) -> Result<Self, Malformed> {
        let data: Box<dyn StableBytes> = Box::new(data);
        // SAFETY: the slice points into bytes that stay where they are (`StableBytes`) and are
        // dropped after everything borrowing them (see the module's comment).
        let bytes: &'static [u8] =
            unsafe { std::slice::from_raw_parts(data.bytes().as_ptr(), data.bytes().len()) };
        let request = decode_ingest_request(bytes)?;
        let numbers = CodeNumbers::of(&request.events);
        let mut parts = split_by_partition(&request.events, partitions);
        if !generations.is_empty() {
            for part in &mut parts {
                compute_keys_ahead(&mut part.batch, |code| generations.get(code).copied());
            }
        }
        Ok(Self { request, numbers, parts, _data: data })
    }

    /// The decoded request and its code numbers, lent for as long as `self`.
    pub fn request(&self) -> (&IngestRequest<'_>, &CodeNumbers<'_>) {
        (&self.request, &self.numbers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(accounts: &[u64]) -> Vec<u8> {
        let mut out = Vec::new();
        for &account in accounts {
            let mut event = vec![0x08];
            let mut v = account;
            while v >= 0x80 {
                event.push((v as u8) | 0x80);
                v >>= 7;
            }
            event.push(v as u8);
            event.extend_from_slice(&[0x12, 1, b'm', 0x42, 2, b'i', b'd']);
            out.push(0x0a);
            out.push(event.len() as u8);
            out.extend_from_slice(&event);
        }
        out
    }

    #[test]
    fn parts_follow_first_appearance_and_keep_request_order() {
        let accounts = [1, 2, 3, 4, 5, 6, 7, 8, 1, 2];
        let parts = RequestParts::decode(request(&accounts), 4, &HashMap::new()).unwrap();
        assert_eq!(parts.request().0.events.len(), accounts.len());
        assert_eq!(parts.request().1.of_event.len(), accounts.len());
        let mut seen = Vec::new();
        for part in &parts.parts {
            assert!(!seen.contains(&part.partition));
            seen.push(part.partition);
            assert!(part.indexes.windows(2).all(|w| w[0] < w[1]));
            for (event, &i) in part.batch.events.iter().zip(&part.indexes) {
                assert_eq!(event.account, accounts[i]);
                assert_eq!(partitioning::partition_of(accounts[i], 4), part.partition);
                assert_eq!(part.batch.event_id(event), "id");
            }
        }
        let total: usize = parts.parts.iter().map(|p| p.indexes.len()).sum();
        assert_eq!(total, accounts.len());
    }

    #[test]
    fn bytes_that_are_not_a_request_are_malformed() {
        assert!(RequestParts::decode(vec![0x0a, 5, 1], 4, &HashMap::new()).is_err());
    }
}
