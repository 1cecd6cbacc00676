//! IPv4 longest-prefix match as a DIR-16-8-8 multibit trie.
//!
//! The first 16 bits of the address index a 65,536-cell array (256 KiB, stays in
//! L2); prefixes longer than /16 hang 256-cell chunks below it for bits 16–23 and
//! again for bits 24–31. A lookup is one to three dependent loads and no compare.
//! Cells are `u32`: zero is "no route", a set [`CHUNK`] bit points to a chunk, any
//! other value is a route number plus one, so a chunk is 1 KiB however large the
//! route targets are.
//!
//! Building paints prefixes from shortest to longest, so a longer prefix simply
//! overwrites the cells it covers; 10,000 routes build in about a millisecond.

/// Cell bit marking a pointer to a chunk of the next level.
const CHUNK: u32 = 1 << 31;
const L1_CELLS: usize = 1 << 16;
const CHUNK_CELLS: usize = 256;

#[derive(Clone)]
pub(crate) struct Dir16_8_8 {
    l1: Box<[u32; L1_CELLS]>,
    l2: Vec<u32>,
    l3: Vec<u32>,
}

impl std::fmt::Debug for Dir16_8_8 {
    // The cells are megabytes of numbers; a snapshot's Debug output wants the shape.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dir16_8_8")
            .field("l2_chunks", &(self.l2.len() / CHUNK_CELLS))
            .field("l3_chunks", &(self.l3.len() / CHUNK_CELLS))
            .finish()
    }
}

impl Default for Dir16_8_8 {
    fn default() -> Self {
        // Built on the heap: 256 KiB is too much for a test thread's stack.
        let l1 = match vec![0u32; L1_CELLS].into_boxed_slice().try_into() {
            Ok(l1) => l1,
            Err(_) => Box::new([0; L1_CELLS]), // unreachable: the length matches
        };
        Dir16_8_8 {
            l1,
            l2: Vec::new(),
            l3: Vec::new(),
        }
    }
}

/// More routes than cells can number (2^31 - 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TooManyRoutes;

impl Dir16_8_8 {
    /// Builds the trie from `(network, length, route number)`; `routes` must be
    /// sorted by length, shortest first, with host bits cleared.
    pub fn build(routes: &[(u32, u8, u32)]) -> Result<Self, TooManyRoutes> {
        let mut t = Dir16_8_8::default();
        for &(net, len, route) in routes {
            let leaf = route
                .checked_add(1)
                .filter(|v| v & CHUNK == 0)
                .ok_or(TooManyRoutes)?;
            t.paint(net, len.min(32), leaf)?;
        }
        // Growth slack would be up to half the table; it is immutable from here on.
        t.l2.shrink_to_fit();
        t.l3.shrink_to_fit();
        Ok(t)
    }

    fn paint(&mut self, net: u32, len: u8, leaf: u32) -> Result<(), TooManyRoutes> {
        let hi = (net >> 16) as usize;
        if len <= 16 {
            let n = 1usize << (16 - len);
            if let Some(cells) = self.l1.get_mut(hi..hi + n) {
                cells.fill(leaf);
            }
            return Ok(());
        }
        let l1_cell = self.l1.get(hi).copied().unwrap_or(0);
        let c2 = child(&mut self.l2, l1_cell)?;
        if let Some(cell) = self.l1.get_mut(hi) {
            *cell = c2 | CHUNK;
        }
        let mid = c2 as usize * CHUNK_CELLS + ((net >> 8) & 0xff) as usize;
        if len <= 24 {
            let n = 1usize << (24 - len);
            if let Some(cells) = self.l2.get_mut(mid..mid + n) {
                cells.fill(leaf);
            }
            return Ok(());
        }
        let l2_cell = self.l2.get(mid).copied().unwrap_or(0);
        let c3 = child(&mut self.l3, l2_cell)?;
        if let Some(cell) = self.l2.get_mut(mid) {
            *cell = c3 | CHUNK;
        }
        let lo = c3 as usize * CHUNK_CELLS + (net & 0xff) as usize;
        let n = 1usize << (32 - len);
        if let Some(cells) = self.l3.get_mut(lo..lo + n) {
            cells.fill(leaf);
        }
        Ok(())
    }

    /// Route number plus one for `addr`, or zero.
    #[inline]
    pub fn lookup(&self, addr: u32) -> u32 {
        let c = self.l1.get((addr >> 16) as usize).copied().unwrap_or(0);
        if c & CHUNK == 0 {
            return c;
        }
        self.lookup_l2(c, addr)
    }

