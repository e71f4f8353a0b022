//! Memory kept from one snapshot capture to the next, so that a capture's copy touches no fresh page.
//!
//! A partition's snapshot copies its dedup table's columns (megabytes after a few million events)
//! on the event loop, in one step, so that the copy describes one log position. Copied into new
//! `bytes`, a capture of that size got memory the allocator had just mapped: in a server under
//! load, a 7 MB table's copy took ~1,700 page faults and 4-19 ms on the loop, where the same copy
//! into memory already mapped took 0.6-1 ms (docs/benchmarks-history.md, "Snapshot captures into memory
//! already mapped"). A node snapshots its partitions one after another, so one buffer, handed back
//! when a snapshot is written and taken again by the next capture, serves them all with its pages
//! mapped: the process keeps one capture's worth (the largest partition's columns) in between.
//!
//! A capture fills a [`CaptureBuffer`], then shares it among the views of its columns
//! ([`CapturedBytes`], read-only buffers Python sees as `memoryview`s). Dropping the last view
//! hands the buffer back. A capture while another's views are alive (a partition handed over
//! during a round of snapshots) allocates a buffer of its own.

use std::ffi::{c_int, c_void};
use std::mem::MaybeUninit;
use std::sync::{Arc, Mutex};

use pyo3::exceptions::PyBufferError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyMemoryView;

/// The buffer handed back by the last capture whose views are all gone; None while one is in use.
static SPARE: Mutex<Option<Vec<u8>>> = Mutex::new(None);

/// The bytes of one capture's columns, one after the other.
pub struct CaptureBuffer {
    bytes: Vec<u8>,
}

impl CaptureBuffer {
    /// An empty buffer with room for `len` bytes: the spare one if it is large enough, else a
    /// new one (a smaller spare is freed, and the new one handed back in its place) of twice
    /// that. Twice: a dedup table grows by doubling, and a node's partitions grow at about the
    /// same time, so the captures after the first grown one still fit. Only pages written are
    /// ever mapped: the rest is address space until a capture needs it. (Sized to fit exactly,
    /// every partition larger than the last freshly mapped its whole capture while the tables
    /// grew: 10 of 60 captures in an alert run took ~1,700 page faults each.)
    pub fn with_capacity(len: usize) -> Self {
        let spare = SPARE.lock().ok().and_then(|mut spare| spare.take());
        let bytes = match spare {
            Some(mut bytes) if bytes.capacity() >= len => {
                bytes.clear();
                bytes
            }
            _ => Vec::with_capacity(len.saturating_mul(2)),
        };
        Self { bytes }
    }

    /// Append `values`, each as `to_bytes` gives it (`array.tobytes()`'s layout for native byte
    /// order); returns where they start and how many bytes they take. Written into the spare
    /// capacity: no zero-fill first.
    pub fn append<T: Copy, const N: usize>(
        &mut self,
        values: &[T],
        to_bytes: fn(T) -> [u8; N],
    ) -> (usize, usize) {
        let start = self.bytes.len();
        let len = values.len() * N;
        self.bytes.reserve(len);
        let room: &mut [MaybeUninit<u8>] = &mut self.bytes.spare_capacity_mut()[..len];
        for (chunk, &value) in room.chunks_exact_mut(N).zip(values) {
            for (slot, byte) in chunk.iter_mut().zip(to_bytes(value)) {
                slot.write(byte);
            }
        }
        // SAFETY: the loop above wrote every one of the `len` bytes past the old length (`values`
        // has `len / N` items, each written as its N bytes), and `reserve` made room for them.
        unsafe { self.bytes.set_len(start + len) };
        (start, len)
    }

    /// The bytes written so far.
    pub fn as_slice(&self) -> &[u8] {
        &self.bytes
    }
}

impl Drop for CaptureBuffer {
    fn drop(&mut self) {
        if let Ok(mut spare) = SPARE.lock() {
            // Keep the larger of the two: the next capture of the largest partition fits in it.
            if spare.as_ref().is_none_or(|kept| kept.capacity() < self.bytes.capacity()) {
                *spare = Some(std::mem::take(&mut self.bytes));
            }
        }
    }
}

