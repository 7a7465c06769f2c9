//! The HTTP API against a real running server (127.0.0.1:0) and real stores: who gets in
//! (tokens from the token file, reloaded on SIGHUP through the launcher, or from a
//! Keystone-compatible identity service), what each project sees (its own alarms and
//! statistics; 404 for the rest; admins see all), which alarm actions are accepted (400 naming
//! the rule), what is bounded (bodies, pages), and that credentials never come back out.
//!
//! The tenancy specification runs on SQLite and on the machine's PostgreSQL
//! (`postgres://postgres@127.0.0.1:5432/test`, or `TIDINGS_TEST_POSTGRES`), each test in a
//! schema of its own; stores made before alarms had owners are migrated in place.
//!
//! Run: `cargo test -p tidings-metering --test metering_api`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::http::HeaderMap;
use axum::routing::get;
use axum::{Json, Router};
use chrono::{TimeZone, Utc};
use reqwest::{Method, StatusCode};
use serde_json::{json, Map, Value};
use tidings_metering::alarm_notifier::{ActionPolicy, Network};
use tidings_metering::api::{
    self, ApiConfig, Authenticator, KeystoneConfig, StatusFn, TokenTable, MAX_BODY_BYTES,
};
use tidings_metering::model::{CounterType, Sample};
use tidings_metering::store::{self, AlarmPage, Store};
use tidings_runtime::{ConfigHandle, Engine, EngineConfig, Launcher, Signal, TaskWorker, Worker};
use tokio::sync::mpsc;

const PROJECT_A: &str = "proj-a";
const PROJECT_B: &str = "proj-b";
const TOKEN_A: &str = "tok-a-3f9c2e";
const TOKEN_B: &str = "tok-b-77d1aa";
const TOKEN_ADMIN: &str = "tok-admin-c0ffee";
const PLANTED: &str = "planted-hook-pw-51d3";

fn tokens() -> TokenTable {
    TokenTable::parse(&tokens_json()).unwrap()
}

fn tokens_json() -> String {
    json!({
        TOKEN_A: {"user_id": "alice", "project_id": PROJECT_A, "roles": ["member"]},
        TOKEN_B: {"user_id": "bob", "project_id": PROJECT_B, "roles": ["member"]},
        TOKEN_ADMIN: {"user_id": "root", "project_id": "ops", "roles": ["admin"]},
    })
    .to_string()
}

// ---------------------------------------------------------------------------------------------
// Stores

fn postgres_base() -> String {
    std::env::var("TIDINGS_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

async fn pg_client() -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&postgres_base(), tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {} is needed: {e}", postgres_base()));
    tokio::spawn(connection);
    client
}

/// A schema of its own on the test PostgreSQL, dropped when the guard goes.
struct PgSchema(String);

impl PgSchema {
    async fn new() -> Self {
        let name = format!("metering_api_{:016x}", fastrand::u64(..));
        pg_client()
            .await
            .batch_execute(&format!("CREATE SCHEMA {name}"))
            .await
            .unwrap();
        Self(name)
    }

    fn url(&self) -> String {
        let base = postgres_base();
        let separator = if base.contains('?') { '&' } else { '?' };
        format!("{base}{separator}options=-c%20search_path%3D{}", self.0)
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        let name = self.0.clone();
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let _ = pg_client()
                    .await
                    .batch_execute(&format!("DROP SCHEMA IF EXISTS {name} CASCADE"))
                    .await;
            });
        })
        .join();
    }
}

/// A directory removed when the guard goes.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("tidings-api-{:016x}", fastrand::u64(..)));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

