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