/// Bytes `start..start + len` of a shared capture, as a read-only Python buffer.
#[pyclass(module = "unimeter_native", frozen)]
pub struct CapturedBytes {
    buffer: Arc<CaptureBuffer>,
    start: usize,
    len: usize,
}

impl CapturedBytes {
    /// Views of `buffer`'s columns at `(start, len)`, as `memoryview`s (what msgpack packs as
    /// `bin`, as it packs `bytes`); the buffer is handed back when the last of them is dropped.
    pub fn views<'py>(
        py: Python<'py>,
        buffer: CaptureBuffer,
        columns: &[(usize, usize)],
    ) -> PyResult<Vec<Bound<'py, PyMemoryView>>> {
        let buffer = Arc::new(buffer);
        columns
            .iter()
            .map(|&(start, len)| {
                let view = Bound::new(py, Self { buffer: Arc::clone(&buffer), start, len })?;
                PyMemoryView::from(view.as_any())
            })
            .collect()
    }
}

#[pymethods]
impl CapturedBytes {
    /// The buffer protocol, read-only: a snapshot's columns are never written through a view.
    unsafe fn __getbuffer__(slf: Bound<'_, Self>, view: *mut ffi::Py_buffer, flags: c_int) -> PyResult<()> {
        let this = slf.get();
        if flags & ffi::PyBUF_WRITABLE == ffi::PyBUF_WRITABLE {
            return Err(PyBufferError::new_err("a captured column is read-only"));
        }
        let bytes = &this.buffer.as_slice()[this.start..this.start + this.len];
        let len = isize::try_from(bytes.len()).map_err(|_| PyBufferError::new_err("a column too large"))?;
        // SAFETY: `view` is the exporter's to fill (the buffer protocol's contract). The bytes
        // live as long as `slf`, which the view references (FillInfo takes a reference to it),
        // and are never written again: the buffer goes back to the spare only when the last
        // view's object is dropped.
        let filled = unsafe {
            ffi::PyBuffer_FillInfo(view, slf.as_ptr(), bytes.as_ptr() as *mut c_void, len, 1, flags)
        };
        if filled == -1 {
            return Err(PyErr::fetch(slf.py()));
        }
        Ok(())
    }

    fn __len__(&self) -> usize {
        self.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_written_as_their_values_native_bytes_one_after_the_other() {
        let mut buffer = CaptureBuffer::with_capacity(4);
        let narrow = [1u32, 0x0102_0304, u32::MAX];
        let wide = [7u64, u64::MAX];
        assert_eq!(buffer.append(&narrow, u32::to_ne_bytes), (0, 12));
        assert_eq!(buffer.append(&wide, u64::to_ne_bytes), (12, 16));
        let expected: Vec<u8> = narrow
            .iter()
            .flat_map(|v| v.to_ne_bytes())
            .chain(wide.iter().flat_map(|v| v.to_ne_bytes()))
            .collect();
        assert_eq!(buffer.as_slice(), expected.as_slice());
    }

    #[test]
    fn a_dropped_buffer_is_reused_by_the_next_capture_that_fits() {
        // One test touches the spare: tests run in parallel threads of one process.
        let mut first = CaptureBuffer::with_capacity(1 << 20);
        first.append(&[1u64; 1000], u64::to_ne_bytes);
        let address = first.as_slice().as_ptr();
        drop(first);
        let second = CaptureBuffer::with_capacity(1 << 16);
        assert_eq!(second.as_slice().as_ptr(), address, "the spare's memory, not a new allocation");
        assert!(second.as_slice().is_empty());
        // While it is in use a capture gets its own; the larger of the two is kept afterwards.
        let third = CaptureBuffer::with_capacity(1 << 21);
        assert_ne!(third.as_slice().as_ptr(), address);
        drop(second);
        drop(third);
        let kept = SPARE.lock().unwrap().as_ref().map(Vec::capacity).unwrap();
        assert!(kept >= 1 << 21);
    }
}
