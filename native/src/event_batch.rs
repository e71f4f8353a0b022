//! A partition's share of a decoded `IngestRequest`, held natively: the events as plain structs,
//! their strings (metric codes, event ids, properties) in one text arena shared by every batch cut
//! from the same request part. The decoder builds one per partition (`EventBatchBuilder`); the
//! partition's dedup step, event index and aggregate cells read it in place, so a request's events
//! become no Python object on the way from the wire to the log and the aggregates. The stored part
//! of a batch (duplicates dropped, arrival times stamped) is another `EventBatch` over the same
//! arena (`EventBatch::with_events`).
//!
//! The builder also packs each event's row as the event record stores it, so that the decode
//! worker does that off the loop: a partition's dedup step copies the packed rows of the events it
//! stores (`pack_row`), and packs again only an event whose time it stamps.

use std::sync::Arc;

use crate::code_table::CodeTable;
use crate::ingest_request::Event;
use crate::msgpack_writer::MsgpackWriter;

/// `OperationType.ADD`, what an event without an operation means.
const ADD: i64 = 1;

/// A piece of the arena's text or packed rows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Span {
    start: u32,
    end: u32,
}

/// The strings of a batch's events.
#[derive(Debug, Default)]
struct Arena {
    text: String,
    /// The metric codes, in order of first appearance.
    codes: Vec<Span>,
    /// Every event's properties, one run per event, each run sorted by key.
    properties: Vec<(Span, Span)>,
    /// Every event's row packed as the event record stores it (`EventBatch::pack_row`).
    rows: Vec<u8>,
}

impl Arena {
    fn push(&mut self, text: &str) -> Span {
        let start = self.text.len() as u32;
        self.text.push_str(text);
        Span { start, end: self.text.len() as u32 }
    }

    fn get(&self, span: Span) -> &str {
        &self.text[span.start as usize..span.end as usize]
    }

    /// `EventBatch::pack_row` from the event's fields.
    fn pack_fields(&self, w: &mut MsgpackWriter, event: &BatchEvent) {
        w.array(7);
        w.uint(event.account);
        w.str(self.get(self.codes[event.code as usize]));
        w.uint(event.value);
        w.int(event.time);
        let (lo, hi) = event.properties;
        if lo == hi {
            w.nil();
        } else {
            w.map((hi - lo) as usize);
            for &(key, value) in &self.properties[lo as usize..hi as usize] {
                w.str(self.get(key));
                w.str(self.get(value));
            }
        }
        w.int(event.operation);
        w.str(self.get(event.event_id));
    }
}

/// One event of a batch: its numbers, and where its strings are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchEvent {
    pub account: u64,
    /// The index of its metric code in the batch's codes.
    pub code: u32,
    pub value: u64,
    pub time: i64,
    pub operation: i64,
    properties: (u32, u32),
    event_id: Span,
    /// Its row packed in the arena's `rows`; empty once its time is stamped (`stamped`).
    row: Span,
    /// The event's dedup key, if computed ahead (the decode worker does, off the loop).
    pub key: Option<KeyAhead>,
}

impl BatchEvent {
    /// The event with the time its partition stamps on it (it had none): its packed row no
    /// longer holds, so `pack_row` packs it from its fields.
    pub fn stamped(self, time: i64) -> Self {
        Self { time, row: Span::default(), ..self }
    }
}

/// A dedup key computed before the event reached its partition, under the generation its metric
/// had then: used only if the partition validates the event against that same generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyAhead {
    pub generation: u64,
    /// None: the event has no key (no id and no time of its own).
    pub key: Option<u64>,
}

/// Events of one partition, in request order, with their strings.
#[derive(Clone, Debug)]
pub struct EventBatch {
    arena: Arc<Arena>,
    pub events: Vec<BatchEvent>,
}

impl EventBatch {
    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// The metric codes of the batch (of every event it was cut from), in order of first appearance.
    pub fn codes(&self) -> impl Iterator<Item = &str> {
        self.arena.codes.iter().map(|&span| self.arena.get(span))
    }

    pub fn code_count(&self) -> usize {
        self.arena.codes.len()
    }

    /// The text of the batch's code number `code`.
    pub fn code_text(&self, code: u32) -> &str {
        self.arena.get(self.arena.codes[code as usize])
    }

    pub fn code(&self, event: &BatchEvent) -> &str {
        self.code_text(event.code)
    }

    pub fn event_id(&self, event: &BatchEvent) -> &str {
        self.arena.get(event.event_id)
    }

