//! The real python-aodhclient (3.12.0, from PyPI) drives a running `tidings meter all-in-one`
//! through every `aodh alarm …` and `aodh alarm-history …` command for threshold alarms, and
//! `aodh capabilities list`, in Aodh's no-auth mode (`--os-auth-type aodh-noauth`). `alarm
//! metrics` uses an API of Aodh 13 and later, outside the contract: it gets a 404 that says so.
//!
//! The client is run with the interpreter named by `TIDINGS_AODH_PYTHON` (`.ci/run` creates
//! `.venv/aodh` and sets it), else `.venv/aodh/bin/python` in the workspace. Without one that
//! imports aodhclient 3.12.0 every test here fails, saying how to get it: these tests are the
//! proof that Aodh's own client works, and never skip.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod all_in_one;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use serde_json::Value;

use all_in_one::AllInOne;

/// The aodhclient release `.ci/run` installs.
const AODHCLIENT_VERSION: &str = "3.12.0";

/// The interpreter with aodhclient, checked once; panics (failing the test) without it.
fn python() -> &'static Path {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let python = std::env::var_os("TIDINGS_AODH_PYTHON")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace.join(".venv/aodh/bin/python"));
        let how_to_fix = format!(
            "these tests need Python with aodhclient=={AODHCLIENT_VERSION} (PyPI's \
             python-aodhclient): run .ci/run (it creates .venv/aodh and sets \
             TIDINGS_AODH_PYTHON), or point TIDINGS_AODH_PYTHON at such an interpreter (tried {})",
            python.display()
        );
        let probe = Command::new(&python)
            .args([
                "-c",
                "import importlib.metadata as m, aodhclient.shell; print(m.version('aodhclient'))",
            ])
            .output()
            .unwrap_or_else(|e| panic!("{how_to_fix}: cannot run it: {e}"));
        assert!(
            probe.status.success(),
            "{how_to_fix}: `import aodhclient` failed: {}",
            String::from_utf8_lossy(&probe.stderr)
        );
        let version = String::from_utf8_lossy(&probe.stdout).trim().to_owned();
        assert_eq!(version, AODHCLIENT_VERSION, "{how_to_fix}: found {version}");
        python
    })
}

/// The `aodh` command for one user of one project against an all-in-one.
struct Aodh<'a> {
    aio: &'a AllInOne,
    user: &'a str,
    project: &'a str,
    roles: &'a str,
}

impl<'a> Aodh<'a> {
    fn admin(aio: &'a AllInOne) -> Self {
        Self {
            aio,
            user: "alice",
            project: "proj-a",
            roles: "admin",
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(python())
            .args([
                "-c",
                "import sys; from aodhclient.shell import main; sys.exit(main())",
                "--os-auth-type",
                "aodh-noauth",
                "--aodh-endpoint",
                &self.aio.url(),
                "--user-id",
                self.user,
                "--project-id",
                self.project,
                "--roles",
                self.roles,
            ])
            .args(args)
            .output()
            .expect("python runs")
    }

    /// Runs a command that must succeed; its standard output.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "aodh {args:?} failed: {}{}\nall-in-one log:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.aio.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs a command with `-f json`; its output parsed.
    fn json(&self, args: &[&str]) -> Value {
        let mut args = args.to_vec();
        args.extend(["-f", "json"]);
        let text = self.ok(&args);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("aodh {args:?}: {e}: {text}"))
    }

    /// Runs a command that must fail; what it said on standard error.
    fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            !out.status.success(),
            "aodh {args:?} should fail: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// `alarm list` as (name, state) pairs in the order listed.
    fn names(&self, args: &[&str]) -> Vec<String> {
        let mut all = vec!["alarm", "list"];
        all.extend(args);
        self.json(&all)
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["name"].as_str().unwrap().to_owned())
            .collect()
    }
}

/// A threshold alarm as `aodh alarm create` makes it; the flattened fields it printed.
fn create(aodh: &Aodh, name: &str, severity: &str) -> Value {
    aodh.json(&[
        "alarm",
        "create",
        "--type",
        "threshold",
        "--name",
        name,
        "-m",
        "cpu_util",
        "--threshold",
        "80",
        "--severity",
        severity,
    ])
}

