//! What a tracked flow is and how its state moves: flow keys, per-protocol timeouts,
//! the TCP state machine and the TCP sequence window that decides which segments
//! may move it. The table that stores flows is in [`super::snat`].

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

    /// The name operators know it by (`tcp/30080` in `hybridway status`).
    pub const fn label(self) -> &'static str {
        match self {
            L4Proto::Tcp => "tcp",
            L4Proto::Udp => "udp",
            L4Proto::IcmpEcho => "icmp",
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

/// What conntrack reads from a TCP header; all zero for UDP and ICMP.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpSegment {
    /// The raw flags byte ([`tcp_flags`]).
    pub flags: u8,
    pub seq: u32,
    pub ack: u32,
    /// Receive window as on the wire (before RFC 7323 scaling).
    pub window: u16,
    /// Payload bytes (a super-packet's whole payload).
    pub payload_len: u32,
    /// The window scale option (RFC 7323 §2.2); only read from SYN segments.
    pub window_scale: Option<u8>,
}

impl TcpSegment {
    /// A segment with `flags` at sequence and acknowledgement number 0, no payload
    /// and no window (what UDP and ICMP flows pass, with no flags).
    pub const fn with_flags(flags: u8) -> Self {
        TcpSegment {
            flags,
            seq: 0,
            ack: 0,
            window: 0,
            payload_len: 0,
            window_scale: None,
        }
    }

    #[inline]
    fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }

    /// The sequence number after this segment (SYN and FIN count one each).
    #[inline]
    fn end(&self) -> u32 {
        self.seq
            .wrapping_add(self.payload_len)
            .wrapping_add(u32::from(self.has(tcp_flags::SYN)))
            .wrapping_add(u32::from(self.has(tcp_flags::FIN)))
    }
}

/// `a` comes before `b` in sequence space (RFC 793 §3.3, modulo 2^32).
#[inline]
fn before(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

/// One side of a TCP flow as `nf_conntrack_proto_tcp.c` tracks it (`struct
/// ip_ct_tcp_state`): enough to tell a segment that belongs to the connection
/// from one an off-path sender guessed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
struct SideWindow {
    /// The highest sequence number this side sent, plus that segment's length
    /// (`td_end`).
    end: u32,
    /// The highest sequence number the other side's ACK plus window lets this
    /// side send (`td_maxend`).
    maxend: u32,
    /// The largest window this side advertised, scaled (`td_maxwin`).
    maxwin: u32,
}

/// The sequence window of a TCP flow, both sides (26 bytes, stored in the flow).
///
/// The check is the kernel's `tcp_in_window` without SACK: a segment from one side
/// is in the window when its sequence number is at most what the other side's
/// ACK and window allow (`maxend`) and its end is no more than one receive
/// window behind what this side already sent. Only in-window segments move the
/// flow's state or refresh it, so an off-path attacker who guesses the NAT port
/// must also hit a window of at most about two receive windows out of 2^32
/// sequence numbers to reset or close a flow. A flow whose SYN was not seen
/// (picked up mid-stream, say after an agent restart) is tracked loosely: every
/// segment counts, as before this check existed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub(crate) struct TcpWindow {
    pod: SideWindow,
    remote: SideWindow,
    /// Window scale offered in each side's SYN: pod in the low nibble, remote in
    /// the high one, [`NO_SCALE`] when not offered.
    scales: u8,
    /// [`SEEN_POD`], [`SEEN_REMOTE`], [`LOOSE`].
    flags: u8,
}

const NO_SCALE: u8 = 0x0f;
const SEEN_POD: u8 = 1;
const SEEN_REMOTE: u8 = 2;
const LOOSE: u8 = 4;

impl TcpWindow {
    /// No side seen (the value of a UDP or ICMP flow).
    pub(crate) const ZERO: TcpWindow = TcpWindow {
        pod: SideWindow {
            end: 0,
            maxend: 0,
            maxwin: 0,
        },
        remote: SideWindow {
            end: 0,
            maxend: 0,
            maxwin: 0,
        },
        scales: 0,
        flags: 0,
    };

    /// The window of a flow created by the pod's `seg`: tracked from a bare SYN,
    /// loose from anything else.
    pub fn start(seg: &TcpSegment) -> TcpWindow {
        let syn_only =
            seg.flags & (tcp_flags::SYN | tcp_flags::ACK | tcp_flags::RST) == tcp_flags::SYN;
        let mut w = TcpWindow {
            scales: NO_SCALE | (NO_SCALE << 4),
            flags: if syn_only { 0 } else { LOOSE },
            ..TcpWindow::default()
        };
        w.accept(Direction::Outbound, seg);
        w
    }

