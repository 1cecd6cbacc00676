//! The `hybridway` binary: one executable, one subcommand per role.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use hybridway_control::agent::control::{self, Request};
use hybridway_control::agent::{Agent, LocalPod};
use hybridway_dataplane::wire::MacAddr;

#[derive(Debug, Parser)]
#[command(
    name = "hybridway",
    version,
    about = "Kubernetes networking for hybrid cloud node pools"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

const DEFAULT_SOCKET: &str = "/run/hybridway/agent.sock";

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the version and exit.
    Version,
    /// Run the node agent (dataplane workers, control socket, metrics).
    Agent {
        /// YAML configuration (see deploy/agent-example.yaml).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Check a configuration file and exit (non-zero with the reason when invalid).
    CheckConfig {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Attach or detach pods on a running agent.
    Pod {
        #[command(subcommand)]
        action: PodAction,
        /// The agent's control socket.
        #[arg(long, global = true, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Print a running agent's status as JSON.
    Status {
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Ask a running agent to re-read its configuration (same as SIGHUP).
    Reload {
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Two nodes with two pods each in network namespaces: overlay, underlay, SNAT.
    Demo(hybridway_control::demo::DemoArgs),
    /// End-to-end pod-to-pod benchmark: hybridway against the kernel's paths.
    BenchE2e(hybridway_control::demo::bench::BenchArgs),
    /// Run the BGP speaker alone from a YAML file with a `bgp:` section.
    BgpSpeaker(hybridway_control::bgp::cli::BgpSpeakerArgs),
}

#[derive(Debug, Subcommand)]
enum PodAction {
    /// Attach a pod whose veth's host side is `--port`.
    Add {
        #[arg(long)]
        name: String,
        #[arg(long)]
        ip: Ipv4Addr,
        #[arg(long)]
        mac: MacAddr,
        /// Host-side interface of the pod's veth.
        #[arg(long)]
        port: String,
        /// The pod's network namespace (a name under /run/netns, or a path). Needed on
        /// the AF_XDP backend, where the agent makes the pod's end of the veth compute
        /// its own checksums (and says so when it had to).
        #[arg(long)]
        netns: Option<String>,
    },
    /// Detach a pod.
    Remove {
        #[arg(long)]
        name: String,
    },
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn print_response(resp: &control::Response) -> anyhow::Result<()> {
    for note in &resp.notes {
        eprintln!("note: {note}");
    }
    match &resp.status {
        Some(s) => println!("{}", serde_json::to_string_pretty(s)?),
        None => println!("ok"),
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Version => println!("hybridway {}", env!("CARGO_PKG_VERSION")),
        Command::Agent { config } => {
            init_logging();
            let agent = Agent::start(&config)
                .with_context(|| format!("starting the agent from {}", config.display()))?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(control::run(agent))?;
        }
        Command::CheckConfig { config } => {
            hybridway_control::agent::AgentConfig::load(&config)?;
            println!("{}: ok", config.display());
        }
        Command::Pod { action, socket } => {
            let req = match action {
                PodAction::Add {
                    name,
                    ip,
                    mac,
                    port,
                    netns,
                } => Request::PodAdd {
                    pod: LocalPod {
                        name,
                        ip,
                        mac,
                        interface: port,
                        netns,
                    },
                },
                PodAction::Remove { name } => Request::PodRemove { name },
            };
            print_response(&control::call(&socket, &req)?)?;
        }
        Command::Status { socket } => print_response(&control::call(&socket, &Request::Status)?)?,
        Command::Reload { socket } => print_response(&control::call(&socket, &Request::Reload)?)?,
        Command::Demo(args) => {
            init_logging();
            hybridway_control::demo::run(&args)?;
        }
        Command::BenchE2e(args) => {
            init_logging();
            hybridway_control::demo::bench::run(&args)?;
        }
        Command::BgpSpeaker(args) => hybridway_control::bgp::cli::run(&args)?,
    }
    Ok(())
}
