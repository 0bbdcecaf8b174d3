//! The server under test: our release binary or high-templar 3.1 (hypercorn) as a child
//! process, or an already running server; and its CPU and memory read from `/proc`.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// How long a freshly spawned server gets to start listening.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);
/// The token our server is started with; ht-bench sends it on `POST /trigger/`.
pub const TRIGGER_TOKEN: &str = "ht-bench-token";

/// Flags for our server: limits far above any scenario's sizes.
const LIFTED_LIMITS: &[&str] = &[
    "--max-connections",
    "20000",
    "--max-connections-per-ip",
    "20000",
    "--max-subscriptions",
    "1000000",
    "--messages-per-second",
    "1000000",
    "--message-burst",
    "1000000",
];

/// The app module that runs high-templar 3.1 for the benchmark (settings from the environment).
const HT31_APP: &str = include_str!("ht31_app.py");

/// Which server implementation is measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// This project's `high-templar` binary.
    Ours,
    /// high-templar 3.1 (Python) from PyPI, in a virtualenv.
    Ht31,
}

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Kind::Ours => "ours",
            Kind::Ht31 => "ht-3.1",
        }
    }
}

/// A server to measure.
pub struct Target {
    pub kind: Kind,
    /// Where clients connect (the websocket path is `/ws/`).
    pub ws_addr: SocketAddr,
    /// Where `POST /trigger/` goes (ours only).
    pub trigger_addr: SocketAddr,
    /// The server process, for `/proc` figures; unknown for an external server.
    pub pid: Option<u32>,
    child: Option<Child>,
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A free loopback port (bound and released: a tiny race with other processes, acceptable here).
fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Target {
    /// A server that is already running; its pid is optional.
    pub fn external(
        kind: Kind,
        ws_addr: SocketAddr,
        trigger_addr: SocketAddr,
        pid: Option<u32>,
    ) -> Target {
        Target {
            kind,
            ws_addr,
            trigger_addr,
            pid,
            child: None,
        }
    }

    /// Starts our release binary, found next to this executable.
    pub fn spawn_ours(backend: SocketAddr) -> anyhow::Result<Target> {
        let exe = std::env::current_exe()?;
        let binary = exe
            .parent()
            .context("ht-bench has no directory")?
            .join("high-templar");
        if !binary.exists() {
            bail!(
                "{} not found: build it first (cargo build --release --bin high-templar)",
                binary.display()
            );
        }
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let child = Command::new(&binary)
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--api-url")
            .arg(format!("http://{backend}/api/"))
            .arg("--trigger-token")
            .arg(TRIGGER_TOKEN)
            // The abuse limits are lifted: one generator on loopback is every client at once
            // (thousands per IP, 10,000 subscribes on one connection), and the benchmark
            // measures capacity. 3.1 has no such limits.
            .args(LIFTED_LIMITS)
            // Per-connection info logs would measure the terminal, not the server.
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        Target::spawned(Kind::Ours, addr, child)
    }

    /// Starts high-templar 3.1 under hypercorn (one process, `--workers 0`), with RabbitMQ
    /// at `amqp_host` and the fake backend at `backend`.
    pub fn spawn_ht31(venv: &Path, backend: SocketAddr, amqp_host: &str) -> anyhow::Result<Target> {
        let hypercorn = venv.join("bin/hypercorn");
        if !hypercorn.exists() {
            bail!(
                "{} not found: python3 -m venv {v} && {v}/bin/pip install high-templar==3.1.0",
                hypercorn.display(),
                v = venv.display()
            );
        }
        let dir = app_dir()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let child = Command::new(&hypercorn)
            .args(["--workers", "0", "--log-level", "warning", "--bind"])
            .arg(addr.to_string())
            .arg("ht31_bench_app:app")
            .current_dir(&dir)
            .env("PYTHONPATH", &dir)
            .env("HT31_API_URL", format!("http://{backend}/api/"))
            .env("HT31_RABBITMQ_HOST", amqp_host)
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", hypercorn.display()))?;
        Target::spawned(Kind::Ht31, addr, child)
    }

    /// The server `child` just started, serving websockets and triggers on `addr`, once it
    /// listens.
    fn spawned(kind: Kind, addr: SocketAddr, child: Child) -> anyhow::Result<Target> {
        let mut target = Target {
            kind,
            ws_addr: addr,
            trigger_addr: addr,
            pid: Some(child.id()),
            child: Some(child),
        };
        target.wait_listening()?;
        Ok(target)
    }

    fn wait_listening(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if std::net::TcpStream::connect(self.ws_addr).is_ok() {
                return Ok(());
            }
            if let Some(child) = &mut self.child {
                if let Some(status) = child.try_wait()? {
                    bail!("{} exited at startup: {status}", self.kind.label());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not listen on {} in time",
                    self.kind.label(),
                    self.ws_addr
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Resident memory of the server in KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid?)).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    /// CPU time (user + system) the server used so far.
    pub fn cpu_time(&self) -> Option<Duration> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid?)).ok()?;
        // Fields after the command name, which is in parentheses and may hold spaces.
        let rest = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
        let ticks: u64 =
            fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        Some(Duration::from_secs_f64(ticks as f64 / clock_ticks()))
    }
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// CPU time this process (load generator and fake backend, all threads) used so far.
pub fn own_cpu_time() -> Duration {
    // SAFETY: getrusage writes into the struct we pass and nothing else.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let micros = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    Duration::from_micros(micros(usage.ru_utime) + micros(usage.ru_stime))
}

/// Raises the soft open-files limit to the hard limit; children (the server) inherit it.
pub fn raise_fd_limit() -> u64 {
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        limit.rlim_cur as u64
    }
}

/// Writes the 3.1 app module into a private directory.
fn app_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("ht-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("ht31_bench_app.py"), HT31_APP)?;
    Ok(dir)
}

/// CPU and wall clock at one moment, to compute shares over a measured window.
#[derive(Clone, Copy)]
pub struct Sample {
    wall: Instant,
    server: Option<Duration>,
    own: Duration,
}

impl Sample {
    pub fn take(target: &Target) -> Sample {
        Sample {
            wall: Instant::now(),
            server: target.cpu_time(),
            own: own_cpu_time(),
        }
    }

    /// (server CPU %, ht-bench CPU %) from `self` to `later`; 100 % is one core.
    pub fn shares(&self, later: &Sample) -> (Option<f64>, f64) {
        let wall = later.wall.duration_since(self.wall).as_secs_f64().max(1e-9);
        let server = match (self.server, later.server) {
            (Some(a), Some(b)) => Some(100.0 * b.saturating_sub(a).as_secs_f64() / wall),
            _ => None,
        };
        let own = 100.0 * later.own.saturating_sub(self.own).as_secs_f64() / wall;
        (server, own)
    }
}
