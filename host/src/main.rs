//! motion-host: a WebAssembly-plugin model host. `serve` runs the server; `healthcheck` probes
//! one (for container health checks with no curl in the image).

mod boot;
mod cli;
mod config;
mod guest_check;
mod guest_dir;
mod guest_new;
mod healthcheck;
mod http;
mod logging;
mod metrics;
mod platform;
mod serve;
mod service;
mod watch;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};

fn main() -> ExitCode {
    if std::env::args_os().nth(1).is_some_and(|command| command == "serve") {
        motion_model::spin_briefly_between_operators();
    }
    match try_main() {
        Ok(code) => code,
        Err(e) => {
            // Logging may be up (serve) or not (argument errors); say it once, where it is read.
            if tracing::dispatcher::has_been_set() {
                tracing::error!(error = %format!("{e:#}"), "motion-host stopped");
            } else {
                eprintln!("motion-host: error: {e:#}");
            }
            ExitCode::FAILURE
        }
    }
}

fn try_main() -> anyhow::Result<ExitCode> {
    let matches = cli::Cli::command().get_matches();
    let cli = cli::Cli::from_arg_matches(&matches)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match cli.command {
        cli::Command::Serve(args) => {
            let sub = matches.subcommand_matches("serve").cloned().unwrap_or_default();
            logging::init(args.log_format);
            runtime.block_on(serve::run(*args, &sub))?;
            Ok(ExitCode::SUCCESS)
        }
        cli::Command::Healthcheck(args) => Ok(runtime.block_on(healthcheck::run(&args))),
        cli::Command::Guest(cli::GuestCommand::Check(args)) => runtime.block_on(guest_check::run(&args)),
        cli::Command::Guest(cli::GuestCommand::New(args)) => {
            guest_new::run(&args).map(|()| ExitCode::SUCCESS)
        }
    }
}
