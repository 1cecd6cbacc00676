//! The lab's plumbing against the kernel: namespaces and veths appear and go away
//! with their guards, failed commands say what failed, daemons stop on drop. Needs
//! root (CI runs as root); never skips.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;
use std::time::Duration;

use hybridway_lab::process::Daemon;
use hybridway_lab::{LabError, Netns, poll, require_root, veth, veth_pair};

fn namespaces() -> String {
    String::from_utf8_lossy(
        &Command::new("ip")
            .args(["netns", "list"])
            .output()
            .unwrap()
            .stdout,
    )
    .into_owned()
}

#[test]
fn namespaces_and_veths_live_as_long_as_their_guards() {
    require_root();
    let (name_a, name_b);
    {
        let a = Netns::new("plumb");
        let b = Netns::unique("plumb").unwrap();
        name_a = a.name.clone();
        name_b = b.name.clone();
        assert_ne!(name_a, name_b, "unique names");
        assert!(namespaces().contains(&name_a) && namespaces().contains(&name_b));
        veth_pair(&a, "va", "198.18.0.1/30", &b, "vb", "198.18.0.2/30");
        a.sh("ping -c 1 -W 2 198.18.0.2");
        // The MAC as sysfs spells it, parsed.
        let text = b.sh("cat /sys/class/net/vb/address");
        let mac = b.mac("vb");
        let spelled: Vec<String> = mac.iter().map(|x| format!("{x:02x}")).collect();
        assert_eq!(spelled.join(":"), text.trim());
        // A second pair with names already taken fails and says why.
        let err = veth(&a, "va", &b, "vb").unwrap_err();
        assert!(matches!(err, LabError::Command { .. }), "{err}");
        assert!(err.to_string().contains("ip link add va"), "{err}");
        // A failing command in a namespace names the namespace and the command.
        let err = a.run("exit 3").unwrap_err();
        assert!(err.to_string().contains(&name_a), "{err}");
        assert!(!a.try_sh("exit 3").status.success());
    }
    let left = namespaces();
    assert!(
        !left.contains(&name_a) && !left.contains(&name_b),
        "namespaces left behind: {left}"
    );
}

#[test]
fn create_replaces_a_namespace_left_behind() {
    require_root();
    let name = format!("hwplumb-stale-{}", std::process::id());
    let stale = Netns::create(&name).unwrap();
    stale.sh("ip link add old0 type veth peer name old1");
    std::mem::forget(stale);
    let fresh = Netns::create(&name).unwrap();
    assert!(fresh.try_sh("ip link show old0").status.code() != Some(0));
}

#[test]
fn a_daemon_stops_when_its_guard_drops() {
    require_root();
    let ns = Netns::new("plumbd");
    let log = std::env::temp_dir().join(format!("hwplumb-{}.log", std::process::id()));
    let mut cmd = ns.command("sh");
    cmd.args(["-c", "echo started; exec sleep 600"]);
    let daemon = Daemon::spawn("sleeper", cmd, &log).unwrap();
    let pid = daemon.pid().unwrap();
    let proc_dir = format!("/proc/{pid}");
    assert!(std::path::Path::new(&proc_dir).exists());
    poll(Duration::from_secs(10), || {
        daemon.log_tail(1).contains("started").then_some(())
    })
    .expect("the daemon's output in its log");
    drop(daemon);
    assert!(
        !std::path::Path::new(&proc_dir).exists(),
        "pid {pid} still running"
    );
    let _ = std::fs::remove_file(log);
}

#[test]
fn poll_gives_up_after_its_timeout() {
    let mut calls = 0;
    let r: Option<()> = poll(Duration::from_millis(250), || {
        calls += 1;
        None
    });
    assert!(r.is_none());
    assert!(calls >= 2);
}
