//! The extension's global allocator: mimalloc instead of the C library's malloc.
//!
//! Why: a part's ingest allocates and frees a dozen small vectors and the stores grow their
//! tables in steps, and glibc's malloc spent about 7% of the event loop's time under ASYNC load
//! (`_int_malloc`, `_int_free`, `malloc_consolidate`). With mimalloc the loop runs 5% fewer
//! instructions a 1000-event request, and the node spent 2-10% less CPU an event in paired rounds
//! (docs/benchmarks-history.md, session 31). Only the extension's own (Rust) allocations move;
//! Python objects keep CPython's allocator, and no memory crosses between the two.
//!
//! Two build features (Cargo.toml). `local_dynamic_tls`: the extension is loaded with `dlopen`,
//! where mimalloc's default initial-exec thread-local storage may not fit the static TLS block.
//! `no_thp`: mimalloc asks for transparent huge pages on its memory (`MADV_HUGEPAGE`), and on a
//! kernel in `madvise` mode each first touch then zeroed 2 MiB, a fifth of a restart's CPU in
//! `perf` (`clear_page_erms`); without it, recovery's page faults are glibc's again.

use libmimalloc_sys as ffi;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc v3's `mi_option_e` (its `include/mimalloc.h`): the
/// bindings name only the options both major versions share. Cargo.lock pins the version, and
/// a test checks the index by its default.
const PURGE_DELAY: ffi::mi_option_t = 15;

/// How long mimalloc keeps a freed page before giving it back to the OS.
///
/// Why 10 ms: v3's default, a second, and purges only on a later allocator call, kept the old
/// arrays of the tables a fill had just grown resident on the idle node after it (502 B of RSS a
/// series against glibc's 431 B); purging at once (0) returned them (443 B) but gave pages back
/// that a restart's recovery frees and allocates again, which it then faulted in afresh (+10%
/// to the first query). 10 ms measured 419 B and recovery within a few percent of glibc's.
const PURGE_DELAY_MS: std::os::raw::c_long = 10;

/// Sets the purge delay, when the module loads; an operator's `MIMALLOC_PURGE_DELAY` still wins,
/// as mimalloc documents for its options.
pub fn return_freed_memory_soon() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets one integer option; mimalloc reads options atomically.
        unsafe { ffi::mi_option_set(PURGE_DELAY, PURGE_DELAY_MS) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_purge_delay_index_is_v3s_and_it_is_set() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            return; // the operator's value wins, and the default is not there to check
        }
        // SAFETY: reads and sets one integer option.
        let default = unsafe { ffi::mi_option_get(PURGE_DELAY) };
        assert_eq!(default, 1000, "mimalloc v3's purge delay default, in ms");
        return_freed_memory_soon();
        assert_eq!(unsafe { ffi::mi_option_get(PURGE_DELAY) }, PURGE_DELAY_MS);
    }

    #[test]
    fn rust_allocations_go_through_mimalloc() {
        let block = vec![7u8; 1 << 20];
        // SAFETY: asks mimalloc whether it owns a live pointer.
        assert!(unsafe { ffi::mi_is_in_heap_region(block.as_ptr().cast()) });
    }
}
