//! The log line that says SNAT ports ran out, so exhaustion is never a silent wall:
//! the first refusal is logged at once, then at most one line per
//! [`ExhaustionLog::EVERY`] per worker, with the destination and how many new flows
//! were refused since the last line. (The counter `drops{snat_ports_exhausted}`
//! counts every one.)

use std::net::Ipv4Addr;
use std::time::Duration;

use crate::tables::{FlowKey, SnatConfig};
use crate::time::Now;
use crate::verdict::WorkerId;

#[derive(Clone, Copy, Debug)]
pub(crate) struct ExhaustionLog {
    /// Refusals not reported yet.
    unreported: u64,
    /// When the next line may be written.
    next: Now,
}

impl ExhaustionLog {
    /// Shortest interval between two lines of one worker.
    pub const EVERY: Duration = Duration::from_secs(10);

    pub fn new() -> Self {
        ExhaustionLog {
            unreported: 0,
            next: Now(0),
        }
    }

    /// Records one flow refused for want of a port towards `key.dst`, logging when
    /// the interval has passed. Returns whether a line was written.
    pub fn refused(
        &mut self,
        worker: WorkerId,
        key: &FlowKey,
        config: &SnatConfig,
        now: Now,
    ) -> bool {
        self.unreported = self.unreported.saturating_add(1);
        if now < self.next {
            return false;
        }
        let (dst, port): (Ipv4Addr, u16) = (key.dst, key.dst_port);
        let proto = key.proto.label();
        tracing::warn!(
            worker,
            destination = %format_args!("{dst}:{port}"),
            proto,
            refused = self.unreported,
            ports = %format_args!("{}-{}", config.port_range.start(), config.port_range.end()),
            "SNAT ports exhausted towards the destination: new connections are refused with \
             ICMP administratively prohibited; widen snat.portRange or shorten the closing \
             timeouts (README: Source NAT)"
        );
        self.unreported = 0;
        self.next = now.after(Self::EVERY);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tables::L4Proto;

    #[test]
    fn first_refusal_logs_then_once_per_interval() {
        let key = FlowKey {
            proto: L4Proto::Tcp,
            src: Ipv4Addr::new(198, 19, 1, 5),
            src_port: 40000,
            dst: Ipv4Addr::new(198, 18, 200, 1),
            dst_port: 443,
        };
        let cfg = SnatConfig::default();
        let mut log = ExhaustionLog::new();
        assert!(log.refused(0, &key, &cfg, Now::from_millis(5_000)));
        assert!(!log.refused(0, &key, &cfg, Now::from_millis(6_000)));
        assert!(!log.refused(0, &key, &cfg, Now::from_millis(14_999)));
        assert!(log.refused(0, &key, &cfg, Now::from_millis(15_000)));
    }
}
