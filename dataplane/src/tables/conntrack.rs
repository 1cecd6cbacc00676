//! What a tracked flow is and how its state moves: flow keys, per-protocol timeouts
//! and the TCP state machine. The table that stores flows is in [`super::snat`].

use std::net::Ipv4Addr;
use std::time::Duration;

/// Transport protocol of a tracked flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum L4Proto {
    Tcp,
    Udp,
    /// ICMP echo request/reply; the echo identifier plays the role of both ports.
    IcmpEcho,
}

impl L4Proto {
    pub(crate) const fn code(self) -> u8 {
        match self {
            L4Proto::Tcp => 1,
            L4Proto::Udp => 2,
            L4Proto::IcmpEcho => 3,
        }
    }
}

/// A packet's 5-tuple as it is on the wire.
///
/// For [`L4Proto::IcmpEcho`], `src_port` and `dst_port` both hold the echo identifier.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub proto: L4Proto,
    pub src: Ipv4Addr,
    pub src_port: u16,
    pub dst: Ipv4Addr,
    pub dst_port: u16,
}

impl FlowKey {
    /// The key of the packet travelling the other way.
    pub fn reversed(&self) -> FlowKey {
        FlowKey {
            proto: self.proto,
            src: self.dst,
            src_port: self.dst_port,
            dst: self.src,
            dst_port: self.src_port,
        }
    }
}

/// Idle timeouts per protocol state.
///
/// Defaults follow the BEHAVE RFCs: TCP established ≥ 2 h 4 min and transitory
/// ≥ 4 min (RFC 5382 REQ-5), UDP 5 min (RFC 4787 REQ-5 recommends ≥ 5 min for
/// anything but well-known ports), ICMP query 60 s (RFC 5508 REQ-1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// A TCP flow that has only been seen in the outbound direction (SYN sent).
    pub tcp_syn: Duration,
    /// A TCP flow seen in both directions without FIN or RST.
    pub tcp_established: Duration,
    /// A TCP flow after a FIN or RST in either direction.
    pub tcp_closing: Duration,
    pub udp: Duration,
    pub icmp: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            tcp_syn: Duration::from_secs(240),
            tcp_established: Duration::from_secs(7440),
            tcp_closing: Duration::from_secs(240),
            udp: Duration::from_secs(300),
            icmp: Duration::from_secs(60),
        }
    }
}

/// TCP flag bits in the raw flags byte.
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const ACK: u8 = 0x10;
}

/// Where a tracked flow stands; picks its idle timeout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FlowState {
    /// TCP seen outbound only (RFC 793 SYN-SENT from the NAT's point of view).
    TcpSynSent,
    /// TCP seen in both directions, no FIN/RST yet.
    TcpEstablished,
    /// TCP after FIN or RST (FIN-WAIT/CLOSING/TIME-WAIT collapsed into one state).
    TcpClosing,
    Udp,
    Icmp,
}

/// Direction of a packet relative to the pod that opened the flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// From the pod towards the outside.
    Outbound,
    /// A reply from the outside towards the pod.
    Inbound,
}

impl FlowState {
    /// The state of a flow created by its first (outbound) packet.
    pub fn initial(proto: L4Proto, flags: u8) -> FlowState {
        match proto {
            L4Proto::Udp => FlowState::Udp,
            L4Proto::IcmpEcho => FlowState::Icmp,
            L4Proto::Tcp if flags & (tcp_flags::FIN | tcp_flags::RST) != 0 => FlowState::TcpClosing,
            L4Proto::Tcp => FlowState::TcpSynSent,
        }
    }

    /// The state after one more packet in `dir` with TCP `flags`.
    pub fn next(self, dir: Direction, flags: u8) -> FlowState {
        use FlowState::*;
        let fin_or_rst = flags & (tcp_flags::FIN | tcp_flags::RST) != 0;
        let bare_syn = flags & (tcp_flags::SYN | tcp_flags::ACK | tcp_flags::RST) == tcp_flags::SYN;
        match (self, dir) {
            (Udp, _) | (Icmp, _) => self,
            (TcpSynSent | TcpEstablished, _) if fin_or_rst => TcpClosing,
            // The first reply (SYN-ACK) completes the picture: both directions seen.
            (TcpSynSent, Direction::Inbound) => TcpEstablished,
            (TcpSynSent, Direction::Outbound) => TcpSynSent,
            (TcpEstablished, _) => TcpEstablished,
            // A new connection reusing the tuple after the old one closed
            // (RFC 1122 4.2.2.13: a SYN may reopen a connection in TIME-WAIT).
            (TcpClosing, Direction::Outbound) if bare_syn => TcpSynSent,
            (TcpClosing, _) => TcpClosing,
        }
    }

