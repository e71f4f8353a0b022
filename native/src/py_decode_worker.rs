//! `unimeter_native.DecodeWorker`: large `IngestRequest`s decoded and split by partition on a
//! thread that never takes the GIL (`ring_worker`, `request_parts`), while the event loop serves
//! other calls; `service/ingest_engine.py` hands the bytes over and awaits the eventfd's ring. The
//! loop's share is what needs Python: the request's metrics looked up, its rules checked and its
//! parts handed over as `EventBatch`es (`DecodedRequest.answer`, the same answer as
//! `decode_ingest`'s).

use std::collections::HashMap;
use std::os::fd::RawFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};

use pyo3::exceptions::{PyOSError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyTuple};

use crate::request_parts::{RequestParts, StableBytes};
use crate::ring_worker::RingWorker;
use crate::{answer, guarded, panic_message, MalformedRequest, NativePanic, Resolved};

struct Job {
    token: u64,
    data: LentBody,
    partitions: u64,
}

/// A request body lent to the worker, not copied: this value keeps the bytes object alive, and a
/// bytes object's contents neither move nor change, so the worker reads them in place without the
/// GIL. The copy it replaces cost the loop ~70,000 instructions and the body's cache lines for a
/// 1000-event request (`python -m bench.instructions --cache`). The reference goes back to the
/// loop inside the decoded request; for a malformed body the worker drops it, and PyO3 defers the
/// decrement until a thread next holds the GIL.
struct LentBody {
    _owner: Py<PyBytes>,
    start: *const u8,
    len: usize,
}

// SAFETY: `start` points into the immutable contents of `_owner`, which this value keeps alive,
// and `Py` may be moved to and dropped on any thread; the contents are only ever read.
unsafe impl Send for LentBody {}
unsafe impl Sync for LentBody {}

// SAFETY: the contents of a live bytes object stay where they are and never change.
unsafe impl StableBytes for LentBody {
    fn bytes(&self) -> &[u8] {
        // SAFETY: see the impl: `start` and `len` describe the contents of `_owner`, alive.
        unsafe { std::slice::from_raw_parts(self.start, self.len) }
    }
}

/// The generation of each metric the loop last resolved, by code: the worker computes the dedup
/// keys of a request's events under them, and a partition uses such a key only if it validates
/// the event against that same generation (a metric deleted and created again meanwhile gets
/// its keys computed again there).
type Generations = Arc<Mutex<HashMap<String, u64>>>;

/// What a job came to: the parts, or why there are none.
enum Outcome {
    Decoded(RequestParts),
    Malformed(String),
    Panicked(String),
}

#[pyclass(module = "unimeter_native", name = "DecodeWorker")]
pub struct PyDecodeWorker {
    worker: RingWorker<Job, (u64, Outcome)>,
    generations: Generations,
}

#[pymethods]
impl PyDecodeWorker {
    /// A started worker; OSError where the platform has no eventfd.
    #[new]
    fn new() -> PyResult<Self> {
        let generations = Generations::default();
        let known = Arc::clone(&generations);
        let worker = RingWorker::start("unimeter-decoder", move |job| decode(job, &known))
            .map_err(|e| PyOSError::new_err(e.to_string()))?;
        Ok(Self { worker, generations })
    }

    /// The descriptor that becomes readable when a decode is done.
    fn fileno(&self) -> RawFd {
        self.worker.ring_fd()
    }

    /// Queue the decoding of ``data`` (a bytes object, read in place: the job keeps it alive)
    /// split over ``partitions``, as ``token``.
    fn submit(&self, token: u64, data: &Bound<'_, PyBytes>, partitions: u64) -> PyResult<()> {
        if partitions == 0 {
            return Err(PyValueError::new_err("partitions must be at least 1"));
        }
        let contents = data.as_bytes();
        let data = LentBody { _owner: data.clone().unbind(), start: contents.as_ptr(), len: contents.len() };
        if !self.worker.submit(Job { token, data, partitions }) {
            return Err(PyOSError::new_err("the decode worker is stopped"));
        }
        Ok(())
    }

    /// The decodes finished since the last call, in order: ``(token, outcome)``, the outcome a
    /// ``DecodedRequest``, or the exception to raise for it: ``MalformedRequest`` for bytes that
    /// are not a request, ``NativePanic`` for a bug.
    fn done(&self, py: Python<'_>) -> PyResult<Vec<(u64, Py<PyAny>)>> {
        self.worker
            .take_done()
            .into_iter()
            .map(|(token, outcome)| {
                let value = match outcome {
                    Outcome::Decoded(parts) => {
                        let generations = Arc::clone(&self.generations);
                        Py::new(py, PyDecodedRequest { parts: Some(parts), generations })?.into_any()
                    }
                    Outcome::Malformed(why) => MalformedRequest::new_err(why).into_value(py).into_any(),
                    Outcome::Panicked(why) => NativePanic::new_err(why).into_value(py).into_any(),
                };
                Ok((token, value))
            })
            .collect()
    }

    /// Let the queued decodes finish (the GIL released meanwhile), then stop the worker.
    fn stop(&mut self, py: Python<'_>) {
        let worker = &mut self.worker;
        py.detach(|| worker.stop());
    }
}

fn decode(job: Job, generations: &Generations) -> (u64, Outcome) {
    let Job { token, data, partitions } = job;
    // A copy, so the loop never waits on the worker for the lock (a few metrics).
    let generations = generations.lock().map(|g| g.clone()).unwrap_or_default();
    let outcome =
        match catch_unwind(AssertUnwindSafe(|| RequestParts::decode(data, partitions, &generations))) {
            Ok(Ok(parts)) => Outcome::Decoded(parts),
            Ok(Err(malformed)) => Outcome::Malformed(malformed.0.to_owned()),
            Err(payload) => Outcome::Panicked(panic_message(payload.as_ref())),
        };
    (token, outcome)
}

/// A request the worker decoded, until its answer is taken.
#[pyclass(module = "unimeter_native", name = "DecodedRequest")]
pub struct PyDecodedRequest {
    parts: Option<RequestParts>,
    generations: Generations,
}

#[pymethods]
impl PyDecodedRequest {
    /// ``decode_ingest``'s answer for the request against ``metric_of``: ``(n_events, sync,
    /// by_partition, rejection)``. Once: the parts move out.
    fn answer<'py>(
        &mut self,
        py: Python<'py>,
        metric_of: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let Some(mut decoded) = self.parts.take() else {
            return Err(PyRuntimeError::new_err("the answer of a decoded request is taken once"));
        };
        guarded(|| {
            let parts = std::mem::take(&mut decoded.parts);
            let (request, numbers) = decoded.request();
            let remember = |metrics: &[Option<Resolved>]| {
                if let Ok(mut known) = self.generations.lock() {
                    for (&code, metric) in numbers.codes.iter().zip(metrics) {
                        match metric {
                            Some(metric) if known.get(code) != Some(&metric.generation) => {
                                known.insert(code.to_owned(), metric.generation);
                            }
                            None => {
                                known.remove(code);
                            }
                            _ => {}
                        }
                    }
                }
            };
            answer(py, request, numbers, metric_of, remember, || parts)
        })
    }
}
