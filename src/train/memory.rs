//! [`keep_freed_memory`]: stop the C allocator from handing the step's buffers back to the
//! kernel between training steps.
//!
//! One training step of a small ViT allocates its activations (about 110 MB at batch 128) and
//! frees them at the end. glibc's `malloc` serves buffers above its mmap threshold with fresh
//! `mmap`s, trims the main heap's top when more than the trim threshold is free, and unmaps a
//! thread arena's 64 MiB heap as soon as it is empty (the step runs on a rayon worker, so in a
//! thread arena); so every step page-faulted its activations in again and the kernel zeroed
//! every page (about 15% of a step in `perf`, in `exc_page_fault` and `clear_page_erms`; about
//! 15,000 faults per step). With one arena (the main heap, which is only trimmed) and both
//! thresholds raised, freed buffers stay in the heap and the next step reuses them (the faults
//! drop to the first step's).
//!
//! ```
//! // On glibc targets the thresholds are accepted; elsewhere nothing happens.
//! let tuned = patchgraph::train::keep_freed_memory();
//! assert_eq!(tuned, cfg!(all(target_os = "linux", target_env = "gnu")));
//! ```

/// Buffers up to this size come from the heap instead of their own `mmap` (glibc caps the
/// threshold at 32 MiB on 64-bit targets).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: i32 = 32 << 20;

/// One arena for all threads: the main heap, which shrinks only by trimming (a thread arena's
/// heaps are unmapped whenever they empty). A step allocates a few hundred buffers, so the
/// arena's lock is not contended.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const ARENA_MAX: i32 = 1;

/// The heap top is given back only when this much of it is free.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TRIM_THRESHOLD: i32 = 1 << 30;

/// Raises glibc's mmap and trim thresholds and limits it to one arena (process-wide); returns
/// whether all three were accepted.
/// Other C libraries: does nothing and returns `false`. The arithmetic is untouched: this only
/// changes where the allocator takes memory from.
pub fn keep_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // glibc's `<malloc.h>`: M_TRIM_THRESHOLD = -1, M_MMAP_THRESHOLD = -3, M_ARENA_MAX = -8.
        unsafe extern "C" {
            fn mallopt(param: i32, value: i32) -> i32;
        }
        // SAFETY: `mallopt` is glibc's documented, thread-safe tuning call (it takes the arena
        // lock); it only reads its two integer arguments, and both parameters are ones glibc
        // defines, with values in their accepted ranges. It returns 1 on success, 0 on error.
        let (trim, mmap, arenas) =
            unsafe { (mallopt(-1, TRIM_THRESHOLD), mallopt(-3, MMAP_THRESHOLD), mallopt(-8, ARENA_MAX)) };
        trim == 1 && mmap == 1 && arenas == 1
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    /// glibc accepts the three settings, and memory freed afterwards can be allocated again (the
    /// allocator still works after the change).
    #[test]
    fn thresholds_are_accepted_and_malloc_still_works() {
        assert_eq!(super::keep_freed_memory(), cfg!(all(target_os = "linux", target_env = "gnu")));
        for _ in 0..3 {
            let v = vec![1.5f32; 4 << 20];
            assert_eq!(v.iter().sum::<f32>(), 1.5 * (4 << 20) as f32);
        }
    }
}
