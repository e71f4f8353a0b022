//! The answer of an ingest call, its last per-event steps: `unimeter_native.request_offsets`
//! puts the request's offsets back in request order from its partitions' outcomes
//! (`cluster_client.client.request_offsets` is the reference, and the python engine's), and
//! `encode_ingest_response` writes the `IngestResponse` bytes grpc sends (`ingest_response`). In
//! Python they were the largest per-event costs left outside the partitions: ~33 us a 1000-event
//! request for the offsets as a bytecode loop (~66 us through `map`), ~24 us for the message.

use pyo3::exceptions::{PyKeyError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PySequence, PyTuple};

use crate::guarded;
use crate::ingest_response;

/// A partition's (request index, offset) pairs, read from its split and its outcome.
type Pairs<'py> = Box<dyn Iterator<Item = PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>)>> + 'py>;

/// ``(offsets, n_duplicates)`` of a request of `n_events` split as `by_partition`
/// (``{partition: (rows, request indexes)}``, each index once) and answered as `outcomes`
/// (``{partition: IngestOutcome}``): each event's offset at its request index. ValueError if a
/// partition's offsets are not one per event of its split, if the outcomes do not cover the
/// request's events, or for an index past them.
#[pyfunction]
pub fn request_offsets<'py>(
    py: Python<'py>,
    n_events: usize,
    by_partition: &Bound<'py, PyDict>,
    outcomes: &Bound<'py, PyDict>,
) -> PyResult<Bound<'py, PyTuple>> {
    guarded(|| {
        let mut placed: Vec<Option<Bound<'py, PyAny>>> = vec![None; n_events];
        let (mut n_duplicates, mut n_placed) = (0u64, 0usize);
        for (partition, outcome) in outcomes.iter() {
            n_duplicates += outcome.getattr(intern!(py, "n_duplicates"))?.extract::<u64>()?;
            let offsets = outcome.getattr(intern!(py, "offsets"))?;
            let offsets = offsets.cast::<PySequence>()?;
            let split = by_partition
                .get_item(&partition)?
                .ok_or_else(|| PyKeyError::new_err(partition.clone().unbind()))?;
            let indexes = split.get_item(1)?;
            let indexes = indexes.cast::<PySequence>()?;
            let (n_offsets, n_indexes) = (offsets.len()?, indexes.len()?);
            if n_offsets != n_indexes {
                return Err(PyValueError::new_err(format!(
                    "partition {partition} answered {n_offsets} offsets for {n_indexes} events"
                )));
            }
            n_placed += n_indexes;
            // Lists (what the engines make) are read in place; any other sequence through its
            // iterator (CPython's list iterator cost ~15 ns an item on top).
            let pairs: Pairs<'py> = match (indexes.cast::<PyList>(), offsets.cast::<PyList>()) {
                (Ok(indexes), Ok(offsets)) => Box::new(indexes.iter().zip(offsets.iter()).map(Ok)),
                _ => Box::new(indexes.try_iter()?.zip(offsets.try_iter()?).map(|(i, o)| Ok((i?, o?)))),
            };
            for pair in pairs {
                let (index, offset) = pair?;
                let index: usize = index.extract()?;
                let slot = placed
                    .get_mut(index)
                    .ok_or_else(|| PyValueError::new_err(format!("request index {index} out of range")))?;
                *slot = Some(offset);
            }
        }
        let offsets: Option<Vec<_>> = placed.into_iter().collect();
        match offsets {
            Some(offsets) if n_placed == n_events => {
                (PyList::new(py, offsets)?, n_duplicates).into_pyobject(py)
            }
            _ => Err(PyValueError::new_err(format!(
                "the partitions answered for {n_placed} of the request's {n_events} events"
            ))),
        }
    })
}

/// The serialized `IngestResponse` of ``(n_stored, n_duplicates, offsets)``, byte for byte what
/// ``IngestResponse(...).SerializeToString()`` gives.
#[pyfunction]
pub fn encode_ingest_response<'py>(
    py: Python<'py>,
    n_stored: u32,
    n_duplicates: u32,
    offsets: &Bound<'py, PyList>,
) -> PyResult<Bound<'py, PyBytes>> {
    guarded(|| {
        let offsets = offsets.iter().map(|o| o.extract::<u64>()).collect::<PyResult<Vec<u64>>>()?;
        Ok(PyBytes::new(py, &ingest_response::encode_ingest_response(n_stored, n_duplicates, &offsets)))
    })
}
