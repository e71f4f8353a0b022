//! `unimeter_native`: the compiled ingest core of Unimeter, a Python extension.
//!
//! Phase one of the native engine: it turns the raw bytes of a `unimeter.v1.IngestRequest` into
//! exactly what the Python ingest path builds from a parsed message (per-partition lists of event
//! row tuples in request order, and the delivery mode), applying every validation rule with the
//! same violations. The Python engine (`service/convert.py` + `cluster_client/validation.py`) is
//! the reference it is tested against. Phase two adds the partition's dedup index
//! (`dedup_table`, a port of `node/dedup_index.py` with the same snapshot bytes) and the
//! per-event dedup loops of ingest and replay over it (`py_partition_batch`), the first writing the
//! batch's event record as it goes (`py_event_record`, `msgpack_writer`). The Python-facing
//! code lives in this file and in the `py_*` modules; the others are plain Rust.

mod allocator;
pub mod batch_dedup;
mod capture_buffer;
pub mod cell;
pub mod cell_map;
pub mod code_table;
pub mod dedup_key;
pub mod dedup_table;
pub mod event_batch;
pub mod event_index;
pub mod ingest_request;
pub mod ingest_response;
pub mod int_hash;
pub mod msgpack_writer;
pub mod partitioning;
pub mod position_chains;
pub mod prefaulted_columns;
pub mod prefetch;
mod py_batch_ingest;
mod py_decode_worker;
mod py_dedup_index;
mod py_event_batch;
mod py_event_index;
mod py_event_record;
mod py_ingest_answer;
mod py_ingest_cursor;
mod py_log_tail;
mod py_part_ingest;
mod py_partition_batch;
mod py_rows;
mod py_segment_scan;
mod py_series_store;
mod py_tick_writer;
mod py_uint_list;
mod py_unique_store;
pub mod request_parts;
pub mod ring_worker;
pub mod segment_scan;
pub mod series_cells;
pub mod thresholds;
pub mod tick_writer;
pub mod unique_sets;
pub mod validation;
pub mod wire;

use std::panic::{catch_unwind, AssertUnwindSafe};

use pyo3::create_exception;
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyString, PyTuple};

use code_table::CodeTable;
use py_event_batch::PyEventBatch;
use py_uint_list::PyUintList;

use ingest_request::{decode_ingest_request, CodeNumbers, Event, IngestRequest};
use request_parts::{split_by_partition, Part};
use validation::{check_request, MetricRules, Piece, Rejection};

create_exception!(
    unimeter_native,
    MalformedRequest,
    PyValueError,
    "The bytes are not a protobuf-encoded IngestRequest."
);
create_exception!(
    unimeter_native,
    NativePanic,
    PyRuntimeError,
    "A bug in the native engine, caught at its boundary: the call fails, the process keeps serving."
);

/// Run `body`, turning a Rust panic into a `NativePanic` for this call alone.
pub(crate) fn guarded<T>(body: impl FnOnce() -> PyResult<T>) -> PyResult<T> {
    catch_unwind(AssertUnwindSafe(body))
        .unwrap_or_else(|payload| Err(NativePanic::new_err(panic_message(payload.as_ref()))))
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    let what = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned());
    format!("native engine panicked: {what}")
}

/// Decode, validate and split a serialized `IngestRequest`.
///
/// `metric_of(code)` returns the registered `Metric` or None (called once per distinct code);
/// `partitions` is the cluster's partition count. Returns `(n_events, sync, by_partition,
/// rejection)`: `by_partition` maps each partition (in order of first appearance) to its events
/// (an `EventBatch`, standing for the rows `Client.ingest_rows` builds) and their request
/// indexes (a `UintList`); `rejection` is None or `(message, [(field, description), ...])`, and
/// then `by_partition` is None. Bytes that are not an `IngestRequest` raise `MalformedRequest`.
#[pyfunction]
fn decode_ingest<'py>(
    py: Python<'py>,
    data: &Bound<'py, PyBytes>,
    metric_of: &Bound<'py, PyAny>,
    partitions: u64,
) -> PyResult<Bound<'py, PyTuple>> {
    guarded(|| {
        if partitions == 0 {
            return Err(PyValueError::new_err("partitions must be at least 1"));
        }
        let bytes = data.as_bytes();
        // Decoding touches no Python object: other threads (grpc's) run meanwhile.
        let request =
            py.detach(|| decode_ingest_request(bytes)).map_err(|e| MalformedRequest::new_err(e.0))?;
        let numbers = CodeNumbers::of(&request.events);
        answer(py, &request, &numbers, metric_of, |_| (), || split_by_partition(&request.events, partitions))
    })
}

