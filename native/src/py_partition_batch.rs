//! `unimeter_native.dedup_record` and `replay_keys`: the per-event dedup loops of
//! `Partition.ingest` and of recovery's replay, natively.
//!
//! For each row of a validated partition batch: its dedup key (`dedup_key`), the probe of the
//! batch's own keys and of the partition's index, the offset it gets or the original it
//! duplicates, and the arrival time stamped on a row without a time; each stored row's msgpack is
//! written as it is read, so the batch's event record comes out of the same pass
//! (`py_event_record`). It is the Python reference `node.partition_engine.python_dedup_record`
//! step for step (tested in lock step against it, record bytes included). The index is only read
//! here: the partition adds the new keys once the record is appended.
//!
//! The rows are still Python tuples (the aggregation needs them until it moves too), so this reads
//! seven items per row; what it saves is the Python bytecode of the loop and of the two key
//! functions, and a call per key.

use std::collections::{HashMap, HashSet};

use pyo3::exceptions::{PyAssertionError, PyKeyError, PyTypeError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString, PyTuple};

use crate::dedup_key::{derived_key, event_key, DerivedKeyInput};
use crate::guarded;
use crate::msgpack_writer::MsgpackWriter;
use crate::py_dedup_index::PyDedupIndex;
use crate::py_event_record::{event_record_bytes, pack_object, RecordHead};

/// The seven fields of an `EventRow`, borrowed from the row.
struct Row<'py> {
    account: Bound<'py, PyAny>,
    code: Bound<'py, PyString>,
    value: Bound<'py, PyAny>,
    time: i64,
    properties: Bound<'py, PyAny>,
    operation: Bound<'py, PyAny>,
    event_id: Bound<'py, PyString>,
}

fn read_row<'py>(row: &Bound<'py, PyAny>) -> PyResult<Row<'py>> {
    // Rows are tuples on every path but the node protocol's (lists): both are sequences.
    let item = |i: usize| -> PyResult<Bound<'py, PyAny>> {
        match row.cast::<PyTuple>() {
            Ok(tuple) => tuple.get_item(i),
            Err(_) => row.get_item(i),
        }
    };
    let not_str = |_| PyTypeError::new_err("an event row's metric code and event id must be str");
    Ok(Row {
        account: item(0)?,
        code: item(1)?.cast_into::<PyString>().map_err(not_str)?,
        value: item(2)?,
        time: item(3)?.extract()?,
        properties: item(4)?,
        operation: item(5)?,
        event_id: item(6)?.cast_into::<PyString>().map_err(not_str)?,
    })
}

/// The dedup key of a row (None: no id and no time of its own, so never a duplicate).
fn key_of(row: &Row<'_>, code: &str, generation: u64) -> PyResult<Option<u64>> {
    let account: u64 = row.account.extract()?;
    let event_id = row.event_id.to_str()?;
    if !event_id.is_empty() {
        return Ok(Some(event_key(account, code, generation, event_id)));
    }
    if row.time == 0 {
        return Ok(None);
    }
    content_key(row, code, generation).map(Some)
}

/// The key derived from a row's content (time, value, operation, properties).
fn content_key(row: &Row<'_>, code: &str, generation: u64) -> PyResult<u64> {
    let account: u64 = row.account.extract()?;
    let mut pairs: Vec<(Bound<'_, PyString>, Bound<'_, PyString>)> = Vec::new();
    if !row.properties.is_none() {
        for (key, value) in row.properties.cast::<PyDict>()?.iter() {
            pairs.push((key.cast_into()?, value.cast_into()?));
        }
    }
    let properties =
        pairs.iter().map(|(k, v)| Ok((k.to_str()?, v.to_str()?))).collect::<PyResult<Vec<_>>>()?;
    Ok(derived_key(DerivedKeyInput {
        account_id: account,
        metric_code: code,
        generation,
        time_unix_nano: row.time,
        value: row.value.extract()?,
        operation: row.operation.extract()?,
        properties,
    }))
}

/// The keys a batch adds to the dedup index, with their offsets, held here until the partition
/// has stored the batch's record (`DedupIndex.add_new_keys`): no Python int per key.
#[pyclass(module = "unimeter_native", name = "NewKeys", frozen)]
pub struct NewKeys {
    pub keys: Vec<u64>,
    pub offsets: Vec<u64>,
}

