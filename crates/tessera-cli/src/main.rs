//! The `tessera` command line.

mod args;
mod bench;
mod generate;
mod serve;
mod settings;
mod worker;

use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "tessera", version, about = "Tessera: an LLM inference engine for Llama-family models")]
struct Cli {
    /// A TOML or YAML config file (layered over the defaults, under environment and flags).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the OpenAI-compatible API.
    Serve(Box<serve::ServeArgs>),
    /// Generate a completion of one prompt and print it as it is produced.
    Generate(Box<generate::GenerateArgs>),
    /// Benchmarks: load a server (`serve`), or time the in-process engine (`latency`).
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Join a multi-node deployment as one of its worker nodes.
    Worker(worker::WorkerArgs),
    /// Inspect the configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the effective configuration (defaults < file < environment), secrets redacted.
    Show,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve::run(settings::load(cli.config.as_deref(), &args.overrides())?),
        Command::Generate(args) => {
            let config = settings::load(cli.config.as_deref(), &args.overrides())?;
            generate::run(*args, config)
        }
        Command::Worker(args) => worker::run(args, cli.config.as_deref()),
        Command::Bench(command) => bench::run(command, cli.config.as_deref()),
        Command::Config(ConfigCommand::Show) => {
            print!("{}", settings::show(&settings::load(cli.config.as_deref(), &[])?)?);
            Ok(())
        }
    }
}
