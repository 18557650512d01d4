//! Giving freed heap memory back to the kernel.
//!
//! glibc keeps what a program frees in its arenas. Applying a large document
//! has a transient peak (at 20,000 servers: the JSON tree of the document,
//! the rendered haproxy.cfg, `show servers state` read back) that would
//! otherwise stay resident until the next one. `malloc_trim(0)` returns the
//! free pages of every arena (inside the heap too, not just its top); it is
//! a walk of the free lists, so the reconciler calls it after each pass.

/// Returns free heap pages to the kernel (glibc only; a no-op elsewhere).
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only reorganises the allocator's own free lists;
    // it takes no pointers and is thread-safe (it locks each arena).
    unsafe {
        libc::malloc_trim(0);
    }
}
