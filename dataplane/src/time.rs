//! Time as the dataplane sees it: a parameter, never read from a clock inside
//! packet code, so every timeout is testable.

use std::time::Duration;

/// Milliseconds on a monotonic clock chosen by the caller (workers pass the time
/// since they started; tests pass whatever they like).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Now(pub u64);

impl Now {
    pub const fn from_millis(ms: u64) -> Self {
        Now(ms)
    }

    pub const fn millis(self) -> u64 {
        self.0
    }

    /// This instant plus `d`, saturating.
    pub fn after(self, d: Duration) -> Self {
        Now(self
            .0
            .saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)))
    }

    /// Time from `earlier` to `self`, zero if `earlier` is later.
    pub fn since(self, earlier: Now) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}
