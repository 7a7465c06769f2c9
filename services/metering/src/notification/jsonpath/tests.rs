//! The dialect's rules, each checked against what `jsonpath_rw_ext` 1.2.2 answers for the same
//! expression and document (the expected values were read from it).

use serde_json::{json, Value};

use super::JsonPath;

fn doc() -> Value {
    json!({
        "ctxt": {"user": "u-ctx", "user_id": null},
        "payload": {
            "a": 10, "b": 4, "s": "0.5", "l": [1, 2, 3], "d": {"k": 1}, "n": null,
            "name": "x-y", "host": "h1", "nodename": "n1", "outcome": "success",
            "name_to_id": "host@backend#pool",
            "metrics": [
                {"name": "cpu.frequency", "value": 1600, "timestamp": "2026-01-01 00:00:00"},
                {"name": "cpu.percent", "value": 0.25},
            ],
            "glance_metadata": [{"key": "image_id", "value": "img-1"}, {"key": "size", "value": "3"}],
            "measurements": [
                {"metric": {"name": "storage.objects.incoming.bytes", "unit": "B"}, "result": 5},
                {"metric": {"name": "storage.objects.outgoing.bytes", "unit": "B"}, "result": 7},
            ],
        },
    })
}

fn all(expression: &str) -> Vec<Value> {
    let path = JsonPath::parse(expression).unwrap_or_else(|e| panic!("{expression}: {e}"));
    path.find(&doc())
        .unwrap_or_else(|e| panic!("{expression}: {e}"))
        .into_iter()
        .map(|v| v.into_owned())
        .collect()
}

#[test]
fn fields_indices_and_slices_match_jsonpath_rw() {
    assert_eq!(all("$.payload.a"), [json!(10)]);
    assert_eq!(all("payload.a"), [json!(10)]);
    assert_eq!(all("$.payload.l[-1]"), [json!(3)]);
    assert_eq!(all("$.payload.l[1:]"), [json!(2), json!(3)]);
    assert_eq!(all("$.payload.l[5]"), Vec::<Value>::new());
    assert_eq!(all("$.payload.[a,b]"), [json!(10), json!(4)]);
    assert_eq!(all("$.payload.a,b"), [json!(10), json!(4)]);
    assert_eq!(all("$.payload.d.*"), [json!(1)]);
    assert_eq!(all("$..k"), [json!(1)]);
    assert_eq!(all("`this`.payload.a"), [json!(10)]);
    assert_eq!(all("$.payload.l.`len`"), [json!(3)]);
    assert_eq!(all("$.payload.n"), [Value::Null]);
}

#[test]
fn star_on_an_object_yields_the_object() {
    assert_eq!(all("$.payload.d.[*]"), [json!({"k": 1})]);
    assert_eq!(
        all("$.payload.measurements.[*].metric.[*].name"),
        [
            json!("storage.objects.incoming.bytes"),
            json!("storage.objects.outgoing.bytes")
        ]
    );
}

#[test]
fn what_python_raises_on_yields_nothing() {
    // Index into an object, into null; `[*]` on null.
    assert!(all("$.payload.d[0]").is_empty());
    assert!(all("$.payload.n[0]").is_empty());
    assert!(all("$.payload.n.[*]").is_empty());
}

#[test]
fn union_binds_tighter_than_child() {
    // `a|$` first, then `.payload.b` on each: 10 has no field, the root gives 4.
    assert_eq!(all("$.payload.a|$.payload.b"), [json!(4)]);
    assert_eq!(all("$.payload.(a|b)"), [json!(10), json!(4)]);
    // Ceilometer's dead fallback: `ctxt.(user_id|ctxt).user` finds nothing.
    assert!(all("ctxt.user_id|ctxt.user").is_empty());
    assert_eq!(
        all("(ctxt.user_id)|(ctxt.user)"),
        [Value::Null, json!("u-ctx")]
    );
}

