//! `unimeter_native.UniqueSets`: the Python face of `unique_sets::UniqueSets`.
//!
//! `node/aggregation/native_unique.py` wraps it into a store with the interface of `UniqueStore`.
//! Conversion happens here only: rows in (applied rows, or a stored record's rows read in place
//! through `py_rows`), alert tuples and statistics lists out, and the snapshot's account entries
//! as the plain lists `UniqueStore.to_snapshot` packs, so the bytes are the same whichever engine
//! wrote them.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyList, PyString};

use crate::event_batch::EventBatch;
use crate::guarded;
use crate::py_batch_ingest::metric_events;
use crate::py_rows::{items, row_item, MetricRows, REMOVE};
use crate::series_cells::Combos;
use crate::unique_sets::{Account, Op, SetEvent, SetRow, UniqueSets};

#[pyclass(module = "unimeter_native", name = "UniqueSets")]
pub struct PyUniqueSets {
    sets: UniqueSets,
    combos: Combos,
    rows: MetricRows,
}

/// ``(main statistics, [(group, statistics), ...])``.
type ScanLists<'py> = (Bound<'py, PyList>, Vec<(usize, Bound<'py, PyList>)>);

fn row_list<'py>(py: Python<'py>, row: &SetRow) -> PyResult<Bound<'py, PyList>> {
    PyList::new(py, row.stats())
}

impl PyUniqueSets {
    /// One row as an event: ``account, member, time, properties, operation`` at these items.
    fn event(
        &mut self,
        py: Python<'_>,
        row: &Bound<'_, PyAny>,
        at: [usize; 5],
        offset: i64,
    ) -> PyResult<SetEvent> {
        let time: i64 = row_item(row, at[2])?.extract()?;
        let (period_start, period_end) = self.rows.period(py, time)?;
        let combo = match self.rows.combination(py, &row_item(row, at[3])?)? {
            Some(key) => self.combos.id_of(key),
            None => 0,
        };
        Ok(SetEvent {
            account: row_item(row, at[0])?.extract()?,
            member: row_item(row, at[1])?.extract()?,
            time,
            offset,
            remove: row_item(row, at[4])?.extract::<i64>()? == REMOVE,
            combo,
            period_start,
            period_end,
        })
    }

    /// Apply a stored batch's events at `indexes` (this metric's, in order; event `i` has
    /// offset `first_offset + i`); the alert rows they fire are appended to `fired`
    /// (`py_batch_ingest::apply_batch`).
    pub fn apply_batch_events(
        &mut self,
        py: Python<'_>,
        batch: &EventBatch,
        indexes: &[u32],
        first_offset: i64,
        fired: &Bound<'_, PyList>,
    ) -> PyResult<()> {
        let combos = &mut self.combos;
        let events = metric_events(py, &mut self.rows, batch, indexes, first_offset, |e| {
            Ok(SetEvent {
                account: e.event.account,
                member: e.event.value,
                time: e.event.time,
                offset: e.offset,
                remove: e.event.operation == REMOVE,
                combo: e.combination.map_or(0, |key| combos.id_of(key)),
                period_start: e.period.0,
                period_end: e.period.1,
            })
        })?;
        self.apply_events(py, &events, fired)
    }

    /// Apply resolved events; the alert rows they fire are appended to `out`.
    fn apply_events(&mut self, py: Python<'_>, events: &[SetEvent], out: &Bound<'_, PyList>) -> PyResult<()> {
        let mut fired = Vec::new();
        self.sets.apply(events, &mut fired);
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
}

/// An account's snapshot entry: ``[account, [[member, [t, offset, op_combo, ...]], ...],
/// [[start, end, [size, 0, max, last_time, last_offset, last_value, alert state...]], ...]]``.
fn entry<'py>(py: Python<'py>, id: u64, acc: &Account, stride: usize) -> PyResult<Bound<'py, PyList>> {
    let members = PyList::empty(py);
    for (member, history) in &acc.members {
        let flat: Vec<i128> = history
            .iter()
            .flat_map(|op| [i128::from(op.time), i128::from(op.offset), i128::from(op.op_combo)])
            .collect();
        members.append(PyList::new(
            py,
            [member.into_pyobject(py)?.into_any(), PyList::new(py, flat)?.into_any()],
        )?)?;
    }
    let periods = PyList::empty(py);
    for (j, row) in acc.rows.iter().enumerate() {
        let values: Vec<i128> = row
            .stats()
            .into_iter()
            .chain(acc.alert_state[j * stride..(j + 1) * stride].iter().copied())
            .collect();
        let items: [Bound<'py, PyAny>; 3] = [
            acc.starts[j].into_pyobject(py)?.into_any(),
            acc.ends[j].into_pyobject(py)?.into_any(),
            PyList::new(py, values)?.into_any(),
        ];
        periods.append(PyList::new(py, items)?)?;
    }
    PyList::new(py, [id.into_pyobject(py)?.into_any(), members.into_any(), periods.into_any()])
}