/// `decode_ingest`'s answer for a decoded `request` whose codes are `numbers`: its metrics
/// resolved through `metric_of` (and shown to `resolved`, one per code of `numbers`) and its rules
/// checked, then, if it passes, its partition parts (`parts`).
pub(crate) fn answer<'py, 'a>(
    py: Python<'py>,
    request: &IngestRequest<'a>,
    numbers: &CodeNumbers<'a>,
    metric_of: &Bound<'py, PyAny>,
    resolved: impl FnOnce(&[Option<Resolved>]),
    parts: impl FnOnce() -> Vec<Part>,
) -> PyResult<Bound<'py, PyTuple>> {
    let n = request.events.len();
    let metrics = resolve_metrics(py, &numbers.codes, metric_of)?;
    resolved(&metrics);
    let rules_of = |i: usize, _: &Event<'a>| metrics[numbers.of_event[i] as usize].as_ref().map(|m| &m.rules);
    match check_request(request, rules_of) {
        Err(rejection) => (n, false, py.None(), rejection_to_python(py, &rejection)?).into_pyobject(py),
        Ok(sync) => (n, sync, parts_to_python(py, parts())?, py.None()).into_pyobject(py),
    }
}

/// A registered metric as ingest reads it: its rules, and its generation (its
/// `create_time_unix_nano`, which the node's specs carry as theirs; 0 where it has none).
pub(crate) struct Resolved {
    pub rules: MetricRules,
    pub generation: u64,
}

/// Each of a batch's distinct metric codes resolved, in their order (None: not registered).
fn resolve_metrics(
    py: Python<'_>,
    codes: &[&str],
    metric_of: &Bound<'_, PyAny>,
) -> PyResult<Vec<Option<Resolved>>> {
    let mut metrics = Vec::with_capacity(codes.len());
    for &code in codes {
        let metric = metric_of.call1((code,))?;
        let rules = if metric.is_none() {
            None
        } else {
            let mut dimensions = Vec::new();
            for dimension in metric.getattr(intern!(py, "filters"))?.try_iter()? {
                let dimension = dimension?;
                dimensions.push((
                    dimension.getattr(intern!(py, "key"))?.extract::<String>()?,
                    dimension.getattr(intern!(py, "values"))?.extract::<Vec<String>>()?,
                ));
            }
            let generation = metric
                .getattr(intern!(py, "create_time_unix_nano"))
                .and_then(|t| t.extract::<u64>())
                .unwrap_or(0);
            let agg_type = metric.getattr(intern!(py, "agg_type"))?.extract()?;
            Some(Resolved { rules: MetricRules { agg_type, dimensions }, generation })
        };
        metrics.push(rules);
    }
    Ok(metrics)
}

/// Text pieces joined, user text quoted by Python's own `repr()`.
fn render(py: Python<'_>, pieces: &[Piece<'_>]) -> PyResult<String> {
    let mut out = String::new();
    for piece in pieces {
        match piece {
            Piece::Text(text) => out.push_str(text),
            Piece::Repr(raw) => out.push_str(PyString::new(py, raw).repr()?.to_str()?),
        }
    }
    Ok(out)
}

fn rejection_to_python<'py>(py: Python<'py>, rejection: &Rejection<'_>) -> PyResult<Bound<'py, PyTuple>> {
    let violations = rejection
        .violations
        .iter()
        .map(|v| Ok((v.field.as_str(), render(py, &v.description)?)))
        .collect::<PyResult<Vec<_>>>()?;
    (render(py, &rejection.message)?, violations).into_pyobject(py)
}

/// `{partition: (EventBatch, UintList of request indexes)}` in order of first appearance: each
/// partition's events as a native batch (`py_event_batch`), which stands for the `EventRow`
/// tuples of `cluster_client/types.py` that `Client.ingest_rows` would split off.
fn parts_to_python<'py>(py: Python<'py>, parts: Vec<Part>) -> PyResult<Bound<'py, PyDict>> {
    // One string per metric code of the request, shared by every partition's batch.
    let code_lists: Vec<Vec<Py<PyString>>> = {
        let mut strings: CodeTable<'_, Py<PyString>> = CodeTable::default();
        parts
            .iter()
            .map(|part| {
                part.batch
                    .codes()
                    .map(|text| {
                        strings.get_or_insert_with(text, || PyString::new(py, text).unbind()).clone_ref(py)
                    })
                    .collect()
            })
            .collect()
    };
    let by_partition = PyDict::new(py);
    for (part, codes) in parts.into_iter().zip(code_lists) {
        let batch = Py::new(py, PyEventBatch::new(part.batch, codes))?;
        let indexes = PyUintList::new(part.indexes.into_iter().map(|i| i as u64).collect());
        by_partition.set_item(part.partition, (batch, indexes))?;
    }
    Ok(by_partition)
}

