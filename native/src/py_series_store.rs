//! `unimeter_native.SeriesCells`: the Python face of `series_cells::SeriesCells`.
//!
//! `node/aggregation/native_series.py` wraps it into a store with the interface of `SeriesStore`.
//! Conversion happens here only: applied rows in (the tuples `Partition._apply` builds), alert
//! tuples out, and the snapshot's columns as the plain lists `SeriesStore.to_snapshot` packs (the
//! cells packed here already, to the same bytes), so the bytes are the same whichever engine wrote
//! them. Rows are read through `py_rows`.

use pyo3::exceptions::{PyOverflowError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyInt, PyList, PyString, PyTuple};

use crate::cell::Cell;
use crate::cell_map::Key;
use crate::event_batch::EventBatch;
use crate::guarded;
use crate::msgpack_writer::MsgpackWriter;
use crate::py_batch_ingest::metric_events;
use crate::py_rows::{items, row_item, MetricRows, REMOVE};
use crate::series_cells::{AggKind, Event, SeriesCells, SnapshotCell, N_LEVELS};

/// A cell's sum outside these goes to a snapshot as decimal strings (`cells.pack_cells`).
const WIRE_MIN: i128 = i64::MIN as i128;
const WIRE_MAX: i128 = u64::MAX as i128;
/// About what a packed cell takes (seven small ints and the array's header), to size a chunk.
const PACKED_CELL_BYTES: usize = 24;

#[pyclass(module = "unimeter_native", name = "SeriesCells")]
pub struct PySeriesCells {
    cells: SeriesCells,
    rows: MetricRows,
}

impl PySeriesCells {
    /// The slot of an event with these properties (`Combos.id_of` + 1; 0 without dimensions).
    fn slot_of(&mut self, py: Python<'_>, properties: &Bound<'_, PyAny>) -> PyResult<u32> {
        Ok(match self.rows.combination(py, properties)? {
            Some(key) => self.cells.combos.id_of(key) + 1,
            None => 0,
        })
    }

    /// Apply a stored batch's events at `indexes` (this metric's, in order; event `i` has
    /// offset `first_offset + i`), read from position `record`; the alert rows they fire are
    /// appended to `fired` (`py_batch_ingest::apply_batch`).
    pub fn apply_batch_events(
        &mut self,
        py: Python<'_>,
        batch: &EventBatch,
        indexes: &[u32],
        first_offset: i64,
        record: u64,
        fired: &Bound<'_, PyList>,
    ) -> PyResult<()> {
        let combos = &mut self.cells.combos;
        let events = metric_events(py, &mut self.rows, batch, indexes, first_offset, |e| {
            Ok(Event {
                account: e.event.account,
                value: e.value()?,
                time: e.event.time,
                remove: e.event.operation == REMOVE,
                offset: e.offset,
                slot: e.combination.map_or(0, |key| combos.id_of(key) + 1),
                period_start: e.period.0,
            })
        })?;
        self.apply_events(py, &events, record, fired)
    }

    /// Apply resolved events; the alert rows they fire are appended to `out`.
    fn apply_events(
        &mut self,
        py: Python<'_>,
        events: &[Event],
        record: u64,
        out: &Bound<'_, PyList>,
    ) -> PyResult<()> {
        let mut fired = Vec::new();
        self.cells.apply(events, record, &mut fired);
        for a in fired {
            out.append(self.rows.alert_row(
                py,
                a.account,
                a.threshold,
                a.multiple,
                a.value,
                a.period_start,
                a.time,
            )?)?;
        }
        Ok(())
    }

    fn check_level(level: usize, slot: usize, cells: &SeriesCells) -> PyResult<()> {
        if level >= N_LEVELS || slot >= cells.slot_count() {
            return Err(PyValueError::new_err("no such level or slot"));
        }
        Ok(())
    }

    fn captured_len(&self, level: usize, slot: usize) -> PyResult<usize> {
        Self::check_level(level, slot, &self.cells)?;
        self.cells
            .captured_len(level, slot)
            .ok_or_else(|| PyValueError::new_err("no snapshot is being packed"))
    }
}

fn stats_list<'py>(py: Python<'py>, cell: &Cell) -> PyResult<Bound<'py, PyList>> {
    PyList::new(py, cell.stats())
}