    #[inline]
    fn lookup_l2(&self, c: u32, addr: u32) -> u32 {
        let i = (c & !CHUNK) as usize * CHUNK_CELLS + ((addr >> 8) & 0xff) as usize;
        let c = self.l2.get(i).copied().unwrap_or(0);
        if c & CHUNK == 0 {
            return c;
        }
        self.lookup_l3(c, addr)
    }

    #[inline]
    fn lookup_l3(&self, c: u32, addr: u32) -> u32 {
        let i = (c & !CHUNK) as usize * CHUNK_CELLS + (addr & 0xff) as usize;
        self.l3.get(i).copied().unwrap_or(0)
    }

    /// Looks up every address of `addrs` into `out` (route number plus one, or zero)
    /// level by level: the loads of one level are independent of each other, so
    /// their cache misses overlap instead of queueing behind each other. The levels
    /// are branch-free: an address that already has its answer re-reads cell 0 of
    /// the level (always cached) and keeps its value, so no misprediction stalls
    /// the loads behind it.
    #[inline]
    pub fn lookup_batch<const N: usize>(&self, addrs: &[u32; N], out: &mut [u32; N]) {
        for (o, &a) in out.iter_mut().zip(addrs) {
            *o = self.l1.get((a >> 16) as usize).copied().unwrap_or(0);
        }
        let mut deeper = 0;
        for (o, &a) in out.iter_mut().zip(addrs) {
            *o = step(&self.l2, *o, (a >> 8) & 0xff);
            deeper |= *o;
        }
        if deeper & CHUNK != 0 {
            for (o, &a) in out.iter_mut().zip(addrs) {
                *o = step(&self.l3, *o, a & 0xff);
            }
        }
    }

    pub fn memory_bytes(&self) -> usize {
        std::mem::size_of::<[u32; L1_CELLS]>() + (self.l2.capacity() + self.l3.capacity()) * 4
    }
}

/// One level of a batch lookup without a branch: the cell below `cell` for
/// `byte` when `cell` points to a chunk, else `cell` unchanged.
#[inline(always)]
fn step(level: &[u32], cell: u32, byte: u32) -> u32 {
    let is_chunk = cell & CHUNK != 0;
    let index = ((cell & !CHUNK) as usize * CHUNK_CELLS + byte as usize) * usize::from(is_chunk);
    let below = level.get(index).copied().unwrap_or(0);
    if is_chunk { below } else { cell }
}

/// The chunk below `cell` in `level`, creating it (filled with the route `cell`
/// held, so shorter prefixes stay visible underneath) if `cell` is a leaf.
fn child(level: &mut Vec<u32>, cell: u32) -> Result<u32, TooManyRoutes> {
    if cell & CHUNK != 0 {
        return Ok(cell & !CHUNK);
    }
    let index = u32::try_from(level.len() / CHUNK_CELLS)
        .ok()
        .filter(|i| i & CHUNK == 0)
        .ok_or(TooManyRoutes)?;
    level.resize(level.len() + CHUNK_CELLS, cell);
    Ok(index)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn longer_prefixes_win_at_every_level() {
        let ip = |a: u8, b: u8, c: u8, d: u8| u32::from_be_bytes([a, b, c, d]);
        let routes = [
            (0, 0, 0),
            (ip(10, 0, 0, 0), 8, 1),
            (ip(10, 1, 0, 0), 20, 2),
            (ip(10, 1, 2, 0), 24, 3),
            (ip(10, 1, 2, 128), 25, 4),
            (ip(10, 1, 2, 129), 32, 5),
        ];
        let t = Dir16_8_8::build(&routes).unwrap();
        assert_eq!(t.lookup(ip(11, 0, 0, 0)), 1);
        assert_eq!(t.lookup(ip(10, 9, 0, 0)), 2);
        assert_eq!(t.lookup(ip(10, 1, 15, 255)), 3);
        assert_eq!(t.lookup(ip(10, 1, 16, 0)), 2);
        assert_eq!(t.lookup(ip(10, 1, 2, 127)), 4);
        assert_eq!(t.lookup(ip(10, 1, 2, 128)), 5);
        assert_eq!(t.lookup(ip(10, 1, 2, 129)), 6);
        assert_eq!(t.lookup(ip(10, 1, 2, 130)), 5);
        let addrs = [
            ip(11, 0, 0, 0),
            ip(10, 1, 2, 129),
            ip(10, 1, 16, 0),
            ip(10, 1, 2, 0),
        ];
        let mut out = [0; 4];
        t.lookup_batch(&addrs, &mut out);
        assert_eq!(out, [1, 6, 2, 4]);
        assert_eq!(Dir16_8_8::build(&[]).unwrap().lookup(ip(1, 2, 3, 4)), 0);
    }
}
