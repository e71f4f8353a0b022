//! A partition part of the native engine that arrives as an `EventBatch` (`py_event_batch`), not
//! as `EventRow` tuples: the same three steps as for rows, each reading the batch's Rust events in
//! place. `dedup_record` (`py_partition_batch`) runs the dedup loop (`batch_dedup`) with the GIL
//! released, so gRPC's threads go on meanwhile, and hands back the stored events as another
//! batch; `apply_batch` runs the event index's step (`EventIndex.add_record`, `py_event_index`)
//! and every metric's store in one call, for a batch and for rows alike. A batch's events are
//! grouped by metric once and handed to each store's Rust state (`py_series_store`,
//! `py_unique_store`) directly; rows go through the stores' `apply_record`.
//! Outputs are those of the row path for the rows the batch stands for, record
//! bytes included (tested in lock step against the Python reference).

use pyo3::exceptions::{PyAssertionError, PyKeyError, PyOverflowError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple};

use crate::batch_dedup::{dedup_batch, BatchDedup};
use crate::event_batch::{BatchEvent, EventBatch};
use crate::event_index::{EventIndex, HOUR_NS};
use crate::guarded;
use crate::py_dedup_index::PyDedupIndex;
use crate::py_event_batch::PyEventBatch;
use crate::py_event_record::{event_record_bytes, RecordHead};
use crate::py_partition_batch::NewKeys;
use crate::py_rows::MetricRows;
use crate::py_series_store::PySeriesCells;
use crate::py_unique_store::PyUniqueSets;

/// `dedup_record` for a batch: ``(offsets, n_duplicates, record, stored, generations,
/// new_keys)`` with ``stored`` an `EventBatch` of the stored events (stamped ones with the
/// arrival time).
pub fn dedup_batch_record<'py>(
    py: Python<'py>,
    index: &PyDedupIndex,
    batch: &PyEventBatch,
    spec_of: &Bound<'py, PyAny>,
    first_offset: u64,
    arrival: i64,
    batch_id: &str,
) -> PyResult<Bound<'py, PyTuple>> {
    // Generations by code, in order of first appearance (the record keeps that order).
    let generations = PyDict::new(py);
    let mut generation_list: Vec<(Bound<'py, PyString>, u64)> = Vec::with_capacity(batch.batch.code_count());
    for code in batch.code_objects(py) {
        let spec = spec_of.call1((&code,))?;
        if spec.is_none() {
            return Err(PyAssertionError::new_err("rows are validated before ingest"));
        }
        let generation: u64 = spec.getattr(intern!(py, "generation"))?.extract()?;
        generations.set_item(&code, generation)?;
        generation_list.push((code, generation));
    }
    let by_code: Vec<u64> = generation_list.iter().map(|(_, g)| *g).collect();
    let table = index.table();
    let events = &batch.batch;
    // The loop reads only Rust data: the GIL is released for it.
    let found = py.detach(|| dedup_batch(table, events, &by_code, first_offset, arrival));
    let record =
        batch_record_bytes(py, &generation_list, &found, first_offset, arrival, batch_id, events.len())?;
    let n_duplicates = found.duplicates.len();
    let stored = Py::new(py, batch.with_events(found.stored))?;
    let new_keys = Py::new(py, NewKeys { keys: found.new_keys, offsets: found.key_offsets })?;
    (found.offsets, n_duplicates, record, stored, generations, new_keys).into_pyobject(py)
}

/// The event record of a deduplicated batch of `n_requested` events (None: nothing to log), its
/// metrics' `generations` in order of first appearance.
pub fn batch_record_bytes<'py>(
    py: Python<'py>,
    generations: &[(Bound<'py, PyString>, u64)],
    found: &BatchDedup,
    first_offset: u64,
    arrival: i64,
    batch_id: &str,
    n_requested: usize,
) -> PyResult<Option<Bound<'py, PyBytes>>> {
    let head = RecordHead {
        first_offset,
        batch_id,
        arrival,
        generations,
        n_stored: found.stored.len(),
        stamped: &found.stamped,
        n_requested,
        duplicates: &found.duplicates,
    };
    event_record_bytes(py, &head, &found.packed_rows)
}

/// Index a stored batch's events under the record at `position`; returns their metric codes in
/// order of first appearance (`EventIndex.add_record`), the batch's own string objects.
pub fn index_batch<'py>(
    py: Python<'py>,
    index: &mut EventIndex,
    position: u64,
    stored: &PyEventBatch,
) -> Vec<Bound<'py, PyString>> {
    index_batch_codes(index, position, &stored.batch).into_iter().map(|c| stored.code_object(py, c)).collect()
}

/// [`index_batch`] answering code numbers.
pub fn index_batch_codes(index: &mut EventIndex, position: u64, batch: &EventBatch) -> Vec<u32> {
    let mut seen = vec![false; batch.code_count()];
    let mut codes = Vec::new();
    for e in &batch.events {
        index.add(position, e.account, e.time.div_euclid(HOUR_NS));
        if !seen[e.code as usize] {
            seen[e.code as usize] = true;
            codes.push(e.code);
        }
    }
    codes
}

/// One event of a metric, read from a stored batch with what the stores resolve for it.
pub struct MetricEvent {
    pub event: BatchEvent,
    /// Its offset: the record's first offset plus its place in the batch.
    pub offset: i64,
    /// `(start, end)` of the period containing its time.
    pub period: (i64, i128),
    /// Its values of the metric's dimensions (None: the metric has none).
    pub combination: Option<Vec<String>>,
}

impl MetricEvent {
    /// The value as the stores hold it (an i64, as the row path extracts it).
    pub fn value(&self) -> PyResult<i64> {
        i64::try_from(self.event.value)
            .map_err(|_| PyOverflowError::new_err("Python int too large to convert to C long"))
    }
}

