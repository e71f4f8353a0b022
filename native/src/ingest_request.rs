//! `unimeter.v1.IngestRequest` and its `Event`s decoded from the wire, borrowing every string from
//! the request bytes. Decoding only checks the encoding (the rules on values live in
//! `validation`): unknown fields and fields of an unexpected wire type are skipped, a repeated
//! scalar keeps its last value, map entries with one key keep the last one, as protobuf parsers do.

use crate::code_table::CodeTable;
use crate::wire::{Malformed, Reader, LEN, VARINT};

/// One decoded `unimeter.v1.Event`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Event<'a> {
    pub account_id: u64,
    pub metric_code: &'a str,
    pub value: u64,
    pub time_unix_nano: i64,
    /// Distinct keys sorted by key, each with the last value the wire gave it.
    pub properties: Vec<(&'a str, &'a str)>,
    /// The raw enum number: protobuf enums are open, so unknown numbers decode and fail validation.
    pub operation: i32,
    pub delivery: i32,
    pub event_id: &'a str,
}

/// One decoded `unimeter.v1.IngestRequest`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IngestRequest<'a> {
    pub events: Vec<Event<'a>>,
    pub delivery: i32,
}

/// A request's distinct metric codes, numbered in order of first appearance, and each event's
/// number. The loop resolves each code once and finds an event's metric by its number; it had
/// looked each event's code up by its text twice, ~130 instructions a lookup, ~5% of the loop's
/// instructions for a 1000-event request (callgrind). The decode worker numbers them beside the
/// split, off the loop.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CodeNumbers<'a> {
    pub codes: Vec<&'a str>,
    pub of_event: Vec<u32>,
}

impl<'a> CodeNumbers<'a> {
    pub fn of(events: &[Event<'a>]) -> Self {
        let mut number_of: CodeTable<'a, u32> = CodeTable::default();
        let mut codes = Vec::new();
        let of_event = events
            .iter()
            .map(|event| {
                *number_of.get_or_insert_with(event.metric_code, || {
                    codes.push(event.metric_code);
                    codes.len() as u32 - 1
                })
            })
            .collect();
        Self { codes, of_event }
    }
}

/// An enum field keeps the low 32 bits of its varint as a signed number, as protobuf's `int32` does.
fn enum_number(varint: u64) -> i32 {
    varint as u32 as i32
}

/// Bytes per serialized event assumed when sizing the events' vector.
const EVENT_BYTES_GUESS: usize = 64;

/// Decode a serialized `IngestRequest`.
pub fn decode_ingest_request(buf: &[u8]) -> Result<IngestRequest<'_>, Malformed> {
    // A guess at the event count (a typical event is 60-100 bytes), so that the vector is not
    // regrown and copied a dozen times for a large batch; only what is used gets touched.
    let mut request =
        IngestRequest { events: Vec::with_capacity(buf.len() / EVENT_BYTES_GUESS), delivery: 0 };
    let mut r = Reader::new(buf);
    while !r.at_end() {
        match r.tag()? {
            (1, LEN) => request.events.push(decode_event(r.bytes()?)?),
            (2, VARINT) => request.delivery = enum_number(r.varint()?),
            (number, wire_type) => r.skip(number, wire_type)?,
        }
    }
    Ok(request)
}

fn decode_event(buf: &[u8]) -> Result<Event<'_>, Malformed> {
    let mut event = Event::default();
    let mut r = Reader::new(buf);
    while !r.at_end() {
        match r.tag()? {
            (1, VARINT) => event.account_id = r.varint()?,
            (2, LEN) => event.metric_code = r.string()?,
            (3, VARINT) => event.value = r.varint()?,
            (4, VARINT) => event.time_unix_nano = r.varint()? as i64,
            (5, LEN) => {
                if let Some(entry) = decode_map_entry(r.bytes()?)? {
                    event.properties.push(entry);
                }
            }
            (6, VARINT) => event.operation = enum_number(r.varint()?),
            (7, VARINT) => event.delivery = enum_number(r.varint()?),
            (8, LEN) => event.event_id = r.string()?,
            (number, wire_type) => r.skip(number, wire_type)?,
        }
    }
    keep_last_per_key(&mut event.properties);
    Ok(event)
}

/// A `map<string, string>` entry: key 1, value 2, either may be absent (then ""). An entry holding
/// any other field (or key or value in another wire type) is no entry: Python's protobuf (upb)
/// keeps such an entry whole among the event's unknown fields, so the map never sees it, and the
/// two engines must read the same properties from the same bytes.
fn decode_map_entry(buf: &[u8]) -> Result<Option<(&str, &str)>, Malformed> {
    let (mut key, mut value) = ("", "");
    let mut plain = true;
    let mut r = Reader::new(buf);
    while !r.at_end() {
        match r.tag()? {
            (1, LEN) => key = r.string()?,
            (2, LEN) => value = r.string()?,
            (number, wire_type) => {
                r.skip(number, wire_type)?;
                plain = false;
            }
        }
    }
    Ok(plain.then_some((key, value)))
}

