//! The deployment files work as written: the README's nginx example, taken from README.md
//! itself, carries clients to the real binary with their own addresses (per-IP limits count
//! them, not nginx); the systemd unit passes `systemd-analyze verify`; the env file's
//! settings start the binary. Tools that are not installed (nginx, systemd-analyze) skip
//! their test with a notice.
#![cfg(unix)]

mod common;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use common::process::{self, free_port, spawn_listening};
use common::*;
use futures_util::{stream, StreamExt};
use serde_json::json;
use tokio::process::Command;

/// Clients through nginx: past the per-IP limit (1,000) were they counted as nginx's address.
const CLIENTS: usize = 1_200;

fn repo_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(name)
}

fn installed(tool: &str) -> bool {
    let found = std::process::Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        // CI installs nginx (scripts/test.sh): there a missing nginx is a failure, not a skip.
        if tool == "nginx" && std::env::var("CI").as_deref() == Ok("true") {
            panic!("nginx is not installed in CI (scripts/test.sh installs it)");
        }
        eprintln!("NOTICE: {tool} is not installed; test skipped");
    }
    found
}

/// The first ```nginx block after the "## Behind nginx" heading of README.md.
fn readme_nginx_example() -> String {
    let readme = std::fs::read_to_string(repo_file("README.md")).expect("README.md");
    let section = &readme[readme.find("## Behind nginx").expect("the nginx section")..];
    let start = section.find("```nginx\n").expect("an nginx block") + "```nginx\n".len();
    let end = start + section[start..].find("```").expect("the block's end");
    section[start..end].to_string()
}

