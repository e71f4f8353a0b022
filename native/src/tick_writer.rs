//! A flush tick's writes and sync, on a thread that never takes the GIL.
//!
//! A tick writes every dirty log's detached buffer at its place in its segment file (and, where
//! the log asks, allocates the file's space ahead: `segment_log._RESERVE_BYTES`), then makes them
//! all durable with one `syncfs`. From a Python thread, each step first has to win the GIL from an
//! event loop busy ingesting (up to the switch interval each), so the writes ran on the loop
//! thread and only the sync went to a thread, whose GIL waits an urgent alert flush queued
//! behind the tick still felt. This worker does both with no GIL at all and rings an `eventfd`
//! when a tick is done, which the loop watches (as it watches the kernel's fdatasync
//! completions): the loop picks the outcome up on its own turn (`node/tick_writer.py`).

use std::fs::File;
use std::io::{self, ErrorKind};
use std::mem::ManuallyDrop;
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::fs::FileExt;
use std::time::Instant;

use crate::ring_worker::RingWorker;

/// What a failed write reports when the OS gave no error number (a write that wrote nothing).
const EIO: i32 = 5;
/// What a negative descriptor gets, as `write(2)` would answer it (`File` refuses to hold one).
const EBADF: i32 = 9;

/// One tick: bytes to write, each to its file, then the `syncfs` of `syncfs_fd` (none if < 0).
pub struct Tick {
    pub token: u64,
    pub writes: Vec<SegmentWrite>,
    pub syncfs_fd: RawFd,
}

/// Bytes the worker writes to `fd` at `offset`, then the space it allocates there: `reserve_len`
/// bytes from `reserve_offset` (none if 0). The submitter keeps the bytes alive and unchanged
/// until the tick's outcome is taken (`TickWriter::take_done`).
pub struct SegmentWrite {
    pub fd: RawFd,
    pub offset: u64,
    pub data: *const u8,
    pub len: usize,
    pub reserve_offset: u64,
    pub reserve_len: u64,
}

// SAFETY: the pointer is only read, by the worker, while the submitter keeps the bytes alive and
// unchanged (the contract of `SegmentWrite`).
unsafe impl Send for SegmentWrite {}

/// What became of a tick: each write's errno (0: written whole), the sync's (0: synced, or not
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
    // SAFETY: each write's bytes are alive and unchanged until its outcome is taken.
    let errnos = tick
        .writes
        .iter()
        .map(|w| {
            let errno = write_at(w.fd, w.offset, unsafe { std::slice::from_raw_parts(w.data, w.len) });
            if errno == 0 && w.reserve_len > 0 {
                reserve(w.fd, w.reserve_offset, w.reserve_len);
            }
            errno
        })
        .collect();
    let (sync_errno, sync_seconds) = if tick.syncfs_fd < 0 {
        (0, 0.0)
    } else {
        let started = Instant::now();
        (sync_filesystem(tick.syncfs_fd), started.elapsed().as_secs_f64())
    };
    Done { token: tick.token, errnos, sync_errno, sync_seconds }
}

/// `data` written to `fd` whole at `offset` (retrying short and interrupted writes); the errno,
/// or 0.
pub fn write_at(fd: RawFd, offset: u64, data: &[u8]) -> i32 {
    if fd < 0 {
        return EBADF;
    }
    // SAFETY: borrowed for the call only: the log owns the descriptor and closes it, hence the
    // ManuallyDrop (dropping a File would close it).
    let file = ManuallyDrop::new(unsafe { File::from_raw_fd(fd) });
    match file.write_all_at(data, offset) {
        Ok(()) => 0,
        Err(error) if error.kind() == ErrorKind::WriteZero => EIO,
        Err(error) => error.raw_os_error().unwrap_or(EIO),
    }
}

/// `posix_fallocate(fd, offset, len)`, its outcome ignored: reserved space only spares later
/// syncs a journal commit, and a filesystem that cannot reserve, or a full disk, leaves the
/// writes to grow the file as they would anyway (`segment_log._reserve`).
#[cfg(target_os = "linux")]
fn reserve(fd: RawFd, offset: u64, len: u64) {
    if let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) {
        // SAFETY: posix_fallocate only reads its arguments; a bad descriptor is an EBADF answer.
        unsafe { linux::posix_fallocate(fd, offset, len) };
    }
}

#[cfg(not(target_os = "linux"))]
fn reserve(_fd: RawFd, _offset: u64, _len: u64) {}

#[cfg(target_os = "linux")]
mod linux {
    use std::ffi::c_int;
    extern "C" {
        pub fn syncfs(fd: c_int) -> c_int;
        pub fn posix_fallocate(fd: c_int, offset: i64, len: i64) -> c_int;
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
    fn a_tick_writes_in_place_reserves_syncs_and_reports_each_failure_alone() {
        let path = std::env::temp_dir().join(format!("unimeter-tick-writer-{}", std::process::id()));
        let file = std::fs::OpenOptions::new().create(true).truncate(true).write(true).open(&path).unwrap();
        let fd = file.as_raw_fd();
        let (first, second) = (b"abc".to_vec(), b"def".to_vec());
        let mut writer = start().unwrap();
        let at = |fd, offset, data: &Vec<u8>, reserve_len| SegmentWrite {
            fd,
            offset,
            data: data.as_ptr(),
            len: data.len(),
            reserve_offset: offset + data.len() as u64,
            reserve_len,
        };
        let writes = vec![at(fd, 0, &first, 0), at(-1, 3, &second, 0), at(fd, 3, &second, 4)];
        assert!(writer.submit(Tick { token: 7, writes, syncfs_fd: fd }));
        let done = wait_done(&writer);
        assert_eq!(done.len(), 1);
        assert_eq!((done[0].token, done[0].errnos.clone(), done[0].sync_errno), (7, vec![0, EBADF, 0], 0));
        assert!(writer.submit(Tick { token: 8, writes: Vec::new(), syncfs_fd: -1 }));
        assert_eq!(
            wait_done(&writer),
            vec![Done { token: 8, errnos: vec![], sync_errno: 0, sync_seconds: 0.0 }]
        );
        writer.stop();
        assert!(!writer.submit(Tick { token: 9, writes: Vec::new(), syncfs_fd: -1 }));
        // The last write reserved 4 bytes past it: they read as zeros.
        assert_eq!(std::fs::read(&path).unwrap(), b"abcdef\0\0\0\0");
        std::fs::remove_file(&path).unwrap();
        assert_eq!(sync_filesystem(-1), EBADF);
        assert_eq!(write_at(1 << 20, 0, b"x"), EBADF); // a descriptor no file holds
    }
}
