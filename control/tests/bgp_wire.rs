//! The speaker process against a scripted peer on a real TCP socket: protocol
//! errors on the wire get the right NOTIFICATION back, and status says so. The peer
//! runs in a thread that has entered the switch namespace.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::time::Duration;

use common::*;
use hybridway_control::bgp::codec::{
    self, AfiSafi, Capability, CodecOptions, GracefulRestart, Message, Open,
};

const T: Duration = Duration::from_secs(30);
const OPTS: CodecOptions = CodecOptions {
    four_octet_as: true,
};

/// Run `f` in a thread inside network namespace `ns`.
fn in_netns<R: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> R + Send + 'static,
) -> std::thread::JoinHandle<R> {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let fd = std::fs::File::open(&path).unwrap();
        nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        f()
    })
}

fn read_msg(s: &mut TcpStream) -> Message {
    let mut header = [0u8; 19];
    s.read_exact(&mut header).unwrap();
    let len = usize::from(u16::from_be_bytes([header[16], header[17]]));
    let mut msg = header.to_vec();
    msg.resize(len, 0);
    s.read_exact(&mut msg[19..]).unwrap();
    codec::decode(&msg, OPTS).unwrap()
}

fn write_msg(s: &mut TcpStream, m: &Message) {
    s.write_all(&codec::encode_to_vec(m, OPTS).unwrap())
        .unwrap();
}

/// Accept the speaker, exchange OPEN/KEEPALIVE with `hold` seconds, read the
/// initial table up to End-of-RIB. Returns the stream and the speaker's OPEN.
fn establish(listener: &TcpListener, hold: u16) -> (TcpStream, Open, usize) {
    let (mut s, _) = listener.accept().unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let Message::Open(theirs) = read_msg(&mut s) else {
        panic!("expected OPEN")
    };
    let ours = Open::new(
        65001,
        hold,
        Ipv4Addr::new(198, 18, 0, 1),
        vec![
            Capability::Multiprotocol(AfiSafi::IPV4_UNICAST),
            Capability::GracefulRestart(GracefulRestart {
                restarting: false,
                restart_time: 120,
                families: vec![],
            }),
        ],
    );
    write_msg(&mut s, &Message::Open(ours));
    assert_eq!(read_msg(&mut s), Message::Keepalive);
    write_msg(&mut s, &Message::Keepalive);
    let mut prefixes = 0;
    loop {
        match read_msg(&mut s) {
            Message::Update(u) if u.end_of_rib_family() == Some(AfiSafi::IPV4_UNICAST) => break,
            Message::Update(u) => prefixes += u.announced().count(),
            Message::Keepalive => {}
            m => panic!("unexpected {m:?}"),
        }
    }
    (s, theirs, prefixes)
}

fn scripted_peer<R: Send + 'static>(
    lab: &Lab,
    f: impl FnOnce(TcpListener) -> R + Send + 'static,
) -> std::thread::JoinHandle<R> {
    let (tx, rx) = std::sync::mpsc::channel();
    let h = in_netns(&lab.switch, move || {
        let l = TcpListener::bind((SWITCH_ADDR, 179)).unwrap();
        tx.send(()).unwrap();
        f(l)
    });
    rx.recv_timeout(T).unwrap();
    h
}

/// RFC 7606: a malformed attribute withdraws the UPDATE's routes and keeps the
/// session; only an UPDATE whose NLRI cannot be parsed still resets it.
#[test]
fn malformed_update_is_treated_as_withdraw_and_unparseable_nlri_resets() {
    let mut lab = Lab::new("wireupd", 1);
    let peer = scripted_peer(&lab, |l| {
        let (mut s, theirs, prefixes) = establish(&l, 90);
        // NLRI without NEXT_HOP (missing well-known attribute, 3/3): withdrawn.
        let bad_attrs = hex(
            "ffffffffffffffffffffffffffffffff 0028 02 0000 000d 40 01 01 00 40 02 06 02 01 0000fdf2 18 c61301",
        );
        s.write_all(&bad_attrs).unwrap();
        // A /33 in the IPv4 NLRI (3/10): the message cannot be parsed, reset.
        let bad_nlri = hex("ffffffffffffffffffffffffffffffff 001c 02 0000 0000 21 c6130100");
        s.write_all(&bad_nlri).unwrap();
        let reply = loop {
            match read_msg(&mut s) {
                Message::Keepalive => continue,
                m => break m,
            }
        };
        // The listener goes back with the result: the speaker's reconnect must find
        // it, or "connection refused" replaces the error status is checked for.
        (theirs, prefixes, reply, l)
    });
    let sp = start_speaker(
        &mut lab,
        SpeakerSpec::new(0, vec![route("node-b", "198.18.0.20", "198.19.1.0/24")]),
    );
    let (theirs, prefixes, reply, _listening) = peer.join().unwrap();
    assert_eq!(theirs.asn(), 65010);
    assert_eq!(prefixes, 2);
    let Message::Notification(n) = reply else {
        panic!("expected NOTIFICATION, got {reply:?}")
    };
    // The reply is to the second UPDATE: the first did not end the session.
    assert_eq!((n.code, n.subcode, n.data), (3, 10, vec![]));
    wait_for(
        T,
        "status counts the withdraw and reports the reset",
        || {
            sp.status().filter(|p| {
                p["updatesTreatedAsWithdraw"] == 1
                    && p["lastError"]
                        .as_str()
                        .is_some_and(|e| e.contains("UPDATE message error (3/10)"))
            })
        },
    );
}

