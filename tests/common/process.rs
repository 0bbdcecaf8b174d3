//! The real `high-templar` binary as a child process, for what only a process shows: exit
//! codes, signals, file-descriptor limits, resident memory.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use super::{TestBackend, TOKEN, WAIT};

/// A free loopback port: bind port 0, read it, release it for the binary.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// The binary on `port` in front of `backend`, with `args` added; killed if the test fails.
/// Settings from the developer's environment (`HT_*`) are removed so they cannot change what
/// is tested; logs are at `warn` unless `RUST_LOG` is in `env`.
pub fn command(port: u16, backend: &TestBackend, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_high-templar"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("HT_") {
            command.env_remove(name);
        }
    }
    command
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--api-url", &backend.api_url()])
        .args(["--trigger-token", TOKEN])
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    command
}

/// Starts `command` and waits until it accepts connections on `port`.
pub async fn spawn_listening(mut command: Command, port: u16) -> Child {
    let mut child = command.spawn().expect("start the binary");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return child;
        }
        if let Some(status) = child.try_wait().expect("child state") {
            panic!("the binary exited before listening: {status}");
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the binary never listened on {port}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A `/proc/<pid>/status` field in KiB (`VmRSS`, `VmHWM`).
pub fn memory_kib(child: &Child, field: &str) -> u64 {
    let pid = child.id().expect("the binary is running");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Starts the child with a soft open-files limit of `soft` (the hard one unchanged when
/// `hard` is `None`), as a systemd service without `LimitNOFILE=` or a login shell would.
pub fn limit_open_files(command: &mut Command, soft: u64, hard: Option<u64>) {
    // SAFETY: the closure only calls getrlimit/setrlimit, which are async-signal-safe, on a
    // struct of its own.
    unsafe {
        command.pre_exec(move || {
            let mut limit = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            limit.rlim_max = hard.unwrap_or(limit.rlim_max);
            limit.rlim_cur = soft.min(limit.rlim_max);
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// The child's stderr, read line by line as it comes (so the pipe never fills and stalls
/// it), for tests about what the binary logs.
#[derive(Clone, Default)]
pub struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    /// Pipes `command`'s stderr into the log once started with [`Log::collect`].
    pub fn capture(command: &mut Command) {
        command.stderr(Stdio::piped());
    }

    /// Starts reading `child`'s stderr (set up with [`Log::capture`]).
    pub fn collect(child: &mut Child) -> Log {
        let log = Log::default();
        let stderr = child.stderr.take().expect("stderr piped");
        let lines = log.0.clone();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                lines.lock().expect("log").push(line);
            }
        });
        log
    }

    pub fn lines(&self) -> Vec<String> {
        self.0.lock().expect("log").clone()
    }

    /// Waits until a line contains `needle`, and returns it.
    pub async fn wait_for(&self, needle: &str, within: Duration) -> String {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(line) = self.lines().into_iter().find(|l| l.contains(needle)) {
                return line;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no log line with {needle:?} in {within:?}; the log:\n{}",
                self.lines().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
