//! `unimeter_native.IngestCursor`: where a partition's ingest stands, `node/ingest_cursor.py`'s
//! `IngestCursor` in Rust. The partition owns it and reads it; `PartIngest` moves it on as it
//! stores a part, so that nothing of a part's bookkeeping is left to a Python step.

use pyo3::prelude::*;

#[pyclass(module = "unimeter_native", name = "IngestCursor")]
#[derive(Default)]
pub struct PyIngestCursor {
    /// The offset of the partition's last stored event (0: none yet).
    #[pyo3(get, set)]
    pub last_offset: u64,
    /// The arrival time stamped on the last record logged; the next is never earlier.
    #[pyo3(get, set)]
    pub last_arrival: i64,
    /// Records logged since the last snapshot.
    #[pyo3(get, set)]
    pub records: u64,
}

#[pymethods]
impl PyIngestCursor {
    #[new]
    fn new() -> Self {
        Self::default()
    }
}

impl PyIngestCursor {
    /// Where the next part starts: its first offset, and its arrival time for a clock at `now`.
    pub fn next_part(&self, now: i64) -> (u64, i64) {
        (self.last_offset + 1, now.max(self.last_arrival))
    }

    /// A part's record is logged: arrived at `arrival`, storing `n_stored` events from
    /// `first_offset` on.
    pub fn logged(&mut self, first_offset: u64, arrival: i64, n_stored: usize) {
        self.last_arrival = arrival;
        self.records += 1;
        if n_stored > 0 {
            self.last_offset = first_offset + n_stored as u64 - 1;
        }
    }
}