/// An int of a snapshot cell: an int, or the decimal string of one (`cells.pack_cells`).
fn snapshot_int(item: &Bound<'_, PyAny>) -> PyResult<i128> {
    if let Ok(int) = item.cast::<PyInt>() {
        // Nearly every number fits an i64, whose conversion is one C call (restart converts
        // millions of them); the rest are uint64 times and offsets, and sums past 64 bits.
        return match int.extract::<i64>() {
            Ok(small) => Ok(i128::from(small)),
            Err(_) => int.extract(),
        };
    }
    match item.cast::<PyString>() {
        Ok(text) => {
            text.to_str()?.parse().map_err(|_| PyValueError::new_err("aggregates snapshot: a bad number"))
        }
        Err(_) => item.extract(),
    }
}

/// A snapshot cell: its six statistics, then the tail (a minute cell's record positions, or a
/// period cell's alert state), read from a list (what msgpack gives) without a vector of its items.
fn snapshot_cell(cell: &Bound<'_, PyAny>) -> PyResult<SnapshotCell> {
    let bad = || PyValueError::new_err("aggregates snapshot: a bad cell");
    let values: Vec<i128> = match cell.cast::<PyList>() {
        Ok(list) => list.iter().map(|item| snapshot_int(&item)).collect::<PyResult<_>>()?,
        Err(_) => items(cell)?.iter().map(snapshot_int).collect::<PyResult<_>>()?,
    };
    let stats: [i128; 6] = values.get(..6).ok_or_else(bad)?.try_into().map_err(|_| bad())?;
    Ok(SnapshotCell { cell: Cell::from_stats(stats).ok_or_else(bad)?, tail: values[6..].to_vec() })
}

#[pymethods]
impl PySeriesCells {
    /// Empty cells of a metric: its `AggType` number, code, dimension keys, thresholds as
    /// ``(code, value, recurring)``, and ``period_of(t) -> (start, end)``.
    #[new]
    fn new(
        py: Python<'_>,
        agg_type: i64,
        code: Py<PyString>,
        dims: Vec<Py<PyString>>,
        thresholds: Vec<(Py<PyString>, i64, bool)>,
        period_of: Py<PyAny>,
    ) -> PyResult<Self> {
        let agg = AggKind::from_number(agg_type)
            .ok_or_else(|| PyValueError::new_err(format!("no cells for aggregation type {agg_type}")))?;
        let recurring: Vec<bool> = thresholds.iter().map(|t| t.2).collect();
        let dimensioned = !dims.is_empty();
        let rows = MetricRows::new(py, code, dims, thresholds, period_of)?;
        Ok(Self { cells: SeriesCells::new(agg, rows.thresholds(&recurring), dimensioned), rows })
    }

