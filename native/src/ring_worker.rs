//! A thread that runs jobs without the GIL and rings an `eventfd` as each one finishes.
//!
//! The event loop watches the descriptor (`loop.add_reader`) and takes the outcomes on its own
//! turn, so nothing on either side waits for the other: the loop hands a job over and goes on with
//! other calls, the worker never touches a Python object. The flush tick's writes
//! (`tick_writer`) and the decoding of large ingest requests (`request_parts`) run this way.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Write};
use std::mem::ManuallyDrop;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// The worker thread, the queue to it and the outcomes it rings in.
pub struct RingWorker<J, D> {
    jobs: Option<Sender<J>>,
    done: Arc<Mutex<VecDeque<D>>>,
    ring: Arc<OwnedFd>,
    worker: Option<JoinHandle<()>>,
}

impl<J: Send + 'static, D: Send + 'static> RingWorker<J, D> {
    /// A thread named `name` running `work` on each job in order, and its eventfd (an OS error
    /// where the platform has none).
    pub fn start(name: &str, mut work: impl FnMut(J) -> D + Send + 'static) -> io::Result<Self> {
        let ring = Arc::new(new_eventfd()?);
        let done = Arc::new(Mutex::new(VecDeque::new()));
        let (jobs, queue) = channel::<J>();
        let worker = {
            let (ring, done) = (Arc::clone(&ring), Arc::clone(&done));
            std::thread::Builder::new().name(name.into()).spawn(move || {
                for job in queue {
                    let outcome = work(job);
                    if let Ok(mut done) = done.lock() {
                        done.push_back(outcome);
                    }
                    // SAFETY: borrowed for the write only. An eventfd write fails only at a
                    // counter near 2^64, far beyond any number of jobs.
                    let mut file = ManuallyDrop::new(unsafe { File::from_raw_fd(ring.as_raw_fd()) });
                    let _ = file.write_all(&1u64.to_ne_bytes());
                }
            })?
        };
        Ok(Self { jobs: Some(jobs), done, ring, worker: Some(worker) })
    }
}

impl<J, D> RingWorker<J, D> {
    /// The eventfd the worker rings once per finished job.
    pub fn ring_fd(&self) -> RawFd {
        self.ring.as_raw_fd()
    }

    /// Queue a job; false once the worker is stopped.
    pub fn submit(&self, job: J) -> bool {
        self.jobs.as_ref().is_some_and(|jobs| jobs.send(job).is_ok())
    }

    /// The outcomes of the jobs finished since the last call, in order, and the ring emptied.
    pub fn take_done(&self) -> Vec<D> {
        let mut counter = [0u8; 8];
        // SAFETY: borrowed for the read only; the worker owns the descriptor.
        let mut ring = ManuallyDrop::new(unsafe { File::from_raw_fd(self.ring.as_raw_fd()) });
        // Non-blocking: EAGAIN only means no ring since the last call. The ring is read before
        // the outcomes are taken, so a job finishing in between rings again, never unheard.
        let _ = io::Read::read(&mut *ring, &mut counter);
        self.done.lock().map(|mut done| done.drain(..).collect()).unwrap_or_default()
    }

    /// Let the queued jobs finish, then stop the worker.
    pub fn stop(&mut self) {
        self.jobs = None;
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

impl<J, D> Drop for RingWorker<J, D> {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(target_os = "linux")]
fn new_eventfd() -> io::Result<OwnedFd> {
    use std::ffi::{c_int, c_uint};
    extern "C" {
        fn eventfd(initval: c_uint, flags: c_int) -> c_int;
    }
    const EFD_CLOEXEC: c_int = 0o2_000_000;
    const EFD_NONBLOCK: c_int = 0o4_000;
    // SAFETY: eventfd returns a new descriptor we own, or -1.
    let fd = unsafe { eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor just created, owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(not(target_os = "linux"))]
fn new_eventfd() -> io::Result<OwnedFd> {
    Err(io::Error::from(io::ErrorKind::Unsupported))
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn jobs_finish_in_order_and_a_stopped_worker_takes_none() {
        let mut worker = RingWorker::start("test-ring-worker", |n: u32| n * 2).unwrap();
        for n in 1..=3 {
            assert!(worker.submit(n));
        }
        let mut done = Vec::new();
        for _ in 0..2000 {
            done.extend(worker.take_done());
            if done.len() == 3 {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(done, [2, 4, 6]);
        worker.stop();
        assert!(!worker.submit(4));
        assert!(worker.take_done().is_empty());
    }
}
