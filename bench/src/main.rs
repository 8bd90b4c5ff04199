//! `piko-bench`: run the benchmark (`run`) or the local service alone (`serve`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use piko_bench::run::{self, Mode, Options};
use piko_bench::systems::System;

#[derive(Parser, Debug)]
#[command(
    name = "piko-bench",
    about = "Benchmark Piko against direct, rathole and nginx"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the benchmark (quick mode unless --full or --smoke) and write the results.
    Run(RunArgs),
    /// Run the local service only; prints `ready http=ADDR tcp=ADDR`.
    Serve {
        /// HTTP listen address.
        #[arg(long, default_value = "127.0.0.1:0")]
        http: SocketAddr,
        /// TCP source/sink listen address.
        #[arg(long, default_value = "127.0.0.1:0")]
        tcp: SocketAddr,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LoadGenArg {
    /// oha when installed, else the built-in client.
    Auto,
    /// The built-in hyper client.
    Builtin,
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Five rounds of 10 s and 10,000 idle upstreams.
    #[arg(long, conflicts_with = "smoke")]
    full: bool,
    /// One 1 s round of direct and piko, small GET and 1 MiB download (the test suite's check).
    #[arg(long)]
    smoke: bool,
    /// Results directory.
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
    /// Directory holding piko-server, piko and piko-bench (default: this program's directory).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// HTTP load generator.
    #[arg(long, value_enum, default_value = "auto")]
    loadgen: LoadGenArg,
    /// Rounds per scenario (overrides the mode's).
    #[arg(long)]
    rounds: Option<usize>,
    /// Seconds per measurement (overrides the mode's).
    #[arg(long)]
    secs: Option<f64>,
    /// Only these systems (comma-separated: direct,piko,rathole,nginx; piko-noinspect is piko
    /// with the agent's request inspector off, measured only when named here).
    #[arg(long, value_delimiter = ',')]
    systems: Vec<String>,
    /// Only these scenarios, by id (comma-separated: small_get_keepalive, small_get_new_conn,
    /// download_1m, upload_1m, websocket_echo, tcp_download, tcp_upload); for experiments.
    #[arg(long, value_delimiter = ',')]
    scenarios: Vec<String>,
}

fn parse_system(s: &str) -> Result<System, String> {
    System::ALL
        .into_iter()
        .find(|x| x.name() == s)
        .ok_or_else(|| {
            format!("unknown system {s:?}; use direct, piko, piko-noinspect, rathole or nginx")
        })
}

async fn run_cmd(args: RunArgs) -> anyhow::Result<()> {
    let mode = if args.smoke {
        Mode::Smoke
    } else if args.full {
        Mode::Full
    } else {
        Mode::Quick
    };
    let bin_dir = match args.bin_dir {
        Some(d) => d,
        None => std::env::current_exe()?
            .parent()
            .map(PathBuf::from)
            .unwrap_or_default(),
    };
    let systems = args
        .systems
        .iter()
        .map(|s| parse_system(s))
        .collect::<Result<Vec<_>, _>>()
        .map_err(anyhow::Error::msg)?;
    let out = args.out.clone();
    let report = run::run(Options {
        mode,
        out: args.out,
        bin_dir,
        builtin_loadgen: matches!(args.loadgen, LoadGenArg::Builtin),
        rounds: args.rounds,
        secs: args.secs,
        systems,
        scenarios: args.scenarios,
    })
    .await?;
    println!("\n{}", report.table());
    println!("{}", report.targets_table());
    for f in report.write(&out)? {
        println!("wrote {}", f.display());
    }
    Ok(())
}

/// The first of ctrl-c, SIGTERM or SIGHUP; its name.
async fn terminated() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) else {
        let _ = tokio::signal::ctrl_c().await;
        return "SIGINT";
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        _ = term.recv() => "SIGTERM",
        _ = hup.recv() => "SIGHUP",
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("piko-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            Command::Serve { http, tcp } => {
                let (h, t) = piko_bench::service::start(http, tcp).await?;
                println!("ready http={h} tcp={t}");
                // Serve until the parent stops us.
                terminated().await;
                Ok(())
            }
            Command::Run(args) => {
                // Dropping the run on ctrl-c or SIGTERM drops every child (kill_on_drop).
                tokio::select! {
                    r = run_cmd(args) => r,
                    s = terminated() => Err(anyhow::anyhow!("interrupted by {s}")),
                }
            }
        }
    });
    // Don't wait for lingering tasks (open benchmark connections) on the way out.
    rt.shutdown_timeout(std::time::Duration::from_millis(500));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("piko-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
