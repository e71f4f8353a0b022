//! The answer of an ingest call, its last per-event steps: `unimeter_native.request_offsets`
//! puts the request's offsets back in request order from its partitions' outcomes
//! (`cluster_client.client.request_offsets` is the reference, and the python engine's), and
//! `encode_ingest_response` writes the `IngestResponse` bytes grpc sends (`ingest_response`). In
//! Python they were the largest per-event costs left outside the partitions: ~33 us a 1000-event
//! request for the offsets as a bytecode loop (~66 us through `map`), ~24 us for the message.
//! The numbers travel as `UintList`s (`py_uint_list`), so neither step makes or reads an int
//! object per event.

use pyo3::exceptions::{PyKeyError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use crate::guarded;
use crate::ingest_response;
use crate::py_uint_list::{PyUintList, Uints};

/// ``(offsets, n_duplicates)`` of a request of `n_events` split as `by_partition`
/// (``{partition: (rows, request indexes)}``, each index once) and answered as `outcomes`
/// (``{partition: IngestOutcome}``): each event's offset at its request index, as a `UintList`.
/// ValueError if a partition's offsets are not one unsigned int per event of its split, if the
/// outcomes do not cover the request's events, or for an index past them. The indexes and
/// offsets the native engine makes are `UintList`s, read in place; a remote owner's answer is a
/// list.
#[pyfunction]
pub fn request_offsets(
    py: Python<'_>,
    n_events: usize,
    by_partition: &Bound<'_, PyDict>,
    outcomes: &Bound<'_, PyDict>,
) -> PyResult<(PyUintList, u64)> {
    guarded(|| {
        let mut placed: Vec<Option<u64>> = vec![None; n_events];
        let (mut n_duplicates, mut n_placed) = (0u64, 0usize);
        for (partition, outcome) in outcomes.iter() {
            n_duplicates += outcome.getattr(intern!(py, "n_duplicates"))?.extract::<u64>()?;
            let split = by_partition
                .get_item(&partition)?
                .ok_or_else(|| PyKeyError::new_err(partition.clone().unbind()))?;
            let (indexes, offsets) = (split.get_item(1)?, outcome.getattr(intern!(py, "offsets"))?);
            // A node's answer that is not unsigned ints does not fit the request either.
            let not_uints = |what: &str, err: PyErr| {
                PyValueError::new_err(format!("partition {partition}'s {what} are not unsigned ints: {err}"))
            };
            let indexes = Uints::of(&indexes).map_err(|err| not_uints("request indexes", err))?;
            let offsets = Uints::of(&offsets).map_err(|err| not_uints("offsets", err))?;
            let (indexes, offsets) = (indexes.items(), offsets.items());
            if offsets.len() != indexes.len() {
                return Err(PyValueError::new_err(format!(
                    "partition {partition} answered {} offsets for {} events",
                    offsets.len(),
                    indexes.len()
                )));
            }
            n_placed += indexes.len();
            for (&index, &offset) in indexes.iter().zip(offsets) {
                let slot = usize::try_from(index)
                    .ok()
                    .and_then(|index| placed.get_mut(index))
                    .ok_or_else(|| PyValueError::new_err(format!("request index {index} out of range")))?;
                *slot = Some(offset);
            }
        }
        let offsets: Option<Vec<u64>> = placed.into_iter().collect();
        match offsets {
            Some(offsets) if n_placed == n_events => Ok((PyUintList::new(offsets), n_duplicates)),
            _ => Err(PyValueError::new_err(format!(
                "the partitions answered for {n_placed} of the request's {n_events} events"
            ))),
        }
    })
}

/// The serialized `IngestResponse` of ``(n_stored, n_duplicates, offsets)``, byte for byte what
/// ``IngestResponse(...).SerializeToString()`` gives; `offsets` a `UintList` (read in place) or
/// any sequence of ints.
#[pyfunction]
pub fn encode_ingest_response<'py>(
    py: Python<'py>,
    n_stored: u32,
    n_duplicates: u32,
    offsets: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyBytes>> {
    guarded(|| {
        let offsets = Uints::of(offsets)?;
        Ok(PyBytes::new(
            py,
            &ingest_response::encode_ingest_response(n_stored, n_duplicates, offsets.items()),
        ))
    })
}
