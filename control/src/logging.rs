//! One logging set-up for every process of the binary (agent, controller, speaker,
//! demos): to stderr, so stdout stays for what a command answers (`status`,
//! `check-config`), and without colour escapes unless stderr is a terminal, so
//! journald, `kubectl logs` and files get plain text.

use std::io::IsTerminal as _;

/// Installs the global subscriber: `RUST_LOG` or `info`, text or JSON lines. A
/// second call (a subscriber already installed, as in tests) is a no-op.
pub fn init(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    // A subscriber already set (tests, embedding) keeps its place.
    let _ = if json {
        fmt.json().try_init()
    } else {
        fmt.try_init()
    };
}
