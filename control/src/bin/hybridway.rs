//! The `hybridway` binary: one executable, one subcommand per role.

use clap::{Parser, Subcommand};

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
    /// Run the BGP speaker alone from a YAML file with a `bgp:` section.
    BgpSpeaker(hybridway_control::bgp::cli::BgpSpeakerArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Version => println!("hybridway {}", env!("CARGO_PKG_VERSION")),
        Command::BgpSpeaker(args) => hybridway_control::bgp::cli::run(&args)?,
    }
    Ok(())
}