/// `node.dedup_index.event_key`: the dedup key of an event with an explicit id.
#[pyfunction]
fn event_key(account_id: u64, metric_code: &str, generation: u64, event_id: &str) -> PyResult<u64> {
    guarded(|| Ok(dedup_key::event_key(account_id, metric_code, generation, event_id)))
}

/// `node.dedup_index.derived_key`: the dedup key of an event with its own time and no id.
#[pyfunction]
#[allow(clippy::too_many_arguments)] // the signature of the Python function it mirrors
fn derived_key(
    account_id: u64,
    metric_code: &str,
    generation: u64,
    time_ns: i64,
    value: u64,
    operation: i64,
    properties: Option<&Bound<'_, PyDict>>,
) -> PyResult<u64> {
    guarded(|| {
        let mut owned: Vec<(String, String)> = Vec::new();
        for (key, value) in properties.into_iter().flat_map(|dict| dict.iter()) {
            owned.push((key.extract()?, value.extract()?));
        }
        Ok(dedup_key::derived_key(dedup_key::DerivedKeyInput {
            account_id,
            metric_code,
            generation,
            time_unix_nano: time_ns,
            value,
            operation,
            properties: owned.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect(),
        }))
    })
}

/// `cluster_client.partitioning.mix64`, exposed so tests can compare the two.
#[pyfunction]
fn mix64(x: u64) -> u64 {
    partitioning::mix64(x)
}

#[pymodule]
fn unimeter_native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    allocator::return_freed_memory_soon();
    m.add_function(wrap_pyfunction!(decode_ingest, m)?)?;
    m.add_function(wrap_pyfunction!(mix64, m)?)?;
    m.add_function(wrap_pyfunction!(event_key, m)?)?;
    m.add_function(wrap_pyfunction!(derived_key, m)?)?;
    m.add_class::<py_dedup_index::PyDedupIndex>()?;
    m.add_class::<capture_buffer::CapturedBytes>()?;
    m.add_class::<py_series_store::PySeriesCells>()?;
    m.add_class::<py_event_index::PyEventIndex>()?;
    m.add_class::<py_unique_store::PyUniqueSets>()?;
    m.add_class::<py_partition_batch::NewKeys>()?;
    m.add_class::<PyEventBatch>()?;
    m.add_function(wrap_pyfunction!(py_partition_batch::dedup_record, m)?)?;
    m.add_function(wrap_pyfunction!(py_partition_batch::replay_keys, m)?)?;
    m.add_function(wrap_pyfunction!(py_batch_ingest::apply_batch, m)?)?;
    m.add_class::<py_part_ingest::PyPartIngest>()?;
    m.add_function(wrap_pyfunction!(py_part_ingest::ingest_parts, m)?)?;
    m.add_class::<py_log_tail::PyLogTail>()?;
    m.add_class::<py_ingest_cursor::PyIngestCursor>()?;
    m.add_function(wrap_pyfunction!(py_ingest_answer::request_offsets, m)?)?;
    m.add_function(wrap_pyfunction!(py_ingest_answer::encode_ingest_response, m)?)?;
    m.add_class::<py_tick_writer::PyTickWriter>()?;
    m.add_class::<py_decode_worker::PyDecodeWorker>()?;
    m.add_class::<py_decode_worker::PyDecodedRequest>()?;
    m.add_function(wrap_pyfunction!(py_segment_scan::valid_prefix, m)?)?;
    m.add_function(wrap_pyfunction!(py_segment_scan::crc32, m)?)?;
    m.add("MalformedRequest", m.py().get_type::<MalformedRequest>())?;
    m.add("NativePanic", m.py().get_type::<NativePanic>())?;
    m.add_class::<py_uint_list::PyUintList>()?;
    // A UintList stands where Python code holds a list of ints: say so to isinstance.
    let py = m.py();
    py.import("collections.abc")?
        .getattr("Sequence")?
        .call_method1("register", (py.get_type::<py_uint_list::PyUintList>(),))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_an_error_of_that_call() {
        let result: PyResult<()> = guarded(|| panic!("boom"));
        assert!(result.is_err());
        let payload = catch_unwind(|| panic!("{}", String::from("bad index"))).unwrap_err();
        assert_eq!(panic_message(payload.as_ref()), "native engine panicked: bad index");
    }
}
