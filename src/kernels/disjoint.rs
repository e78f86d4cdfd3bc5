//! `DisjointMut`: one `f32` buffer that parallel tasks write at disjoint places chosen at run
//! time (the rows of the destinations a task visits, in a graph's visiting order), where
//! `split_at_mut` cannot hand out the pieces because they are not contiguous per task.
//!
//! ```text
//! buffer [len]      task A: span(0, 4), span(12, 4)     task B: span(4, 8)
//! ```
//!
//! The soundness argument lives at each call site: the spans of concurrent tasks never overlap
//! (for rows of destinations: a visiting order is a permutation, so each row has one owner).

/// A raw view of a mutable `f32` buffer, handed to parallel tasks that write disjoint spans.
#[derive(Clone, Copy)]
pub(crate) struct DisjointMut {
    ptr: *mut f32,
    len: usize,
}

// SAFETY: the view only gives out spans through `span`, whose contract makes concurrent spans
// disjoint; the buffer outlives the parallel loop that uses the view (it is borrowed mutably
// for the view's construction and not touched otherwise meanwhile, by the call sites).
unsafe impl Send for DisjointMut {}
// SAFETY: as above.
unsafe impl Sync for DisjointMut {}

impl DisjointMut {
    /// A view of `buf`. The caller must not use `buf` otherwise while spans are alive.
    pub(crate) fn new(buf: &mut [f32]) -> DisjointMut {
        DisjointMut { ptr: buf.as_mut_ptr(), len: buf.len() }
    }

    /// The span `start .. start + len` of the buffer.
    ///
    /// # Safety
    /// No other live reference (from any task) may overlap the span, and the buffer must still
    /// be alive and otherwise unused. The bounds are checked (a panic, not undefined behaviour).
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn span<'a>(&self, start: usize, len: usize) -> &'a mut [f32] {
        assert!(start.checked_add(len).is_some_and(|end| end <= self.len), "span {start} + {len} beyond {}", self.len);
        // SAFETY: inside the buffer (checked above); exclusive by the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(start), len) }
    }
}

#[cfg(test)]
mod tests {
    use super::DisjointMut;
    use rayon::prelude::*;

    #[test]
    fn tasks_write_their_own_spans_in_a_permuted_order() {
        // 64 rows of 3, written by tasks that visit the rows in a scrambled order.
        let order: Vec<usize> = (0..64).map(|i| (i * 37) % 64).collect();
        let mut buf = vec![0.0f32; 64 * 3];
        let view = DisjointMut::new(&mut buf);
        order.par_chunks(5).for_each(|rows| {
            for &r in rows {
                // SAFETY: `order` is a permutation of 0..64 (37 is odd), so each row has one writer.
                let row = unsafe { view.span(r * 3, 3) };
                row.copy_from_slice(&[r as f32, 1.0, 2.0]);
            }
        });
        for r in 0..64 {
            assert_eq!(&buf[r * 3..r * 3 + 3], &[r as f32, 1.0, 2.0]);
        }
    }

    #[test]
    #[should_panic(expected = "beyond")]
    fn a_span_past_the_end_panics() {
        let mut buf = vec![0.0f32; 4];
        let view = DisjointMut::new(&mut buf);
        // SAFETY: no other span is alive; the bounds check fires before any access.
        let _ = unsafe { view.span(2, 3) };
    }
}
