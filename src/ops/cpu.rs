//! Small shared pieces of the CPU kernels: contiguous views of storage, a pointer that may
//! cross threads for disjoint writes, per-thread scratch buffers, and sums of partial results.

use std::cell::RefCell;

use candle_core::{CpuStorage, Layout, WithDType};

/// The elements of a contiguous tensor's CPU storage.
pub(super) fn contiguous<'a, T: WithDType>(
    s: &'a CpuStorage,
    l: &Layout,
) -> candle_core::Result<&'a [T]> {
    let data = s.as_slice::<T>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("unetpp's CPU kernels need contiguous tensors"),
    }
}

/// A raw pointer that may cross threads: every task writes a disjoint part of the buffer.
#[derive(Clone, Copy)]
pub(super) struct SendPtr(pub(super) *mut f32);
// SAFETY: tasks write disjoint regions (one band of rows of one image), and the buffer
// outlives the parallel loop that uses the pointer.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// The pointer (a method, so that closures capture the whole `SendPtr`).
    pub(super) fn get(self) -> *mut f32 {
        self.0
    }

    /// `len` elements from `offset`, as a slice.
    ///
    /// # Safety
    /// The range must lie inside the buffer, and no other live reference may overlap it.
    pub(super) unsafe fn slice<'a>(self, offset: usize, len: usize) -> &'a mut [f32] {
        // SAFETY: the caller's promise.
        unsafe { std::slice::from_raw_parts_mut(self.0.add(offset), len) }
    }
}

thread_local! {
    static SCRATCH: RefCell<[Vec<f32>; 3]> = const { RefCell::new([Vec::new(), Vec::new(), Vec::new()]) };
}

/// Runs `f` with this thread's three scratch buffers. They are kept between calls, so the
/// large temporaries of a convolution are not mapped and zeroed afresh by the OS each time.
/// A nested call on the same thread (rayon can run another task while one waits) gets fresh
/// buffers.
pub(super) fn with_scratch<R>(f: impl FnOnce(&mut [Vec<f32>; 3]) -> R) -> R {
    SCRATCH.with(|s| match s.try_borrow_mut() {
        Ok(mut bufs) => f(&mut bufs),
        Err(_) => f(&mut [Vec::new(), Vec::new(), Vec::new()]),
    })
}

/// Adds `b` into `a` element by element (the reduction of per-thread partial sums).
pub(super) fn sum_into(mut a: Vec<f32>, b: Vec<f32>) -> Vec<f32> {
    a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
    a
}