/// The events at `indexes` of a stored batch (one metric's, in order; event `i` has offset
/// `first_offset + i`), resolved for the store of that metric as they are read (no list of them
/// is made: each store turns them straight into its own events).
pub fn metric_events<'a>(
    py: Python<'a>,
    rows: &'a mut MetricRows,
    batch: &'a EventBatch,
    indexes: &'a [u32],
    first_offset: i64,
) -> impl Iterator<Item = PyResult<MetricEvent>> + 'a {
    indexes.iter().map(move |&i| {
        let e = &batch.events[i as usize];
        Ok(MetricEvent {
            event: *e,
            offset: first_offset + i64::from(i),
            period: rows.period(py, e.time)?,
            combination: rows.batch_combination(py, batch, e)?,
        })
    })
}

/// The indexes of a batch's events by code number, in one pass over the batch for all of its
/// metrics (a store scanning the whole batch for its own metric's cost ~0.4 us per metric and part).
pub fn events_by_code(batch: &EventBatch) -> Vec<Vec<u32>> {
    let mut groups = vec![Vec::new(); batch.code_count()];
    for (i, e) in batch.events.iter().enumerate() {
        groups[e.code as usize].push(i as u32);
    }
    groups
}

/// Apply a stored batch's events at `indexes` (one metric's) to a store's Rust state (its
/// ``native`` attribute: `SeriesCells` or `UniqueSets`), appending the alerts they fire to `fired`.
pub fn apply_to_native<'py>(
    py: Python<'py>,
    native: &Bound<'py, PyAny>,
    batch: &EventBatch,
    indexes: &[u32],
    first_offset: i64,
    position: u64,
    fired: &Bound<'py, PyList>,
) -> PyResult<()> {
    if let Ok(cells) = native.cast::<PySeriesCells>() {
        return cells.borrow_mut().apply_batch_events(py, batch, indexes, first_offset, position, fired);
    }
    native.cast::<PyUniqueSets>()?.borrow_mut().apply_batch_events(py, batch, indexes, first_offset, fired)
}

/// The store of metric `code` for `spec`: `stores[code]` if it holds that generation of the
/// metric, else the one `store_for(spec)` makes (`PartitionAggregates`).
pub fn store_of<'py>(
    stores: &Bound<'py, PyDict>,
    store_for: &Bound<'py, PyAny>,
    code: &Bound<'py, PyString>,
    spec: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    let py = spec.py();
    if let Some(store) = stores.get_item(code)? {
        let held = store.getattr(intern!(py, "spec"))?;
        // Nearly always the very object the caller has (one per metric generation): compared by
        // identity first, by generation otherwise.
        let generation = intern!(py, "generation");
        if held.is(spec) || held.getattr(generation)?.eq(spec.getattr(generation)?)? {
            return Ok(store);
        }
    }
    store_for.call1((spec,))
}

/// A stored record's rows into a partition's event index and aggregates, in one call per
/// partition part: ``add_record(position, rows)`` (the event index's method) names the record's
/// metrics in order of first appearance; each metric whose spec (``spec_of``) still has the
/// record's generation (``generations``) is applied by its store (``stores[code]`` if of that
/// generation, else ``store_for(spec)``). ``rows`` is an `EventBatch` (what the server's requests
/// become), whose events go to each store's Rust state grouped by metric, or a sequence of
/// ``EventRow`` tuples (recovery's replay, in-process callers), which each store's
/// ``apply_record`` reads in place. Returns the
/// alerts fired, in order. The partition binds the first four arguments once
/// (``PartitionAggregates.native_apply``), so a part calls it with no wrapper in between.
#[pyfunction]
#[allow(clippy::too_many_arguments)] // the partition's parts the step reads
pub fn apply_batch<'py>(
    py: Python<'py>,
    add_record: &Bound<'py, PyAny>,
    spec_of: &Bound<'py, PyAny>,
    stores: &Bound<'py, PyDict>,
    store_for: &Bound<'py, PyAny>,
    position: u64,
    rows: &Bound<'py, PyAny>,
    first_offset: i64,
    generations: &Bound<'py, PyDict>,
) -> PyResult<Bound<'py, PyList>> {
    guarded(|| {
        let generation = intern!(py, "generation");
        let fired = PyList::empty(py);
        let batch = rows.cast::<PyEventBatch>().ok().map(|b| &b.get().batch);
        let groups = batch.map(events_by_code);
        for code in add_record.call1((position, rows))?.try_iter()? {
            let code = code?;
            let spec = spec_of.call1((&code,))?;
            if spec.is_none() {
                continue; // the metric was deleted after this record
            }
            let current = spec.getattr(generation)?;
            let recorded =
                generations.get_item(&code)?.ok_or_else(|| PyKeyError::new_err(code.clone().unbind()))?;
            if !current.eq(&recorded)? {
                continue; // ... and maybe created again
            }
            let store = store_of(stores, store_for, code.cast::<PyString>()?, &spec)?;
            if let (Some(batch), Some(groups)) = (batch, &groups) {
                let number = batch.code_number(code.cast::<PyString>()?.to_str()?);
                let indexes = number.map_or(&[][..], |n| &groups[n as usize][..]);
                let native = store.getattr(intern!(py, "native"))?;
                apply_to_native(py, &native, batch, indexes, first_offset, position, &fired)?;
                continue;
            }
            let alerts = store.getattr(intern!(py, "apply_record"))?.call1((rows, first_offset, position))?;
            for alert in alerts.try_iter()? {
                fired.append(alert?)?;
            }
        }
        Ok(fired)
    })
}