#[test]
fn aodhclient_creates_shows_updates_and_deletes_a_threshold_alarm_with_every_option() {
    // No evaluation while the client works: the alarm is enabled, has no data, and must keep
    // the state it was given until the update checks it (on a busy machine the commands before
    // it outlast the all-in-one's default five seconds between evaluations).
    let aio = AllInOne::start(&["--evaluation-interval", "3600"]);
    let aodh = Aodh::admin(&aio);
    let created = aodh.json(&[
        "alarm",
        "create",
        "--type",
        "threshold",
        "--name",
        "cpu-high",
        "--description",
        "CPU hot on vm-1",
        "--state",
        "ok",
        "--severity",
        "critical",
        "--enabled",
        "True",
        "--repeat-actions",
        "True",
        "--alarm-action",
        "log://",
        "--ok-action",
        "log://",
        "--insufficient-data-action",
        "log://",
        "--time-constraint",
        "name=nightly;start=0 23 * * *;duration=10800;timezone=Europe/Ljubljana",
        "--time-constraint",
        "name=lunch;start=0 12 * * mon-fri;duration=3600",
        "-m",
        "cpu_util",
        "--threshold",
        "80",
        "--comparison-operator",
        "gt",
        "--statistic",
        "max",
        "--period",
        "120",
        "--evaluation-periods",
        "3",
        "--query",
        "resource_id=vm-1",
    ]);
    let id = created["alarm_id"].as_str().unwrap().to_owned();
    for (field, value) in [
        ("name", "cpu-high"),
        ("description", "CPU hot on vm-1"),
        ("type", "threshold"),
        ("state", "ok"),
        ("state_reason", "Not evaluated yet"),
        ("severity", "critical"),
        ("meter_name", "cpu_util"),
        ("comparison_operator", "gt"),
        ("statistic", "max"),
        ("user_id", "alice"),
        ("project_id", "proj-a"),
        ("query", "resource_id = vm-1"),
    ] {
        assert_eq!(created[field], value, "{field} in {created}");
    }
    assert_eq!(created["threshold"], 80.0);
    assert_eq!(created["period"], 120);
    assert_eq!(created["evaluation_periods"], 3);
    assert_eq!(created["enabled"], true);
    assert_eq!(created["repeat_actions"], true);
    assert_eq!(created["alarm_actions"], serde_json::json!(["log://"]));
    // The client prints the constraints as a JSON document.
    let constraints: Value =
        serde_json::from_str(created["time_constraints"].as_str().unwrap()).unwrap();
    assert_eq!(constraints[0]["timezone"], "Europe/Ljubljana");
    assert_eq!(constraints[0]["duration"], 10800);
    assert_eq!(constraints[1]["name"], "lunch");
    assert_eq!(
        constraints[1]["description"],
        "Time constraint at 0 12 * * mon-fri lasting for 3600 seconds"
    );

    // Show by id, by --name, and by a name given where the id goes.
    assert_eq!(aodh.json(&["alarm", "show", &id])["name"], "cpu-high");
    assert_eq!(
        aodh.json(&["alarm", "show", "--name", "cpu-high"])["alarm_id"],
        id.as_str()
    );
    assert_eq!(
        aodh.json(&["alarm", "show", "cpu-high"])["alarm_id"],
        id.as_str()
    );

    // Update by id (rule and plain fields) and by name; the rest is kept.
    let updated = aodh.json(&[
        "alarm",
        "update",
        &id,
        "--threshold",
        "90.5",
        "--description",
        "hotter",
        "--comparison-operator",
        "ge",
        "--enabled",
        "False",
    ]);
    assert_eq!(updated["threshold"], 90.5);
    assert_eq!(updated["comparison_operator"], "ge");
    assert_eq!(updated["description"], "hotter");
    assert_eq!(updated["enabled"], false);
    assert_eq!(updated["statistic"], "max", "kept");
    assert_eq!(updated["state"], "ok", "kept");
    let renamed = aodh.json(&["alarm", "update", "--name", "cpu-high", "--severity", "low"]);
    assert_eq!(renamed["severity"], "low");
    assert_eq!(renamed["threshold"], 90.5, "kept");
    let moved = aodh.json(&["alarm", "update", &id, "--state", "alarm"]);
    assert_eq!(moved["state"], "alarm");
    assert_eq!(moved["state_reason"], "Manually set via API");

    // Delete by id and by name; then they are gone.
    create(&aodh, "mem-low", "low");
    aodh.ok(&["alarm", "delete", &id]);
    aodh.ok(&["alarm", "delete", "--name", "mem-low"]);
    let gone = aodh.fails(&["alarm", "show", &id]);
    assert!(gone.contains(&format!("Alarm {id} not found")), "{gone}");
    assert!(aodh
        .fails(&["alarm", "delete", "--name", "mem-low"])
        .contains("not found"));
    assert_eq!(
        aodh.names(&["--filter", "project_id=proj-a"]),
        Vec::<String>::new()
    );
}

