//! `unimeter_native.PartIngest`: a partition part of the server's ingest (an `EventBatch`) in
//! one call, where the three steps it replaces (`dedup_record`, the dedup index's `add_new_keys`,
//! `apply_batch`) each crossed into Rust on their own and handed Python objects to the next.
//!
//! The steps are theirs, in their order: the dedup loop (GIL released), the event record, the
//! record appended to the partition's log (written into a segment log's native tail, or handed
//! to another log's `append`), then the new keys, the event index and the stores. The part
//! starts where the partition's ingest cursor stands and moves it on, so the partition's Python
//! step has nothing to do for a part but pass its answer on. What no longer happens per part: a
//! generations dict, a stored batch and a key holder made as Python objects, the record's
//! metrics named back to Python, and each metric's spec and generation read twice
//! (docs/benchmarks-history.md, "What a partition part costs the loop").
//!
//! Once the record is appended it is stored (recovery replays it), so an error after that point
//! is handed back beside the outcome instead of raised: the partition remembers the batch first,
//! then raises it (`node.partition.Partition.ingest`), as it does for the Python steps.

use pyo3::exceptions::{PyAssertionError, PyKeyError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString, PyTuple};

use crate::batch_dedup::{dedup_batch, BatchDedup};
use crate::event_batch::CodeGroups;
use crate::guarded;
use crate::py_batch_ingest::{apply_to_native, batch_record_head, index_batch, store_of};
use crate::py_dedup_index::PyDedupIndex;
use crate::py_event_batch::PyEventBatch;
use crate::py_event_index::PyEventIndex;
use crate::py_event_record::{append_event_record, event_record_bytes};
use crate::py_ingest_cursor::PyIngestCursor;
use crate::py_log_tail::PyLogTail;
use crate::py_uint_list::PyUintList;

/// A partition's parts that its ingest steps read and change, bound once per partition (and again
/// when recovery loads them from a snapshot).
#[pyclass(module = "unimeter_native", name = "PartIngest")]
pub struct PyPartIngest {
    /// The aggregates' stores by metric code, and the aggregates' maker of a missing one.
    stores: Py<PyDict>,
    store_for: Py<PyAny>,
    dedup: Py<PyDedupIndex>,
    index: Py<PyEventIndex>,
    /// The partition's live metrics by code: a metric deleted since the batch was validated is
    /// logged but applied by nobody (`Node._ingest_in_slices`).
    specs: Py<PyAny>,
    /// The event log's `append(record) -> position`, or with `framed` its
    /// `append_frame(frame) -> position` (`SegmentLog`'s: the record framed here, its CRC by
    /// `crc32fast`, instead of by zlib in Python).
    append: Py<PyAny>,
    framed: bool,
    /// The segment log's native tail (`py_log_tail`), which the record's frame is written into
    /// directly; None for any other log.
    tail: Option<Py<PyLogTail>>,
    /// The partition's ingest cursor, which a stored part moves on.
    cursor: Py<PyIngestCursor>,
    /// `IngestOutcome`, the answer of a part.
    outcome: Py<PyAny>,
    /// The same steps one by one (`node.partition_engine.stepwise_ingest`), for rows that are
    /// not an `EventBatch` (an in-process caller's tuples).
    stepwise: Py<PyAny>,
    /// What the last parts resolved for each metric, reused while the objects are the same.
    known: Vec<KnownMetric>,
    /// The dedup loop's outcome, its buffers reused from part to part (`BatchDedup`).
    found: BatchDedup,
}

/// A metric as a part last resolved it: a part names a handful of metrics, and reading their
/// generations, stores and stores' states from Python again for each of the 64 parts of every
/// request cost ~1 us a part. Each use checks the spec's and the store's identity; the partition
/// binds a new `PartIngest` when it forgets a deleted metric (`Partition.forget_metric`), so no
/// store outlives its metric here.
struct KnownMetric {
    code: String,
    spec: Py<PyAny>,
    generation: u64,
    /// The store `stores[code]` held for `spec`, and its ``native`` state (None: not yet seen).
    store: Option<(Py<PyAny>, Py<PyAny>)>,
}

/// A metric of the batch as it was validated: the generation of its spec then; and the
/// partition's live spec of it that its events are applied with, None if it was deleted
/// (or deleted and created again) since.
#[derive(Clone)]
struct Validated<'py> {
    code: Bound<'py, PyString>,
    generation: u64,
    live: Option<Bound<'py, PyAny>>,
}