#[test]
fn bad_marker_gets_header_error_notification() {
    let mut lab = Lab::new("wirehdr", 1);
    let peer = scripted_peer(&lab, |l| {
        let (mut s, _, _) = establish(&l, 90);
        s.write_all(&hex("ffffffffffffffffffffffffffff0000 0013 04"))
            .unwrap();
        read_msg(&mut s)
    });
    let _sp = start_speaker(&mut lab, SpeakerSpec::new(0, vec![]));
    let reply = peer.join().unwrap();
    assert!(
        matches!(&reply, Message::Notification(n) if (n.code, n.subcode) == (1, 1)),
        "{reply:?}"
    );
}

#[test]
fn silent_peer_gets_hold_timer_expired() {
    let mut lab = Lab::new("wirehold", 1);
    let peer = scripted_peer(&lab, |l| {
        // Hold time 3 s: the speaker expects a message every 3 s, and we send none.
        let (mut s, _, _) = establish(&l, 3);
        let start = std::time::Instant::now();
        loop {
            match read_msg(&mut s) {
                Message::Keepalive => continue,
                // Keep listening while status is checked (see above).
                m => return (m, start.elapsed(), l),
            }
        }
    });
    let sp = start_speaker(&mut lab, SpeakerSpec::new(0, vec![]));
    let (reply, after, _listening) = peer.join().unwrap();
    assert!(
        matches!(&reply, Message::Notification(n) if (n.code, n.subcode) == (4, 0)),
        "{reply:?}"
    );
    assert!(
        after >= Duration::from_secs(2),
        "not before the hold time: {after:?}"
    );
    wait_for(T, "status reports hold timer expiry", || {
        sp.status().filter(|p| {
            p["lastError"]
                .as_str()
                .is_some_and(|e| e.contains("hold timer expired"))
        })
    });
}

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// Both sides connect at once (RFC 4271 §6.8). The scripted peer accepts the
/// speaker's connection (A), opens its own (B), sends its OPEN on B and reports the
/// next message the speaker sends on A and on B.
fn collision(peer_id: Ipv4Addr) -> (Message, Message) {
    let mut lab = Lab::new("wirecoll", 1);
    let peer = scripted_peer(&lab, move |l| {
        let (mut a, _) = l.accept().unwrap();
        a.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        assert!(matches!(read_msg(&mut a), Message::Open(_)));
        let mut b = TcpStream::connect((speaker_addr(0).as_str(), 179)).unwrap();
        b.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        assert!(
            matches!(read_msg(&mut b), Message::Open(_)),
            "speaker sends its OPEN on the second connection too"
        );
        let open = Open::new(
            65001,
            90,
            peer_id,
            vec![Capability::Multiprotocol(AfiSafi::IPV4_UNICAST)],
        );
        write_msg(&mut b, &Message::Open(open.clone()));
        let on_b = read_msg(&mut b);
        let on_a = if is_collision_cease(&on_b) {
            // B lost; A is still waiting for our OPEN, and goes on normally.
            write_msg(&mut a, &Message::Open(open));
            read_msg(&mut a)
        } else {
            read_msg(&mut a)
        };
        (on_a, on_b)
    });
    let _sp = start_speaker(&mut lab, SpeakerSpec::new(0, vec![]));
    peer.join().unwrap()
}

fn is_collision_cease(m: &Message) -> bool {
    matches!(m, Message::Notification(n) if (n.code, n.subcode) == (6, 7))
}

#[test]
fn collision_lower_peer_id_keeps_our_connection() {
    // Our BGP Identifier (198.18.0.10) is higher: the connection we opened wins.
    let (on_a, on_b) = collision(Ipv4Addr::new(198, 18, 0, 1));
    assert!(
        is_collision_cease(&on_b),
        "B closed with Cease/collision: {on_b:?}"
    );
    assert_eq!(on_a, Message::Keepalive, "A continues to OpenConfirm");
}

#[test]
fn collision_higher_peer_id_keeps_its_connection() {
    let (on_a, on_b) = collision(Ipv4Addr::new(198, 18, 0, 200));
    assert!(
        is_collision_cease(&on_a),
        "A closed with Cease/collision: {on_a:?}"
    );
    assert_eq!(on_b, Message::Keepalive, "B continues to OpenConfirm");
}
