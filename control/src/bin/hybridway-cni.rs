//! `hybridway-cni`, the CNI plugin, as a binary of its own. The CNI contract is
//! environment variables and stdin in, one JSON document on stdout, the exit status;
//! argv carries nothing. A separate binary keeps that contract free of the main
//! binary's argument parsing and subcommands (dispatching on argv[0] would break
//! when a runtime or installer renames or symlinks the file), and keeps the
//! executable the runtime runs for every pod small.
//!
//! One log line per invocation (container, command, outcome, time taken) goes to
//! the configuration's `logFile`, or to stderr when there is none; never to stdout,
//! which belongs to the runtime.

use std::io::{Read as _, Write as _};
use std::process::ExitCode;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use hybridway_control::cni::config::MAX_STDIN;
use hybridway_control::cni::plugin;

fn main() -> ExitCode {
    let started = Instant::now();
    let mut stdin = Vec::new();
    let read = std::io::stdin()
        .take(u64::try_from(MAX_STDIN).unwrap_or(u64::MAX) + 1)
        .read_to_end(&mut stdin);
    if let Err(e) = read {
        eprintln!("hybridway-cni: reading stdin: {e}");
    }
    let get = |k: &str| std::env::var(k).ok();
    let (inv, outcome) = plugin::run(&get, &stdin);

    if let Some(out) = &outcome.stdout {
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "{out}");
        let _ = stdout.flush();
    }

    let ms = started.elapsed().as_secs_f64() * 1000.0;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let command = inv.as_ref().map_or("?", |i| i.command.label());
    let container = inv
        .as_ref()
        .and_then(|i| i.container_id.as_deref())
        .unwrap_or("-");
    let ifname = inv
        .as_ref()
        .and_then(|i| i.ifname.as_deref())
        .unwrap_or("-");
    let pod = inv
        .as_ref()
        .and_then(|i| {
            Some(format!(
                "{}/{}",
                i.arg("K8S_POD_NAMESPACE")?,
                i.arg("K8S_POD_NAME")?
            ))
        })
        .unwrap_or_else(|| "-".into());
    let outcome_text = match &outcome.result {
        Ok(summary) => format!("outcome=ok {summary}"),
        Err(e) => format!("outcome=error code={} msg={:?}", e.code.code(), e.msg),
    };
    let line = format!(
        "ts={now:.3} container={container} ifname={ifname} pod={pod} command={command} {outcome_text} ms={ms:.1}\n"
    );
    let logged = outcome
        .conf
        .as_ref()
        .and_then(|c| c.log_file.as_ref())
        .and_then(|path| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .ok()
        })
        // One write(2) of one line with O_APPEND: concurrent plugins never interleave.
        .is_some_and(|mut f| f.write_all(line.as_bytes()).is_ok());
    if !logged {
        eprint!("hybridway-cni: {line}");
    }
    if outcome.result.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
