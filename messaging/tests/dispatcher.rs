//! oslo.messaging's dispatch rules, case by case.

use serde_json::{json, Map, Value};
use tidings::rpc::{Dispatcher, Endpoint, NoArgs};
use tidings::{Context, RemoteError, Version};

async fn ok_from(name: &'static str) -> Result<&'static str, RemoteError> {
    Ok(name)
}

fn endpoint(
    tag: &'static str,
    namespace: Option<&str>,
    version: Version,
    methods: &[&str],
) -> Endpoint {
    let mut e = Endpoint::new().version(version);
    if let Some(ns) = namespace {
        e = e.namespace(ns);
    }
    for m in methods {
        e = e.method(*m, move |_ctx: Context, _: NoArgs| ok_from(tag));
    }
    e
}

#[derive(Debug)]
enum Expect {
    ServedBy(&'static str),
    NoSuchMethod,
    UnsupportedVersion,
}

async fn dispatch(
    d: &Dispatcher,
    ns: Option<&str>,
    version: Option<&str>,
    method: &str,
) -> Result<Value, RemoteError> {
    d.dispatch(ns, version, method, Context::new(), Map::new())
        .await
}

#[tokio::test]
async fn dispatch_table_follows_oslo_rules() {
    let d = Dispatcher::new(vec![
        endpoint(
            "first",
            None,
            Version::new(1, 3),
            &["echo", "_private", "shared"],
        ),
        endpoint("second", None, Version::new(1, 5), &["newer", "shared"]),
        endpoint("ns", Some("admin"), Version::new(2, 0), &["reset"]),
    ]);
    use Expect::*;
    type Case = (
        &'static str,
        Option<&'static str>,
        Option<&'static str>,
        &'static str,
        Expect,
    );
    let cases: &[Case] = &[
        (
            "version equal",
            None,
            Some("1.3"),
            "echo",
            ServedBy("first"),
        ),
        ("older minor", None, Some("1.0"), "echo", ServedBy("first")),
        (
            "missing version means 1.0",
            None,
            None,
            "echo",
            ServedBy("first"),
        ),
        (
            "newer minor skips to a newer endpoint",
            None,
            Some("1.4"),
            "newer",
            ServedBy("second"),
        ),
        (
            "newer minor than any endpoint",
            None,
            Some("1.6"),
            "echo",
            UnsupportedVersion,
        ),
        ("other major", None, Some("2.0"), "echo", UnsupportedVersion),
        (
            "unparseable version",
            None,
            Some("one"),
            "echo",
            UnsupportedVersion,
        ),
        (
            "two endpoints: first in order wins",
            None,
            Some("1.0"),
            "shared",
            ServedBy("first"),
        ),
        (
            "method only on the later endpoint",
            None,
            Some("1.0"),
            "newer",
            ServedBy("second"),
        ),
        (
            "unknown method on compatible endpoints",
            None,
            Some("1.0"),
            "nope",
            NoSuchMethod,
        ),
        (
            "_private is never dispatched",
            None,
            Some("1.0"),
            "_private",
            NoSuchMethod,
        ),
        (
            "namespace match",
            Some("admin"),
            Some("2.0"),
            "reset",
            ServedBy("ns"),
        ),
        (
            "namespace mismatch",
            Some("other"),
            Some("1.0"),
            "echo",
            UnsupportedVersion,
        ),
        (
            "namespace required by endpoint",
            None,
            Some("2.0"),
            "reset",
            UnsupportedVersion,
        ),
        (
            "namespace given, endpoint has none",
            Some("admin"),
            Some("1.0"),
            "echo",
            UnsupportedVersion,
        ),
    ];
    for (name, ns, version, method, expect) in cases {
        let got = dispatch(&d, *ns, *version, method).await;
        match (expect, &got) {
            (ServedBy(tag), Ok(value)) => assert_eq!(value, &json!(tag), "{name}"),
            (NoSuchMethod, Err(e)) => {
                assert!(e.is_no_such_method(), "{name}: {e}");
                assert_eq!(
                    e.message,
                    format!("Endpoint does not support RPC method {method}"),
                    "{name}"
                );
            }
            (UnsupportedVersion, Err(e)) => {
                assert!(e.is_unsupported_version(), "{name}: {e}");
                let v = version.unwrap_or("1.0");
                assert_eq!(
                    e.message,
                    format!(
                        "Endpoint does not support RPC version {v}. Attempted method: {method}"
                    ),
                    "{name}"
                );
            }
            _ => panic!("{name}: expected {expect:?}, got {got:?}"),
        }
    }
}

#[tokio::test]
async fn namespace_mismatch_is_unsupported_version() {
    let d = Dispatcher::new(vec![endpoint("a", Some("x"), Version::new(1, 0), &["m"])]);
    let e = dispatch(&d, Some("y"), Some("1.0"), "m").await.unwrap_err();
    assert!(e.is_unsupported_version());
    assert_eq!(e.module, "oslo_messaging.rpc.dispatcher");
}

#[tokio::test]
async fn each_method_is_a_tower_service_and_layers_wrap_it() {
    use tower::ServiceExt;
    let e = endpoint("a", None, Version::new(1, 0), &["m"]).layer(tower::layer::layer_fn(
        |svc: tidings::rpc::MethodService| svc.map_response(|value| json!({ "wrapped": value })),
    ));
    let svc = e.method_service("m").expect("registered");
    let call = tidings::rpc::MethodCall {
        method: "m".into(),
        context: Context::new(),
        args: Map::new(),
    };
    assert_eq!(svc.oneshot(call).await.unwrap(), json!({"wrapped": "a"}));
}

#[tokio::test]
async fn bad_arguments_are_a_type_error() {
    #[derive(serde::Deserialize)]
    struct Needs {
        #[allow(dead_code)]
        n: u32,
    }
    let e = Endpoint::new().method("m", |_ctx: Context, _: Needs| async {
        Ok::<_, RemoteError>(())
    });
    let d = Dispatcher::new(vec![e]);
    let mut args = Map::new();
    args.insert("n".into(), json!("not a number"));
    let err = d
        .dispatch(None, None, "m", Context::new(), args)
        .await
        .unwrap_err();
    assert_eq!(
        (err.class.as_str(), err.module.as_str()),
        ("TypeError", "builtins")
    );
}
