//! Transparent huge pages for the big flow tables: a million flows spread their
//! random lookups over about 120 MiB, 30,000 4 KiB pages, far more than the TLB
//! holds, so with small pages nearly every lookup also walks the page table. With
//! 2 MiB pages the same table needs 60 TLB entries.

#![allow(unsafe_code)]

/// Huge page size on x86_64 and arm64 (4 KiB base pages).
const HUGE_PAGE: usize = 2 << 20;

/// Asks the kernel to back the whole 2 MiB pages inside `len` bytes at `start` with
/// transparent huge pages (`madvise(MADV_HUGEPAGE)`), which hosts whose THP mode is
/// `madvise` (Debian's default) otherwise never do. Call it before the memory is
/// first written. Only a hint: a kernel without THP, or one that has no huge page
/// free, keeps small pages and the tables work the same.
pub(crate) fn advise<T>(start: *const T, len: usize) {
    let start = start as usize;
    let first = start.next_multiple_of(HUGE_PAGE);
    let end = start.saturating_add(len) / HUGE_PAGE * HUGE_PAGE;
    if end <= first {
        return;
    }
    // SAFETY: MADV_HUGEPAGE only changes how the kernel backs the pages of the
    // range, never their contents or whether they are mapped; the range lies
    // inside an allocation the caller owns (whole pages only, rounded inwards), and
    // a failure (EINVAL without THP) leaves the memory as it was.
    unsafe {
        libc::madvise(first as *mut libc::c_void, end - first, libc::MADV_HUGEPAGE);
    }
}