    /// Whether `seg`, sent in `dir`, lies in the flow's window; an in-window
    /// segment other than RST also moves the window. RSTs never move it.
    #[inline]
    pub fn accept(&mut self, dir: Direction, seg: &TcpSegment) -> bool {
        if self.flags & LOOSE != 0 {
            return true;
        }
        let (s_bit, r_bit, shift) = match dir {
            Direction::Outbound => (SEEN_POD, SEEN_REMOTE, 0),
            Direction::Inbound => (SEEN_REMOTE, SEEN_POD, 4),
        };
        let syn = seg.has(tcp_flags::SYN);
        let rst = seg.has(tcp_flags::RST);
        let ack = seg.has(tcp_flags::ACK);
        if syn && !rst {
            let offered = seg.window_scale.map_or(NO_SCALE, |s| s.min(14));
            self.scales = (self.scales & !(0x0f << shift)) | (offered << shift);
        }
        // Windows are scaled once both SYNs offered scaling (RFC 7323 §2.2); the
        // window of a SYN itself never is.
        let (pod_scale, remote_scale) = (self.scales & 0x0f, self.scales >> 4);
        let scale = if syn || pod_scale == NO_SCALE || remote_scale == NO_SCALE {
            0
        } else {
            (self.scales >> shift) & 0x0f
        };
        let win = u32::from(seg.window) << scale;
        let seen = self.flags;
        let (s, r) = match dir {
            Direction::Outbound => (&mut self.pod, &mut self.remote),
            Direction::Inbound => (&mut self.remote, &mut self.pod),
        };
        let end = seg.end();
        if seen & s_bit == 0 {
            if rst {
                // RFC 793 §3.4: before a side spoke, its reset is acceptable only
                // when it acknowledges the other side's SYN.
                return ack && seen & r_bit != 0 && seg.ack == r.end;
            }
            *s = SideWindow {
                end,
                maxend: end,
                maxwin: win.max(1),
            };
            if ack {
                r.maxend = seg.ack.wrapping_add(win.max(1));
            }
            self.flags |= s_bit;
            return true;
        }
        // tcp_in_window's bounds I and II: not past what the receiver allowed, not
        // more than a receive window behind what this side already sent (one
        // sequence number before the other side spoke: its window is unknown).
        let in_window =
            !before(s.maxend, seg.seq) && !before(end, s.end.wrapping_sub(r.maxwin.max(1)));
        if !in_window || rst {
            return in_window;
        }
        s.maxwin = s.maxwin.max(win);
        if before(s.end, end) {
            s.end = end;
        }
        if ack {
            let allowed = seg.ack.wrapping_add(win.max(1));
            if before(r.maxend, allowed) {
                r.maxend = allowed;
            }
        }
        true
    }
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
    #[inline]
    pub fn next(self, dir: Direction, flags: u8) -> FlowState {
        use Direction::{Inbound, Outbound};
        use FlowState::*;
        let rst = flags & tcp_flags::RST != 0;
        let fin = flags & tcp_flags::FIN != 0;
        let ack = flags & tcp_flags::ACK != 0;
        match (self, dir) {
            (Udp, _) | (Icmp, _) => self,
            _ if self.reopened_by(dir, flags) => TcpSynSent,
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

    /// Whether a packet in `dir` with `flags` starts a new connection on this
    /// tuple: a pod's bare SYN after the old one closed (RFC 1122 4.2.2.13, RFC 7857
    /// §2.2: a SYN may reopen a mapping in TIME-WAIT). The kernel ignores a SYN in
    /// LAST_ACK; so do we.
    #[inline]
    pub fn reopened_by(self, dir: Direction, flags: u8) -> bool {
        let bare_syn = flags & (tcp_flags::SYN | tcp_flags::ACK | tcp_flags::RST) == tcp_flags::SYN;
        self.is_closed() && dir == Direction::Outbound && bare_syn
    }

    /// The state after segment `seg` in `dir`, checked against and moving the
    /// flow's `window`; `None` when a TCP segment lies outside the window, which
    /// then changes nothing (`nf_conntrack_tcp` marks such packets invalid). A
    /// reopening SYN starts a new window.
    #[inline]
    pub(crate) fn after_segment(
        self,
        window: &mut TcpWindow,
        dir: Direction,
        seg: &TcpSegment,
    ) -> Option<FlowState> {
        if matches!(self, FlowState::Udp | FlowState::Icmp) {
            return Some(self);
        }
        if self.reopened_by(dir, seg.flags) {
            *window = TcpWindow::start(seg);
        } else if !window.accept(dir, seg) {
            return None;
        }
        Some(self.next(dir, seg.flags))
    }

    /// Whether the connection is over, so its NAT port may serve another flow to
    /// the same destination when none is free (the kernel's NAT does the same with
    /// TIME_WAIT and CLOSE entries).
    pub fn is_closed(self) -> bool {
        matches!(self, FlowState::TcpTimeWait | FlowState::TcpClose)
    }

    #[inline]
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

    #[inline]
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
