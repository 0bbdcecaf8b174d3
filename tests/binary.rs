//! The `high-templar` binary itself: configuration errors and the help text.

use std::process::Command;

fn binary() -> Command {
    Command::new(env!("CARGO_BIN_EXE_high-templar"))
}

#[test]
fn bad_config_is_one_line_naming_the_field_and_exit_2() {
    let output = binary()
        .args([
            "--api-url",
            "http://127.0.0.1:8000/api/",
            "--idle-timeout",
            "0",
        ])
        .env_remove("HT_CONFIG")
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("idle_timeout"), "{stderr}");
}

#[test]
fn bad_config_file_names_the_field() {
    let path = std::env::temp_dir().join(format!("ht-bad-{}.toml", std::process::id()));
    std::fs::write(
        &path,
        "api_url = \"http://x/no-slash\"\nbackend_timeout = \"whenever\"\n",
    )
    .expect("write");
    let output = binary().arg("--config").arg(&path).output().expect("run");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("api_url:") && stderr.contains("backend_timeout:"),
        "{stderr}"
    );
}

#[test]
fn environment_variables_are_read() {
    let output = binary()
        .env("HT_LISTEN", "not-an-address")
        .env("HT_API_URL", "http://127.0.0.1:8000/api/")
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--listen"));
}

#[test]
fn missing_api_url_is_explained() {
    let output = binary()
        .args(["--listen", "127.0.0.1:0"])
        .env_remove("HT_API_URL")
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("api_url"));
}

#[test]
fn help_documents_every_option() {
    let output = binary().arg("--help").output().expect("run");
    let help = String::from_utf8_lossy(&output.stdout);
    for option in [
        "--config",
        "--listen",
        "--internal-listen",
        "--api-url",
        "--api-socket",
        "--trigger-token",
        "--idle-timeout",
        "--backend-timeout",
        "--forward-header",
        "--on-connect",
        "--on-disconnect",
        "--on-ping",
        "--max-message-size",
        "--outgoing-queue",
        "--max-trigger-body",
    ] {
        assert!(help.contains(option), "{option} missing from --help");
    }
    assert!(help.contains("HT_LISTEN"));
}
