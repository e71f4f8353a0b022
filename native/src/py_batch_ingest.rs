//! The steps of the native engine shared by a partition part that arrives as an `EventBatch`
//! (`py_event_batch`, ingested in one call by `py_part_ingest`) and the apply step of stored rows
//! (`apply_batch`: recovery's replay, an in-process caller's tuples). For a batch: its event
//! record (`batch_record_head`), its events indexed (`index_batch`) and grouped by metric once
//! (`event_batch::CodeGroups`), each group handed to a store's Rust state (`py_series_store`,
//! `py_unique_store`) as the store's events are read (`metric_events`). Outputs are those of the
//! row path for the rows the batch stands for, record bytes included (tested in lock step against
//! the Python reference).

use pyo3::exceptions::{PyKeyError, PyOverflowError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString};

use crate::batch_dedup::BatchDedup;
use crate::event_batch::{BatchEvent, EventBatch};
use crate::event_index::{EventIndex, HOUR_NS};
use crate::guarded;
use crate::py_event_record::RecordHead;
use crate::py_rows::MetricRows;
use crate::py_series_store::PySeriesCells;
use crate::py_unique_store::PyUniqueSets;

/// The head of a deduplicated batch's event record (`py_event_record`), its metrics'
/// `generations` in order of first appearance: written as bytes (`event_record_bytes`) or
/// straight into a segment log's tail (`append_event_record`).
pub fn batch_record_head<'a, 'py>(
    generations: &'a [(Bound<'py, PyString>, u64)],
    found: &'a BatchDedup,
    first_offset: u64,
    arrival: i64,
    batch_id: &'a str,
) -> RecordHead<'a, 'py> {
    RecordHead {
        first_offset,
        batch_id,
        arrival,
        generations,
        n_stored: found.stored.len(),
        stamped: &found.stamped,
        n_requested: found.offsets.len(), // one offset per requested event
        duplicates: &found.duplicates,
    }
}

/// Index a stored batch's events under the record at `position`.
pub fn index_batch(index: &mut EventIndex, position: u64, batch: &EventBatch) {
    for e in &batch.events {
        index.add(position, e.account, e.time.div_euclid(HOUR_NS));
    }
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
/// `first_offset + i`), each resolved for the store of that metric and turned into the store's
/// own event by `make`. A plain loop into a vector sized once: as an iterator of `PyResult`s
/// collected, the wide items moved through the adapters cost ~120 instructions an event.
pub fn metric_events<T>(
    py: Python<'_>,
    rows: &mut MetricRows,
    batch: &EventBatch,
    indexes: &[u32],
    first_offset: i64,
    mut make: impl FnMut(MetricEvent) -> PyResult<T>,
) -> PyResult<Vec<T>> {
    let mut out = Vec::with_capacity(indexes.len());
    for &i in indexes {
        let e = &batch.events[i as usize];
        out.push(make(MetricEvent {
            event: *e,
            offset: first_offset + i64::from(i),
            period: rows.period(py, e.time)?,
            combination: rows.batch_combination(py, batch, e)?,
        })?);
    }
    Ok(out)
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
/// generation, else ``store_for(spec)``). ``rows`` is a sequence of ``EventRow`` tuples
/// (recovery's replay, in-process callers), which each store's ``apply_record`` reads in place
/// (a server's `EventBatch` parts are applied by `PartIngest`). Returns the alerts fired, in
/// order. The partition binds the first four arguments once
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
            let alerts = store.getattr(intern!(py, "apply_record"))?.call1((rows, first_offset, position))?;
            for alert in alerts.try_iter()? {
                fired.append(alert?)?;
            }
        }
        Ok(fired)
    })
}
