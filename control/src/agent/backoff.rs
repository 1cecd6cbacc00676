//! The agent's wait between attempts at something that failed and may work later
//! (saving the cluster view, applying a cluster change): 1 s, doubled after each
//! failure, at most 60 s.

use std::time::Duration;

/// Wait before the first retry.
pub const FIRST: Duration = Duration::from_secs(1);
/// Longest wait between retries.
pub const MAX: Duration = Duration::from_secs(60);

/// The wait before the next attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff(Duration);

impl Default for Backoff {
    fn default() -> Self {
        Backoff(FIRST)
    }
}

impl Backoff {
    /// The wait before the next attempt; the one after it is twice as long.
    pub fn step(&mut self) -> Duration {
        let now = self.0;
        self.0 = (self.0 * 2).min(MAX);
        now
    }

    /// Back to the first wait (the attempt worked, or there is something new).
    pub fn reset(&mut self) {
        self.0 = FIRST;
    }

    /// The wait [`Backoff::step`] returns next.
    pub fn peek(&self) -> Duration {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::default();
        assert_eq!(b.step(), FIRST);
        assert_eq!(b.step(), FIRST * 2);
        for _ in 0..10 {
            b.step();
        }
        assert_eq!(b.peek(), MAX);
        b.reset();
        assert_eq!(b.peek(), FIRST);
    }
}
