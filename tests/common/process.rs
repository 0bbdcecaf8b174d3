//! The real `high-templar` binary as a child process, for what only a process shows: exit
//! codes, signals, file-descriptor limits, resident memory.

use std::process::Stdio;
use std::time::Duration;

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
