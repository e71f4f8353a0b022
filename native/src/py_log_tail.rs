//! `unimeter_native.LogTail`: a segment log's tail, `node/log_tail.py`'s `LogTail` in Rust (that
//! class is the reference, and a test holds the two together).
//!
//! The tail is what `SegmentLog` has not handed to a round yet: the records appended since, the
//! end, the fill of the last segment, the segments the buffered records start. With the tail
//! here, a partition part's ingest (`PartIngest`) writes its record's frame straight into the
//! buffer: no `bytes` object a record (over 512 B each, so `malloc`'s, which first consolidated
//! its fast bins) and no Python call to `append_frame`. A round takes the buffer as one `bytes`
//! (the copy the frames' `b"".join` made), and the buffer keeps its allocation for the next round.

use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::segment_scan::{frame_header, HEADER_SIZE};

/// A round's buffer larger than this is given back instead of kept: one huge request must not pin
/// its size in every log it reached.
const KEPT_BYTES: usize = 1 << 20;

#[pyclass(module = "unimeter_native", name = "LogTail")]
pub struct PyLogTail {
    /// The buffered frames, back to back.
    buf: Vec<u8>,
    /// Global position of the first buffered byte.
    #[pyo3(get)]
    start: u64,
    /// Where the next record goes.
    #[pyo3(get)]
    end: u64,
    /// Bytes in the last (logical) segment: on disk and buffered.
    #[pyo3(get)]
    seg_fill: u64,
    #[pyo3(get)]
    segment_bytes: u64,
    /// Segments the buffered records start, whose files do not exist yet.
    pending: Vec<u64>,
    /// Set by the log once it is closed or failed: an append must then go through the log, which
    /// raises the log's error.
    #[pyo3(get, set)]
    pub refusing: bool,
}

impl PyLogTail {
    /// The position of a frame of `size` bytes, its segment started if it does not fit the last
    /// one's room (unless that segment is empty: a frame larger than a segment has its own).
    fn place(&mut self, size: u64) -> u64 {
        let position = self.end;
        let mut fill = self.seg_fill;
        if fill != 0 && fill + size > self.segment_bytes {
            self.pending.push(position);
            fill = 0;
        }
        self.seg_fill = fill + size;
        self.end = position + size;
        position
    }

    /// Append one record as a frame whose payload is `pieces` one after the other; its position.
    /// The header's CRC is computed over the payload where it lands.
    pub fn append_record(&mut self, pieces: &[&[u8]]) -> PyResult<u64> {
        let length = pieces.iter().map(|p| p.len()).sum::<usize>();
        let frame_length = u32::try_from(length).map_err(|_| {
            pyo3::exceptions::PyValueError::new_err("an event record exceeds the 4 GiB frame limit")
        })?;
        let position = self.place((HEADER_SIZE + length) as u64);
        let at = self.buf.len();
        self.buf.reserve(HEADER_SIZE + length);
        self.buf.extend_from_slice(&[0; HEADER_SIZE]);
        for piece in pieces {
            self.buf.extend_from_slice(piece);
        }
        let header = frame_header(frame_length, &self.buf[at + HEADER_SIZE..]);
        self.buf[at..at + HEADER_SIZE].copy_from_slice(&header);
        Ok(position)
    }
}

#[pymethods]
impl PyLogTail {
    #[new]
    fn new(end: u64, seg_fill: u64, segment_bytes: u64) -> Self {
        Self {
            buf: Vec::new(),
            start: end,
            end,
            seg_fill,
            segment_bytes,
            pending: Vec::new(),
            refusing: false,
        }
    }

    #[getter]
    fn pending_bases(&self) -> Vec<u64> {
        self.pending.clone()
    }

    /// Buffer one framed record; its position.
    fn append(&mut self, frame: &[u8]) -> u64 {
        let position = self.place(frame.len() as u64);
        self.buf.extend_from_slice(frame);
        position
    }

    /// ``(data, start, end, new_bases)``: the buffered records as one block, from where to where,
    /// and the segments they start. The tail is empty afterwards, starting at ``end``.
    fn detach<'py>(&mut self, py: Python<'py>) -> (Bound<'py, PyBytes>, u64, u64, Vec<u64>) {
        let data = PyBytes::new(py, &self.buf);
        self.buf.clear();
        if self.buf.capacity() > KEPT_BYTES {
            self.buf = Vec::new();
        }
        let start = self.start;
        self.start = self.end;
        (data, start, self.end, std::mem::take(&mut self.pending))
    }

    /// The buffered records as one block.
    fn buffered<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.buf)
    }

    /// Drop the buffered records at and after ``position`` (everything if it is before
    /// ``start``); what is kept, which now ends the log.
    fn cut<'py>(&mut self, py: Python<'py>, position: u64) -> Bound<'py, PyBytes> {
        if position >= self.start {
            let kept = usize::try_from(position - self.start).unwrap_or(usize::MAX);
            self.buf.truncate(kept);
            self.pending.retain(|&base| base < position);
        } else {
            self.buf.clear();
            self.pending.clear();
        }
        self.end = self.start + self.buf.len() as u64;
        PyBytes::new(py, &self.buf)
    }

    /// Empty, with everything before ``position`` written, and ``seg_fill`` bytes in the last
    /// segment.
    fn reset(&mut self, position: u64, seg_fill: u64) {
        self.buf = Vec::new();
        self.pending.clear();
        self.start = position;
        self.end = position;
        self.seg_fill = seg_fill;
    }
}
