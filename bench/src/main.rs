//! `ht-bench`: the load generator for high-templar, on loopback, bounded in count and time.
//!
//! It starts the server under test itself (our release binary next to this one, or high-templar
//! 3.1 from a virtualenv with `--compare`), plus a fake backend answering `bootstrap/` at once,
//! and drives one scenario. See `BENCHMARKS.md` for the commands and the figures.
//!
//! The generator shares the machine with the server, so it stays cheap: one single-threaded
//! runtime for all clients, frames parsed in place (a byte search for `ts` and `seq`), and its
//! own CPU share printed beside the server's. Exits non-zero when a run lost or duplicated a
//! message or failed a connection or subscribe.

mod backend;
mod publish;
mod report;
mod scenarios;
mod target;
mod ws;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use publish::{PublisherThread, Route};
use report::Outcome;
use scenarios::Ctx;
use target::{Kind, Target};

#[derive(Parser)]
#[command(
    name = "ht-bench",
    about = "Load generator for high-templar (loopback only)"
)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
    /// Runs per server (a fresh server each run); the summary shows medians.
    #[arg(long, global = true, default_value_t = 1)]
    runs: usize,
    /// Also run high-templar 3.1 (Python) from --ht31-venv and print ratios.
    #[arg(long, global = true)]
    compare: bool,
    /// Measure an already running server at this websocket address (host:port, path /ws/)
    /// instead of starting one; point its API URL at --backend-listen.
    #[arg(long, global = true, value_name = "ADDR")]
    target_addr: Option<SocketAddr>,
    /// With --target-addr: where POST /trigger/ goes (default: the websocket address); the
    /// server must accept the token "ht-bench-token".
    #[arg(long, global = true, value_name = "ADDR")]
    trigger_addr: Option<SocketAddr>,
    /// With --target-addr: the server's pid, for CPU and RSS figures.
    #[arg(long, global = true)]
    target_pid: Option<u32>,
    /// Where the fake backend listens (its API URL is http://<addr>/api/).
    #[arg(long, global = true, default_value = "127.0.0.1:0")]
    backend_listen: SocketAddr,
    /// The virtualenv holding high-templar 3.1 (and hypercorn, aio-pika).
    #[arg(long, global = true, default_value = "/tmp/ht31")]
    ht31_venv: PathBuf,
    /// RabbitMQ for high-templar 3.1's triggers.
    #[arg(long, global = true, default_value = "amqp://guest:guest@127.0.0.1/")]
    amqp_url: String,
    /// Source addresses 127.0.0.1..=127.0.0.N, round robin. With one address, connect() spends
    /// ever longer searching the ephemeral ports as they fill: at 19,000 connections the
    /// generator measured itself (2,900/s, its CPU at 93 %); with 8, 12,700/s.
    #[arg(long, global = true, default_value_t = 8)]
    source_ips: u8,
    /// Rooms the fake backend allows each connection besides the benchmark's own (a large
    /// allowed list: 5,000 make a ~220 KB bootstrap answer).
    #[arg(long, global = true, default_value_t = 0)]
    allowed_rooms: usize,
    /// With --allowed-rooms: every connection its own list (users with lists of their own)
    /// instead of one list shared by all (users of one role).
    #[arg(long, global = true)]
    distinct_lists: bool,
    /// Connections being opened at once.
    #[arg(long, global = true, default_value_t = 200)]
    concurrency: usize,
    /// Longest wait for deliveries, in seconds.
    #[arg(long, global = true, default_value_t = 60)]
    timeout: u64,
}

#[derive(Subcommand, Clone, Copy)]
enum Scenario {
    /// N clients connect (bootstrap included) and stay idle: rate, latency, RSS per connection.
    Connect {
        #[arg(long, default_value_t = 1000)]
        clients: usize,
    },
    /// N subscribers of one room; a burst of M triggers.
    Fanout {
        #[arg(long, default_value_t = 1000)]
        clients: usize,
        #[arg(long, default_value_t = 100)]
        triggers: u64,
    },
    /// N subscribers, each in its own room; K triggers per room.
    Rooms {
        #[arg(long, default_value_t = 1000)]
        clients: usize,
        #[arg(long, default_value_t = 10)]
        triggers: u64,
    },
    /// N subscribers of one room; R triggers per second for T seconds.
    Latency {
        #[arg(long, default_value_t = 1000)]
        clients: usize,
        #[arg(long, default_value_t = 10.0)]
        rate: f64,
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
    },
    /// One connection subscribes K rooms, W requests in flight.
    Subscribe {
        #[arg(long, default_value_t = 10_000)]
        rooms: usize,
        #[arg(long, default_value_t = 1)]
        window: usize,
    },
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Connect { .. } => "connect",
            Scenario::Fanout { .. } => "fanout",
            Scenario::Rooms { .. } => "rooms",
            Scenario::Latency { .. } => "latency",
            Scenario::Subscribe { .. } => "subscribe",
        }
    }

    fn needs_triggers(self) -> bool {
        matches!(
            self,
            Scenario::Fanout { .. } | Scenario::Rooms { .. } | Scenario::Latency { .. }
        )
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let fd_limit = target::raise_fd_limit();
    // One thread for every client: the generator must not take the server's second core.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("ht-bench: {error}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(cli, fd_limit)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("ht-bench: {error:#}");
            ExitCode::from(2)
        }
    }
}