enum Keep {
    Dir(#[allow(dead_code)] TempDir),
    Schema(#[allow(dead_code)] PgSchema),
}

async fn sqlite_file() -> (Arc<dyn Store>, Keep) {
    let dir = TempDir::new();
    let url = format!("sqlite://{}/metering.sqlite", dir.0.display());
    (store::open(&url).await.unwrap(), Keep::Dir(dir))
}

async fn postgres() -> (Arc<dyn Store>, Keep) {
    let schema = PgSchema::new().await;
    (
        store::open(&schema.url()).await.unwrap(),
        Keep::Schema(schema),
    )
}

// ---------------------------------------------------------------------------------------------
// A running API and a client

struct Running {
    base: String,
    worker: TaskWorker,
    http: reqwest::Client,
}

impl Running {
    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, HeaderMap, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.header("X-Auth-Token", token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap();
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, headers, value)
    }

    async fn get(&self, path: &str, token: Option<&str>) -> (StatusCode, Value) {
        let (status, _, body) = self.call(Method::GET, path, token, None).await;
        (status, body)
    }

    async fn create(&self, token: Option<&str>, body: Value) -> (StatusCode, Value) {
        let (status, _, body) = self
            .call(Method::POST, "/v2/alarms", token, Some(body))
            .await;
        (status, body)
    }

    async fn stop(self) {
        self.worker.kill();
        self.worker.wait().await.unwrap();
    }
}

/// What `/v2/status` shows in these tests: a report holding a store URL with a password.
fn status() -> StatusFn {
    Arc::new(|| {
        json!({"manifolds": {"store": {"report": {
            "url": format!("postgres://app:{PLANTED}@db/m?password={PLANTED}")
        }}}})
    })
}

async fn serve(
    store: Arc<dyn Store>,
    auth: Option<Authenticator>,
    policy: ActionPolicy,
) -> Running {
    let mut config =
        ApiConfig::new("127.0.0.1:0".parse().unwrap(), status()).with_action_policy(policy);
    config.auth = auth;
    let (worker, bound) = api::start(&config, store).await.unwrap();
    Running {
        base: format!("http://{bound}"),
        worker,
        http: reqwest::Client::new(),
    }
}

fn token_auth() -> Authenticator {
    Authenticator::default().with_token_table(ConfigHandle::fixed(tokens()))
}

fn alarm_body(name: &str, actions: &[&str]) -> Value {
    json!({
        "name": name,
        "threshold_rule": {"meter_name": "cpu", "threshold": 50.0, "comparison_operator": "gt"},
        "alarm_actions": actions,
    })
}

fn sample(id: &str, project: &str, volume: f64) -> Sample {
    Sample {
        source: "openstack".into(),
        name: "cpu".into(),
        counter_type: CounterType::Gauge,
        unit: "%".into(),
        volume,
        user_id: Some("u".into()),
        project_id: Some(project.into()),
        resource_id: format!("vm-{project}"),
        timestamp: Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap(),
        resource_metadata: Map::new(),
        message_id: id.into(),
    }
}

fn fault(body: &Value) -> &str {
    body["error_message"]["faultstring"]
        .as_str()
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// Who gets in

#[tokio::test]
async fn no_token_or_an_unknown_one_is_401_and_health_stays_open() {
    let (store, _keep) = sqlite_file().await;
    let api = serve(store, Some(token_auth()), ActionPolicy::default()).await;
    for path in [
        "/v2/alarms",
        "/v2/alarms/x",
        "/v2/alarms/x/history",
        "/v2/meters",
        "/v2/meters/cpu/statistics",
        "/v2/status",
    ] {
        let (status, headers, body) = api.call(Method::GET, path, None, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}: {body}");
        assert!(headers.contains_key("www-authenticate"), "{path}");
        let (status, _) = api.get(path, Some("not-a-token")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
    }
    let (status, _) = api.create(None, alarm_body("x", &["log://"])).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, _) = api.call(Method::DELETE, "/v2/alarms/x", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(api.get("/health", None).await.0, StatusCode::OK);
    api.stop().await;
}

/// Project A cannot see, change or delete project B's alarms nor read its statistics (404, as
/// for what does not exist); the admin can.
async fn projects_see_only_their_own(store: Arc<dyn Store>) {
    store
        .record(&[
            sample("s-a1", PROJECT_A, 10.0),
            sample("s-b1", PROJECT_B, 90.0),
            sample("s-b2", PROJECT_B, 70.0),
        ])
        .await
        .unwrap();
    let api = serve(store.clone(), Some(token_auth()), ActionPolicy::default()).await;

    let (status, a) = api
        .create(Some(TOKEN_A), alarm_body("a-alarm", &["log://"]))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{a}");
    assert_eq!(a["project_id"], PROJECT_A);
    assert_eq!(a["user_id"], "alice");
    let query = a["threshold_rule"]["query"].as_array().unwrap();
    assert!(
        query
            .iter()
            .any(|t| t["field"] == "project_id" && t["value"] == PROJECT_A),
        "a user's alarm evaluates its own project only: {a}"
    );
    let (status, b) = api
        .create(Some(TOKEN_B), alarm_body("b-alarm", &["log://"]))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{b}");
    let b_id = b["alarm_id"].as_str().unwrap().to_owned();
    let a_id = a["alarm_id"].as_str().unwrap().to_owned();

    // A user cannot make an alarm for another project, nor scope a rule on one.
    let mut foreign = alarm_body("sneaky", &["log://"]);
    foreign["project_id"] = json!(PROJECT_B);
    assert_eq!(
        api.create(Some(TOKEN_A), foreign).await.0,
        StatusCode::FORBIDDEN
    );
    let mut peeking = alarm_body("peeking", &["log://"]);
    peeking["threshold_rule"]["query"] =
        json!([{"field": "project_id", "op": "eq", "value": PROJECT_B}]);
    assert_eq!(
        api.create(Some(TOKEN_A), peeking).await.0,
        StatusCode::FORBIDDEN
    );

    // Listing: each user its own; the admin all.
    let (_, listed) = api.get("/v2/alarms", Some(TOKEN_A)).await;
    let names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a-alarm"]);
    let (_, listed) = api.get("/v2/alarms", Some(TOKEN_ADMIN)).await;
    assert_eq!(listed.as_array().unwrap().len(), 2);

    // Show, history, change and delete of B's alarm by A: 404 each, and nothing changed.
    let b_path = format!("/v2/alarms/{b_id}");
    let (status, body) = api.get(&b_path, Some(TOKEN_A)).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(fault(&body), format!("Alarm {b_id} not found"));
    let (status, missing) = api.get("/v2/alarms/no-such-alarm", Some(TOKEN_A)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        fault(&missing),
        "Alarm no-such-alarm not found",
        "same answer as for a missing one"
    );
    assert_eq!(
        api.get(&format!("{b_path}/history"), Some(TOKEN_A)).await.0,
        StatusCode::NOT_FOUND
    );
    let (status, _, _) = api
        .call(
            Method::PUT,
            &b_path,
            Some(TOKEN_A),
            Some(alarm_body("taken", &["log://"])),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, _) = api.call(Method::DELETE, &b_path, Some(TOKEN_A), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(store.alarm(&b_id).await.unwrap().name, "b-alarm");
    // Paging with another project's alarm as marker says nothing about it either.
    let (status, _) = api
        .get(&format!("/v2/alarms?marker={b_id}"), Some(TOKEN_A))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // B sees and changes its own.
    let (status, _, changed) = api
        .call(
            Method::PUT,
            &b_path,
            Some(TOKEN_B),
            Some(alarm_body("b-renamed", &["log://"])),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{changed}");
    assert_eq!(changed["alarm_id"], b_id.as_str());
    assert_eq!(changed["project_id"], PROJECT_B);
    let (_, history) = api.get(&format!("{b_path}/history"), Some(TOKEN_B)).await;
    let kinds: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["type"].as_str().unwrap())
        .collect();
    // Newest first, as Aodh lists history.
    assert_eq!(kinds, ["rule change", "creation"]);

    // Statistics: A reads A's samples only; B's project is 404 for A; the admin reads any.
    let (status, stats) = api.get("/v2/meters/cpu/statistics", Some(TOKEN_A)).await;
    assert_eq!(status, StatusCode::OK, "{stats}");
    assert_eq!(stats[0]["count"], 1);
    assert_eq!(stats[0]["max"], 10.0);
    let b_stats =
        format!("/v2/meters/cpu/statistics?q.field=project_id&q.op=eq&q.value={PROJECT_B}");
    let (status, body) = api.get(&b_stats, Some(TOKEN_A)).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let by_resource = "/v2/meters/cpu/statistics?q.field=resource_id&q.value=vm-proj-b";
    let (status, stats) = api.get(by_resource, Some(TOKEN_A)).await;
    assert_eq!(
        (status, stats),
        (StatusCode::OK, json!([])),
        "another project's resource shows nothing"
    );
    let (_, stats) = api.get(&b_stats, Some(TOKEN_ADMIN)).await;
    assert_eq!(stats[0]["count"], 2);
    let (_, stats) = api
        .get("/v2/meters/cpu/statistics", Some(TOKEN_ADMIN))
        .await;
    assert_eq!(stats[0]["count"], 3);
    let (_, meters) = api.get("/v2/meters", Some(TOKEN_A)).await;
    assert!(
        meters
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["project_id"] == PROJECT_A),
        "{meters}"
    );

    // The admin sees, changes and deletes B's alarm; A's stays.
    assert_eq!(api.get(&b_path, Some(TOKEN_ADMIN)).await.0, StatusCode::OK);
    let (status, _, _) = api
        .call(Method::DELETE, &b_path, Some(TOKEN_ADMIN), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(
        api.get(&b_path, Some(TOKEN_B)).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        api.get(&format!("/v2/alarms/{a_id}"), Some(TOKEN_A))
            .await
            .0,
        StatusCode::OK
    );

    // The service's status is the admin's.
    assert_eq!(
        api.get("/v2/status", Some(TOKEN_A)).await.0,
        StatusCode::FORBIDDEN
    );
    let (status, report) = api.get("/v2/status", Some(TOKEN_ADMIN)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!report.to_string().contains(PLANTED), "{report}");
    api.stop().await;
}

#[tokio::test]
async fn projects_see_only_their_own_on_sqlite() {
    let (store, _keep) = sqlite_file().await;
    projects_see_only_their_own(store).await;
}

#[tokio::test]
async fn projects_see_only_their_own_on_postgresql() {
    let (store, _keep) = postgres().await;
    projects_see_only_their_own(store).await;
}

// ---------------------------------------------------------------------------------------------
// Which actions are accepted

#[tokio::test]
async fn actions_reaching_metadata_or_loopback_are_refused_naming_the_rule() {
    let (store, _keep) = sqlite_file().await;
    let open = serve(store.clone(), None, ActionPolicy::default()).await;
    let authenticated = serve(store.clone(), Some(token_auth()), ActionPolicy::default()).await;
    let allowing = serve(
        store,
        Some(token_auth()),
        ActionPolicy {
            allow: vec!["127.0.0.1/32".parse::<Network>().unwrap()],
            ..ActionPolicy::default()
        },
    )
    .await;

    for (api, token) in [(&open, None), (&authenticated, Some(TOKEN_A))] {
        for (action, rule) in [
            (
                "http://169.254.169.254/latest/meta-data/",
                "rule \"metadata\"",
            ),
            ("http://[::ffff:169.254.169.254]/", "rule \"metadata\""),
            ("http://169.254.10.1/", "rule \"link-local\""),
            ("file:///etc/passwd", "scheme \"file\""),
            ("gopher://example.org/", "scheme \"gopher\""),
        ] {
            let (status, body) = api
                .create(token, alarm_body("bad", &["log://", action]))
                .await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{action}: {body}");
            let message = fault(&body);
            assert!(message.starts_with("alarm_actions[1]: "), "{message}");
            assert!(message.contains(rule), "{action}: {message}");
        }
    }
    // Loopback and private ranges: refused once users authenticate, unless the operator allows.
    for (action, rule) in [
        ("http://127.0.0.1:9/hook", "rule \"loopback\""),
        ("http://localhost:9/hook", "rule \"loopback\""),
        ("http://10.0.0.5/hook", "rule \"private\""),
        ("https://[::1]/hook", "rule \"loopback\""),
    ] {
        let mut body = alarm_body("bad", &[]);
        body["ok_actions"] = json!([action]);
        let (status, answer) = authenticated.create(Some(TOKEN_A), body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{action}");
        assert!(fault(&answer).starts_with("ok_actions[0]: "), "{answer}");
        assert!(fault(&answer).contains(rule), "{action}: {answer}");
    }
    let hook = "http://127.0.0.1:9/hook";
    assert_eq!(
        open.create(None, alarm_body("ok", &[hook])).await.0,
        StatusCode::CREATED
    );
    assert_eq!(
        allowing
            .create(Some(TOKEN_A), alarm_body("ok", &[hook]))
            .await
            .0,
        StatusCode::CREATED
    );
    let (status, body) = allowing
        .create(Some(TOKEN_A), alarm_body("bad", &["http://127.0.0.2/"]))
        .await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "only the allowed network: {body}"
    );

    // A change is checked as a creation is.
    let (_, created) = authenticated
        .create(Some(TOKEN_A), alarm_body("fine", &["log://"]))
        .await;
    let path = format!("/v2/alarms/{}", created["alarm_id"].as_str().unwrap());
    let (status, _, body) = authenticated
        .call(
            Method::PUT,
            &path,
            Some(TOKEN_A),
            Some(alarm_body("fine", &["http://169.254.169.254/"])),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(fault(&body).contains("rule \"metadata\""), "{body}");
    for api in [open, authenticated, allowing] {
        api.stop().await;
    }
}

// ---------------------------------------------------------------------------------------------
// Secrets

#[tokio::test]
async fn webhook_credentials_never_come_back_and_survive_a_round_trip() {
    let (store, _keep) = sqlite_file().await;
    let api = serve(store.clone(), None, ActionPolicy::default()).await;
    let hook = format!("https://ops:{PLANTED}@hooks.example.org/alarm?token={PLANTED}&team=7");
    let lone = format!("https://{PLANTED}@hooks.example.org/x");
    let mut body = alarm_body("with-credentials", &["log://", &hook]);
    body["ok_actions"] = json!([lone]);
    // Resolution is part of the check: use an address so the test needs no DNS.
    body["alarm_actions"] = json!(["log://", hook.replace("hooks.example.org", "93.184.216.34")]);
    body["ok_actions"] = json!([lone.replace("hooks.example.org", "93.184.216.34")]);
    let (status, created) = api.create(None, body).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["alarm_id"].as_str().unwrap().to_owned();
    let path = format!("/v2/alarms/{id}");

    let mut answers = vec![created.clone()];
    answers.push(api.get("/v2/alarms", None).await.1);
    answers.push(api.get(&path, None).await.1);
    answers.push(api.get(&format!("{path}/history"), None).await.1);
    answers.push(api.get("/v2/status", None).await.1);
    for answer in &answers {
        assert!(!answer.to_string().contains(PLANTED), "{answer}");
    }
    assert_eq!(
        created["alarm_actions"][1],
        "https://ops:***@93.184.216.34/alarm?token=***&team=7"
    );
    assert_eq!(created["ok_actions"][0], "https://***@93.184.216.34/x");

    // The store keeps the real URL for the notifier; history keeps only the masked one.
    let stored = store.alarm(&id).await.unwrap();
    assert!(stored.alarm_actions[1].contains(PLANTED));
    assert!(!serde_json::to_string(&store.history(&id).await.unwrap())
        .unwrap()
        .contains(PLANTED));

    // Sending the alarm back as shown keeps the stored credentials.
    let mut shown = answers[2].clone();
    shown["name"] = json!("renamed");
    let (status, _, changed) = api.call(Method::PUT, &path, None, Some(shown)).await;
    assert_eq!(status, StatusCode::OK, "{changed}");
    let stored = store.alarm(&id).await.unwrap();
    assert_eq!(stored.name, "renamed");
    assert!(
        stored.alarm_actions[1].contains(PLANTED),
        "{:?}",
        stored.alarm_actions
    );
    assert!(stored.ok_actions[0].contains(PLANTED));
    assert!(!changed.to_string().contains(PLANTED));
    api.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Bounds and paging

#[tokio::test]
async fn bodies_are_bounded_and_lists_come_in_pages() {
    let (store, _keep) = sqlite_file().await;
    let api = serve(store, Some(token_auth()), ActionPolicy::default()).await;
    let mut huge = alarm_body("huge", &["log://"]);
    huge["padding"] = json!("x".repeat(MAX_BODY_BYTES));
    let (status, _) = api.create(Some(TOKEN_A), huge).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);

    let mut ids = Vec::new();
    for i in 0..5 {
        let (status, created) = api
            .create(Some(TOKEN_A), alarm_body(&format!("a{i}"), &["log://"]))
            .await;
        assert_eq!(status, StatusCode::CREATED);
        ids.push(created["alarm_id"].as_str().unwrap().to_owned());
        api.create(Some(TOKEN_B), alarm_body(&format!("b{i}"), &["log://"]))
            .await;
    }
    let mut seen = Vec::new();
    let mut path = "/v2/alarms?limit=2".to_owned();
    loop {
        let (status, headers, page) = api.call(Method::GET, &path, Some(TOKEN_A), None).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let page = page.as_array().unwrap().clone();
        assert!(page.len() <= 2);
        seen.extend(
            page.iter()
                .map(|a| a["alarm_id"].as_str().unwrap().to_owned()),
        );
        match headers.get("link") {
            Some(link) => {
                let link = link.to_str().unwrap();
                let next = link.trim_start_matches('<').split('>').next().unwrap();
                path = next.to_owned();
            }
            None => break,
        }
    }
    assert_eq!(
        seen, ids,
        "every alarm of the project once, in creation order"
    );
    for bad in [
        "/v2/alarms?limit=0",
        "/v2/alarms?limit=100000",
        "/v2/alarms?marker=nope",
    ] {
        let (status, body) = api.get(bad, Some(TOKEN_A)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
    }
    let too_many: Vec<String> = (0..11).map(|_| "log://".to_owned()).collect();
    let (status, body) = api
        .create(
            Some(TOKEN_A),
            json!({
                "name": "many", "threshold_rule": {"meter_name": "cpu", "threshold": 1.0},
                "alarm_actions": too_many,
            }),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(fault(&body).starts_with("alarm_actions"), "{body}");
    api.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Where tokens come from

#[tokio::test]
async fn the_token_file_is_read_again_on_hangup() {
    let dir = TempDir::new();
    let file = dir.0.join("tokens.json");
    std::fs::write(&file, tokens_json()).unwrap();
    let engine = Engine::new(EngineConfig::default()).unwrap();
    let path = file.clone();
    let launcher = Launcher::new(
        engine.clone(),
        TokenTable::load(&file).unwrap(),
        move || {
            let path = path.clone();
            async move { Ok(TokenTable::load(&path)?) }
        },
    );
    let auth = Authenticator::default().with_token_table(launcher.config());
    let (signals, received) = mpsc::channel(4);
    let running = tokio::spawn(launcher.run(received));
    let (store, _keep) = sqlite_file().await;
    let api = serve(store, Some(auth), ActionPolicy::default()).await;

    assert_eq!(api.get("/v2/alarms", Some(TOKEN_A)).await.0, StatusCode::OK);
    let fresh = "tok-new-after-hup";
    std::fs::write(
        &file,
        json!({fresh: {"user_id": "carol", "project_id": "proj-c", "roles": []}}).to_string(),
    )
    .unwrap();
    assert_eq!(
        api.get("/v2/alarms", Some(fresh)).await.0,
        StatusCode::UNAUTHORIZED,
        "not before SIGHUP"
    );
    signals.send(Signal::Hangup).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while api.get("/v2/alarms", Some(fresh)).await.0 != StatusCode::OK {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new token never worked"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        api.get("/v2/alarms", Some(TOKEN_A)).await.0,
        StatusCode::UNAUTHORIZED,
        "removed tokens stop working"
    );

    // A file that no longer parses keeps the tokens that worked.
    std::fs::write(&file, "{not json").unwrap();
    signals.send(Signal::Hangup).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(api.get("/v2/alarms", Some(fresh)).await.0, StatusCode::OK);

    signals.send(Signal::Terminate).await.unwrap();
    running.await.unwrap();
    api.stop().await;
}

/// A Keystone stand-in: `GET /v3/auth/tokens` knows one subject token when the service token
/// is right, and counts the calls.
async fn fake_keystone(calls: Arc<AtomicUsize>) -> String {
    let app = Router::new().route(
        "/v3/auth/tokens",
        get(move |headers: HeaderMap| {
            let calls = calls.clone();
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                let header = |name: &str| {
                    headers
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_owned()
                };
                if header("x-auth-token") != "svc-token" {
                    return (StatusCode::UNAUTHORIZED, Json(json!({})));
                }
                if header("x-subject-token") != "ks-user-token" {
                    return (StatusCode::NOT_FOUND, Json(json!({"error": {"code": 404}})));
                }
                let expires = (Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
                (
                    StatusCode::OK,
                    Json(json!({"token": {
                        "user": {"id": "dave", "name": "dave"},
                        "project": {"id": PROJECT_A, "name": "a"},
                        "roles": [{"id": "r1", "name": "member"}],
                        "expires_at": expires,
                    }})),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

#[tokio::test]
async fn an_identity_service_validates_the_tokens_the_file_does_not_know_and_is_cached() {
    let calls = Arc::new(AtomicUsize::new(0));
    let keystone = fake_keystone(calls.clone()).await;
    let auth = token_auth()
        .with_keystone(KeystoneConfig::new(&keystone, "svc-token"))
        .unwrap();
    let (store, _keep) = sqlite_file().await;
    let api = serve(store, Some(auth), ActionPolicy::default()).await;

    let (status, created) = api
        .create(
            Some("ks-user-token"),
            alarm_body("from-keystone", &["log://"]),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(
        (created["project_id"].as_str(), created["user_id"].as_str()),
        (Some(PROJECT_A), Some("dave"))
    );
    for _ in 0..5 {
        assert_eq!(
            api.get("/v2/alarms", Some("ks-user-token")).await.0,
            StatusCode::OK
        );
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "validated once, then cached"
    );
    // The file's tokens never reach the identity service.
    assert_eq!(api.get("/v2/alarms", Some(TOKEN_A)).await.0, StatusCode::OK);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // Unknown tokens are refused, and the refusal is cached for a while too.
    assert_eq!(
        api.get("/v2/alarms", Some("forged")).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        api.get("/v2/alarms", Some("forged")).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    api.stop().await;

    // An identity service that does not answer: 503, not a way in.
    let down = token_auth()
        .with_keystone(KeystoneConfig::new("http://127.0.0.1:9", "svc-token"))
        .unwrap();
    let (store, _keep) = sqlite_file().await;
    let api = serve(store, Some(down), ActionPolicy::default()).await;
    assert_eq!(
        api.get("/v2/alarms", Some("ks-user-token")).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    api.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Listening without authentication

#[tokio::test]
async fn without_authentication_the_api_stays_on_loopback_unless_told_otherwise() {
    let (store, _keep) = sqlite_file().await;
    let everywhere = ApiConfig::new("0.0.0.0:0".parse().unwrap(), status());
    let error = api::start(&everywhere, store.clone()).await.unwrap_err();
    assert!(error.to_string().contains("--insecure-no-auth"), "{error}");
    let empty =
        ApiConfig::new("0.0.0.0:0".parse().unwrap(), status()).with_auth(Authenticator::default());
    assert!(
        api::start(&empty, store.clone()).await.is_err(),
        "an authenticator without tokens is no authentication"
    );

    let mut insecure = ApiConfig::new("0.0.0.0:0".parse().unwrap(), status());
    insecure.insecure_no_auth = true;
    let (worker, _) = api::start(&insecure, store.clone()).await.unwrap();
    worker.kill();
    worker.wait().await.unwrap();
    let authenticated =
        ApiConfig::new("0.0.0.0:0".parse().unwrap(), status()).with_auth(token_auth());
    let (worker, _) = api::start(&authenticated, store).await.unwrap();
    worker.kill();
    worker.wait().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Stores made before alarms had owners

/// An alarm as an older version stored it: no `project_id`, no `user_id`.
fn old_alarm_body(id: &str) -> String {
    let mut alarm =
        tidings_metering::api::alarm_from_body(&alarm_body("old", &["log://"]), Utc::now())
            .unwrap();
    alarm.alarm_id = id.to_owned();
    let mut value = serde_json::to_value(&alarm).unwrap();
    let object = value.as_object_mut().unwrap();
    object.remove("project_id");
    object.remove("user_id");
    value.to_string()
}

const OLD_ALARMS: &str =
    "CREATE TABLE alarms (alarm_id TEXT PRIMARY KEY, created BIGINT NOT NULL, body TEXT NOT NULL)";

async fn old_alarms_are_kept_and_owned_by_no_project(store: Arc<dyn Store>) {
    let old = store.alarm("old-1").await.unwrap();
    assert_eq!((old.project_id, old.user_id), (None, None));
    let page = |project: Option<&str>| AlarmPage {
        project_id: project.map(str::to_owned),
        marker: None,
        limit: 10,
    };
    assert_eq!(store.alarm_page(&page(None)).await.unwrap().len(), 1);
    assert!(store
        .alarm_page(&page(Some(PROJECT_A)))
        .await
        .unwrap()
        .is_empty());
    let mut new =
        tidings_metering::api::alarm_from_body(&alarm_body("new", &["log://"]), Utc::now())
            .unwrap();
    new.project_id = Some(PROJECT_A.to_owned());
    store.create_alarm(&new).await.unwrap();
    let mine = store.alarm_page(&page(Some(PROJECT_A))).await.unwrap();
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0].alarm_id, new.alarm_id);
    // Only admins (and the operator without authentication) see the old alarm over the API.
    let api = serve(store, Some(token_auth()), ActionPolicy::default()).await;
    assert_eq!(
        api.get("/v2/alarms/old-1", Some(TOKEN_A)).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        api.get("/v2/alarms/old-1", Some(TOKEN_ADMIN)).await.0,
        StatusCode::OK
    );
    api.stop().await;
}

#[tokio::test]
async fn an_older_sqlite_store_gains_alarm_owners_in_place() {
    let dir = TempDir::new();
    let path = dir.0.join("old.sqlite");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(OLD_ALARMS).unwrap();
        conn.execute(
            "INSERT INTO alarms (alarm_id, created, body) VALUES ('old-1', 0, ?1)",
            [old_alarm_body("old-1")],
        )
        .unwrap();
    }
    let url = format!("sqlite://{}", path.display());
    old_alarms_are_kept_and_owned_by_no_project(store::open(&url).await.unwrap()).await;
    // Opening again finds the columns there and leaves them.
    let again = store::open(&url).await.unwrap();
    assert_eq!(again.alarms().await.unwrap().len(), 2);
}

#[tokio::test]
async fn an_older_postgresql_store_gains_alarm_owners_in_place() {
    let schema = PgSchema::new().await;
    let client = pg_client().await;
    client
        .batch_execute(&format!("SET search_path = {}; {OLD_ALARMS}", schema.0))
        .await
        .unwrap();
    client
        .execute(
            &format!(
                "INSERT INTO {}.alarms (alarm_id, created, body) VALUES ('old-1', 0, $1)",
                schema.0
            ),
            &[&old_alarm_body("old-1")],
        )
        .await
        .unwrap();
    old_alarms_are_kept_and_owned_by_no_project(store::open(&schema.url()).await.unwrap()).await;
    let again = store::open(&schema.url()).await.unwrap();
    assert_eq!(again.alarms().await.unwrap().len(), 2);
}

#[tokio::test]
async fn aodh_s_answers_creation_with_location_unknown_fields_by_name_and_state_as_a_string() {
    let store = store::open("sqlite::memory:").await.unwrap();
    let api = serve(store, None, ActionPolicy::default()).await;
    let (status, headers, created) = api
        .call(
            Method::POST,
            "/v2/alarms",
            None,
            Some(alarm_body("cpu", &["log://"])),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let id = created["alarm_id"].as_str().unwrap();
    assert_eq!(headers["location"], format!("/v2/alarms/{id}").as_str());
    assert_eq!(
        created["description"],
        "Alarm when cpu is gt a avg of 50.0 over 60 seconds"
    );
    assert_eq!(created["time_constraints"], json!([]));

    // Unknown fields, at the top and in the rule, are refused by name, on PUT as on POST.
    let mut changed = created.clone();
    changed["colour"] = json!("red");
    let (status, _, body) = api
        .call(
            Method::PUT,
            &format!("/v2/alarms/{id}"),
            None,
            Some(changed),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        fault(&body).starts_with("colour: Unknown attribute"),
        "{body}"
    );
    assert_eq!(body["error_message"]["faultcode"], "Client");
    let mut changed = created.clone();
    changed["threshold_rule"]["colour"] = json!("red");
    let (status, _, body) = api
        .call(
            Method::PUT,
            &format!("/v2/alarms/{id}"),
            None,
            Some(changed),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(fault(&body).starts_with("threshold_rule.colour"), "{body}");

    // The state is a JSON string both ways; anything else is 400 naming the field.
    let state = format!("/v2/alarms/{id}/state");
    let (status, _, body) = api.call(Method::PUT, &state, None, Some(json!("ok"))).await;
    assert_eq!((status, body), (StatusCode::OK, json!("ok")));
    assert_eq!(api.get(&state, None).await.1, json!("ok"));
    let (status, _, body) = api
        .call(Method::PUT, &state, None, Some(json!({"state": "ok"})))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(fault(&body).starts_with("state:"), "{body}");
    let (status, _, _) = api
        .call(Method::PUT, &state, None, Some(json!("on fire")))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    api.stop().await;
}

#[tokio::test]
async fn the_root_is_the_version_document_for_clients_and_the_dashboard_for_browsers() {
    let store = store::open("sqlite::memory:").await.unwrap();
    let api = serve(store, Some(token_auth()), ActionPolicy::default()).await;
    let (status, versions) = api.get("/", None).await;
    assert_eq!(status, StatusCode::OK, "open without a token");
    assert_eq!(versions["versions"]["values"][0]["id"], "v2");
    assert_eq!(versions["versions"]["values"][0]["status"], "stable");
    let page = api
        .http
        .get(format!("{}/", api.base))
        .header("Accept", "text/html,application/xhtml+xml")
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let page = page.text().await.unwrap();
    assert!(page.contains("<script src=\"/dashboard.js\">"), "{page}");
    let script = api.get("/dashboard.js", None).await;
    assert_eq!(script.0, StatusCode::OK);
    assert!(script.1.as_str().unwrap().contains("X-Auth-Token"));
    // The data behind it still needs a token; capabilities too.
    assert_eq!(
        api.get("/v2/capabilities", None).await.0,
        StatusCode::UNAUTHORIZED
    );
    let (status, capabilities) = api.get("/v2/capabilities/", Some(TOKEN_A)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(capabilities["api"]["alarms:history:query:complex"], true);
    api.stop().await;
}
