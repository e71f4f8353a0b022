//! The extension's global allocator: mimalloc instead of the C library's malloc.
//!
//! Why: a part's ingest allocates and frees small vectors per event and grows its tables in
//! steps, and glibc's malloc spent about 7% of the event loop's time under ASYNC load (`_int_malloc`,
//! `_int_free`, `malloc_consolidate`). With mimalloc the loop runs 5% fewer instructions a
//! 1000-event request and the node ingested ~10% more events a second in paired rounds
//! (docs/benchmarks-history.md, session 31). Only the extension's own (Rust) allocations move;
//! Python objects keep CPython's allocator, and no memory crosses between the two.
//!
//! `local_dynamic_tls` (Cargo.toml): the extension is loaded with `dlopen`, where mimalloc's
//! default initial-exec thread-local storage may not fit the static TLS block.

use libmimalloc_sys as ffi;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc v3's `mi_option_e` (its `include/mimalloc.h`): the
/// bindings name only the options both major versions share. Cargo.lock pins the version, and
/// a test checks the index by its default.
const PURGE_DELAY: ffi::mi_option_t = 15;

/// Freed pages go back to the OS when they are freed, as glibc does with its large blocks.
///
/// Why: mimalloc v3 keeps freed pages for a second and purges them only on a later allocator
/// call, so an idle node kept the old arrays of the tables it had just grown: 502 B of RSS a
/// series against glibc's 431 B, and 449 B once purged at once. Called when the module loads;
/// an operator's `MIMALLOC_PURGE_DELAY` still wins, as mimalloc documents for its options.
pub fn return_freed_memory_at_once() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets one integer option; mimalloc reads options atomically.
        unsafe { ffi::mi_option_set(PURGE_DELAY, 0) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_purge_delay_index_is_v3s_and_it_is_set_to_zero() {
        // SAFETY: reads and sets one integer option.
        let default = unsafe { ffi::mi_option_get(PURGE_DELAY) };
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            assert_eq!(default, 1000, "mimalloc v3's purge delay default, in ms");
        }
        return_freed_memory_at_once();
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            assert_eq!(unsafe { ffi::mi_option_get(PURGE_DELAY) }, 0);
        }
    }

    #[test]
    fn rust_allocations_go_through_mimalloc() {
        let block = vec![7u8; 1 << 20];
        // SAFETY: asks mimalloc whether it owns a live pointer.
        assert!(unsafe { ffi::mi_is_in_heap_region(block.as_ptr().cast()) });
    }
}