/// The metrics one call has resolved (a part's, or a slice's in `ingest_parts`), found again by
/// their code's string object, which a request's parts share, while the parts' partitions share
/// their live specs (the node's: no Python that changes them runs within the call).
#[derive(Default)]
struct CallMetrics<'py> {
    metrics: Vec<Validated<'py>>,
    live_specs: Option<Bound<'py, PyAny>>,
}

#[pymethods]
impl PyPartIngest {
    #[new]
    #[allow(clippy::too_many_arguments)] // the partition's parts it binds
    fn new(
        stores: Py<PyDict>,
        store_for: Py<PyAny>,
        dedup: Py<PyDedupIndex>,
        index: Py<PyEventIndex>,
        specs: Py<PyAny>,
        append: Py<PyAny>,
        framed: bool,
        tail: Option<Py<PyLogTail>>,
        cursor: Py<PyIngestCursor>,
        outcome: Py<PyAny>,
        stepwise: Py<PyAny>,
    ) -> Self {
        Self {
            stores,
            store_for,
            dedup,
            index,
            specs,
            append,
            framed,
            tail,
            cursor,
            outcome,
            stepwise,
            known: Vec::new(),
            found: BatchDedup::default(),
        }
    }

    /// Ingest a validated part arriving at ``now`` (`node.partition_engine.PartIngest`'s
    /// contract): its `IngestOutcome` (each request event's offset, a duplicate's its
    /// original's, as a `UintList`; how many were duplicates), with the partition's cursor moved
    /// on if a record was logged. When the partition has more to do, ``(outcome, first_offset,
    /// arrival, fired, error)`` instead: a record logged with a batch id to remember, alerts
    /// fired, or the exception that stopped the steps after the record was appended. ``specs``
    /// (a mapping of codes to metrics) is what the batch was validated against: its generations
    /// go in the record.
    fn __call__<'py>(
        &mut self,
        py: Python<'py>,
        rows: &Bound<'py, PyAny>,
        specs: &Bound<'py, PyAny>,
        now: i64,
        batch_id: &str,
    ) -> PyResult<Bound<'py, PyAny>> {
        let Ok(batch) = rows.cast::<PyEventBatch>() else {
            return self.stepwise.bind(py).call1((rows, specs, now, batch_id));
        };
        self.ingest_batch(py, batch.get(), specs, &mut CallMetrics::default(), now, batch_id)
    }
}

/// `ingest_parts`' answer: the answers, the indexes of the tuples among them, what the next part
/// raised (`node.partition_engine.PartsIngested`).
type PartsIngested<'py> = (Bound<'py, PyList>, Vec<usize>, Option<Py<PyAny>>);

/// `node.partition_engine.python_ingest_parts` in one call: each of a slice of a request's parts
/// through its partition's ingest step, in order, until one raises. Returns the answers of the
/// parts ingested (each as `PartIngest` gives it), the indexes of those that are tuples (their
/// partitions have more to do), and what the next part raised, or None. The steps are the same
/// calls; what goes is a Python call, a frame and the partition's Python step for each part, and
/// each metric of the request resolved again for each part: the slice's parts share one string
/// per metric code (`parts_to_python`), resolved here once (docs/benchmarks-history.md, "What a
/// partition part costs the loop").
#[pyfunction]
pub fn ingest_parts<'py>(
    py: Python<'py>,
    steps: &Bound<'py, PyList>,
    parts: &Bound<'py, PyList>,
    specs: &Bound<'py, PyAny>,
    now: i64,
    batch_id: &str,
) -> PyResult<PartsIngested<'py>> {
    if steps.len() != parts.len() {
        return Err(PyValueError::new_err("one step a part"));
    }
    let answers = PyList::empty(py);
    let mut unfinished = Vec::new();
    let mut metrics = CallMetrics::default();
    for (i, (step, rows)) in steps.iter().zip(parts.iter()).enumerate() {
        let answer = match (step.cast::<PyPartIngest>(), rows.cast::<PyEventBatch>()) {
            (Ok(step), Ok(batch)) => {
                step.borrow_mut().ingest_batch(py, batch.get(), specs, &mut metrics, now, batch_id)
            }
            _ => step.call1((&rows, specs, now, batch_id)),
        };
        match answer {
            Ok(answer) => {
                if answer.is_exact_instance_of::<PyTuple>() {
                    unfinished.push(i);
                }
                answers.append(answer)?;
            }
            Err(error) => return Ok((answers, unfinished, Some(error.into_value(py).into_any()))),
        }
    }
    Ok((answers, unfinished, None))
}