/// Deduplicate and stamp a partition batch and encode its event record, in one pass:
/// ``(offsets, n_duplicates, record, stored, generations, new_keys)``, where ``record`` is the
/// bytes ``node.records.encode_event_record`` writes for the batch (None when no row is stored
/// and there is no batch id: nothing to log) and the rest is what
/// ``node.partition_engine.python_dedup_record`` returns for the same arguments. ``rows`` is a
/// list of ``EventRow`` tuples (a server's `EventBatch` parts are ingested by `PartIngest`).
#[pyfunction]
pub fn dedup_record<'py>(
    py: Python<'py>,
    index: PyRef<'py, PyDedupIndex>,
    rows: &Bound<'py, PyAny>,
    spec_of: &Bound<'py, PyAny>,
    first_offset: u64,
    arrival: i64,
    batch_id: &str,
) -> PyResult<Bound<'py, PyTuple>> {
    guarded(|| {
        let rows = rows.cast::<PyList>()?;
        let table = index.table();
        let n = rows.len();
        let mut next_offset = first_offset;
        let mut offsets: Vec<u64> = Vec::with_capacity(n);
        let stored = PyList::empty(py);
        let mut stamped: Vec<usize> = Vec::new();
        let mut duplicates: Vec<(usize, u64)> = Vec::new();
        let mut new_keys = NewKeys { keys: Vec::with_capacity(n), offsets: Vec::with_capacity(n) };
        let mut batch_keys: HashMap<u64, u64> = HashMap::with_capacity(n);
        // Generations by code, in order of first appearance (the record keeps that order).
        let generations = PyDict::new(py);
        let mut generation_list: Vec<(Bound<'py, PyString>, u64)> = Vec::new();
        let mut generation_of: HashMap<String, u64> = HashMap::new();
        let arrival_obj = arrival.into_pyobject(py)?;
        // The stored rows' msgpack, packed from the items already read (the record's bulk).
        let mut packed_rows = MsgpackWriter::with_capacity(64 * n);
        for (i, row_obj) in rows.iter().enumerate() {
            let row = read_row(&row_obj)?;
            let code = row.code.to_str()?;
            let generation = match generation_of.get(code) {
                Some(&generation) => generation,
                None => {
                    let spec = spec_of.call1((&row.code,))?;
                    if spec.is_none() {
                        return Err(PyAssertionError::new_err("rows are validated before ingest"));
                    }
                    let generation: u64 = spec.getattr(intern!(py, "generation"))?.extract()?;
                    generations.set_item(&row.code, generation)?;
                    generation_list.push((row.code.clone(), generation));
                    generation_of.insert(code.to_owned(), generation);
                    generation
                }
            };
            if let Some(key) = key_of(&row, code, generation)? {
                let original = batch_keys.get(&key).copied().or_else(|| table.get(key));
                if let Some(original) = original {
                    offsets.push(original);
                    duplicates.push((i, original));
                    continue;
                }
                batch_keys.insert(key, next_offset);
                new_keys.keys.push(key);
                new_keys.offsets.push(next_offset);
            }
            let time = if row.time == 0 { arrival } else { row.time };
            pack_row(&mut packed_rows, &row, code, time)?;
            if row.time == 0 {
                stamped.push(stored.len());
                let items: [Bound<'py, PyAny>; 7] = [
                    row.account,
                    row.code.into_any(),
                    row.value,
                    arrival_obj.clone().into_any(),
                    row.properties,
                    row.operation,
                    row.event_id.into_any(),
                ];
                stored.append(PyTuple::new(py, items)?)?;
            } else {
                stored.append(row_obj)?;
            }
            offsets.push(next_offset);
            next_offset += 1;
        }
        let head = RecordHead {
            first_offset,
            batch_id,
            arrival,
            generations: &generation_list,
            n_stored: stored.len(),
            stamped: &stamped,
            n_requested: n,
            duplicates: &duplicates,
        };
        let record = event_record_bytes(py, &head, &packed_rows.buf, false)?;
        (offsets, duplicates.len(), record, stored, generations, Py::new(py, new_keys)?).into_pyobject(py)
    })
}

/// A stored row's msgpack: its seven fields as an array, with the time it is stored with.
fn pack_row(w: &mut MsgpackWriter, row: &Row<'_>, code: &str, time: i64) -> PyResult<()> {
    w.array(7);
    pack_object(w, &row.account)?;
    w.str(code);
    pack_object(w, &row.value)?;
    w.int(time);
    pack_object(w, &row.properties)?;
    pack_object(w, &row.operation)?;
    w.str(row.event_id.to_str()?);
    Ok(())
}

/// The dedup keys a replayed event record adds to the index: ``(keys, offsets)`` exactly as
/// ``node.partition_engine.python_replay_keys`` returns them. Row ``i`` has offset
/// ``first_offset + i``; a row with an id gets its id's key, one the node stamped (its index is in
/// ``stamped``) none, any other its content's key, under the record's own generations.
#[pyfunction]
pub fn replay_keys<'py>(
    py: Python<'py>,
    rows: &Bound<'py, PyAny>,
    generations: &Bound<'py, PyDict>,
    stamped: Vec<i64>,
    first_offset: u64,
) -> PyResult<Bound<'py, PyTuple>> {
    guarded(|| {
        let mut generation_of: HashMap<String, u64> = HashMap::with_capacity(generations.len());
        for (code, generation) in generations.iter() {
            generation_of.insert(code.extract()?, generation.extract()?);
        }
        let stamped: HashSet<i64> = stamped.into_iter().collect();
        let mut keys: Vec<u64> = Vec::new();
        let mut offsets: Vec<u64> = Vec::new();
        for (i, row_obj) in rows.try_iter()?.enumerate() {
            let row = read_row(&row_obj?)?;
            let code = row.code.to_str()?;
            let Some(&generation) = generation_of.get(code) else {
                return Err(PyKeyError::new_err(code.to_owned()));
            };
            let event_id = row.event_id.to_str()?;
            let key = if !event_id.is_empty() {
                event_key(row.account.extract()?, code, generation, event_id)
            } else if stamped.contains(&(i as i64)) {
                continue;
            } else {
                content_key(&row, code, generation)?
            };
            keys.push(key);
            offsets.push(first_offset + i as u64);
        }
        (keys, offsets).into_pyobject(py)
    })
}
