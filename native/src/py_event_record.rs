//! The stored bytes of an event record (`node.records.EventRecord`), written natively by
//! `py_partition_batch::dedup_record` while it deduplicates the batch: the same bytes as
//! `node.records.encode_event_record` (msgpack of the record's nine fields), so a log written by
//! either engine is replayed by the other. The format is defined there; this only writes it.
//!
//! Python values are packed as the `msgpack` package packs them with its defaults: None, bools,
//! ints (OverflowError "Integer value out of range" past u64 or below i64, as there), str,
//! tuples and lists as arrays, dicts as maps in their order; anything else is the TypeError the
//! package raises.

use pyo3::exceptions::{PyOverflowError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyDict, PyInt, PyList, PyString, PyTuple};

use crate::msgpack_writer::MsgpackWriter;
use crate::py_log_tail::PyLogTail;
use crate::segment_scan::{frame_header, HEADER_SIZE};

/// `node.records.EVENT_RECORD_VERSION`.
const EVENT_RECORD_VERSION: u64 = 1;

/// The fields of an event record but its rows, which the batch loop has packed already.
pub struct RecordHead<'a, 'py> {
    pub first_offset: u64,
    pub batch_id: &'a str,
    pub arrival: i64,
    pub generations: &'a [(Bound<'py, PyString>, u64)],
    pub n_stored: usize,
    pub stamped: &'a [usize],
    pub n_requested: usize,
    pub duplicates: &'a [(usize, u64)],
}

impl RecordHead<'_, '_> {
    /// Whether the part logs a record: it stores an event, or has a batch id to remember (a part
    /// of duplicates only, sent without an id, logs nothing).
    fn logs_anything(&self) -> bool {
        self.n_stored > 0 || !self.batch_id.is_empty()
    }
}

/// A partition part's event record as Python bytes, or None when the part logs nothing: no event
/// stored and no batch id to remember (duplicates only, sent without an id). With `framed`, the
/// bytes are the record's frame in a segment log (`segment_scan::frame_header`, then the record),
/// for `SegmentLog.append_frame`. The record is written straight into the bytes object: its
/// fields before and after the rows are encoded first (a few dozen bytes), then copied around
/// the packed rows, which are copied once.
pub fn event_record_bytes<'py>(
    py: Python<'py>,
    head: &RecordHead<'_, 'py>,
    packed_rows: &[u8],
    framed: bool,
) -> PyResult<Option<Bound<'py, PyBytes>>> {
    if !head.logs_anything() {
        return Ok(None);
    }
    let (fields, rows_at) = encode_record_fields(head)?;
    let (before, after) = fields.split_at(rows_at);
    let room = if framed { HEADER_SIZE } else { 0 };
    let length = before.len() + packed_rows.len() + after.len();
    let frame_length = if framed {
        u32::try_from(length)
            .map_err(|_| PyValueError::new_err("an event record exceeds the 4 GiB frame limit"))?
    } else {
        0
    };
    let bytes = PyBytes::new_with(py, room + length, |buf| {
        let (header, record) = buf.split_at_mut(room);
        let (head_part, rest) = record.split_at_mut(before.len());
        head_part.copy_from_slice(before);
        let (rows_part, tail_part) = rest.split_at_mut(packed_rows.len());
        rows_part.copy_from_slice(packed_rows);
        tail_part.copy_from_slice(after);
        if framed {
            header.copy_from_slice(&frame_header(frame_length, record));
        }
        Ok(())
    })?;
    Ok(Some(bytes))
}

/// `event_record_bytes`'s framed record appended straight to a segment log's tail: its position,
/// or None when the part logs nothing. No `bytes` object is made for it.
pub fn append_event_record(
    head: &RecordHead<'_, '_>,
    packed_rows: &[u8],
    tail: &mut PyLogTail,
) -> PyResult<Option<u64>> {
    if !head.logs_anything() {
        return Ok(None);
    }
    let (fields, rows_at) = encode_record_fields(head)?;
    let (before, after) = fields.split_at(rows_at);
    tail.append_record(&[before, packed_rows, after]).map(Some)
}

/// The record's msgpack but its rows: the fields up to the rows' array header, then the fields
/// after the rows, and where the rows go between them.
fn encode_record_fields(head: &RecordHead<'_, '_>) -> PyResult<(Vec<u8>, usize)> {
    // Each code's string and generation take at most its length + 14 bytes, the other fields at
    // most 64: sized once.
    let codes: usize = head.generations.iter().map(|(code, _)| code.to_str().map_or(0, str::len) + 14).sum();
    let lists = 10 * head.stamped.len() + 22 * head.duplicates.len();
    let mut w = MsgpackWriter::with_capacity(head.batch_id.len() + codes + lists + 64);
    w.array(9);
    w.uint(EVENT_RECORD_VERSION);
    w.uint(head.first_offset);
    w.str(head.batch_id);
    w.int(head.arrival);
    w.map(head.generations.len());
    for (code, generation) in head.generations {
        w.str(code.to_str()?);
        w.uint(*generation);
    }
    w.array(head.n_stored);
    let rows_at = w.buf.len();
    w.array(head.stamped.len());
    for &i in head.stamped {
        w.uint(i as u64);
    }
    w.uint(head.n_requested as u64);
    w.array(head.duplicates.len());
    for &(i, original) in head.duplicates {
        w.array(2);
        w.uint(i as u64);
        w.uint(original);
    }
    Ok((w.buf, rows_at))
}

/// Append the msgpack of a Python value, as the `msgpack` package writes it.
pub fn pack_object(w: &mut MsgpackWriter, value: &Bound<'_, PyAny>) -> PyResult<()> {
    if value.is_none() {
        w.nil();
    } else if let Ok(flag) = value.cast::<PyBool>() {
        w.bool(flag.is_true());
    } else if let Ok(int) = value.cast::<PyInt>() {
        pack_int(w, int)?;
    } else if let Ok(text) = value.cast::<PyString>() {
        w.str(text.to_str()?);
    } else if let Ok(map) = value.cast::<PyDict>() {
        w.map(map.len());
        for (key, item) in map.iter() {
            pack_object(w, &key)?;
            pack_object(w, &item)?;
        }
    } else if let Ok(tuple) = value.cast::<PyTuple>() {
        w.array(tuple.len());
        for item in tuple.iter() {
            pack_object(w, &item)?;
        }
    } else if let Ok(list) = value.cast::<PyList>() {
        w.array(list.len());
        for item in list.iter() {
            pack_object(w, &item)?;
        }
    } else {
        let name = value.get_type().name()?;
        return Err(PyTypeError::new_err(format!("can not serialize '{}' object", name.to_str()?)));
    }
    Ok(())
}

/// An int as msgpack packs it: a positive one unsigned (up to u64), zero or a negative one signed.
fn pack_int(w: &mut MsgpackWriter, int: &Bound<'_, PyInt>) -> PyResult<()> {
    let out_of_range = |_| PyOverflowError::new_err("Integer value out of range");
    if let Ok(value) = int.extract::<i64>() {
        w.int(value);
    } else {
        w.uint(int.extract::<u64>().map_err(out_of_range)?);
    }
    Ok(())
}
