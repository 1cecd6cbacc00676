//! What the demos and benchmarks share: PASS/FAIL lines with a summary, Ctrl-C
//! turned into an orderly stop between steps, the check for the tools a demo runs,
//! and the machine's load printed beside a benchmark's figures.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Results of the demo's checks.
#[derive(Debug, Default)]
pub struct Report {
    pub passed: Vec<String>,
    pub failed: Vec<String>,
}

impl Report {
    pub fn check(&mut self, what: &str, ok: bool, detail: &str) {
        let line = if detail.is_empty() {
            what.to_string()
        } else {
            format!("{what}: {detail}")
        };
        println!("  [{}] {line}", if ok { "PASS" } else { "FAIL" });
        if ok {
            self.passed.push(line)
        } else {
            self.failed.push(line)
        }
    }

    /// Prints the summary; fails (a non-zero exit) when any check failed.
    pub fn summary(&self) -> anyhow::Result<()> {
        println!(
            "\n=== summary: {} passed, {} failed ===",
            self.passed.len(),
            self.failed.len()
        );
        for f in &self.failed {
            println!("  FAILED: {f}");
        }
        if !self.failed.is_empty() {
            anyhow::bail!("{} demo checks failed", self.failed.len());
        }
        Ok(())
    }
}

pub fn interrupted(flag: &AtomicBool) -> anyhow::Result<()> {
    if flag.load(Ordering::SeqCst) {
        anyhow::bail!("interrupted: cleaning up");
    }
    Ok(())
}

/// Turns SIGINT/SIGTERM into a flag the steps check (children in our process group
/// get the signal too and end their step early).
pub fn watch_signals() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let f = flag.clone();
    let _ = std::thread::Builder::new()
        .name("demo-signals".into())
        .spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                use tokio::signal::unix::{SignalKind, signal};
                let (Ok(mut int), Ok(mut term)) = (
                    signal(SignalKind::interrupt()),
                    signal(SignalKind::terminate()),
                ) else {
                    return;
                };
                tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
                eprintln!("\ninterrupted: finishing the current step, then cleaning up");
                f.store(true, Ordering::SeqCst);
            });
        });
    flag
}

pub fn need(tool: &str) -> anyhow::Result<()> {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    if !found {
        anyhow::bail!(
            "`{tool}` is missing: run scripts/demo.sh (it installs the prerequisites) or apt-get install it"
        );
    }
    Ok(())
}

/// The load averages (1, 5, 15 min): the machine is shared, so a benchmark prints
/// them beside its figures.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split(' ')
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}
