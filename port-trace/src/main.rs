//! The `port-trace` command: parses the command line, sets up logging and runs a subcommand
//! (the crate's modules are in lib.rs).

use std::process::ExitCode;

use clap::Parser as _;
use port_trace::{cli, cmd, sys::stdio};
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
        // A log line that cannot be written is dropped: reporting that on stderr as well
        // would panic when stderr is a broken pipe.
        .log_internal_errors(false)
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
            stdio::eprint(format_args!(
                "port-trace: cannot start the runtime: {err}\n"
            ));
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Some(cli::Command::Check) => {
            stdio::die_on_broken_pipe();
            cmd::check::run()
        }
        Some(cli::Command::Explain { port, proto, json }) => {
            stdio::die_on_broken_pipe();
            cmd::explain::run(port, proto.map(Into::into), json);
            Ok(())
        }
        Some(cli::Command::Analyze(args)) => {
            stdio::die_on_broken_pipe();
            cmd::analyze::run(&args)
        }
        None => runtime.block_on(cmd::trace::run(cli)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            stdio::eprint(format_args!("port-trace: {err:#}\n"));
            ExitCode::from(err.exit_code())
        }
    }
}
