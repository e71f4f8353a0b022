//! `unimeter_native.valid_prefix`: the Python face of `segment_scan` (`node/segment_log.py`
//! calls it through the engine when it opens a segment file at recovery).

use std::fs::File;
use std::mem::ManuallyDrop;
use std::os::fd::{FromRawFd, RawFd};

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