#[test]
fn filters_match_jsonpath_rw_ext() {
    assert_eq!(
        all("$.payload.metrics[?(@.name='cpu.frequency')].value"),
        [json!(1600)]
    );
    assert_eq!(
        all("$.payload.glance_metadata[?key=image_id].value"),
        [json!("img-1")]
    );
    assert_eq!(all("$.payload.l[?@ > 1]"), [json!(2), json!(3)]);
    assert_eq!(all("$.payload.l[?(@ = 2)]"), [json!(2)]);
    // An integer value coerces the target with int(): "3" == 3.
    assert_eq!(
        all("$.payload.glance_metadata[?value = 3].key"),
        [json!("size")]
    );
    assert_eq!(
        all("$.payload.metrics[?(@.name ~ 'cpu\\.f') & (@.value > 1000)].value"),
        [json!(1600)]
    );
    // A filter on an object yields nothing.
    assert!(all("$.payload.d[?k = 1]").is_empty());
}

#[test]
fn arithmetic_follows_python() {
    assert_eq!(all("$.payload.a * 1.5"), [json!(15.0)]);
    assert_eq!(all("$.payload.a - 1"), [json!(9)]);
    assert_eq!(all("$.payload.a + $.payload.b"), [json!(14)]);
    assert_eq!(all("$.payload.s * 3"), [json!("0.50.50.5")]);
    assert_eq!(all("payload.a * 2"), [json!(20)]);
    // A lone field beside an operator is a string.
    assert_eq!(all("a * 2"), [json!("aa")]);
    assert_eq!(all("$.payload.l[*] * 2"), [json!(2), json!(4), json!(6)]);
    assert!(all("$.payload.a + 'x'").is_empty());
    assert!(all("$.payload.a * $.payload.l[*]").is_empty());
    assert!(all("$.payload.missing + '_'").is_empty());
    assert_eq!(all("3 * 2"), [json!(6)]);
    assert_eq!(
        all("$.payload.metrics[?(@.name='cpu.percent')].value * 100"),
        [json!(25.0)]
    );
    assert_eq!(
        all("$.payload.host + \"_\" + $.payload.nodename"),
        [json!("h1_n1")]
    );
    // Division, which jsonpath_rw_ext cannot parse, is Python's true division.
    assert_eq!(all("$.payload.a / 4"), [json!(2.5)]);
    assert!(all("$.payload.a / 0").is_empty());
}

#[test]
fn split_and_sub_operators() {
    assert_eq!(all("$.payload.name.`split(-, 1, 1)`"), [json!("y")]);
    assert_eq!(
        all("$.payload.name_to_id.`split(#, 0, 1)`"),
        [json!("host@backend")]
    );
    assert_eq!(all("$.payload.name.`sub(/-/, _)`"), [json!("x_y")]);
    // Nothing when nothing changed.
    assert!(all("$.payload.name.`sub(/z/, _)`").is_empty());
    assert_eq!(
        all("$.payload.outcome.`sub(/.*/, )` + 'identity.authenticate.' + $.payload.outcome"),
        [json!("identity.authenticate.success")]
    );
}

#[test]
fn what_does_not_parse() {
    for bad in [
        "",
        "$.payload[",
        "$.payload.a -1",
        "$.a.`parent`",
        "$.a.`nope`",
        "$.a & $.b",
        "'unterminated",
        "%",
        "1.5",
    ] {
        assert!(JsonPath::parse(bad).is_err(), "{bad:?} parsed");
    }
    let deep = format!("{}$.a{}", "(".repeat(100), ")".repeat(100));
    assert!(JsonPath::parse(&deep).is_err());
    assert!(JsonPath::parse(&"a.".repeat(3000)).is_err());
}

#[test]
fn evaluation_is_bounded() {
    let wide = Value::Array(vec![json!({"x": [1, 2, 3]}); 50_000]);
    let path = JsonPath::parse("$[*].x[*]").unwrap();
    assert!(path.find(&wide).is_err());
    let path = JsonPath::parse("$.s * 100000000").unwrap();
    assert!(path.find(&json!({"s": "abc"})).unwrap().is_empty());
}
