//! A real headless browser (Debian's `chromium`) loads the dashboard of a running
//! `tidings meter all-in-one` and the page its script drew from live data is checked: the
//! meters the polling agent measures, with their charts, the demo alarm with the state the API
//! reports, and the agents' health.
//!
//! The browser is `TIDINGS_CHROMIUM` (`.ci/run` installs chromium and sets it), else
//! `chromium` on the PATH. Without one every test here fails saying so: it never skips.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod all_in_one;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use all_in_one::AllInOne;

/// The browser, checked by asking its version.
fn chromium() -> PathBuf {
    let browser = std::env::var_os("TIDINGS_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("chromium"));
    let version = Command::new(&browser).arg("--version").output();
    let works = version.as_ref().is_ok_and(|out| out.status.success());
    assert!(
        works,
        "the dashboard tests need a headless browser: install Debian's chromium (apt-get install \
         chromium; .ci/run does) or point TIDINGS_CHROMIUM at one (tried {}: {:?})",
        browser.display(),
        version.map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
    );
    browser
}

/// The page as the browser has it once the script has run (virtual time lets the fetches
/// finish before the DOM is dumped).
fn rendered(url: &str) -> String {
    let out = Command::new(chromium())
        .args(headless())
        .args(["--virtual-time-budget=8000", "--dump-dom", url])
        .output()
        .expect("chromium runs");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn headless() -> [&'static str; 5] {
    [
        "--headless",
        // The suites run as root in a container: no sandbox, no GPU.
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,960",
    ]
}

/// GET `path` as JSON (one HTTP/1.0 request; the all-in-one runs without authentication).
fn get_json(aio: &AllInOne, path: &str) -> Value {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(aio.api).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {}\r\nAccept: application/json\r\n\r\n",
        aio.api
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let body = answer.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("GET {path}: {e}: {answer}"))
}

/// The demo alarm as the API shows it.
fn demo_alarm(aio: &AllInOne) -> Value {
    get_json(aio, "/v2/alarms")
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "demo-host-load")
        .cloned()
        .unwrap_or_else(|| panic!("no demo alarm: {}", aio.log()))
}

/// Waits until the demo alarm has been evaluated and the load meter has samples.
fn evaluated(aio: &AllInOne) -> Value {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let alarm = demo_alarm(aio);
        let meters = get_json(aio, "/v2/meters");
        let measured = meters
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["name"] == "load.1");
        if alarm["state"] != "insufficient data" && measured {
            return alarm;
        }
        assert!(
            Instant::now() < deadline,
            "the demo alarm was never evaluated: {alarm}\n{}",
            aio.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The text of the demo alarm's row in the dumped page.
fn alarm_row<'a>(page: &'a str, alarm_id: &str) -> &'a str {
    let start = page
        .find(&format!("data-alarm-id=\"{alarm_id}\""))
        .unwrap_or_else(|| panic!("the demo alarm is not on the page:\n{page}"));
    let row = &page[start..];
    &row[..row.find("</tr>").unwrap_or(row.len())]
}

#[test]
fn the_dashboard_shows_meters_with_charts_the_demo_alarm_in_its_state_and_agents() {
    let aio = AllInOne::start(&["--evaluation-interval", "1", "--polling-interval", "1"]);
    // The state can change while the browser renders; then look again.
    let mut tries = 0;
    let (page, alarm) = loop {
        let before = evaluated(&aio);
        let page = rendered(&format!("{}/", aio.url()));
        let after = demo_alarm(&aio);
        if before["state_timestamp"] == after["state_timestamp"] || tries == 3 {
            break (page, after);
        }
        tries += 1;
    };
    let alarm_id = alarm["alarm_id"].as_str().unwrap();
    let state = alarm["state"].as_str().unwrap();

    // The demo alarm, drawn by the script with its state, reason and history.
    let row = alarm_row(&page, alarm_id);
    assert!(row.contains("demo-host-load"), "{row}");
    assert!(
        row.contains(&format!(
            "class=\"state state-{}\">{state}</span>",
            state.replace(' ', "-")
        )),
        "state {state} not in {row}"
    );
    assert!(row.contains("Transition to"), "the reason: {row}");
    assert!(row.contains("creation"), "the history: {row}");

    // The meters the polling agent measures, each with a chart of live statistics.
    for meter in ["load.1", "cpu"] {
        let card = page
            .find(&format!("data-meter=\"{meter}\""))
            .map(|at| &page[at..])
            .unwrap_or_else(|| panic!("no card for {meter}:\n{page}"));
        let card = &card[..card.find("</svg>").unwrap_or(card.len())];
        assert!(card.contains("<polyline class=\"line\""), "{meter}: {card}");
        assert!(card.contains("class=\"latest\""), "{meter}: {card}");
    }

    // Every agent of the engine, healthy.
    for agent in ["api", "collector", "evaluator", "notifier", "polling"] {
        assert!(
            page.contains(&format!(
                "<td>{agent}</td><td><span class=\"state state-ok\">ok"
            )),
            "agent {agent} not shown healthy:\n{page}"
        );
    }
    assert!(
        page.contains("updated "),
        "the page says when it last refreshed"
    );
}

#[test]
fn with_authentication_the_dashboard_asks_for_a_token() {
    let dir = std::env::temp_dir().join(format!("tidings-dash-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let tokens = dir.join("tokens.json");
    std::fs::write(
        &tokens,
        r#"{"tok-admin": {"user_id": "root", "project_id": "ops", "roles": ["admin"]}}"#,
    )
    .unwrap();
    let aio = AllInOne::start(&["--auth-tokens", tokens.to_str().unwrap()]);
    let page = rendered(&format!("{}/", aio.url()));
    // The token form is shown (no `hidden`), and no data was drawn.
    let form = page
        .find("<form id=\"login\"")
        .map(|at| &page[at..at + 40])
        .unwrap_or_else(|| panic!("no token form:\n{page}"));
    assert!(!form.contains("hidden"), "{form}");
    assert!(page.contains("waiting for a token"), "{page}");
    assert!(!page.contains("data-alarm-id"), "no data without a token");
    let _ = std::fs::remove_dir_all(Path::new(&dir));
}
