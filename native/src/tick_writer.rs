//! A flush tick's writes and sync, on a thread that never takes the GIL.
//!
//! A tick appends every dirty log's detached buffer to its segment file and then makes them all
//! durable with one `syncfs`. From a Python thread, each step first has to win the GIL from an
//! event loop busy ingesting (up to the switch interval each), so the writes ran on the loop
//! thread and only the sync went to a thread, whose GIL waits an urgent alert flush queued
//! behind the tick still felt. This worker does both with no GIL at all and rings an `eventfd`
//! when a tick is done, which the loop watches (as it watches the kernel's fdatasync
//! completions): the loop picks the outcome up on its own turn (`node/tick_writer.py`).

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, ErrorKind, Write};
use std::mem::ManuallyDrop;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

/// What a failed write reports when the OS gave no error number (a write that wrote nothing).
const EIO: i32 = 5;
/// What a negative descriptor gets, as `write(2)` would answer it (`File` refuses to hold one).
const EBADF: i32 = 9;

/// One tick: bytes to append, each to its file, then the `syncfs` of `syncfs_fd` (none if < 0).
pub struct Tick {
    pub token: u64,
    pub appends: Vec<Append>,
    pub syncfs_fd: RawFd,
}

/// Bytes the worker appends to `fd`. The submitter keeps them alive and unchanged until the
/// tick's outcome is taken (`TickWriter::take_done`).
pub struct Append {
    pub fd: RawFd,
    pub data: *const u8,
    pub len: usize,
}

// SAFETY: the pointer is only read, by the worker, while the submitter keeps the bytes alive and
// unchanged (the contract of `Append`).
unsafe impl Send for Append {}

/// What became of a tick: each append's errno (0: written whole), the sync's (0: synced, or not
/// asked for) and the sync's seconds.
#[derive(Debug, PartialEq)]
pub struct Done {
    pub token: u64,
    pub errnos: Vec<i32>,
    pub sync_errno: i32,
    pub sync_seconds: f64,
}

/// The worker thread, the queue to it and the outcomes it rings in.
pub struct TickWriter {
    ticks: Option<Sender<Tick>>,
    done: Arc<Mutex<VecDeque<Done>>>,
    ring: Arc<OwnedFd>,
    worker: Option<JoinHandle<()>>,
}

impl TickWriter {
    /// A worker and its eventfd (an OS error where the platform has none).
    pub fn start() -> io::Result<Self> {
        let ring = Arc::new(new_eventfd()?);
        let done = Arc::new(Mutex::new(VecDeque::new()));
        let (ticks, queue) = channel();
        let worker = {
            let (ring, done) = (Arc::clone(&ring), Arc::clone(&done));
            std::thread::Builder::new()
                .name("unimeter-tick-writer".into())
                .spawn(move || run(&queue, &done, &ring))?
        };
        Ok(Self { ticks: Some(ticks), done, ring, worker: Some(worker) })
    }

    /// The eventfd the worker rings once per finished tick.
    pub fn ring_fd(&self) -> RawFd {
        self.ring.as_raw_fd()
    }

    /// Queue a tick; false once the writer is stopped.
    pub fn submit(&self, tick: Tick) -> bool {
        self.ticks.as_ref().is_some_and(|ticks| ticks.send(tick).is_ok())
    }

    /// The ticks finished since the last call, in order, and the ring emptied.
    pub fn take_done(&self) -> Vec<Done> {
        let mut counter = [0u8; 8];
        // SAFETY: borrowed for the read only; the writer owns the descriptor.
        let mut ring = ManuallyDrop::new(unsafe { File::from_raw_fd(self.ring.as_raw_fd()) });
        // Non-blocking: EAGAIN only means no ring since the last call. The ring is read before
        // the outcomes are taken, so a tick finishing in between rings again, never unheard.
        let _ = io::Read::read(&mut *ring, &mut counter);
        self.done.lock().map(|mut done| done.drain(..).collect()).unwrap_or_default()
    }