    /// The event's properties, sorted by key.
    pub fn properties<'a>(&'a self, event: &BatchEvent) -> impl ExactSizeIterator<Item = (&'a str, &'a str)> {
        let (lo, hi) = event.properties;
        self.arena.properties[lo as usize..hi as usize]
            .iter()
            .map(|&(k, v)| (self.arena.get(k), self.arena.get(v)))
    }

    /// The value of property `key`, if the event has it.
    pub fn property<'a>(&'a self, event: &BatchEvent, key: &str) -> Option<&'a str> {
        self.properties(event).find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    /// The msgpack of an event as an event record stores its row (`node.records`): the seven
    /// fields of the `EventRow` as an array, no properties as nil, ints in their smallest form,
    /// as the `msgpack` package packs the row tuple. The builder's packing is copied where the
    /// event still has it.
    pub fn pack_row(&self, w: &mut MsgpackWriter, event: &BatchEvent) {
        let Span { start, end } = event.row;
        if start < end {
            w.buf.extend_from_slice(&self.arena.rows[start as usize..end as usize]);
        } else {
            self.arena.pack_fields(w, event);
        }
    }

    /// Another batch of these events' strings (a part of them, or them changed).
    pub fn with_events(&self, events: Vec<BatchEvent>) -> Self {
        Self { arena: Arc::clone(&self.arena), events }
    }
}

/// The indexes of a batch's events grouped by code number, for all of its metrics at once (a
/// store scanning the whole batch for its own metric's cost ~0.4 us per metric and part): a
/// counting sort into one vector, where a vector per code grown by pushes had cost ~10
/// allocations a part.
pub struct CodeGroups {
    /// The events' indexes, code by code, each code's in batch order.
    order: Vec<u32>,
    /// `ends[c]`: where code `c`'s indexes end in `order` (and code `c + 1`'s start).
    ends: Vec<u32>,
    /// The codes the batch's events have, in order of first appearance.
    present: Vec<u32>,
}

impl CodeGroups {
    pub fn of(batch: &EventBatch) -> Self {
        let n_codes = batch.code_count();
        // Counts, then the running sums: each code's start, which the placing below moves to
        // its end.
        let mut ends = vec![0u32; n_codes + 1];
        let mut present = Vec::with_capacity(n_codes);
        for e in &batch.events {
            let count = &mut ends[e.code as usize + 1];
            if *count == 0 {
                present.push(e.code);
            }
            *count += 1;
        }
        for c in 0..n_codes {
            ends[c + 1] += ends[c];
        }
        let mut order = vec![0u32; batch.len()];
        for (i, e) in batch.events.iter().enumerate() {
            let cursor = &mut ends[e.code as usize];
            order[*cursor as usize] = i as u32;
            *cursor += 1;
        }
        ends.pop();
        Self { order, ends, present }
    }

    /// The codes present, in order of first appearance.
    pub fn present(&self) -> &[u32] {
        &self.present
    }

    /// The indexes of code `code`'s events, in batch order.
    pub fn indexes(&self, code: u32) -> &[u32] {
        let c = code as usize;
        let start = if c == 0 { 0 } else { self.ends[c - 1] };
        &self.order[start as usize..self.ends[c] as usize]
    }
}

/// Builds the batches of a request's partitions, which share one arena.
#[derive(Default)]
pub struct EventBatchBuilder<'a> {
    arena: Arena,
    code_of: CodeTable<'a, u32>,
    events: Vec<BatchEvent>,
    /// The events' packed rows, the arena's `rows` once finished.
    rows: MsgpackWriter,
}

