//! `unimeter_native.TickWriter`: the Python face of `tick_writer::TickWriter`
//! (`node/tick_writer.py` drives it from the event loop).

use std::collections::HashMap;
use std::os::fd::RawFd;

use pyo3::buffer::PyBuffer;
use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;

use crate::guarded;
use crate::tick_writer::{self, SegmentWrite, Tick, TickWriter};

#[pyclass(module = "unimeter_native", name = "TickWriter")]
pub struct PyTickWriter {
    writer: TickWriter,
    /// Each queued tick's buffer exports, held until its outcome is taken: they keep the bytes
    /// alive (and a bytearray's unresizable) while the worker reads them.
    held: HashMap<u64, Vec<PyBuffer<u8>>>,
}

#[pymethods]
impl PyTickWriter {
    /// A started worker; OSError where the platform has no eventfd.
    #[new]
    fn new() -> PyResult<Self> {
        let writer = tick_writer::start().map_err(|e| PyOSError::new_err(e.to_string()))?;
        Ok(Self { writer, held: HashMap::new() })
    }

    /// The descriptor that becomes readable when a tick is done.
    fn fileno(&self) -> RawFd {
        self.writer.ring_fd()
    }

    /// Queue tick ``token``: write each ``(fd, offset, buffer, reserve_offset, reserve_len)``'s
    /// buffer at its offset and reserve the space after it (unless ``reserve_len`` is 0), then
    /// ``syncfs(syncfs_fd)`` unless it is negative. The buffers are read until :meth:`done`
    /// returns the token.
    fn submit(
        &mut self,
        token: u64,
        writes: Vec<(RawFd, u64, PyBuffer<u8>, u64, u64)>,
        syncfs_fd: RawFd,
    ) -> PyResult<()> {
        guarded(|| {
            let mut tick = Tick { token, writes: Vec::with_capacity(writes.len()), syncfs_fd };
            let mut exports = Vec::with_capacity(writes.len());
            for (fd, offset, buffer, reserve_offset, reserve_len) in writes {
                if !buffer.is_c_contiguous() {
                    return Err(PyValueError::new_err("TickWriter needs contiguous buffers"));
                }
                tick.writes.push(SegmentWrite {
                    fd,
                    offset,
                    data: buffer.buf_ptr().cast_const().cast(),
                    len: buffer.len_bytes(),
                    reserve_offset,
                    reserve_len,
                });
                exports.push(buffer);
            }
            if self.held.insert(token, exports).is_some() {
                return Err(PyValueError::new_err(format!("tick {token} is already queued")));
            }
            if !self.writer.submit(tick) {
                self.held.remove(&token);
                return Err(PyOSError::new_err("the tick writer is stopped"));
            }
            Ok(())
        })
    }

    /// The ticks done since the last call, in order: ``(token, errnos, sync_errno,
    /// sync_seconds)``, each errno 0 for success; their buffers are released.
    fn done(&mut self) -> Vec<(u64, Vec<i32>, i32, f64)> {
        let finished = self.writer.take_done();
        finished
            .into_iter()
            .map(|d| {
                self.held.remove(&d.token);
                (d.token, d.errnos, d.sync_errno, d.sync_seconds)
            })
            .collect()
    }

    /// Let the queued ticks finish (the GIL released meanwhile), then stop the worker.
    fn stop(&mut self, py: Python<'_>) {
        let writer = &mut self.writer;
        py.detach(|| writer.stop());
    }
}