    /// Let the queued ticks finish, then stop the worker.
    pub fn stop(&mut self) {
        self.ticks = None;
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

impl Drop for TickWriter {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(queue: &Receiver<Tick>, done: &Mutex<VecDeque<Done>>, ring: &OwnedFd) {
    for tick in queue {
        // SAFETY: each append's bytes are alive and unchanged until its outcome is taken.
        let errnos = tick
            .appends
            .iter()
            .map(|a| append(a.fd, unsafe { std::slice::from_raw_parts(a.data, a.len) }))
            .collect();
        let (sync_errno, sync_seconds) = if tick.syncfs_fd < 0 {
            (0, 0.0)
        } else {
            let started = Instant::now();
            (sync_filesystem(tick.syncfs_fd), started.elapsed().as_secs_f64())
        };
        if let Ok(mut done) = done.lock() {
            done.push_back(Done { token: tick.token, errnos, sync_errno, sync_seconds });
        }
        // SAFETY: borrowed for the write only. An eventfd write fails only at a counter near
        // 2^64, far beyond any number of ticks.
        let mut file = ManuallyDrop::new(unsafe { File::from_raw_fd(ring.as_raw_fd()) });
        let _ = file.write_all(&1u64.to_ne_bytes());
    }
}

/// `data` appended to `fd` whole (retrying short and interrupted writes); the errno, or 0.
pub fn append(fd: RawFd, data: &[u8]) -> i32 {
    if fd < 0 {
        return EBADF;
    }
    // SAFETY: borrowed for the call only: the log owns the descriptor and closes it, hence the
    // ManuallyDrop (dropping a File would close it).
    let mut file = ManuallyDrop::new(unsafe { File::from_raw_fd(fd) });
    match file.write_all(data) {
        Ok(()) => 0,
        Err(error) if error.kind() == ErrorKind::WriteZero => EIO,
        Err(error) => error.raw_os_error().unwrap_or(EIO),
    }
}

#[cfg(target_os = "linux")]
mod linux {
    use std::ffi::{c_int, c_uint};
    extern "C" {
        pub fn syncfs(fd: c_int) -> c_int;
        pub fn eventfd(initval: c_uint, flags: c_int) -> c_int;
    }
    pub const EFD_CLOEXEC: c_int = 0o2_000_000;
    pub const EFD_NONBLOCK: c_int = 0o4_000;
}

/// `syncfs(2)` of the filesystem holding `fd`: its errno, or 0.
#[cfg(target_os = "linux")]
pub fn sync_filesystem(fd: RawFd) -> i32 {
    // SAFETY: syncfs only reads its argument; a bad descriptor is an EBADF answer.
    if unsafe { linux::syncfs(fd) } == 0 {
        0
    } else {
        io::Error::last_os_error().raw_os_error().unwrap_or(EIO)
    }
}

#[cfg(target_os = "linux")]
fn new_eventfd() -> io::Result<OwnedFd> {
    // SAFETY: eventfd returns a new descriptor we own, or -1.
    let fd = unsafe { linux::eventfd(0, linux::EFD_CLOEXEC | linux::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor just created, owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(not(target_os = "linux"))]
pub fn sync_filesystem(_fd: RawFd) -> i32 {
    38 // ENOSYS: the node syncs a filesystem at once only on Linux
}

#[cfg(not(target_os = "linux"))]
fn new_eventfd() -> io::Result<OwnedFd> {
    Err(io::Error::from(ErrorKind::Unsupported))
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::time::Duration;

    fn wait_done(writer: &TickWriter) -> Vec<Done> {
        for _ in 0..2000 {
            let done = writer.take_done();
            if !done.is_empty() {
                return done;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        panic!("no tick finished within 2 s");
    }

    #[test]
    fn a_tick_appends_in_order_syncs_and_reports_each_failure_alone() {
        let path = std::env::temp_dir().join(format!("unimeter-tick-writer-{}", std::process::id()));
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&path).unwrap();
        let fd = file.as_raw_fd();
        let (first, second) = (b"abc".to_vec(), b"def".to_vec());
        let mut writer = TickWriter::start().unwrap();
        let appends = vec![
            Append { fd, data: first.as_ptr(), len: first.len() },
            Append { fd: -1, data: second.as_ptr(), len: second.len() },
            Append { fd, data: second.as_ptr(), len: second.len() },
        ];
        assert!(writer.submit(Tick { token: 7, appends, syncfs_fd: fd }));
        let done = wait_done(&writer);
        assert_eq!(done.len(), 1);
        assert_eq!((done[0].token, done[0].errnos.clone(), done[0].sync_errno), (7, vec![0, EBADF, 0], 0));
        assert!(writer.submit(Tick { token: 8, appends: Vec::new(), syncfs_fd: -1 }));
        assert_eq!(
            wait_done(&writer),
            vec![Done { token: 8, errnos: vec![], sync_errno: 0, sync_seconds: 0.0 }]
        );
        writer.stop();
        assert!(!writer.submit(Tick { token: 9, appends: Vec::new(), syncfs_fd: -1 }));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "abcdef");
        std::fs::remove_file(&path).unwrap();
        assert_eq!(sync_filesystem(-1), EBADF);
        assert_eq!(append(1 << 20, b"x"), EBADF); // a descriptor no file holds
    }
}
