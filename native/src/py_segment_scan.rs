//! `unimeter_native.valid_prefix` and `crc32`: the Python face of `segment_scan`
//! (`node/segment_log.py` calls the first through the engine when it opens a segment file at
//! recovery; a partition checks its snapshot file's CRC with the second).

use std::fs::File;
use std::mem::ManuallyDrop;
use std::os::fd::{FromRawFd, RawFd};

use pyo3::buffer::PyBuffer;
use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;

use crate::guarded;
use crate::segment_scan;

/// ``(length, reason or None)`` of the longest prefix of whole, checksum-valid records among the
/// first ``size`` bytes of the open segment file ``fd``: ``segment_log._valid_prefix``'s answer,
/// read with the GIL released. OSError if the file cannot be read.
#[pyfunction]
pub fn valid_prefix(py: Python<'_>, fd: RawFd, size: u64) -> PyResult<(u64, Option<String>)> {
    guarded(|| {
        if fd < 0 {
            return Err(PyValueError::new_err("a file descriptor cannot be negative"));
        }
        // SAFETY: borrowed for the call only: the log owns the descriptor and closes it, hence
        // the ManuallyDrop (dropping a File would close it).
        let file = ManuallyDrop::new(unsafe { File::from_raw_fd(fd) });
        let (good, bad) = py
            .detach(|| segment_scan::valid_prefix(&file, size))
            .map_err(|e| PyOSError::new_err((e.raw_os_error().unwrap_or(0), e.to_string())))?;
        Ok((good, bad.map(|b| b.reason())))
    })
}

/// ``zlib.crc32(data, value)``, computed with the GIL released: the same number, faster on a
/// large buffer (a snapshot file is megabytes; carry-less multiplication where the CPU has it).
#[pyfunction]
#[pyo3(signature = (data, value = 0))]
pub fn crc32(py: Python<'_>, data: PyBuffer<u8>, value: u32) -> PyResult<u32> {
    guarded(|| {
        if !data.is_c_contiguous() {
            return Err(PyValueError::new_err("crc32 needs a contiguous buffer of bytes"));
        }
        // SAFETY: the export keeps the bytes alive and unresizable while `data` lives, and
        // nothing in this process writes the buffers it is given (a snapshot file's bytes).
        let bytes: &[u8] =
            unsafe { std::slice::from_raw_parts(data.buf_ptr().cast::<u8>(), data.len_bytes()) };
        Ok(py.detach(|| segment_scan::crc32(value, bytes)))
    })
}