/// The example as a runnable file: its own ports, the paths an unprivileged nginx needs, and
/// one process (no master and workers), so that killing it at the end leaves nothing behind.
fn runnable(example: &str, listen: u16, upstream: u16, dir: &Path) -> String {
    let dir = dir.display();
    let paths = format!(
        "daemon off;\nmaster_process off;\npid {dir}/nginx.pid;\nerror_log {dir}/error.log;\n"
    );
    let temp = format!(
        "http {{\n    access_log off;\n    client_body_temp_path {dir}/body;\n    \
         proxy_temp_path {dir}/proxy;\n    fastcgi_temp_path {dir}/fastcgi;\n    \
         uwsgi_temp_path {dir}/uwsgi;\n    scgi_temp_path {dir}/scgi;\n"
    );
    let config = example
        .replace("listen 443 ssl;", &format!("listen 127.0.0.1:{listen};"))
        .replace(
            "server 127.0.0.1:8080;",
            &format!("server 127.0.0.1:{upstream};"),
        )
        .replacen("http {\n", &temp, 1);
    assert!(
        config.contains(&format!("listen 127.0.0.1:{listen};")),
        "{config}"
    );
    assert!(
        config.contains(&format!("127.0.0.1:{upstream}")),
        "{config}"
    );
    paths + &config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readmes_nginx_example_carries_each_client_with_its_own_address() {
    if !installed("nginx") {
        return;
    }
    raise_fd_limit(4 * CLIENTS as u64 + 1024);
    let backend = TestBackend::start(Reply::ok(json!({"allowed_rooms": []}))).await;
    let port = free_port();
    let _server = spawn_listening(process::command(port, &backend, &[]), port).await;

    let dir = std::env::temp_dir().join(format!("ht-nginx-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let nginx_port = free_port();
    let config = runnable(&readme_nginx_example(), nginx_port, port, &dir);
    std::fs::write(dir.join("nginx.conf"), &config).expect("nginx.conf");
    let mut command = Command::new("nginx");
    command
        .arg("-p")
        .arg(&dir)
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    let _nginx = spawn_listening(command, nginx_port).await;

    // Each client from an address of its own, as on the internet, and from a page of the
    // site: nginx passes the Host the browser sent, so the same-origin check holds.
    let addr = format!("127.0.0.1:{nginx_port}").parse().expect("addr");
    let origin = format!("http://127.0.0.1:{nginx_port}");
    let clients: Vec<Client> = stream::iter(0..CLIENTS)
        .map(|i| {
            let origin = origin.clone();
            async move {
                let ip: IpAddr = format!("127.0.{}.{}", 1 + i / 200, 1 + i % 200)
                    .parse()
                    .expect("ip");
                match Client::attempt(addr, Some(ip), &[("Origin", &origin)]).await {
                    Attempt::Open(mut client) => {
                        let first = client.recv_json().await;
                        assert_eq!(first["is_authorized"], true, "client {i}: {first}");
                        *client
                    }
                    other => panic!("client {i} from {ip}: {other:?}"),
                }
            }
        })
        .buffer_unordered(100)
        .collect()
        .await;
    assert_eq!(clients.len(), CLIENTS);
    // The backend saw each client's address in X-Real-IP, as nginx set it.
    let requests = backend.requests();
    let real_ip = |r: &Recorded| r.headers.get("x-real-ip")?.to_str().ok().map(String::from);
    assert!(
        requests
            .iter()
            .any(|r| real_ip(r).as_deref() == Some("127.0.6.200")),
        "no bootstrap with the last client's address"
    );
}

#[tokio::test]
async fn the_systemd_unit_passes_systemd_analyze_verify() {
    let unit = std::fs::read_to_string(repo_file("deploy/high-templar.service")).expect("unit");
    for line in ["LimitNOFILE=", "Restart=", "EnvironmentFile="] {
        assert!(unit.contains(&format!("\n{line}")), "no {line} in the unit");
    }
    if !installed("systemd-analyze") {
        return;
    }
    // The unit as installed, with its two paths pointing at this checkout.
    let dir = std::env::temp_dir().join(format!("ht-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let env_file = repo_file("deploy/high-templar.env");
    let unit = unit
        .replace(
            "/usr/local/bin/high-templar",
            env!("CARGO_BIN_EXE_high-templar"),
        )
        .replace("/etc/high-templar.env", &env_file.display().to_string());
    let path = dir.join("high-templar.service");
    std::fs::write(&path, unit).expect("unit file");
    let output = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .await
        .expect("systemd-analyze");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.trim().is_empty(), "{stderr}");
}

#[tokio::test]
async fn the_env_files_settings_start_the_binary() {
    let text = std::fs::read_to_string(repo_file("deploy/high-templar.env")).expect("env file");
    let backend = TestBackend::start(Reply::ok(json!({"allowed_rooms": []}))).await;
    let (port, internal) = (free_port(), free_port());
    // Only the file's settings, as systemd passes them, with this test's ports and backend.
    let mut command = Command::new(env!("CARGO_BIN_EXE_high-templar"));
    command.env_clear().env("RUST_LOG", "warn");
    let mut set = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, value) = line.split_once('=').expect("NAME=value");
        let value = match name {
            "HT_LISTEN" => format!("127.0.0.1:{port}"),
            "HT_INTERNAL_LISTEN" => format!("127.0.0.1:{internal}"),
            "HT_API_URL" => backend.api_url(),
            _ => value.to_string(),
        };
        command.env(name, value);
        set.push(name.to_string());
    }
    for name in ["HT_LISTEN", "HT_INTERNAL_LISTEN", "HT_API_URL"] {
        assert!(
            set.iter().any(|s| s == name),
            "{name} not set in the env file"
        );
    }
    command.stdin(Stdio::null()).kill_on_drop(true);
    let _server = spawn_listening(command, port).await;
    let mut client = Client::authorized(format!("127.0.0.1:{port}").parse().expect("addr")).await;
    client.ping().await;
    // /trigger/ is served on the internal address.
    let body = trigger(json!([{"room": 1}]), json!(1));
    let internal = format!("127.0.0.1:{internal}").parse().expect("addr");
    assert_eq!(post_trigger(internal, &body).await.0, 200);
}