/// An account from its snapshot entry (either engine's).
fn account_of(members: &Bound<'_, PyAny>, periods: &Bound<'_, PyAny>, stride: usize) -> PyResult<Account> {
    let bad = |what: &str| PyValueError::new_err(format!("unique snapshot: {what}"));
    let mut acc = Account::default();
    for pair in items(members)? {
        let pair = items(&pair)?;
        let [member, history] = &pair[..] else { return Err(bad("a bad member")) };
        let flat: Vec<i64> = history.extract()?;
        if flat.len() % 3 != 0 {
            return Err(bad("a member's history is not whole operations"));
        }
        let ops = flat
            .chunks_exact(3)
            .map(|c| {
                Ok(Op {
                    time: c[0],
                    offset: c[1],
                    op_combo: u64::try_from(c[2]).map_err(|_| bad("a bad operation"))?,
                })
            })
            .collect::<PyResult<Vec<Op>>>()?;
        acc.push_member(member.extract()?, ops).map_err(PyValueError::new_err)?;
    }
    for period in items(periods)? {
        let period = items(&period)?;
        let [start, end, row] = &period[..] else { return Err(bad("a bad period row")) };
        let values: Vec<i128> = row.extract()?;
        if values.len() != 6 + stride {
            return Err(bad("a period row's alert state does not fit the metric"));
        }
        acc.starts.push(start.extract()?);
        acc.ends.push(end.extract()?);
        acc.rows.push(SetRow::from_stats(&values[..6]).ok_or_else(|| bad("a bad period row"))?);
        acc.alert_state.extend_from_slice(&values[6..]);
    }
    if acc.starts.windows(2).any(|w| w[0] >= w[1]) {
        return Err(bad("period rows out of order"));
    }
    Ok(acc)
}

#[pymethods]
impl PyUniqueSets {
    /// Empty sets of a metric: its code, dimension keys, thresholds as ``(code, value,
    /// recurring)``, carry_over, and ``period_of(t) -> (start, end)``.
    #[new]
    fn new(
        py: Python<'_>,
        code: Py<PyString>,
        dims: Vec<Py<PyString>>,
        thresholds: Vec<(Py<PyString>, i64, bool)>,
        carry_over: bool,
        period_of: Py<PyAny>,
    ) -> PyResult<Self> {
        let recurring: Vec<bool> = thresholds.iter().map(|t| t.2).collect();
        let mut combos = Combos::default();
        if dims.is_empty() {
            combos.id_of(Vec::new()); // the only combination of a metric without dimensions
        }
        let rows = MetricRows::new(py, code, dims, thresholds, period_of)?;
        Ok(Self { sets: UniqueSets::new(rows.thresholds(&recurring), carry_over), combos, rows })
    }

