//! Software prefetch: ask the CPU to start loading a cache line that a lookup will
//! read shortly, so that the misses of a batch of lookups overlap instead of
//! stalling one after the other.

#![allow(unsafe_code)]

/// Hints that the cache line holding `p` will be read soon (into all cache levels).
///
/// Any pointer value is fine, dangling or null included: the line is never
/// dereferenced as a Rust value, and a prefetch of an unmapped address is dropped
/// by the CPU instead of faulting. A no-op where no prefetch instruction is wired up.
#[inline(always)]
pub(crate) fn prefetch_read<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: PREFETCHT0 is a hint: it has no architectural effect, never faults
    // (an invalid or unmapped address is silently ignored) and reads no memory
    // into a Rust value, so it is sound for any pointer value. SSE is part of the
    // x86_64 baseline, so the instruction always exists.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_pointer_is_accepted() {
        let v = [1u64, 2, 3];
        prefetch_read(v.as_ptr());
        // Past the end, null and a wild address: hints only, never faults.
        prefetch_read(v.as_ptr().wrapping_add(1 << 40));
        prefetch_read(std::ptr::null::<u64>());
        prefetch_read(usize::MAX as *const u8);
        assert_eq!(v, [1, 2, 3]);
    }
}
