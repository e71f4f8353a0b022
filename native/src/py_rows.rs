//! Reading a metric's event rows from Python, for the native stores (`py_series_store`,
//! `py_unique_store`): a row's items, its period (from the metric's Python `period_of`, so time
//! zones and calendars stay in one place, called only when an event falls outside the last few
//! periods seen), its dimension combination, and the alert rows handed back.

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString, PyTuple};

use crate::event_batch::{BatchEvent, EventBatch};
use crate::thresholds::Threshold;

/// Periods remembered for the events' lookups (a record's events mostly share one or two).
const RECENT_PERIODS: usize = 8;
/// `OperationType.REMOVE`.
pub const REMOVE: i64 = 2;

/// Item `i` of a row: a tuple on the ingest path, a list where it came through msgpack.
pub fn row_item<'py>(row: &Bound<'py, PyAny>, i: usize) -> PyResult<Bound<'py, PyAny>> {
    match row.cast::<PyTuple>() {
        Ok(tuple) => tuple.get_item(i),
        Err(_) => row.get_item(i),
    }
}

/// The items of a snapshot's list (a list, or a tuple where msgpack gave one).
pub fn items<'py>(sequence: &Bound<'py, PyAny>) -> PyResult<Vec<Bound<'py, PyAny>>> {
    sequence.try_iter()?.collect()
}

/// What a store knows of its metric to read rows and report alerts.
pub struct MetricRows {
    code: Py<PyString>,
    code_text: String,
    dims: Vec<Py<PyString>>,
    threshold_codes: Vec<Py<PyString>>,
    limits: Vec<i64>,
    period_of: Py<PyAny>,
    /// (start, end) of recently seen periods, the latest first.
    recent: Vec<(i64, i128)>,
}

impl MetricRows {
    /// From the constructor arguments of the stores: code, dimension keys, thresholds as
    /// ``(code, value, recurring)`` and ``period_of(t) -> (start, end)``.
    pub fn new(
        py: Python<'_>,
        code: Py<PyString>,
        dims: Vec<Py<PyString>>,
        thresholds: Vec<(Py<PyString>, i64, bool)>,
        period_of: Py<PyAny>,
    ) -> PyResult<Self> {
        Ok(Self {
            code_text: code.bind(py).to_str()?.to_owned(),
            code,
            dims,
            limits: thresholds.iter().map(|t| t.1).collect(),
            threshold_codes: thresholds.into_iter().map(|t| t.0).collect(),
            period_of,
            recent: Vec::new(),
        })
    }

    pub fn thresholds(&self, recurring: &[bool]) -> Vec<Threshold> {
        self.limits.iter().zip(recurring).map(|(&limit, &recurring)| Threshold { limit, recurring }).collect()
    }

    pub fn dimension_count(&self) -> usize {
        self.dims.len()
    }

    /// Whether a stored row's metric code is this metric's.
    pub fn is_ours(&self, py: Python<'_>, row_code: &Bound<'_, PyAny>) -> PyResult<bool> {
        Ok(row_code.is(self.code.bind(py)) || row_code.cast::<PyString>()?.to_str()? == self.code_text)
    }

    /// `(start, end)` of the period containing `time`.
    pub fn period(&mut self, py: Python<'_>, time: i64) -> PyResult<(i64, i128)> {
        let t = i128::from(time);
        if let Some(i) = self.recent.iter().position(|&(s, e)| i128::from(s) <= t && t < e) {
            if i != 0 {
                let found = self.recent.remove(i);
                self.recent.insert(0, found);
            }
            return Ok(self.recent[0]);
        }
        let found: (i64, i128) = self.period_of.bind(py).call1((time,))?.extract()?;
        self.recent.insert(0, found);
        self.recent.truncate(RECENT_PERIODS);
        Ok(found)
    }

    /// The values of the declared dimensions in these properties, `""` where missing (None: the
    /// metric has no dimensions).
    pub fn combination(
        &self,
        py: Python<'_>,
        properties: &Bound<'_, PyAny>,
    ) -> PyResult<Option<Vec<String>>> {
        if self.dims.is_empty() {
            return Ok(None);
        }
        let props = if properties.is_none() { None } else { Some(properties.cast::<PyDict>()?) };
        let mut key = Vec::with_capacity(self.dims.len());
        for dim in &self.dims {
            let value = match props {
                Some(props) => props.get_item(dim.bind(py))?,
                None => None,
            };
            key.push(match value {
                Some(value) => value.extract::<String>()?,
                None => String::new(),
            });
        }
        Ok(Some(key))
    }

    /// [`Self::combination`] of a batch event's properties.
    pub fn batch_combination(
        &self,
        py: Python<'_>,
        batch: &EventBatch,
        event: &BatchEvent,
    ) -> PyResult<Option<Vec<String>>> {
        if self.dims.is_empty() {
            return Ok(None);
        }
        let mut key = Vec::with_capacity(self.dims.len());
        for dim in &self.dims {
            key.push(batch.property(event, dim.bind(py).to_str()?).unwrap_or("").to_owned());
        }
        Ok(Some(key))
    }

    /// An alert row: ``(account, metric, threshold, limit, multiple, value, period_start, time)``.
    #[allow(clippy::too_many_arguments)] // the row's fields
    pub fn alert_row<'py>(
        &self,
        py: Python<'py>,
        account: u64,
        threshold: usize,
        multiple: i128,
        value: i128,
        period_start: i64,
        time: i64,
    ) -> PyResult<Bound<'py, PyTuple>> {
        (
            account,
            self.code.bind(py),
            self.threshold_codes[threshold].bind(py),
            self.limits[threshold],
            multiple,
            value,
            period_start,
            time,
        )
            .into_pyobject(py)
    }
}
