//! The `tidings` binary as a user runs it.

#![allow(clippy::expect_used)] // a test helper: failing to run the binary fails the test

use std::process::Command;

fn tidings(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tidings"))
        .args(args)
        .output()
        .expect("the tidings binary runs")
}

#[test]
fn help_lists_the_subcommands() {
    let out = tidings(&["--help"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for command in ["demo", "demo-server"] {
        assert!(text.contains(command), "{command} missing from:\n{text}");
    }
}

#[test]
fn demo_calls_every_method_and_hides_the_token() {
    let out = tidings(&["demo"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        "add(a=40, b=2) -> 42",
        "class=DemoError module=tidings.demo message=\"as asked\"",
        "slow(secs=0.2) -> \"done\"",
        "UnsupportedVersion",
        "NoSuchMethod",
    ] {
        assert!(
            stdout.contains(expected),
            "{expected:?} missing from:\n{stdout}"
        );
    }
    assert!(
        !stdout.contains("never-printed"),
        "auth_token leaked:\n{stdout}"
    );
}

#[test]
fn demo_server_refuses_a_bad_url_clearly() {
    let out = tidings(&[
        "demo-server",
        "--url",
        "rabbit://u:secretpw@",
        "--topic",
        "t",
        "--server",
        "s",
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("error"), "{stderr}");
    assert!(!stderr.contains("secretpw"), "password leaked: {stderr}");
}

#[test]
fn json_logs_are_one_object_a_line_with_their_spans() {
    let out = tidings(&["-vv", "--log-format", "json", "demo"]);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect();
    assert!(!lines.is_empty(), "info lines are logged");
    assert!(lines.iter().all(|line| line["level"].is_string()
        && line["timestamp"].is_string()
        && line["fields"].is_object()));
    assert!(
        lines.iter().any(|line| line["spans"]
            .as_array()
            .is_some_and(|spans| !spans.is_empty())),
        "lines logged inside a span carry it: {stderr}"
    );
}

#[test]
fn every_flag_is_read_from_its_environment_variable() {
    // TIDINGS_LISTEN stands for --listen: an address beyond loopback without authentication
    // is refused, which shows the variable was read.
    let out = Command::new(env!("CARGO_BIN_EXE_tidings"))
        .args(["meter", "api", "--store", "sqlite::memory:"])
        .env("TIDINGS_LISTEN", "0.0.0.0:18043")
        .output()
        .expect("the tidings binary runs");
    assert_eq!(
        out.status.code(),
        Some(3),
        "a configuration that cannot run"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--insecure-no-auth"), "{stderr}");
    // A flag wins over its variable.
    let out = Command::new(env!("CARGO_BIN_EXE_tidings"))
        .args([
            "meter",
            "api",
            "--store",
            "sqlite::memory:",
            "--listen",
            "0.0.0.0:18043",
        ])
        .args(["--run-for", "0"])
        .env("TIDINGS_INSECURE_NO_AUTH", "true")
        .env("TIDINGS_LISTEN", "127.0.0.1:1")
        .output()
        .expect("the tidings binary runs");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn exit_codes_are_the_documented_ones() {
    assert_eq!(tidings(&["--no-such-flag"]).status.code(), Some(64));
    assert_eq!(tidings(&["--help"]).status.code(), Some(0));
    let unreadable = tidings(&[
        "meter",
        "collector",
        "--config-file",
        "/nonexistent/ceilometer.conf",
    ]);
    assert_eq!(unreadable.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&unreadable.stderr).contains("/nonexistent/ceilometer.conf"));
}