/// Sort by key (stable, so entries of one key stay in wire order) and keep each key's last entry.
fn keep_last_per_key(entries: &mut Vec<(&str, &str)>) {
    if entries.len() < 2 {
        return;
    }
    entries.sort_by(|a, b| a.0.cmp(b.0));
    let mut kept = 0;
    for i in 0..entries.len() {
        if i + 1 < entries.len() && entries[i + 1].0 == entries[i].0 {
            continue;
        }
        entries[kept] = entries[i];
        kept += 1;
    }
    entries.truncate(kept);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    fn field_len(number: u32, payload: &[u8], out: &mut Vec<u8>) {
        varint(u64::from(number << 3 | 2), out);
        varint(payload.len() as u64, out);
        out.extend_from_slice(payload);
    }

    fn field_varint(number: u32, v: u64, out: &mut Vec<u8>) {
        varint(u64::from(number << 3), out);
        varint(v, out);
    }

    #[test]
    fn every_field_of_an_event_decodes() {
        let mut entry_a = Vec::new();
        field_len(1, b"region", &mut entry_a);
        field_len(2, b"eu", &mut entry_a);
        let mut entry_b = Vec::new();
        field_len(1, b"region", &mut entry_b);
        field_len(2, b"us", &mut entry_b);
        let mut entry_c = Vec::new();
        field_len(2, b"only-value", &mut entry_c);
        let mut event = Vec::new();
        field_varint(1, 42, &mut event);
        field_len(2, b"api.calls", &mut event);
        field_varint(3, u64::MAX, &mut event);
        field_varint(4, (-5i64) as u64, &mut event);
        field_len(5, &entry_a, &mut event);
        field_len(5, &entry_c, &mut event);
        field_len(5, &entry_b, &mut event);
        field_varint(6, 2, &mut event);
        field_varint(7, 0x1_0000_0002, &mut event);
        field_len(8, b"id-1", &mut event);
        field_varint(99, 1, &mut event);
        let mut request = Vec::new();
        field_len(1, &event, &mut request);
        field_varint(2, u64::MAX, &mut request);

        let decoded = decode_ingest_request(&request).unwrap();
        assert_eq!(decoded.delivery, -1);
        assert_eq!(
            decoded.events,
            vec![Event {
                account_id: 42,
                metric_code: "api.calls",
                value: u64::MAX,
                time_unix_nano: -5,
                properties: vec![("", "only-value"), ("region", "us")],
                operation: 2,
                delivery: 2,
                event_id: "id-1",
            }]
        );
    }

    #[test]
    fn a_known_field_with_another_wire_type_is_skipped() {
        // account_id (field 1) sent as fixed32: kept as an unknown field, the account stays 0.
        let mut event = vec![0x0d, 1, 0, 0, 0];
        field_varint(3, 7, &mut event);
        let mut request = Vec::new();
        field_len(1, &event, &mut request);
        let decoded = decode_ingest_request(&request).unwrap();
        assert_eq!(decoded.events[0].account_id, 0);
        assert_eq!(decoded.events[0].value, 7);
    }

    #[test]
    fn a_map_entry_with_another_field_is_no_property() {
        let mut plain = Vec::new();
        field_len(1, b"tier", &mut plain);
        field_len(2, b"free", &mut plain);
        let mut odd = Vec::new();
        field_len(1, b"region", &mut odd);
        field_len(2, b"eu", &mut odd);
        field_varint(6, 1, &mut odd);
        let mut event = Vec::new();
        field_len(5, &odd, &mut event);
        field_len(5, &plain, &mut event);
        let mut request = Vec::new();
        field_len(1, &event, &mut request);
        let decoded = decode_ingest_request(&request).unwrap();
        assert_eq!(decoded.events[0].properties, vec![("tier", "free")]);
    }

    #[test]
    fn a_truncated_event_is_malformed() {
        let mut request = Vec::new();
        field_len(1, &[0x12, 0x05, b'a'], &mut request);
        assert!(decode_ingest_request(&request).is_err());
    }

    #[test]
    fn codes_are_numbered_in_order_of_first_appearance() {
        let event = |code| Event { metric_code: code, ..Event::default() };
        let events = [event("b"), event("a"), event("b"), event(""), event("a")];
        let numbers = CodeNumbers::of(&events);
        assert_eq!(numbers.codes, ["b", "a", ""]);
        assert_eq!(numbers.of_event, [0, 1, 0, 2, 1]);
        assert_eq!(CodeNumbers::of(&[]), CodeNumbers::default());
    }
}