#[test]
fn aodhclient_lists_alarms_with_filters_sorting_paging_and_queries() {
    let aio = AllInOne::start(&[]);
    let aodh = Aodh::admin(&aio);
    for (name, severity) in [
        ("b-disk", "moderate"),
        ("a-cpu", "critical"),
        ("c-net", "critical"),
    ] {
        create(&aodh, name, severity);
    }
    let mine = ["--filter", "project_id=proj-a"];
    assert_eq!(
        aodh.names(&mine),
        ["b-disk", "a-cpu", "c-net"],
        "creation order"
    );
    assert_eq!(
        aodh.names(&[
            "--filter",
            "severity=critical",
            "--filter",
            "project_id=proj-a"
        ]),
        ["a-cpu", "c-net"]
    );
    assert_eq!(
        aodh.names(&["--filter", "name=b-disk"]),
        ["b-disk"],
        "the filter is applied, not ignored"
    );
    assert_eq!(
        aodh.names(&["--filter", "project_id=proj-a", "--sort", "name:desc"]),
        ["c-net", "b-disk", "a-cpu"]
    );
    assert_eq!(
        aodh.names(&[
            "--filter",
            "project_id=proj-a",
            "--sort",
            "severity:asc",
            "--sort",
            "name:desc"
        ]),
        ["c-net", "a-cpu", "b-disk"]
    );
    // Pages: --limit, then --marker (the last id of the page before).
    let first = aodh.json(&[
        "alarm",
        "list",
        "--filter",
        "project_id=proj-a",
        "--limit",
        "2",
    ]);
    assert_eq!(first.as_array().unwrap().len(), 2);
    let marker = first[1]["alarm_id"].as_str().unwrap();
    assert_eq!(
        aodh.names(&["--filter", "project_id=proj-a", "--marker", marker]),
        ["c-net"]
    );
    // Rich queries go through POST /v2/query/alarms.
    assert_eq!(
        aodh.names(&["--query", "severity=critical and name!=\"c-net\""]),
        ["a-cpu"]
    );
    let either = aodh.names(&["--query", "name=\"b-disk\" or name=\"c-net\""]);
    assert_eq!(either, ["b-disk", "c-net"]);
    // What Aodh refuses, with the field named.
    let refused = aodh.fails(&["alarm", "list", "--filter", "colour=red"]);
    assert!(
        refused.contains("colour") && refused.contains("HTTP 400"),
        "{refused}"
    );
    let refused = aodh.fails(&["alarm", "list", "--sort", "colour:asc"]);
    assert!(
        refused.contains("colour") && refused.contains("HTTP 400"),
        "{refused}"
    );
    let refused = aodh.fails(&["alarm", "list", "--query", "colour=red"]);
    assert!(
        refused.contains("colour") && refused.contains("HTTP 400"),
        "{refused}"
    );
    // Another project's user sees none of them; only its own.
    let other = Aodh {
        aio: &aio,
        user: "bob",
        project: "proj-b",
        roles: "member",
    };
    assert_eq!(other.names(&[]), Vec::<String>::new());
    create(&other, "b-own", "low");
    assert_eq!(other.names(&[]), ["b-own"]);
    assert!(other
        .fails(&["alarm", "show", "--name", "a-cpu"])
        .contains("not found"));
}