impl<'a> EventBatchBuilder<'a> {
    /// A builder for `events`, sized for them: the arena is allocated once, not grown string by
    /// string.
    pub fn for_events<'e>(events: impl Iterator<Item = &'e Event<'e>>) -> Self {
        let (mut n, mut text, mut properties) = (0, 0, 0);
        for e in events {
            n += 1;
            text += e.metric_code.len() + e.event_id.len();
            text += e.properties.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
            properties += e.properties.len();
        }
        let arena = Arena {
            text: String::with_capacity(text),
            codes: Vec::new(),
            properties: Vec::with_capacity(properties),
            rows: Vec::new(),
        };
        // A row's numbers and headers take at most 52 bytes, a property's headers 10.
        let rows = MsgpackWriter::with_capacity(52 * n + text + 10 * properties);
        Self { arena, code_of: CodeTable::default(), events: Vec::with_capacity(n), rows }
    }

    /// Add a decoded (and validated) event; an operation of 0 (unset) is ADD, as the Python rows have it.
    pub fn push(&mut self, e: &Event<'a>) {
        let arena = &mut self.arena;
        let code = *self.code_of.get_or_insert_with(e.metric_code, || {
            let span = arena.push(e.metric_code);
            arena.codes.push(span);
            arena.codes.len() as u32 - 1
        });
        let lo = self.arena.properties.len() as u32;
        for (key, value) in &e.properties {
            let pair = (self.arena.push(key), self.arena.push(value));
            self.arena.properties.push(pair);
        }
        let properties = (lo, self.arena.properties.len() as u32);
        let event_id = self.arena.push(e.event_id);
        let operation = if e.operation == 0 { ADD } else { i64::from(e.operation) };
        let mut event = BatchEvent {
            account: e.account_id,
            code,
            value: e.value,
            time: e.time_unix_nano,
            operation,
            properties,
            event_id,
            row: Span::default(),
            key: None,
        };
        let start = self.rows.buf.len() as u32;
        self.arena.pack_fields(&mut self.rows, &event);
        event.row = Span { start, end: self.rows.buf.len() as u32 };
        self.events.push(event);
    }

    pub fn finish(mut self) -> EventBatch {
        self.arena.rows = self.rows.buf;
        EventBatch { arena: Arc::new(self.arena), events: self.events }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event<'a>(account: u64, code: &'a str, props: Vec<(&'a str, &'a str)>, id: &'a str) -> Event<'a> {
        Event {
            account_id: account,
            metric_code: code,
            value: 5,
            time_unix_nano: 7,
            properties: props,
            operation: 0,
            delivery: 0,
            event_id: id,
        }
    }

    #[test]
    fn events_keep_their_fields_and_codes_their_first_appearance_order() {
        let events = [
            event(1, "b", vec![("region", "eu"), ("tier", "pro")], "x"),
            event(2, "a", vec![], ""),
            event(3, "b", vec![("é", "日")], "🙂"),
        ];
        let mut builder = EventBatchBuilder::for_events(events.iter());
        let capacity = builder.arena.text.capacity();
        for e in &events {
            builder.push(e);
        }
        assert_eq!(builder.arena.text.capacity(), capacity); // sized right: never grown
        let batch = builder.finish();
        assert_eq!(batch.codes().collect::<Vec<_>>(), ["b", "a"]);
        let e = &batch.events;
        assert_eq!((batch.code(&e[0]), batch.code(&e[1]), batch.code(&e[2])), ("b", "a", "b"));
        assert_eq!(batch.properties(&e[0]).collect::<Vec<_>>(), [("region", "eu"), ("tier", "pro")]);
        assert_eq!(batch.properties(&e[1]).count(), 0);
        assert_eq!(batch.property(&e[2], "é"), Some("日"));
        assert_eq!(batch.property(&e[2], "region"), None);
        assert_eq!((batch.event_id(&e[0]), batch.event_id(&e[1]), batch.event_id(&e[2])), ("x", "", "🙂"));
        assert_eq!(e[1].operation, ADD);
        let part = batch.with_events(vec![e[2]]);
        assert_eq!((part.len(), part.code(&part.events[0])), (1, "b"));
    }

    #[test]
    fn a_row_packs_as_msgpack_packs_the_row_tuple() {
        let events = [event(300, "m", vec![("k", "v")], "id"), event(1, "m", vec![], "")];
        let mut builder = EventBatchBuilder::for_events(events.iter());
        for e in &events {
            builder.push(e);
        }
        let batch = builder.finish();
        let mut w = MsgpackWriter::with_capacity(64);
        batch.pack_row(&mut w, &batch.events[0]);
        // msgpack.packb((300, "m", 5, 7, {"k": "v"}, 1, "id"))
        assert_eq!(w.buf, b"\x97\xcd\x01\x2c\xa1m\x05\x07\x81\xa1k\xa1v\x01\xa2id");
        let mut w = MsgpackWriter::with_capacity(64);
        batch.pack_row(&mut w, &batch.events[1]);
        // msgpack.packb((1, "m", 5, 7, None, 1, ""))
        assert_eq!(w.buf, b"\x97\x01\xa1m\x05\x07\xc0\x01\xa0");
        // A stamped event's row is packed from its fields, with its new time.
        let mut w = MsgpackWriter::with_capacity(64);
        batch.pack_row(&mut w, &batch.events[1].stamped(300));
        assert_eq!(w.buf, b"\x97\x01\xa1m\x05\xcd\x01\x2c\xc0\x01\xa0");
        let mut fields = MsgpackWriter::with_capacity(64);
        batch.arena.pack_fields(&mut fields, &batch.events[0]);
        let mut copied = MsgpackWriter::with_capacity(64);
        batch.pack_row(&mut copied, &batch.events[0]);
        assert_eq!(copied.buf, fields.buf);
    }

    #[test]
    fn events_group_by_code_in_batch_order_and_codes_by_first_appearance() {
        let events = [
            event(1, "a", vec![], ""),
            event(2, "b", vec![], ""),
            event(3, "a", vec![], ""),
            event(4, "c", vec![], ""),
            event(5, "b", vec![], ""),
            event(6, "a", vec![], ""),
        ];
        let mut builder = EventBatchBuilder::for_events(events.iter());
        for e in &events {
            builder.push(e);
        }
        let batch = builder.finish();
        // Only events of "c" and "a" kept: code "b" (number 1) has none.
        let part = batch.with_events(vec![batch.events[3], batch.events[2], batch.events[5]]);
        let groups = CodeGroups::of(&part);
        assert_eq!(groups.present(), [2, 0]);
        assert_eq!(groups.indexes(0), [1, 2]);
        assert_eq!(groups.indexes(1), [] as [u32; 0]);
        assert_eq!(groups.indexes(2), [0]);
        let all = CodeGroups::of(&batch);
        assert_eq!(all.present(), [0, 1, 2]);
        assert_eq!((all.indexes(0), all.indexes(1), all.indexes(2)), (&[0, 2, 5][..], &[1, 4][..], &[3][..]));
    }
}