/// Runs every requested server and run; returns whether no run reported a problem.
async fn run(cli: Cli, fd_limit: u64) -> anyhow::Result<bool> {
    let lists = backend::Lists {
        rooms: cli.allowed_rooms,
        distinct: cli.distinct_lists,
    };
    let backend = backend::start(cli.backend_listen, lists)?;
    println!(
        "ht-bench {}: fake backend http://{backend}/api/, open-files limit {fd_limit}",
        cli.scenario.name()
    );
    let mut kinds = vec![Kind::Ours];
    if cli.compare {
        kinds.push(Kind::Ht31);
    }
    let mut columns = Vec::new();
    let mut clean = true;
    for kind in kinds {
        let mut outcomes: Vec<Outcome> = Vec::new();
        for run in 1..=cli.runs {
            let ctx = setup(&cli, kind, backend).await?;
            let route = ctx.publisher.as_ref().map_or("", |p| p.label);
            let outcome = scenario(&cli, &ctx).await?;
            println!(
                "{} {} run {run}/{} [{route}]: {}",
                cli.scenario.name(),
                kind.label(),
                cli.runs,
                outcome.line()
            );
            if !outcome.problems.is_empty() {
                eprintln!("  PROBLEM: {}", outcome.problems.join(", "));
                clean = false;
            }
            outcomes.push(outcome);
            // The server goes with `ctx`; give the kernel a moment to release its sockets.
            drop(ctx);
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        columns.push((kind.label(), report::medians(&outcomes)));
    }
    println!("\nmedians of {} run(s):", cli.runs);
    print!("{}", report::table(&columns));
    Ok(clean)
}

async fn setup(cli: &Cli, kind: Kind, backend: SocketAddr) -> anyhow::Result<Ctx> {
    let target = match (kind, cli.target_addr) {
        (Kind::Ours, Some(addr)) => {
            Target::external(kind, addr, cli.trigger_addr.unwrap_or(addr), cli.target_pid)
        }
        (Kind::Ours, None) => Target::spawn_ours(backend)?,
        (Kind::Ht31, _) => {
            let host = amqp_host(&cli.amqp_url);
            Target::spawn_ht31(&cli.ht31_venv, backend, &host)?
        }
    };
    let publisher = if cli.scenario.needs_triggers() {
        let route = match kind {
            Kind::Ours => Route::Http(target.trigger_addr),
            Kind::Ht31 => Route::Amqp {
                venv: cli.ht31_venv.clone(),
                url: cli.amqp_url.clone(),
            },
        };
        Some(PublisherThread::start(route)?)
    } else {
        None
    };
    let ctx = Ctx {
        target,
        publisher,
        sources: scenarios::sources(cli.source_ips),
        concurrency: cli.concurrency,
        timeout: Duration::from_secs(cli.timeout),
    };
    if cli.scenario.needs_triggers() {
        ctx.wait_ready().await?;
    }
    Ok(ctx)
}

/// The host of an `amqp://user:pass@host[:port]/` URL, for 3.1's `RABBITMQ["host"]`.
fn amqp_host(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    rest.split('/').next().unwrap_or("127.0.0.1").to_string()
}

async fn scenario(cli: &Cli, ctx: &Ctx) -> anyhow::Result<Outcome> {
    match cli.scenario {
        Scenario::Connect { clients } => scenarios::connect(ctx, clients).await,
        Scenario::Fanout { clients, triggers } => scenarios::fanout(ctx, clients, triggers).await,
        Scenario::Rooms { clients, triggers } => scenarios::rooms(ctx, clients, triggers).await,
        Scenario::Latency {
            clients,
            rate,
            seconds,
        } => scenarios::latency(ctx, clients, rate, seconds).await,
        Scenario::Subscribe { rooms, window } => {
            scenarios::subscribe_many(ctx, rooms, window).await
        }
    }
}
