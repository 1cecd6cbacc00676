//! Every process logs to stderr, in plain text when stderr is not a terminal: the
//! BGP speaker (which logged to stdout, with colour escapes, before it shared the
//! binary's set-up) is run with both outputs to pipes. Needs no root and sends
//! nothing: a fresh restart marker makes it log at start ("setting the R bit"), then
//! it cannot bind to an address no interface has, and exits on its own.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

#[test]
fn the_speaker_logs_plain_text_to_stderr_when_it_is_a_pipe() {
    let dir = std::env::temp_dir().join(format!("hw-logging-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let marker = dir.join("restart-marker");
    std::fs::write(&marker, "").unwrap();
    let config = dir.join("bgp.yaml");
    std::fs::write(
        &config,
        format!(
            "node: {{name: n1, address: 198.18.0.10}}\nmode: underlay\nuplink: {{interface: eth0}}\n\
             pods: {{block: 198.19.128.0/24, gateway: 198.19.128.1}}\n\
             bgp:\n  localASN: 65010\n  listenAddress: 198.18.255.254\n  \
             restartMarker: {}\n  bgpSpeakers: [{{name: n1, peers: []}}]\n",
            marker.display()
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_hybridway"))
        .args(["bgp-speaker", "--config"])
        .arg(&config)
        .env("RUST_LOG", "info")
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    std::fs::remove_dir_all(dir).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);

    assert!(!out.status.success(), "bound to an unassigned address?");
    assert!(stderr.contains("setting the R bit"), "stderr: {stderr:?}");
    assert!(
        !stderr.contains('\u{1b}'),
        "colour escapes in a pipe: {stderr:?}"
    );
    assert!(stdout.is_empty(), "logs on stdout: {stdout:?}");
}
