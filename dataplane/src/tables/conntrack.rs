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
/// TCP defaults are the Linux kernel's (`net.netfilter.nf_conntrack_tcp_timeout_*`),
/// except established, which keeps RFC 5382 REQ-5's 2 h 4 min rather than the
/// kernel's 5 days: a NAT port held by a silent peer for days is a port lost. UDP
/// 5 min (RFC 4787 REQ-5 recommends ≥ 5 min for anything but well-known ports), ICMP
/// query 60 s (RFC 5508 REQ-1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// A TCP flow only seen outbound (SYN sent): `tcp_timeout_syn_sent`.
    pub tcp_syn_sent: Duration,
    /// A TCP flow seen in both directions without FIN or RST.
    pub tcp_established: Duration,
    /// One side sent FIN (`tcp_timeout_fin_wait`; the kernel's CLOSE_WAIT needs
    /// sequence numbers to tell apart and is folded in here).
    pub tcp_fin_wait: Duration,
    /// Both sides sent FIN, the last ACK not seen yet: `tcp_timeout_last_ack`.
    pub tcp_last_ack: Duration,
    /// Both FINs acknowledged: `tcp_timeout_time_wait`. A new SYN from the pod for
    /// the same tuple reopens the mapping at once (RFC 7857 §2.2), and a flow to the
    /// same destination that finds no free port takes this one over.
    pub tcp_time_wait: Duration,
    /// After an RST: `tcp_timeout_close`.
    pub tcp_close: Duration,
    pub udp: Duration,
    pub icmp: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            tcp_syn_sent: Duration::from_secs(120),
            tcp_established: Duration::from_secs(7440),
            tcp_fin_wait: Duration::from_secs(120),
            tcp_last_ack: Duration::from_secs(30),
            tcp_time_wait: Duration::from_secs(120),
            tcp_close: Duration::from_secs(10),
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
///
/// The TCP states are the kernel conntrack's as far as flags alone can tell them
/// (no sequence numbers are tracked): the side that sent the first FIN is
/// remembered so that the last ACK, which moves the flow to TIME_WAIT, is the other
/// side's FIN being acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FlowState {
    /// TCP seen outbound only (RFC 793 SYN-SENT from the NAT's point of view).
    TcpSynSent,
    /// TCP seen in both directions, no FIN/RST yet.
    TcpEstablished,
    /// The pod sent the first FIN (FIN-WAIT).
    TcpFinOut,
    /// The remote sent the first FIN (CLOSE-WAIT from the pod's side).
    TcpFinIn,
    /// Both sent FIN, the pod sent the first: its ACK of the remote's FIN ends it.
    TcpLastAckOut,
    /// Both sent FIN, the remote sent the first: its ACK ends it.
    TcpLastAckIn,
    /// Both FINs acknowledged (TIME-WAIT).
    TcpTimeWait,
    /// After an RST (CLOSE).
    TcpClose,
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
            L4Proto::Tcp if flags & tcp_flags::RST != 0 => FlowState::TcpClose,
            L4Proto::Tcp if flags & tcp_flags::FIN != 0 => FlowState::TcpFinOut,
            L4Proto::Tcp => FlowState::TcpSynSent,
        }
    }

    /// The state after one more packet in `dir` with TCP `flags`.
    pub fn next(self, dir: Direction, flags: u8) -> FlowState {
        use Direction::{Inbound, Outbound};
        use FlowState::*;
        let rst = flags & tcp_flags::RST != 0;
        let fin = flags & tcp_flags::FIN != 0;
        let ack = flags & tcp_flags::ACK != 0;
        let bare_syn = flags & (tcp_flags::SYN | tcp_flags::ACK | tcp_flags::RST) == tcp_flags::SYN;
        match (self, dir) {
            (Udp, _) | (Icmp, _) => self,
            // A new connection reusing the tuple after the old one closed (RFC 1122
            // 4.2.2.13, RFC 7857 §2.2: a SYN may reopen a mapping in TIME-WAIT).
            // The kernel ignores a SYN in LAST_ACK; so do we.
            (TcpTimeWait | TcpClose, Outbound) if bare_syn => TcpSynSent,
            (TcpClose, _) => TcpClose,
            (_, _) if rst => TcpClose,
            (TcpSynSent, Outbound) if fin => TcpFinOut,
            (TcpSynSent, Outbound) => TcpSynSent,
            // The first reply (SYN-ACK) completes the picture: both directions seen.
            (TcpSynSent, Inbound) if fin => TcpFinIn,
            (TcpSynSent, Inbound) => TcpEstablished,
            (TcpEstablished, Outbound) if fin => TcpFinOut,
            (TcpEstablished, Inbound) if fin => TcpFinIn,
            (TcpEstablished, _) => TcpEstablished,
            (TcpFinOut, Inbound) if fin => TcpLastAckOut,
            (TcpFinIn, Outbound) if fin => TcpLastAckIn,
            (TcpFinOut | TcpFinIn, _) => self,
            (TcpLastAckOut, Outbound) if ack && !fin => TcpTimeWait,
            (TcpLastAckIn, Inbound) if ack && !fin => TcpTimeWait,
            (TcpLastAckOut | TcpLastAckIn | TcpTimeWait, _) => self,
        }
    }

    /// Whether the connection is over, so its NAT port may serve another flow to
    /// the same destination when none is free (the kernel's NAT does the same with
    /// TIME_WAIT and CLOSE entries).
    pub fn is_closed(self) -> bool {
        matches!(self, FlowState::TcpTimeWait | FlowState::TcpClose)
    }

    pub fn timeout(self, t: &Timeouts) -> Duration {
        match self {
            FlowState::TcpSynSent => t.tcp_syn_sent,
            FlowState::TcpEstablished => t.tcp_established,
            FlowState::TcpFinOut | FlowState::TcpFinIn => t.tcp_fin_wait,
            FlowState::TcpLastAckOut | FlowState::TcpLastAckIn => t.tcp_last_ack,
            FlowState::TcpTimeWait => t.tcp_time_wait,
            FlowState::TcpClose => t.tcp_close,
            FlowState::Udp => t.udp,
            FlowState::Icmp => t.icmp,
        }
    }

    pub(crate) fn from_u8(v: u8) -> FlowState {
        match v {
            0 => FlowState::TcpSynSent,
            1 => FlowState::TcpEstablished,
            2 => FlowState::TcpFinOut,
            3 => FlowState::TcpFinIn,
            4 => FlowState::TcpLastAckOut,
            5 => FlowState::TcpLastAckIn,
            6 => FlowState::TcpTimeWait,
            7 => FlowState::TcpClose,
            8 => FlowState::Udp,
            _ => FlowState::Icmp,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use Direction::{Inbound, Outbound};
    use tcp_flags::*;

    /// Runs `steps` from `start`, returning every state passed through.
    fn walk(start: FlowState, steps: &[(Direction, u8)]) -> Vec<FlowState> {
        let mut s = start;
        steps
            .iter()
            .map(|&(d, f)| {
                s = s.next(d, f);
                s
            })
            .collect()
    }

    #[test]
    fn pod_closes_first_through_last_ack_to_time_wait() {
        use FlowState::*;
        let s = FlowState::initial(L4Proto::Tcp, SYN);
        assert_eq!(s, TcpSynSent);
        let got = walk(
            s,
            &[
                (Outbound, SYN),
                (Inbound, SYN | ACK),
                (Outbound, ACK),
                (Outbound, FIN | ACK),
                (Inbound, ACK),
                (Inbound, FIN | ACK),
                (Inbound, FIN | ACK),
                (Outbound, ACK),
                (Inbound, ACK),
            ],
        );
        assert_eq!(
            got,
            [
                TcpSynSent,
                TcpEstablished,
                TcpEstablished,
                TcpFinOut,
                TcpFinOut,
                TcpLastAckOut,
                TcpLastAckOut,
                TcpTimeWait,
                TcpTimeWait
            ]
        );
    }

    #[test]
    fn remote_closes_first_through_last_ack_to_time_wait() {
        use FlowState::*;
        let got = walk(
            TcpEstablished,
            &[
                (Inbound, FIN | ACK),
                (Outbound, ACK),
                (Outbound, FIN | ACK),
                (Outbound, FIN | ACK),
                (Inbound, ACK),
            ],
        );
        assert_eq!(
            got,
            [TcpFinIn, TcpFinIn, TcpLastAckIn, TcpLastAckIn, TcpTimeWait]
        );
    }

    #[test]
    fn only_an_outbound_syn_reopens_a_closed_mapping() {
        use FlowState::*;
        for s in [TcpTimeWait, TcpClose] {
            assert_eq!(s.next(Outbound, SYN), TcpSynSent, "{s:?}");
            assert_ne!(s.next(Inbound, SYN), TcpSynSent, "{s:?}: inbound SYN");
            assert_ne!(s.next(Outbound, SYN | ACK), TcpSynSent, "{s:?}: SYN-ACK");
        }
        for s in [TcpFinOut, TcpFinIn, TcpLastAckOut, TcpLastAckIn] {
            assert_eq!(s.next(Outbound, SYN), s, "{s:?} is not reopened");
        }
    }

    #[test]
    fn rst_closes_from_any_tcp_state() {
        use FlowState::*;
        for s in [
            TcpSynSent,
            TcpEstablished,
            TcpFinOut,
            TcpFinIn,
            TcpLastAckOut,
            TcpLastAckIn,
            TcpTimeWait,
        ] {
            assert_eq!(s.next(Inbound, RST), TcpClose, "{s:?}");
            assert_eq!(s.next(Outbound, RST | ACK), TcpClose, "{s:?}");
        }
        assert_eq!(TcpClose.next(Inbound, ACK), TcpClose);
        assert_eq!(FlowState::initial(L4Proto::Tcp, RST), TcpClose);
        assert_eq!(FlowState::initial(L4Proto::Tcp, FIN | ACK), TcpFinOut);
        assert!(TcpClose.is_closed() && TcpTimeWait.is_closed());
        assert!(!TcpLastAckOut.is_closed() && !TcpEstablished.is_closed());
    }

    #[test]
    fn udp_and_icmp_have_one_state() {
        assert_eq!(
            FlowState::initial(L4Proto::Udp, 0).next(Inbound, 0xff),
            FlowState::Udp
        );
        assert_eq!(
            FlowState::initial(L4Proto::IcmpEcho, 0).next(Inbound, 0),
            FlowState::Icmp
        );
    }

    #[test]
    fn each_state_has_its_timeout_and_round_trips_through_u8() {
        use FlowState::*;
        let s = Duration::from_secs;
        let t = Timeouts {
            tcp_syn_sent: s(1),
            tcp_established: s(2),
            tcp_fin_wait: s(3),
            tcp_last_ack: s(4),
            tcp_time_wait: s(5),
            tcp_close: s(6),
            udp: s(7),
            icmp: s(8),
        };
        let states = [
            (TcpSynSent, 1),
            (TcpEstablished, 2),
            (TcpFinOut, 3),
            (TcpFinIn, 3),
            (TcpLastAckOut, 4),
            (TcpLastAckIn, 4),
            (TcpTimeWait, 5),
            (TcpClose, 6),
            (Udp, 7),
            (Icmp, 8),
        ];
        for (state, secs) in states {
            assert_eq!(state.timeout(&t), s(secs));
            assert_eq!(FlowState::from_u8(state as u8), state);
            assert!((state as u8) < 16, "fits the entry's 4 state bits");
        }
    }

    #[test]
    fn default_timeouts_are_the_kernels_for_closing_states() {
        let t = Timeouts::default();
        let s = Duration::from_secs;
        assert_eq!(
            (
                t.tcp_syn_sent,
                t.tcp_fin_wait,
                t.tcp_last_ack,
                t.tcp_time_wait,
                t.tcp_close
            ),
            (s(120), s(120), s(30), s(120), s(10))
        );
        assert!(t.tcp_established >= s(2 * 3600 + 4 * 60), "RFC 5382 REQ-5");
        assert!(t.udp >= s(120));
        assert!(t.icmp >= s(60));
    }
}
