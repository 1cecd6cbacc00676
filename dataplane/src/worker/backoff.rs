//! Skipping an idle port for a few loop turns while other ports are busy.
//!
//! A worker polls every port it owns on every loop turn. For a TUN or UDP queue an
//! empty poll is a `read`/`recvmsg` system call, and while one port carries a flood
//! of small packets each loop turn moves only a few of them: the empty reads of the
//! idle ports (the host port, say) then cost as much as the packets. A port that
//! had nothing is skipped for 1, 2, 4, then at most [`IdleBackoff::MAX_SKIP`] turns;
//! one frame resets it. The bound keeps the extra delay for a port that wakes up to a
//! few busy loop turns; a parked worker polls every port again when it wakes.

/// The skip state of one port.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct IdleBackoff {
    skip_left: u32,
    next_skip: u32,
}

impl IdleBackoff {
    /// Most loop turns an idle port is skipped in a row.
    pub const MAX_SKIP: u32 = 8;

    /// Whether the port is polled this turn.
    #[inline]
    pub fn due(&mut self) -> bool {
        if self.skip_left == 0 {
            return true;
        }
        self.skip_left -= 1;
        false
    }

    /// Records what a poll of the port moved.
    #[inline]
    pub fn polled(&mut self, frames: usize) {
        if frames > 0 {
            *self = IdleBackoff::default();
        } else {
            self.next_skip = (self.next_skip * 2).clamp(1, Self::MAX_SKIP);
            self.skip_left = self.next_skip;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The turns on which a port is polled, over `turns` turns, when it is busy on
    /// the turns `busy` says.
    fn polled_turns(turns: u32, busy: impl Fn(u32) -> bool) -> Vec<u32> {
        let mut b = IdleBackoff::default();
        let mut out = Vec::new();
        for t in 0..turns {
            if b.due() {
                out.push(t);
                b.polled(usize::from(busy(t)));
            }
        }
        out
    }

    #[test]
    fn an_idle_port_is_polled_ever_less_often_up_to_the_bound() {
        assert_eq!(polled_turns(40, |_| false), [0, 2, 5, 10, 19, 28, 37]);
    }

    #[test]
    fn a_busy_port_is_polled_every_turn_and_one_frame_resets_the_skips() {
        assert_eq!(polled_turns(5, |_| true), [0, 1, 2, 3, 4]);
        // Idle until turn 19, then busy: polled again on the next turn.
        assert_eq!(
            polled_turns(24, |t| t >= 19),
            [0, 2, 5, 10, 19, 20, 21, 22, 23]
        );
    }
}
