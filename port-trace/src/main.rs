//! port-trace: traces every ephemeral port the kernel hands out and how long it is held.
//!
//! The daemon is a pipeline; each stage is a module:
//! probes (load/attach) -> events (decode) -> tracker (per-socket state, lifetimes; with
//! time_wait watching TIME_WAIT sockets through sock_diag) -> stats (histograms, totals;
//! occupancy per namespace and destination; warnings and forecasts) -> sinks (summary, event
//! lines, report, HdrHistogram logs, Prometheus metrics).

mod check;
mod cli;
mod comm;
mod duration;
mod error;
mod events;
mod exhaustion;
mod explain;
mod filter;
mod netns;
mod occupancy;
mod probes;
mod registry;
mod sinks;
mod snapshot;
mod sock_diag;
mod stats;
mod time_wait;
mod trace;
mod tracker;
mod warnings;

use std::process::ExitCode;

use clap::Parser as _;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    // Usage errors exit 2 here, with clap's message.
    let cli = cli::Cli::parse();
    let level = match cli.verbose {
        0 => "warn",
        1 => "debug",
        _ => "trace",
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            EnvFilter::try_from_env("PORT_TRACE_LOG").unwrap_or_else(|_| EnvFilter::new(level)),
        )
        .init();

    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("port-trace: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Some(cli::Command::Check) => check::run(),
        Some(cli::Command::Explain { port, proto, json }) => {
            let explanation = explain::explain(port, proto.map(Into::into));
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&explanation).unwrap_or_default()
                );
            } else {
                print!("{}", explain::render(&explanation));
            }
            Ok(())
        }
        None => runtime.block_on(trace::run(cli)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("port-trace: {err:#}");
            ExitCode::from(err.exit_code())
        }
    }
}