    /// Apply one log record's rows ``(account, value, time, properties, operation, offset)`` in
    /// offset order; returns the alert rows they fire (``SeriesStore.apply``).
    fn apply<'py>(
        &mut self,
        py: Python<'py>,
        rows: &Bound<'py, PyList>,
        record: u64,
    ) -> PyResult<Bound<'py, PyList>> {
        guarded(|| {
            let mut events = Vec::with_capacity(rows.len());
            for row in rows.iter() {
                let time: i64 = row_item(&row, 2)?.extract()?;
                events.push(Event {
                    account: row_item(&row, 0)?.extract()?,
                    value: row_item(&row, 1)?.extract()?,
                    time,
                    remove: row_item(&row, 4)?.extract::<i64>()? == REMOVE,
                    offset: row_item(&row, 5)?.extract()?,
                    slot: self.slot_of(py, &row_item(&row, 3)?)?,
                    period_start: self.rows.period(py, time)?.0,
                });
            }
            let fired = PyList::empty(py);
            self.apply_events(py, &events, record, &fired)?;
            Ok(fired)
        })
    }

    /// Apply the rows of metric ``code`` among a stored record's ``EventRow`` rows (row ``i``
    /// has offset ``first_offset + i``), read from position ``record``; returns the alert rows
    /// they fire. The same as ``apply`` with those rows, without making them. (A stored
    /// ``EventBatch`` goes through `apply_batch_events`, its events grouped by metric once.)
    fn apply_record<'py>(
        &mut self,
        py: Python<'py>,
        rows: &Bound<'py, PyAny>,
        first_offset: i64,
        record: u64,
    ) -> PyResult<Bound<'py, PyList>> {
        guarded(|| {
            let mut events = Vec::new();
            for (i, row) in rows.try_iter()?.enumerate() {
                let row = row?;
                let row_code = row_item(&row, 1)?;
                if !self.rows.is_ours(py, &row_code)? {
                    continue;
                }
                let time: i64 = row_item(&row, 3)?.extract()?;
                events.push(Event {
                    account: row_item(&row, 0)?.extract()?,
                    value: row_item(&row, 2)?.extract()?,
                    time,
                    remove: row_item(&row, 5)?.extract::<i64>()? == REMOVE,
                    offset: first_offset + i as i64,
                    slot: self.slot_of(py, &row_item(&row, 4)?)?,
                    period_start: self.rows.period(py, time)?.0,
                });
            }
            let fired = PyList::empty(py);
            self.apply_events(py, &events, record, &fired)?;
            Ok(fired)
        })
    }

    /// The merged statistics of the account's cells of ``slot`` at ``[(level, buckets), ...]``
    /// (time order), or None where it has none.
    fn merged<'py>(
        &self,
        py: Python<'py>,
        account: u64,
        slot: usize,
        segments: Vec<(usize, Vec<i64>)>,
    ) -> PyResult<Option<Bound<'py, PyList>>> {
        guarded(|| {
            if segments.iter().any(|(level, _)| *level >= N_LEVELS) {
                return Err(PyValueError::new_err("no such level"));
            }
            self.cells.merged(account, slot, &segments).map(|cell| stats_list(py, &cell)).transpose()
        })
    }

    /// ``(statistics, alert flags)`` of the account's unfiltered period cell, or None.
    fn total<'py>(
        &self,
        py: Python<'py>,
        account: u64,
        period_start: i64,
    ) -> PyResult<Option<(Bound<'py, PyList>, i128)>> {
        guarded(|| {
            self.cells
                .total(account, period_start)
                .map(|(cell, flags)| Ok((stats_list(py, &cell)?, flags)))
                .transpose()
        })
    }

    /// The positions of the records that fed the account's minute cell, ascending.
    fn minute_positions(&self, account: u64, minute: i64) -> Vec<u64> {
        self.cells.minute_positions(account, minute)
    }

    /// The combination slots the account has events in.
    fn slots_of(&self, account: u64) -> Vec<u32> {
        self.cells.slots_of(account).to_vec()
    }

    /// How many combinations the metric has seen.
    #[getter]
    fn combo_count(&self) -> usize {
        self.cells.combos.values.len()
    }

    /// The combinations' values, in number order.
    fn combos(&self) -> Vec<Vec<String>> {
        self.cells.combos.values.clone()
    }

    #[getter]
    fn first_minute(&self) -> i64 {
        self.cells.first_minute
    }

    #[getter]
    fn last_minute(&self) -> i64 {
        self.cells.last_minute
    }

    /// Minutes below this are folded: they have no minute cells.
    #[getter]
    fn folded_minute(&self) -> i64 {
        self.cells.folded_minute
    }

    /// Drop the minute cells below ``minute`` (a whole hour's first), and create none there from
    /// now on; returns how many were dropped. ValueError while a snapshot is being packed.
    fn fold_minutes(&mut self, minute: i64) -> PyResult<usize> {
        self.cells.fold_minutes(minute).map_err(PyValueError::new_err)
    }

    /// Bytes the cells hold (their vectors' capacity).
    #[getter]
    fn memory_bytes(&self) -> usize {
        self.cells.memory_bytes()
    }

    /// Start a snapshot: ``(combos, [first_minute, last_minute], slot count, account_slots)`` as
    /// now; the cells are read as they are now by ``columns``/``chunk``/``big`` until ``release``.
    fn capture<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        guarded(|| {
            self.cells.capture();
            let account_slots =
                self.cells.account_slots().iter().map(|(a, s)| (*a, s.clone())).collect::<Vec<_>>();
            (
                self.cells.combos.values.clone(),
                [self.cells.first_minute, self.cells.last_minute],
                self.cells.slot_count(),
                account_slots,
            )
                .into_pyobject(py)
        })
    }

    fn release(&mut self) {
        self.cells.release();
    }

    /// The captured (level, slot)'s ``(account ids, buckets or period starts)`` columns.
    fn columns(&self, level: usize, slot: usize) -> PyResult<(Vec<u64>, Vec<i64>)> {
        guarded(|| {
            let n = self.captured_len(level, slot)?;
            let keys = &self.cells.keys(level, slot)[..n];
            Ok((keys.iter().map(|k| k.0).collect(), keys.iter().map(|k| k.1).collect()))
        })
    }

    /// Captured cells ``lo`` to ``hi`` of (level, slot) as a snapshot lists them, packed: each
    /// cell's statistics then tail, all as decimal strings where the sum does not fit msgpack's
    /// ints. The bytes are what `msgpack.packb` gives the same lists, without the array's header
    /// (`snapshot_data.Chunked` with ``packed``): building those lists as Python objects and
    /// packing them was nearly half of a snapshot's CPU at a few million events.
    fn chunk<'py>(
        &self,
        py: Python<'py>,
        level: usize,
        slot: usize,
        lo: usize,
        hi: usize,
    ) -> PyResult<Bound<'py, PyBytes>> {
        guarded(|| {
            let n = self.captured_len(level, slot)?;
            let entries = lo.min(n)..hi.min(n);
            let mut packed = MsgpackWriter::with_capacity(entries.len() * PACKED_CELL_BYTES);
            for entry in entries {
                let SnapshotCell { cell, tail } = self.cells.captured(level, slot, entry);
                let stats = cell.stats();
                packed.array(stats.len() + tail.len());
                let values = stats.into_iter().chain(tail);
                if (WIRE_MIN..=WIRE_MAX).contains(&cell.sum()) {
                    for value in values {
                        packed
                            .wide_int(value)
                            .map_err(|_| PyOverflowError::new_err("Integer value out of range"))?;
                    }
                } else {
                    values.for_each(|value| packed.str(&value.to_string()));
                }
            }
            Ok(PyBytes::new(py, &packed.buf))
        })
    }

    /// The indexes of the captured cells of (level, slot) that ``chunk`` gives as strings.
    fn big(&self, level: usize, slot: usize) -> PyResult<Vec<usize>> {
        guarded(|| {
            let n = self.captured_len(level, slot)?;
            Ok((0..n)
                .filter(|&i| !(WIRE_MIN..=WIRE_MAX).contains(&self.cells.captured_cell(level, slot, i).sum()))
                .collect())
        })
    }

    /// Fill these empty cells from ``SeriesStore.to_snapshot`` data (either engine's): ValueError
    /// for data that is not one.
    fn load(
        &mut self,
        combos: Vec<Vec<String>>,
        extent: Vec<i64>,
        levels: &Bound<'_, PyAny>,
        account_slots: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        guarded(|| {
            for combo in combos {
                if combo.len() != self.rows.dimension_count() {
                    return Err(PyValueError::new_err(
                        "aggregates snapshot: a combination of other dimensions",
                    ));
                }
                self.cells.combos.id_of(combo);
            }
            let levels = items(levels)?;
            if levels.len() != N_LEVELS {
                return Err(PyValueError::new_err("aggregates snapshot: not four levels"));
            }
            for (level, slots) in levels.iter().enumerate() {
                let slots = items(slots)?;
                self.cells.reserve_slots(slots.len());
                for (slot, columns) in slots.iter().enumerate() {
                    let columns = items(columns)?;
                    let [accounts, second, cells, _big] = &columns[..] else {
                        return Err(PyValueError::new_err("aggregates snapshot: not four columns"));
                    };
                    let accounts: Vec<u64> = accounts.extract()?;
                    let second: Vec<i64> = second.extract()?;
                    let cells = items(cells)?;
                    if accounts.len() != second.len() || accounts.len() != cells.len() {
                        return Err(PyValueError::new_err(
                            "aggregates snapshot: columns of different lengths",
                        ));
                    }
                    for ((account, bucket), cell) in accounts.into_iter().zip(second).zip(cells) {
                        let cell = snapshot_cell(&cell)?;
                        let key: Key = (account, bucket);
                        self.cells.load_cell(level, slot, key, cell).map_err(PyValueError::new_err)?;
                    }
                }
            }
            let [first, last] = extent[..] else {
                return Err(PyValueError::new_err("aggregates snapshot: a bad extent"));
            };
            (self.cells.first_minute, self.cells.last_minute) = (first, last);
            for entry in items(account_slots)? {
                let entry = items(&entry)?;
                let [account, slots] = &entry[..] else {
                    return Err(PyValueError::new_err("aggregates snapshot: a bad account slot list"));
                };
                self.cells.load_account_slots(account.extract()?, slots.extract()?);
            }
            Ok(())
        })
    }
}
