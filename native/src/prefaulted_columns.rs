//! Zeroed table columns made resident on a helper thread, before a table needs them.
//!
//! A dedup table grows by moving its keys into a table twice its size, a few thousand slots per
//! add. The keys land at random slots, so the first adds of a move write to nearly every page of
//! the new columns, and the kernel zeroes each page on its first write: about 3,500 page faults
//! for a 14 MB table, 15-30 ms of one ingest call measured on the bench's machine, and under a
//! uniform load every partition reaches that point within the same few seconds. Here the columns
//! are allocated and every page written once on a thread of their own (no GIL, no event loop), a
//! little before the move starts; the move then writes into memory that is already mapped.

use std::sync::{Arc, Mutex};

/// Bytes between two writes that make a page resident (the smallest page size on Linux and macOS).
const PAGE_BYTES: usize = 4096;

/// A table's zeroed columns: 64-bit keys and 32-bit offsets, `len` slots each.
pub struct Columns {
    pub keys: Vec<u64>,
    pub offs: Vec<u32>,
}

impl Columns {
    fn zeroed_and_resident(len: usize) -> Self {
        let mut keys = vec![0u64; len];
        let mut offs = vec![0u32; len];
        touch_pages(&mut keys);
        touch_pages(&mut offs);
        Self { keys, offs }
    }

    /// The first `len` slots, the memory past them handed back.
    fn truncated(mut self, len: usize) -> Self {
        self.keys.truncate(len);
        self.keys.shrink_to_fit();
        self.offs.truncate(len);
        self.offs.shrink_to_fit();
        self
    }
}

/// Bytes of the columns of a table of `len` slots.
pub fn columns_bytes(len: usize) -> usize {
    len * (std::mem::size_of::<u64>() + std::mem::size_of::<u32>())
}

/// Write a zero into every page of `column`. Zeroed memory fresh from the system is mapped lazily
/// (reads see a shared zero page); only a write gives the page its own frame.
fn touch_pages<T: Copy + Default>(column: &mut [T]) {
    let step = (PAGE_BYTES / std::mem::size_of::<T>()).max(1);
    for i in (0..column.len()).step_by(step) {
        // Volatile: the value is already zero, and a plain write of it may be dropped as dead.
        unsafe { std::ptr::write_volatile(&mut column[i], T::default()) };
    }
}

/// Columns of `len` slots being prepared on a helper thread.
#[derive(Clone)]
pub struct PendingColumns {
    len: usize,
    /// Filled by the helper thread when the columns are resident.
    ready: Arc<Mutex<Option<Columns>>>,
}

impl std::fmt::Debug for PendingColumns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingColumns").field("len", &self.len).finish_non_exhaustive()
    }
}

impl PendingColumns {
    /// Start preparing columns of `len` slots; `None` if no thread could be started (the table
    /// then allocates as it would have without, on its own thread).
    pub fn start(len: usize) -> Option<Self> {
        let ready = Arc::new(Mutex::new(None));
        let slot = Arc::clone(&ready);
        std::thread::Builder::new()
            .name("unimeter-prefault".into())
            .spawn(move || {
                let columns = Columns::zeroed_and_resident(len);
                if let Ok(mut slot) = slot.lock() {
                    *slot = Some(columns);
                }
            })
            .ok()?;
        Some(Self { len, ready })
    }

    /// Bytes the columns take once prepared.
    pub fn bytes(&self) -> usize {
        columns_bytes(self.len)
    }

    /// Where the prepared keys column starts, once it is ready (for tests that follow it).
    #[cfg(test)]
    pub(crate) fn ready_keys(&self) -> Option<*const u64> {
        self.ready.lock().unwrap().as_ref().map(|columns| columns.keys.as_ptr())
    }

    /// The prepared columns cut to `len` slots, if they are ready and that long. Otherwise
    /// `None`, without waiting: a thread still writing is left to finish, and what it made is
    /// freed when it finds nobody holds the other end.
    pub fn take(self, len: usize) -> Option<Columns> {
        if len > self.len {
            return None;
        }
        let columns = self.ready.try_lock().ok()?.take()?;
        Some(columns.truncated(len))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Wait for the helper thread to hand over `pending`'s columns.
    pub(crate) fn wait_until_ready(pending: &PendingColumns) {
        for _ in 0..10_000 {
            if pending.ready_keys().is_some() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        panic!("columns not prepared within 10 s");
    }

    #[test]
    fn hands_over_zeroed_columns_cut_to_the_length_asked() {
        let pending = PendingColumns::start(100_000).unwrap();
        wait_until_ready(&pending);
        let columns = pending.take(70_000).unwrap();
        assert_eq!((columns.keys.len(), columns.offs.len()), (70_000, 70_000));
        assert!(columns.keys.iter().all(|&k| k == 0) && columns.offs.iter().all(|&o| o == 0));
    }

    #[test]
    fn refuses_a_length_beyond_what_was_prepared() {
        let pending = PendingColumns::start(1_000).unwrap();
        wait_until_ready(&pending);
        assert!(pending.take(1_001).is_none());
    }

    #[test]
    fn a_copy_shares_the_columns_and_only_one_gets_them() {
        let pending = PendingColumns::start(1_000).unwrap();
        wait_until_ready(&pending);
        let copy = pending.clone();
        assert!(pending.take(1_000).is_some());
        assert!(copy.take(1_000).is_none());
    }
}
