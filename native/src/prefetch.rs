//! A cache-line prefetch hint for the per-event tables. The dedup table's probes are cache misses
//! once it outgrows the CPU caches; asking for every line a batch will touch before touching any
//! lets the misses overlap instead of following one another. (The cell maps were tried too: a
//! win in process, a loss end to end, docs/benchmarks-history.md.)

/// Ask the CPU to load the cache line holding `p`. A hint only: it never faults, so any address
/// (even one past a vector's end) is allowed, and it changes nothing the program can observe.
#[inline]
pub fn prefetch_line<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch reads nothing the program sees and cannot fault, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}