    pub fn timeout(self, t: &Timeouts) -> Duration {
        match self {
            FlowState::TcpSynSent => t.tcp_syn,
            FlowState::TcpEstablished => t.tcp_established,
            FlowState::TcpClosing => t.tcp_closing,
            FlowState::Udp => t.udp,
            FlowState::Icmp => t.icmp,
        }
    }

    pub(crate) fn from_u8(v: u8) -> FlowState {
        match v {
            0 => FlowState::TcpSynSent,
            1 => FlowState::TcpEstablished,
            2 => FlowState::TcpClosing,
            3 => FlowState::Udp,
            _ => FlowState::Icmp,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use tcp_flags::*;

    #[test]
    fn tcp_handshake_data_and_close() {
        let s = FlowState::initial(L4Proto::Tcp, SYN);
        assert_eq!(s, FlowState::TcpSynSent);
        let s = s.next(Direction::Outbound, SYN);
        assert_eq!(
            s,
            FlowState::TcpSynSent,
            "a retransmitted SYN is still one direction"
        );
        let s = s.next(Direction::Inbound, SYN | ACK);
        assert_eq!(s, FlowState::TcpEstablished);
        let s = s.next(Direction::Outbound, ACK);
        assert_eq!(s, FlowState::TcpEstablished);
        let s = s.next(Direction::Inbound, FIN | ACK);
        assert_eq!(s, FlowState::TcpClosing);
        assert_eq!(s.next(Direction::Outbound, ACK), FlowState::TcpClosing);
        assert_eq!(
            s.next(Direction::Inbound, SYN),
            FlowState::TcpClosing,
            "inbound SYN does not reopen"
        );
        assert_eq!(
            s.next(Direction::Outbound, SYN),
            FlowState::TcpSynSent,
            "outbound SYN reopens"
        );
    }

    #[test]
    fn rst_closes_from_any_tcp_state() {
        for s in [FlowState::TcpSynSent, FlowState::TcpEstablished] {
            assert_eq!(s.next(Direction::Inbound, RST), FlowState::TcpClosing);
            assert_eq!(
                s.next(Direction::Outbound, RST | ACK),
                FlowState::TcpClosing
            );
        }
        assert_eq!(FlowState::initial(L4Proto::Tcp, RST), FlowState::TcpClosing);
    }

    #[test]
    fn udp_and_icmp_have_one_state() {
        assert_eq!(
            FlowState::initial(L4Proto::Udp, 0).next(Direction::Inbound, 0xff),
            FlowState::Udp
        );
        assert_eq!(
            FlowState::initial(L4Proto::IcmpEcho, 0).next(Direction::Inbound, 0),
            FlowState::Icmp
        );
    }

    #[test]
    fn each_state_has_its_timeout() {
        let t = Timeouts {
            tcp_syn: Duration::from_secs(1),
            tcp_established: Duration::from_secs(2),
            tcp_closing: Duration::from_secs(3),
            udp: Duration::from_secs(4),
            icmp: Duration::from_secs(5),
        };
        let states = [
            FlowState::TcpSynSent,
            FlowState::TcpEstablished,
            FlowState::TcpClosing,
            FlowState::Udp,
            FlowState::Icmp,
        ];
        for (i, s) in states.into_iter().enumerate() {
            assert_eq!(s.timeout(&t), Duration::from_secs(i as u64 + 1));
            assert_eq!(FlowState::from_u8(s as u8), s);
        }
    }

    #[test]
    fn default_timeouts_meet_the_rfc_minimums() {
        let t = Timeouts::default();
        assert!(t.tcp_established >= Duration::from_secs(2 * 3600 + 4 * 60));
        assert!(t.tcp_syn >= Duration::from_secs(240));
        assert!(t.tcp_closing >= Duration::from_secs(240));
        assert!(t.udp >= Duration::from_secs(120));
        assert!(t.icmp >= Duration::from_secs(60));
    }
}
