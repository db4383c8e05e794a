//! The process's allocator: jemalloc, for libtorch's buffers as much as for Rust's.
//!
//! A forward pass allocates its activations (up to 13 MB each at batch 16), frees them at its
//! end, and the next pass asks for the same sizes again. Under glibc's malloc the top of the
//! heap was handed back to the system after each pass, so every pass faulted its activations
//! in afresh and ran at 1.4× the bare forward's time a row under load. Telling glibc to keep
//! its heap instead let resident memory creep under mixed work, each thread's arena holding
//! its own high-water mark. jemalloc hands freed memory back on a clock: pages freed within the
//! last second stay for reuse, older ones go back, so a busy server reuses the same pages and
//! memory a burst freed is returned within about a second, whatever the load.
//!
//! Linking this crate replaces `malloc` for the whole process (tikv-jemalloc-sys's
//! `override_allocator_on_supported_platforms`), libtorch's and glibc's callers included, so
//! the server and the floor the benchmark times run on the same allocator.

use std::ffi::c_char;

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The options jemalloc reads at start-up (`MALLOC_CONF` in the environment still overrides
/// them):
/// - `background_thread:true`: purging runs on jemalloc's own threads, so pages go back on
///   time even from an arena that no thread allocates from any more;
/// - `dirty_decay_ms:1000`, `muzzy_decay_ms:0`: freed pages are kept for reuse for up to a
///   second, then handed back outright (`MADV_DONTNEED`, not the lazy `MADV_FREE` that would
///   still count as resident);
/// - `oversize_threshold:0`: allocations over 8 MiB (batch 16's largest activations) stay in
///   the ordinary arenas; by default they go to an arena that hands them back as soon as they
///   are freed, which is the fault-in this allocator is here to avoid.
#[unsafe(export_name = "malloc_conf")]
static MALLOC_CONF: Options =
    Options(c"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0,oversize_threshold:0".as_ptr());

/// A C string in a static, as jemalloc's `const char *malloc_conf` is declared.
#[repr(transparent)]
struct Options(*const c_char);

// SAFETY: the pointer is to a string literal, never written.
unsafe impl Sync for Options {}

#[cfg(test)]
mod tests {
    use std::ffi::CStr;

    /// Reads one of jemalloc's `T`-typed settings by name.
    fn read<T: Copy + Default>(name: &CStr) -> T {
        let mut value = T::default();
        let mut len = size_of::<T>();
        // SAFETY: `value` has room for `len` bytes, the size the named setting has.
        let status = unsafe {
            tikv_jemalloc_sys::mallctl(
                name.as_ptr(),
                (&raw mut value).cast(),
                &mut len,
                std::ptr::null_mut(),
                0,
            )
        };
        assert_eq!(status, 0, "mallctl {name:?}");
        value
    }

    #[test]
    fn malloc_for_every_library_in_the_process_is_jemallocs() {
        // What libtorch's calls to malloc and free bind to: the first definition the dynamic
        // linker finds.
        // SAFETY: dlsym with a valid C string; the results are only compared.
        let (malloc, free) = unsafe {
            (
                libc::dlsym(libc::RTLD_DEFAULT, c"malloc".as_ptr()),
                libc::dlsym(libc::RTLD_DEFAULT, c"free".as_ptr()),
            )
        };
        assert_eq!(
            malloc as usize,
            tikv_jemalloc_sys::malloc as *const () as usize,
            "malloc is not jemalloc's"
        );
        assert_eq!(free as usize, tikv_jemalloc_sys::free as *const () as usize, "free is not jemalloc's");
    }

    #[test]
    fn jemalloc_runs_with_the_options_this_crate_sets() {
        assert!(read::<bool>(c"opt.background_thread"));
        assert_eq!(read::<isize>(c"opt.dirty_decay_ms"), 1000);
        assert_eq!(read::<isize>(c"opt.muzzy_decay_ms"), 0);
        assert_eq!(read::<usize>(c"opt.oversize_threshold"), 0);
    }
}
