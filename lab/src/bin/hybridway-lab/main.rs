//! `hybridway-lab`: the demo and the end-to-end benchmarks. They run the `hybridway`
//! executable as a cluster would (agents, controllers, the CNI plugin as
//! processes), so none of this is compiled into the agent.

mod bench_e2e;
mod bench_proxy_sync;
mod bench_services;
mod bench_snat;
mod cluster;
mod demo;
mod report;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "hybridway-lab",
    version,
    about = "hybridway's demo and end-to-end benchmarks"
)]
struct Cli {
    /// The `hybridway` executable to run; default: the one beside this program
    /// (cargo builds both into the same directory).
    #[arg(long, global = true)]
    hybridway: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// A hybrid cluster on one machine (scripts/demo.sh): a local control plane,
    /// deploy/, 3 controller replicas, a flannel cloud node, two hybrid pools of two
    /// nodes, pods through the CNI plugin, BGP to an FRR switch, a leader failover.
    Cluster(cluster::ClusterArgs),
    /// Two nodes with two pods each in network namespaces: overlay, underlay, SNAT.
    Demo(demo::DemoArgs),
    /// End-to-end pod-to-pod benchmark: hybridway against the kernel's paths.
    BenchE2e(bench_e2e::BenchArgs),
    /// SNAT under load (connections held, short connections) beside the kernel's
    /// MASQUERADE.
    BenchSnat(bench_snat::BenchSnatArgs),
    /// pod -> ClusterIP throughput and new connections per second: hybridway's
    /// dataplane (TUN, AF_XDP) beside the real kube-proxy, on a real API server.
    BenchServices(bench_services::BenchServicesArgs),
    /// The real kube-proxy's iptables resync at N Services x M endpoints (the
    /// reference for hybridway's Service table build).
    BenchProxySync(bench_proxy_sync::BenchProxySyncArgs),
}

/// The `hybridway` executable: `--hybridway`, else beside this one.
fn hybridway_exe(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let exe = match given {
        Some(p) => p,
        None => std::env::current_exe()?
            .parent()
            .map(|d| d.join("hybridway"))
            .context("the directory of hybridway-lab")?,
    };
    if !exe.is_file() {
        anyhow::bail!(
            "{} is missing: build it (cargo build --bin hybridway) or pass --hybridway",
            exe.display()
        );
    }
    Ok(exe)
}

fn main() -> ExitCode {
    // A failed demo already printed its PASS/FAIL lines and summary: one line says
    // why it stopped (no backtrace, whatever RUST_BACKTRACE says).
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let exe = hybridway_exe(cli.hybridway)?;
    match cli.command {
        Command::Cluster(args) => cluster::run(&args, &exe),
        Command::Demo(args) => demo::run(&args, &exe),
        Command::BenchE2e(args) => bench_e2e::run(&args, &exe),
        Command::BenchSnat(args) => bench_snat::run(&args, &exe),
        Command::BenchServices(args) => bench_services::run(&args, &exe),
        Command::BenchProxySync(args) => bench_proxy_sync::run(&args, &exe),
    }
}
