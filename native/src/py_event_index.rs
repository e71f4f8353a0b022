//! `unimeter_native.EventIndex`: the Python face of `event_index::EventIndex`, wrapped by
//! `node/event_index.py`'s `NativeEventIndex`.
//!
//! It takes a stored record's rows as they are (the `EventRow` sequences `Partition._apply`
//! holds) and reads the account and the time of each, so no (account, hour) object is made per
//! event; it also reports the rows' metric codes in order of first appearance, which is the order
//! the record's metrics are aggregated in.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};

use crate::event_index::{EventIndex, HOUR_NS};
use crate::guarded;
use crate::msgpack_writer::MsgpackWriter;
use crate::py_rows::row_item;

#[pyclass(module = "unimeter_native", name = "EventIndex")]
#[derive(Default)]
pub struct PyEventIndex {
    index: EventIndex,
}

/// `code` is one of `codes` (the same object, as the rows of one batch share one per code, or an
/// equal string).
fn has_code(codes: &[Bound<'_, PyString>], code: &Bound<'_, PyString>) -> PyResult<bool> {
    if codes.iter().any(|c| c.is(code)) {
        return Ok(true);
    }
    for c in codes {
        if c.to_str()? == code.to_str()? {
            return Ok(true);
        }
    }
    Ok(false)
}

impl PyEventIndex {
    /// The index, for a partition part's native ingest (`py_part_ingest`).
    pub(crate) fn index_mut(&mut self) -> &mut EventIndex {
        &mut self.index
    }
}

#[pymethods]
impl PyEventIndex {
    #[new]
    fn new() -> Self {
        Self::default()
    }

    /// The number of accounts indexed.
    fn __len__(&self) -> usize {
        self.index.len()
    }

    /// Index the rows of the record at ``position`` (``EventRow`` sequences); returns their
    /// metric codes in order of first appearance.
    fn add_record<'py>(
        &mut self,
        position: u64,
        rows: &Bound<'py, PyAny>,
    ) -> PyResult<Vec<Bound<'py, PyString>>> {
        guarded(|| {
            let mut codes: Vec<Bound<'py, PyString>> = Vec::new();
            for row in rows.try_iter()? {
                let row = row?;
                let account: u64 = row_item(&row, 0)?.extract()?;
                let code = row_item(&row, 1)?.cast_into::<PyString>()?;
                let time: i64 = row_item(&row, 3)?.extract()?;
                self.index.add(position, account, time.div_euclid(HOUR_NS));
                if !has_code(&codes, &code)? {
                    codes.push(code);
                }
            }
            Ok(codes)
        })
    }

    /// ``[(hour, [position, ...]), ...]`` of the account's hours overlapping ``[start, end)``, in
    /// hour order.
    fn hours(&self, account: u64, start: i128, end: i128) -> PyResult<Vec<(i64, Vec<u64>)>> {
        guarded(|| {
            let hour = |t: i128| {
                i64::try_from(t.div_euclid(i128::from(HOUR_NS))).unwrap_or(if t < 0 {
                    i64::MIN
                } else {
                    i64::MAX
                })
            };
            Ok(self.index.hours(account, hour(start), hour(end - 1)))
        })
    }

    /// Snapshot entries ``lo`` to ``hi`` (``[account, [[hour, [position, ...]], ...]]``, the
    /// format of ``node.event_index.EventIndex.to_snapshot``) with the positions below ``below``,
    /// packed: the bytes `msgpack.packb` gives those lists, without the array's header (as
    /// `SeriesCells.chunk`).
    fn chunk<'py>(&self, py: Python<'py>, below: u64, lo: usize, hi: usize) -> PyResult<Bound<'py, PyBytes>> {
        guarded(|| {
            let mut packed = MsgpackWriter::default();
            for (account, hours) in self.index.entries(lo, hi, below) {
                packed.array(2);
                packed.uint(account);
                packed.array(hours.len());
                for (hour, positions) in hours {
                    packed.array(2);
                    packed.int(hour);
                    packed.array(positions.len());
                    positions.into_iter().for_each(|p| packed.uint(p));
                }
            }
            Ok(PyBytes::new(py, &packed.buf))
        })
    }

    /// ``(accounts, hours, ends, positions)``: the positions below ``below`` of every hour before
    /// ``before``, as the little-endian bytes of a run's four columns (``node/index_run.py``).
    fn aged<'py>(&self, py: Python<'py>, before: i64, below: u64) -> PyResult<[Bound<'py, PyBytes>; 4]> {
        guarded(|| {
            let columns = self.index.aged(before, below);
            let bytes = |words: Vec<[u8; 8]>| PyBytes::new(py, words.as_flattened());
            Ok([
                bytes(columns.accounts.iter().map(|v| v.to_le_bytes()).collect()),
                bytes(columns.hours.iter().map(|v| v.to_le_bytes()).collect()),
                bytes(columns.ends.iter().map(|v| v.to_le_bytes()).collect()),
                bytes(columns.positions.iter().map(|v| v.to_le_bytes()).collect()),
            ])
        })
    }

    /// Forget what ``aged(before, below)`` handed over (once a run holds it).
    fn drop_aged(&mut self, before: i64, below: u64) -> PyResult<()> {
        guarded(|| {
            self.index.drop_aged(before, below);
            Ok(())
        })
    }

    /// An index from either engine's snapshot list; ValueError if it is not one.
    #[staticmethod]
    fn from_snapshot(data: &Bound<'_, PyAny>) -> PyResult<Self> {
        guarded(|| {
            let mut index = EventIndex::default();
            for entry in data.try_iter()? {
                let entry = entry?;
                let account: u64 = row_item(&entry, 0)?.extract()?;
                let mut hours = Vec::new();
                for pair in row_item(&entry, 1)?.try_iter()? {
                    let pair = pair?;
                    hours.push((
                        row_item(&pair, 0)?.extract::<i64>()?,
                        row_item(&pair, 1)?.extract::<Vec<u64>>()?,
                    ));
                }
                index.load(account, hours).map_err(PyValueError::new_err)?;
            }
            Ok(Self { index })
        })
    }
}
