//! The bytes the process has allocated and not freed, for `/metrics` and the leak check of the
//! fault run: resident memory moves with load and the allocator's caching (mimalloc keeps freed
//! pages for reuse), so it cannot tell a leak from a busy minute; this count can.
//!
//! A binary opts in by wrapping its allocator: `#[global_allocator] static A: Counting<MiMalloc>
//! = Counting(MiMalloc);`. One relaxed atomic add per allocation and free is its whole cost.

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicIsize, Ordering};

static LIVE: AtomicIsize = AtomicIsize::new(0);

/// An allocator that counts the live bytes of the allocator it wraps.
pub struct Counting<A>(pub A);

// SAFETY: every call is forwarded unchanged to the wrapped allocator; the counter only reads the
// layouts and results.
unsafe impl<A: GlobalAlloc> GlobalAlloc for Counting<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { self.0.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { self.0.alloc_zeroed(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { self.0.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { self.0.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_add(
                new_size as isize - layout.size() as isize,
                Ordering::Relaxed,
            );
        }
        p
    }
}

/// The live heap bytes, when the process's allocator is a [`Counting`] one (else `None`).
pub fn live_bytes() -> Option<u64> {
    let n = LIVE.load(Ordering::Relaxed);
    (n > 0).then_some(n as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_what_is_allocated_and_freed() {
        let a = Counting(std::alloc::System);
        let before = LIVE.load(Ordering::Relaxed);
        unsafe {
            let l = Layout::from_size_align(1000, 8).unwrap();
            let p = a.alloc(l);
            assert_eq!(LIVE.load(Ordering::Relaxed) - before, 1000);
            let p = a.realloc(p, l, 4000);
            assert_eq!(LIVE.load(Ordering::Relaxed) - before, 4000);
            a.dealloc(p, Layout::from_size_align(4000, 8).unwrap());
        }
        assert_eq!(LIVE.load(Ordering::Relaxed), before);
    }
}
