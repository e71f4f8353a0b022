//! A flush tick's writes and sync, on a thread that never takes the GIL.
//!
//! A tick appends every dirty log's detached buffer to its segment file and then makes them all
//! durable with one `syncfs`. From a Python thread, each step first has to win the GIL from an
//! event loop busy ingesting (up to the switch interval each), so the writes ran on the loop
//! thread and only the sync went to a thread, whose GIL waits an urgent alert flush queued
//! behind the tick still felt. This worker does both with no GIL at all and rings an `eventfd`
//! when a tick is done, which the loop watches (as it watches the kernel's fdatasync
//! completions): the loop picks the outcome up on its own turn (`node/tick_writer.py`).

use std::fs::File;
use std::io::{self, ErrorKind, Write};
use std::mem::ManuallyDrop;
use std::os::fd::{FromRawFd, RawFd};
use std::time::Instant;

use crate::ring_worker::RingWorker;

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

/// The worker that runs ticks (`ring_worker`: no GIL, an eventfd rung per finished tick).
pub type TickWriter = RingWorker<Tick, Done>;

/// A tick writer's worker, started.
pub fn start() -> io::Result<TickWriter> {
    RingWorker::start("unimeter-tick-writer", run)
}

fn run(tick: Tick) -> Done {
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
    Done { token: tick.token, errnos, sync_errno, sync_seconds }
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
    use std::ffi::c_int;
    extern "C" {
        pub fn syncfs(fd: c_int) -> c_int;
    }
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

#[cfg(not(target_os = "linux"))]
pub fn sync_filesystem(_fd: RawFd) -> i32 {
    38 // ENOSYS: the node syncs a filesystem at once only on Linux
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
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
        let mut writer = start().unwrap();
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