    /// Apply one log record's rows ``(account, member, time, properties, operation, offset)`` in
    /// offset order; returns the alert rows they fire (``UniqueStore.apply``).
    fn apply<'py>(
        &mut self,
        py: Python<'py>,
        rows: &Bound<'py, PyAny>,
        record: u64,
    ) -> PyResult<Bound<'py, PyList>> {
        let _ = record; // histories answer every range: no record positions kept
        guarded(|| {
            let mut events = Vec::new();
            for row in rows.try_iter()? {
                let row = row?;
                let offset: i64 = row_item(&row, 5)?.extract()?;
                events.push(self.event(py, &row, [0, 1, 2, 3, 4], offset)?);
            }
            let fired = PyList::empty(py);
            self.apply_events(py, &events, &fired)?;
            Ok(fired)
        })
    }

    /// ``apply`` for this metric's rows among a stored record's ``EventRow`` rows (row ``i``
    /// has offset ``first_offset + i``), read in place. (A stored ``EventBatch`` goes through
    /// `apply_batch_events`, its events grouped by metric once.)
    fn apply_record<'py>(
        &mut self,
        py: Python<'py>,
        rows: &Bound<'py, PyAny>,
        first_offset: i64,
        record: u64,
    ) -> PyResult<Bound<'py, PyList>> {
        let _ = record;
        guarded(|| {
            let mut events = Vec::new();
            for (i, row) in rows.try_iter()?.enumerate() {
                let row = row?;
                if !self.rows.is_ours(py, &row_item(&row, 1)?)? {
                    continue;
                }
                events.push(self.event(py, &row, [0, 2, 3, 4, 5], first_offset + i as i64)?);
            }
            let fired = PyList::empty(py);
            self.apply_events(py, &events, &fired)?;
            Ok(fired)
        })
    }

    /// ``(statistics, alert flags)`` of the account's period row (a carried-over set where it has
    /// none; zeros without any).
    fn period_row<'py>(
        &self,
        py: Python<'py>,
        account: u64,
        period_start: i64,
    ) -> PyResult<(Bound<'py, PyList>, i128)> {
        guarded(|| {
            let (row, flags) = self.sets.period_row(account, period_start);
            Ok((row_list(py, &row)?, flags))
        })
    }

    /// ``(main statistics, [(group, statistics), ...])`` of the account's operations before
    /// ``end`` (from ``lo`` if not None) of the combinations ``wanted``, grouped by
    /// ``group_of[combination]`` (None: no group); None without the account.
    fn scan<'py>(
        &self,
        py: Python<'py>,
        account: u64,
        lo: Option<i64>,
        end: i64,
        wanted: Vec<bool>,
        group_of: Vec<Option<usize>>,
    ) -> PyResult<Option<ScanLists<'py>>> {
        guarded(|| {
            let Some(scan) = self.sets.scan(account, lo, end, &wanted, &group_of) else { return Ok(None) };
            let groups = scan
                .groups
                .iter()
                .map(|(g, row)| Ok((*g, row_list(py, row)?)))
                .collect::<PyResult<Vec<_>>>()?;
            Ok(Some((row_list(py, &scan.main)?, groups)))
        })
    }

    #[getter]
    fn combo_count(&self) -> usize {
        self.combos.values.len()
    }

    fn combos(&self) -> Vec<Vec<String>> {
        self.combos.values.clone()
    }

    /// Start a snapshot: ``(combos, account count)`` as now; ``chunk`` reads the accounts as they
    /// are now until ``release``.
    fn capture(&mut self) -> (Vec<Vec<String>>, usize) {
        (self.combos.values.clone(), self.sets.capture())
    }

    fn release(&mut self) {
        self.sets.release();
    }

    /// Captured accounts ``lo`` to ``hi`` as snapshot entries.
    fn chunk<'py>(&self, py: Python<'py>, lo: usize, hi: usize) -> PyResult<Bound<'py, PyList>> {
        guarded(|| {
            let out = PyList::empty(py);
            let stride = self.sets.alert_len();
            for i in lo..hi {
                let (id, acc) =
                    self.sets.captured(i).ok_or_else(|| PyValueError::new_err("no such captured account"))?;
                out.append(entry(py, id, acc, stride)?)?;
            }
            Ok(out)
        })
    }

    /// Fill these empty sets from ``UniqueStore.to_snapshot`` data (either engine's).
    fn load(&mut self, combos: Vec<Vec<String>>, accounts: &Bound<'_, PyAny>) -> PyResult<()> {
        guarded(|| {
            for combo in combos {
                if combo.len() != self.rows.dimension_count() {
                    return Err(PyValueError::new_err("unique snapshot: a combination of other dimensions"));
                }
                self.combos.id_of(combo);
            }
            let stride = self.sets.alert_len();
            for account in items(accounts)? {
                let account = items(&account)?;
                let [id, members, periods] = &account[..] else {
                    return Err(PyValueError::new_err("unique snapshot: a bad account"));
                };
                let acc = account_of(members, periods, stride)?;
                self.sets.load(id.extract()?, acc).map_err(PyValueError::new_err)?;
            }
            Ok(())
        })
    }
}
