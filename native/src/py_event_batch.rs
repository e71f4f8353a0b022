//! `unimeter_native.EventBatch`: the Python face of `event_batch::EventBatch`, what the decoder
//! hands the client core for each partition (`decode_ingest`).
//!
//! The native partition reads it in place (`py_batch_ingest`); anything else (a remote owner's
//! node-protocol frame, the Python engine, the validation of an unvalidated part) reads it as the
//! sequence of `EventRow` tuples it stands for, the same tuples the decoder made before it had
//! batches: `rows()` makes them, `len()` and iteration follow them.

use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyIterator, PyList, PyString};

use crate::event_batch::{BatchEvent, EventBatch};

#[pyclass(module = "unimeter_native", name = "EventBatch", frozen)]
pub struct PyEventBatch {
    pub batch: EventBatch,
    /// The batch's metric codes as Python strings, indexed like `BatchEvent::code`: made once
    /// per request and shared by its batches and their stored parts, so that a partition part
    /// makes none and the dictionaries it looks them up in hash each once.
    codes: Arc<Vec<Py<PyString>>>,
}

impl PyEventBatch {
    /// `batch` with `codes`, its codes' strings in its code numbers' order.
    pub fn new(batch: EventBatch, codes: Vec<Py<PyString>>) -> Self {
        Self { batch, codes: Arc::new(codes) }
    }

    /// Another batch of some of these events (`EventBatch::with_events`), sharing the strings.
    pub fn with_events(&self, events: Vec<BatchEvent>) -> Self {
        Self { batch: self.batch.with_events(events), codes: Arc::clone(&self.codes) }
    }

    /// The batch's metric codes as Python strings, indexed like `BatchEvent::code`.
    pub fn code_objects<'py>(&self, py: Python<'py>) -> Vec<Bound<'py, PyString>> {
        self.codes.iter().map(|code| code.bind(py).clone()).collect()
    }
}

#[pymethods]
impl PyEventBatch {
    fn __len__(&self) -> usize {
        self.batch.len()
    }

    /// The events as ``EventRow`` tuples ``(account, code, value, time, properties or None,
    /// operation, event_id)``, in order; rows of one code share its string.
    fn rows<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let codes = self.code_objects(py);
        let batch = &self.batch;
        let rows = PyList::empty(py);
        for e in &batch.events {
            let properties = if batch.properties(e).len() == 0 {
                None
            } else {
                let dict = PyDict::new(py);
                for (key, value) in batch.properties(e) {
                    dict.set_item(key, value)?;
                }
                Some(dict)
            };
            let row = (
                e.account,
                &codes[e.code as usize],
                e.value,
                e.time,
                properties,
                e.operation,
                batch.event_id(e),
            );
            rows.append(row.into_pyobject(py)?)?;
        }
        Ok(rows)
    }

    fn __iter__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyIterator>> {
        self.rows(py)?.try_iter()
    }

    fn __repr__(&self) -> String {
        format!("<EventBatch of {} events>", self.batch.len())
    }
}
