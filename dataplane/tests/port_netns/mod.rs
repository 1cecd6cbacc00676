//! Shared by the `port_*` tests: uniquely named network namespaces removed on drop,
//! commands run inside them, and frame builders. Addresses come from 198.18.0.0/15.
#![allow(
    dead_code,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::type_complexity
)]

use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A network namespace named after the test, the pid and a counter; deleted on drop
/// (which also deletes the interfaces inside it).
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("hw{tag}{}-{n}", std::process::id());
        run("ip", &["netns", "add", &name]);
        let ns = Netns { name };
        ns.sh("ip link set lo up");
        ns
    }

    /// Runs `cmd` with `sh -c` inside the namespace and asserts it succeeded.
    pub fn sh(&self, cmd: &str) -> String {
        let out = self.try_sh(cmd);
        assert!(
            out.status.success(),
            "in {}: `{cmd}` failed: {}{}",
            self.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `cmd` inside the namespace and returns its output whatever the status.
    pub fn try_sh(&self, cmd: &str) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name, "sh", "-c", cmd])
            .output()
            .expect("run ip netns exec")
    }

    /// The MAC address of `dev` in this namespace.
    pub fn mac(&self, dev: &str) -> [u8; 6] {
        let text = self.sh(&format!("cat /sys/class/net/{dev}/address"));
        let mut mac = [0u8; 6];
        for (i, part) in text.trim().split(':').enumerate() {
            mac[i] = u8::from_str_radix(part, 16).expect("hex MAC");
        }
        mac
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

pub fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().expect("spawn");
    assert!(
        out.status.success(),
        "`{cmd} {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A veth pair with one end in each namespace, addressed and up.
pub fn veth_pair(a: &Netns, a_dev: &str, a_addr: &str, b: &Netns, b_dev: &str, b_addr: &str) {
    run(
        "ip",
        &[
            "link", "add", a_dev, "netns", &a.name, "type", "veth", "peer", "name", b_dev, "netns",
            &b.name,
        ],
    );
    a.sh(&format!(
        "ip addr add {a_addr} dev {a_dev} && ip link set {a_dev} up"
    ));
    b.sh(&format!(
        "ip addr add {b_addr} dev {b_dev} && ip link set {b_dev} up"
    ));
}

/// An Ethernet/IPv4/UDP frame with valid checksums.
pub fn udp_frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    let builder = etherparse::PacketBuilder::ethernet2(src_mac, dst_mac)
        .ipv4(src, dst, 64)
        .udp(sport, dport);
    let mut out = Vec::with_capacity(builder.size(payload.len()));
    builder.write(&mut out, payload).expect("build frame");
    out
}

/// Parses an Ethernet/IPv4/UDP frame into (src, dst, sport, dport, payload).
pub fn parse_udp(frame: &[u8]) -> Option<([u8; 4], [u8; 4], u16, u16, Vec<u8>)> {
    let p = etherparse::SlicedPacket::from_ethernet(frame).ok()?;
    let Some(etherparse::NetSlice::Ipv4(ip)) = p.net else {
        return None;
    };
    let Some(etherparse::TransportSlice::Udp(udp)) = p.transport else {
        return None;
    };
    Some((
        ip.header().source(),
        ip.header().destination(),
        udp.source_port(),
        udp.destination_port(),
        udp.payload().to_vec(),
    ))
}

/// Parks on epoll (mio) until `fd` is readable or `timeout` passes, as an idle worker
/// does; true when it became readable.
pub fn wait_readable(fd: std::os::fd::RawFd, timeout: std::time::Duration) -> bool {
    use mio::unix::SourceFd;
    use mio::{Events, Interest, Poll, Token};
    let mut poll = Poll::new().expect("epoll");
    poll.registry()
        .register(&mut SourceFd(&fd), Token(0), Interest::READABLE)
        .expect("register");
    let mut events = Events::with_capacity(4);
    poll.poll(&mut events, Some(timeout)).expect("poll");
    let ready = events
        .iter()
        .any(|e| e.token() == Token(0) && e.is_readable());
    let _ = poll.registry().deregister(&mut SourceFd(&fd));
    ready
}
