//! The `hybridway` binary: one executable, one subcommand per role.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use hybridway_control::agent::config::DEFAULT_AGENT_SOCKET;
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

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the version and exit.
    Version,
    /// Run the node agent (dataplane workers, control socket, metrics).
    Agent {
        /// YAML configuration (see deploy/agent-example.yaml). In Kubernetes mode
        /// only the local knobs (uplink, vxlan, dataplane, metrics, control, snat;
        /// see deploy/agent-kubernetes.yaml): the cluster's facts come from Nodes.
        #[arg(long, short)]
        config: PathBuf,
        /// Kubernetes mode with this kubeconfig.
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
        /// Kubernetes mode with the in-cluster service account (or $KUBECONFIG).
        #[arg(long)]
        kubernetes: bool,
        /// This node's Node name in Kubernetes mode; default: $NODE_NAME.
        #[arg(long)]
        node_name: Option<String>,
    },
    /// Check a configuration file and exit (non-zero with the reason when invalid):
    /// the agent's file (with its `bgp` section, which `bgp-speaker` reads too), its
    /// Kubernetes-mode local file or the controller's parameters (bare `config.yaml`
    /// or the whole ConfigMap manifest), detected from the content unless `--kind`
    /// says; prints the kind it checked.
    CheckConfig {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long, value_enum)]
        kind: Option<ConfigKind>,
    },
    /// Run the cluster controller: hybrid IPAM and BGPClusterConfig validation,
    /// leader-elected over a Lease in kube-system.
    Controller {
        #[command(flatten)]
        args: hybridway_control::k8s::controller::ControllerArgs,
        /// Log as JSON lines instead of text.
        #[arg(long)]
        log_json: bool,
    },
    /// Write the CustomResourceDefinitions generated from the Rust types.
    Crdgen {
        /// Directory to write into.
        #[arg(long, default_value = "deploy/crds")]
        out: PathBuf,
    },
    /// Attach or detach pods on a running agent.
    Pod {
        #[command(subcommand)]
        action: PodAction,
        /// The agent's control socket.
        #[arg(long, global = true, default_value = DEFAULT_AGENT_SOCKET)]
        socket: PathBuf,
    },
    /// Print a running agent's status as JSON.
    Status {
        #[arg(long, default_value = DEFAULT_AGENT_SOCKET)]
        socket: PathBuf,
    },
    /// Ask a running agent to re-read its configuration (same as SIGHUP).
    Reload {
        #[arg(long, default_value = DEFAULT_AGENT_SOCKET)]
        socket: PathBuf,
    },
    /// Run the BGP speaker of an agent's file alone (no dataplane): its `bgp:`
    /// section names the peers, its nodes are the pool advertised.
    BgpSpeaker(hybridway_control::bgp::cli::BgpSpeakerArgs),
}

/// Which configuration `check-config` is given.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum ConfigKind {
    /// The agent's own file (deploy/agent-example.yaml).
    Agent,
    /// The agent's local file in Kubernetes mode (deploy/agent-kubernetes.yaml).
    Local,
    /// The controller's parameters (deploy/controller-config.yaml).
    Controller,
}

impl ConfigKind {
    /// From the top-level keys: the controller's parameters name `hybridPodCIDR`
    /// (also inside a ConfigMap), the agent's own file carries the node's facts
    /// (`node`; a `bgp` section belongs to it too), and what is left is the
    /// Kubernetes-mode local file, whose facts come from the cluster.
    fn detect(text: &str) -> Self {
        let top = serde_yaml::from_str::<serde_yaml::Mapping>(text).unwrap_or_default();
        if text.contains("hybridPodCIDR") {
            ConfigKind::Controller
        } else if top.contains_key("node") || top.contains_key("bgp") || top.is_empty() {
            ConfigKind::Agent
        } else {
            ConfigKind::Local
        }
    }

    fn describe(self) -> &'static str {
        match self {
            ConfigKind::Agent => "agent configuration",
            ConfigKind::Local => "agent local configuration (Kubernetes mode)",
            ConfigKind::Controller => "controller parameters",
        }
    }
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
        Command::Agent {
            config,
            kubeconfig,
            kubernetes,
            node_name,
        } if kubernetes || kubeconfig.is_some() => {
            hybridway_control::logging::init(false);
            let node_name = match node_name.or_else(|| std::env::var("NODE_NAME").ok()) {
                Some(n) if !n.is_empty() => n,
                _ => anyhow::bail!("Kubernetes mode needs the node name: --node-name or NODE_NAME"),
            };
            let mode = hybridway_control::agent::kubernetes::KubernetesMode {
                config,
                kubeconfig,
                node_name,
            };
            hybridway_control::agent::kubernetes::run(&mode)
                .with_context(|| format!("agent of node {} (Kubernetes mode)", mode.node_name))?;
        }
        Command::Agent { config, .. } => {
            hybridway_control::logging::init(false);
            let agent = Agent::start(&config)
                .with_context(|| format!("starting the agent from {}", config.display()))?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let speaker =
                    hybridway_control::agent::bgp::FileSpeaker::spawn(agent.config(), &config);
                control::run(agent, None, None, None, Some(speaker)).await
            })?;
        }
        Command::CheckConfig { config, kind } => {
            let kind = match kind {
                Some(k) => k,
                None => ConfigKind::detect(
                    &std::fs::read_to_string(&config)
                        .with_context(|| format!("reading {}", config.display()))?,
                ),
            };
            let what = kind.describe();
            match kind {
                ConfigKind::Agent => {
                    hybridway_control::agent::AgentConfig::load(&config).context(what)?;
                }
                ConfigKind::Local => {
                    hybridway_control::agent::config::LocalConfig::load(&config).context(what)?;
                }
                ConfigKind::Controller => {
                    hybridway_control::k8s::params::ControllerParams::load(&config)
                        .context(what)?;
                }
            }
            println!("{}: ok ({what})", config.display());
        }
        Command::Controller { args, log_json } => {
            hybridway_control::logging::init(log_json);
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            rt.block_on(hybridway_control::k8s::controller::run(&args))?;
        }
        Command::Crdgen { out } => {
            for path in hybridway_control::k8s::crdgen::write(&out)? {
                println!("{}", path.display());
            }
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
        Command::BgpSpeaker(args) => hybridway_control::bgp::cli::run(&args)?,
    }
    Ok(())
}