#[test]
fn aodhclient_gets_and_sets_state_and_reads_and_searches_history() {
    let aio = AllInOne::start(&[]);
    let aodh = Aodh::admin(&aio);
    // Disabled, so that only the API changes its state here.
    let id = aodh.json(&[
        "alarm",
        "create",
        "--type",
        "threshold",
        "--name",
        "cpu",
        "-m",
        "cpu_util",
        "--threshold",
        "80",
        "--enabled",
        "False",
    ])["alarm_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        aodh.json(&["alarm", "state", "get", &id])["state"],
        "insufficient data"
    );
    assert_eq!(
        aodh.json(&["alarm", "state", "set", &id, "--state", "alarm"])["state"],
        "alarm"
    );
    assert_eq!(
        aodh.json(&["alarm", "state", "get", "--name", "cpu"])["state"],
        "alarm"
    );
    assert_eq!(
        aodh.json(&["alarm", "state", "set", "--name", "cpu", "--state", "ok"])["state"],
        "ok"
    );
    aodh.ok(&["alarm", "update", &id, "--threshold", "95"]);

    // Newest first, each with Aodh's columns; the detail says what changed.
    let history = aodh.json(&["alarm-history", "show", &id]);
    let types: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "rule change",
            "state transition",
            "state transition",
            "creation"
        ]
    );
    let detail: Value = serde_json::from_str(history[0]["detail"].as_str().unwrap()).unwrap();
    assert_eq!(detail["threshold_rule"]["threshold"], 95.0);
    assert!(detail.get("name").is_none(), "only what changed: {detail}");
    let detail: Value = serde_json::from_str(history[1]["detail"].as_str().unwrap()).unwrap();
    assert_eq!(detail["state"], "ok");
    assert!(history[0]["event_id"].as_str().unwrap().len() == 36);

    // --limit, --sort, --marker (by event id).
    let oldest = aodh.json(&[
        "alarm-history",
        "show",
        &id,
        "--sort",
        "timestamp:asc",
        "--limit",
        "1",
    ]);
    assert_eq!(oldest[0]["type"], "creation");
    let marker = history[1]["event_id"].as_str().unwrap();
    let after = aodh.json(&["alarm-history", "show", &id, "--marker", marker]);
    assert_eq!(after.as_array().unwrap().len(), 2);

    // Search across alarms, with and without a query.
    create(&aodh, "disk", "low");
    let query = format!("type='state transition' and alarm_id='{id}'");
    let transitions = aodh.json(&["alarm-history", "search", "--query", &query]);
    assert_eq!(transitions.as_array().unwrap().len(), 2);
    assert!(transitions
        .as_array()
        .unwrap()
        .iter()
        .all(|h| h["alarm_id"] == id.as_str()));
    let everything = aodh.json(&["alarm-history", "search"]);
    assert!(everything.as_array().unwrap().len() >= 5, "{everything}");
}

#[test]
fn aodhclient_reads_capabilities_and_gets_aodh_s_refusals() {
    let aio = AllInOne::start(&[]);
    let aodh = Aodh::admin(&aio);
    let capabilities = aodh.json(&["capabilities", "list"]);
    assert_eq!(
        capabilities["api"]["alarms:query:complex"], true,
        "{capabilities}"
    );
    assert_eq!(
        capabilities["alarm_storage"]["storage:production_ready"],
        true
    );

    let refused = aodh.fails(&[
        "alarm",
        "create",
        "--type",
        "threshold",
        "--name",
        "x",
        "-m",
        "cpu",
        "--threshold",
        "1",
        "--time-constraint",
        "name=n;start=0 25 * * *;duration=60",
    ]);
    assert!(
        refused.contains("time_constraints[0]") && refused.contains("HTTP 400"),
        "{refused}"
    );
    let refused = aodh.fails(&[
        "alarm",
        "create",
        "--type",
        "threshold",
        "--name",
        "x",
        "-m",
        "cpu",
        "--threshold",
        "1",
        "--time-constraint",
        "name=n;start=0 1 * * *;duration=60;timezone=Mars/Olympus",
    ]);
    assert!(
        refused.contains("Timezone Mars/Olympus is not valid"),
        "{refused}"
    );
    let refused = aodh.fails(&[
        "alarm",
        "create",
        "--type",
        "event",
        "--name",
        "x",
        "--event-type",
        "compute.*",
    ]);
    assert!(
        refused.contains("type") && refused.contains("HTTP 400"),
        "{refused}"
    );
    // Aodh 13's metrics API is not served, and says so.
    let refused = aodh.fails(&["alarm", "metrics"]);
    assert!(
        refused.contains("Aodh 13") && refused.contains("HTTP 404"),
        "{refused}"
    );
    let missing = aodh.fails(&[
        "alarm",
        "state",
        "get",
        "00000000-0000-0000-0000-000000000000",
    ]);
    assert!(missing.contains("not found"), "{missing}");
}
