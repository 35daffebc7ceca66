//! The `port-trace` command: parses the command line, sets up logging and runs a subcommand
//! (the crate's modules are in lib.rs).

use std::process::ExitCode;

use clap::Parser as _;
use port_trace::{cli, cmd};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    // Usage errors exit 2 here, with clap's message.
    let cli = cli::Cli::parse();
    if let Err(message) = cli.validate() {
        <cli::Cli as clap::CommandFactory>::command()
            .error(clap::error::ErrorKind::ArgumentConflict, message)
            .exit();
    }
    let level = match cli.verbose {
        0 => "warn",
        1 => "debug",
        _ => "trace",
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colour codes only where a terminal reads them, not into a log file.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
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
        Some(cli::Command::Check) => cmd::check::run(),
        Some(cli::Command::Explain { port, proto, json }) => {
            cmd::explain::run(port, proto.map(Into::into), json);
            Ok(())
        }
        None => runtime.block_on(cmd::trace::run(cli)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("port-trace: {err:#}");
            ExitCode::from(err.exit_code())
        }
    }
}
