//! Thin entry point: parse the command line, set up logging, dispatch, map errors to exit codes.

use clap::Parser;
use lb_agent::cli::{self, Cli, Cmd, Failure};

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Run { config } => run(&config),
        Cmd::CheckConfig { config, cache } => cli::check_config(&config, cache),
        Cmd::Doctor {
            config,
            bird_conf,
            json,
        } => cli::doctor(&config, &bird_conf, json),
        Cmd::Render {
            desired,
            config,
            skip_host_check,
        } => cli::render(&desired, config.as_deref(), skip_host_check),
        Cmd::Reset { config, if_failed } => cli::reset(&config, if_failed),
        Cmd::Handover { config } => cli::handover(&config),
        Cmd::Publish {
            to,
            file,
            dry_run,
            etcd,
        } => cli::etcd::publish(&to, &file, dry_run, &etcd),
        Cmd::Export { from, etcd } => cli::etcd::export(&from, &etcd),
        Cmd::Client(c) => cli::client::run(c),
    };
    if let Err(f) = result {
        eprintln!("lb-agent: {}", f.message);
        std::process::exit(f.code);
    }
}

fn run(config: &std::path::Path) -> Result<(), Failure> {
    lb_agent::telemetry::init("info");
    let cfg = cli::load_config(config)?;
    cli::startup_checks(&cfg);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("lb-agent")
        .build()
        .map_err(|e| Failure::runtime(format!("starting the runtime: {e}")))?;
    rt.block_on(lb_agent::daemon::run(cfg, config))
        .map_err(|e| Failure::runtime(format!("{e:#}")))
}