impl PyPartIngest {
    /// `__call__` for an `EventBatch`, its metrics resolved through `metrics` (one call's).
    fn ingest_batch<'py>(
        &mut self,
        py: Python<'py>,
        batch: &PyEventBatch,
        specs: &Bound<'py, PyAny>,
        metrics: &mut CallMetrics<'py>,
        now: i64,
        batch_id: &str,
    ) -> PyResult<Bound<'py, PyAny>> {
        let (first_offset, arrival) = self.cursor.bind(py).borrow().next_part(now);
        let validated = guarded(|| self.validated_metrics(py, batch, specs, metrics))?;
        let generations: Vec<u64> = validated.iter().map(|m| m.generation).collect();
        let dedup = self.dedup.bind(py).clone();
        // Taken for the call (a move of its vectors, no allocation) and put back at the end; a
        // call that fails part-way leaves a fresh one.
        let mut found = std::mem::take(&mut self.found);
        {
            let index = dedup.borrow();
            let table = index.table();
            // The loop reads only Rust data: the GIL is released for it.
            py.detach(|| {
                guarded(|| {
                    dedup_batch(&mut found, table, &batch.batch, &generations, first_offset, arrival);
                    Ok(())
                })
            })?;
        }
        let n_duplicates = found.duplicates.len();
        let n_stored = found.stored.len();
        let position = self.append_record(py, &validated, &found, first_offset, arrival, batch_id)?;
        let offsets = PyUintList::new(std::mem::take(&mut found.offsets));
        let outcome = self.outcome.bind(py).call1((offsets, n_duplicates))?;
        let Some(position) = position else {
            self.keep(found);
            return Ok(outcome);
        };
        // Stored from here on (recovery replays it): the cursor moves on, and what fails is
        // handed back, not raised.
        self.cursor.bind(py).borrow_mut().logged(first_offset, arrival, n_stored);
        let fired = PyList::empty(py);
        let stored = batch.with_events(std::mem::take(&mut found.stored));
        let error = guarded(|| {
            dedup.borrow_mut().add_keys(arrival, &found.new_keys, &found.key_offsets)?;
            self.apply(py, &validated, &stored, position, first_offset as i64, &fired)
        })
        .err();
        found.stored = stored.batch.events; // its buffer, for the next part's
        self.keep(found);
        if batch_id.is_empty() && fired.is_empty() && error.is_none() {
            return Ok(outcome);
        }
        Ok((outcome, first_offset, arrival, fired, error).into_pyobject(py)?.into_any())
    }
    /// The part's event record appended to the log: its position, or None when it logs nothing.
    /// A segment log's native tail takes the frame as it is written; any other log, or a tail
    /// whose log refuses appends (closed, failed: its `append_frame` raises why), gets the record
    /// as bytes through `append`.
    fn append_record(
        &self,
        py: Python<'_>,
        validated: &[Validated<'_>],
        found: &BatchDedup,
        first_offset: u64,
        arrival: i64,
        batch_id: &str,
    ) -> PyResult<Option<u64>> {
        let generations: Vec<_> = validated.iter().map(|m| (m.code.clone(), m.generation)).collect();
        let head = batch_record_head(&generations, found, first_offset, arrival, batch_id);
        if let Some(tail) = &self.tail {
            let mut tail = tail.bind(py).borrow_mut();
            if !tail.refusing {
                return guarded(|| append_event_record(&head, &found.packed_rows.buf, &mut tail));
            }
        }
        let Some(record) = guarded(|| event_record_bytes(py, &head, &found.packed_rows.buf, self.framed))?
        else {
            return Ok(None);
        };
        Ok(Some(self.append.bind(py).call1((record,))?.extract()?))
    }

    /// Keep `found`'s buffers for the next part (unless a huge part grew them).
    fn keep(&mut self, mut found: BatchDedup) {
        found.release_if_large();
        self.found = found;
    }

    /// Each metric of `batch` (by code number) as `specs` holds it, with its live spec: from
    /// `metrics` where this call has resolved its code already, and added to them.
    fn validated_metrics<'py>(
        &mut self,
        py: Python<'py>,
        batch: &PyEventBatch,
        specs: &Bound<'py, PyAny>,
        metrics: &mut CallMetrics<'py>,
    ) -> PyResult<Vec<Validated<'py>>> {
        let live_specs = self.specs.bind(py).clone();
        if !metrics.live_specs.as_ref().is_some_and(|held| held.is(&live_specs)) {
            metrics.metrics.clear();
            metrics.live_specs = Some(live_specs.clone());
        }
        let mut validated = Vec::with_capacity(batch.batch.code_count());
        for code in batch.code_objects(py) {
            if let Some(metric) = metrics.metrics.iter().find(|m| m.code.is(&code)) {
                validated.push(metric.clone());
                continue;
            }
            let Some(spec) = metric_in(specs, &code)? else {
                return Err(PyAssertionError::new_err("rows are validated before ingest"));
            };
            let i = self.known_index(py, &code, &spec)?;
            let generation = self.known[i].generation;
            let live = match metric_in(&live_specs, &code)? {
                Some(live) if live.is(&spec) => Some(live),
                Some(live) if live.getattr(intern!(py, "generation"))?.extract::<u64>()? == generation => {
                    Some(live)
                }
                _ => None, // deleted (and perhaps created again) since the batch was validated
            };
            let metric = Validated { code, generation, live };
            metrics.metrics.push(metric.clone());
            validated.push(metric);
        }
        Ok(validated)
    }

    /// Where `known` holds metric `code` as `spec`: added, or replacing what it held for an
    /// earlier spec of the code.
    fn known_index(
        &mut self,
        py: Python<'_>,
        code: &Bound<'_, PyString>,
        spec: &Bound<'_, PyAny>,
    ) -> PyResult<usize> {
        let text = code.to_str()?;
        let found = self.known.iter().position(|m| m.code == text);
        if let Some(i) = found.filter(|&i| self.known[i].spec.is(spec)) {
            return Ok(i);
        }
        let generation = spec.getattr(intern!(py, "generation"))?.extract()?;
        let known =
            KnownMetric { code: text.to_owned(), spec: spec.clone().unbind(), generation, store: None };
        Ok(match found {
            Some(i) => {
                self.known[i] = known;
                i
            }
            None => {
                self.known.push(known);
                self.known.len() - 1
            }
        })
    }

    /// The ``native`` state of metric `code`'s store for `spec` (`store_of`), remembered while
    /// `stores[code]` is the same store.
    fn store_state<'py>(
        &mut self,
        py: Python<'py>,
        code: &Bound<'py, PyString>,
        spec: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let i = self.known_index(py, code, spec)?;
        let stores = self.stores.bind(py);
        if let Some((store, native)) = &self.known[i].store {
            if stores.get_item(code)?.is_some_and(|held| held.is(store)) {
                return Ok(native.bind(py).clone());
            }
        }
        let store = store_of(stores, self.store_for.bind(py), code, spec)?;
        let native = store.getattr(intern!(py, "native"))?;
        self.known[i].store = Some((store.unbind(), native.clone().unbind()));
        Ok(native)
    }

    /// The stored events into the event index, and each metric's into its store if the metric
    /// still has the generation the batch was validated against (`apply_batch`'s rule).
    fn apply<'py>(
        &mut self,
        py: Python<'py>,
        validated: &[Validated<'py>],
        stored: &PyEventBatch,
        position: u64,
        first_offset: i64,
        fired: &Bound<'py, PyList>,
    ) -> PyResult<()> {
        index_batch(self.index.bind(py).borrow_mut().index_mut(), position, &stored.batch);
        let groups = CodeGroups::of(&stored.batch);
        for &number in groups.present() {
            let metric = &validated[number as usize];
            let Some(live) = &metric.live else {
                continue; // not applied: see `Validated`
            };
            let native = self.store_state(py, &metric.code, live)?;
            apply_to_native(
                py,
                &native,
                &stored.batch,
                groups.indexes(number),
                first_offset,
                position,
                fired,
            )?;
        }
        Ok(())
    }
}

/// `specs[code]`, or None for a code it lacks. A dict (what the node passes) is read with one C
/// call: a bound `dict.get` was a Python call for each metric of each part.
fn metric_in<'py>(
    specs: &Bound<'py, PyAny>,
    code: &Bound<'py, PyString>,
) -> PyResult<Option<Bound<'py, PyAny>>> {
    if let Ok(dict) = specs.cast::<PyDict>() {
        return dict.get_item(code);
    }
    match specs.get_item(code) {
        Ok(spec) => Ok(Some(spec)),
        Err(err) if err.is_instance_of::<PyKeyError>(specs.py()) => Ok(None),
        Err(err) => Err(err),
    }
}
