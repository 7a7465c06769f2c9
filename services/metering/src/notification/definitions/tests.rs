//! Loading and evaluation rules, each as Ceilometer 27.0.0 behaves (the Python suite
//! `tests/metering_notification_agent.rs` compares whole notifications with Ceilometer's code).

use serde_json::{json, Map, Value};

use super::*;

fn notification(event_type: &str, payload: Value) -> Value {
    let mut ctxt = Map::new();
    ctxt.insert("user".into(), json!("ctx-user"));
    ctxt.insert("project_id".into(), json!("ctx-project"));
    root(
        ctxt,
        "compute.host-1".into(),
        event_type.into(),
        payload,
        "0e8a3f3e-1111-4ec0-9a1b-6a6e8e2d3c41".into(),
        "2026-11-20 09:15:44.601733".into(),
    )
}

fn samples(set: &DefinitionSet, root: &Value) -> Vec<MeterSample> {
    set.evaluate(root, &SampleOptions::default())
        .unwrap()
        .into_iter()
        .flat_map(|o| o.result.unwrap())
        .filter_map(|f| match f {
            Finished::Sample(s) => Some(*s),
            Finished::Dropped { .. } => None,
        })
        .collect()
}

fn instance_payload() -> Value {
    json!({
        "instance_id": "vm-1", "user_id": "u-1", "tenant_id": "p-1", "memory_mb": 512,
        "vcpus": 2, "root_gb": 1, "ephemeral_gb": 0, "host": "compute-1",
        "instance_type": "m1.tiny", "instance_flavor_id": "1", "display_name": "web",
        "created_at": "2026-11-20 09:15:00+00:00", "launched_at": "2026-11-20T09:15:30.500000",
        "deleted_at": "", "image_meta": {"base_image_ref": "img-1"},
        "metadata": {"metering.server.group": "web", "owner": "alice"},
    })
}

#[test]
fn the_builtin_file_loads_whole() {
    let set = DefinitionSet::load(&[]).unwrap();
    assert!(set.problems().is_empty(), "{:?}", set.problems());
    assert!(set.len() >= 40, "{}", set.len());
}

#[test]
fn an_instance_notification_gives_the_flavour_meters() {
    let set = DefinitionSet::load(&[]).unwrap();
    let root = notification("compute.instance.create.end", instance_payload());
    let got = samples(&set, &root);
    let mut names: Vec<String> = got
        .iter()
        .map(|s| s.name.as_str().unwrap_or("").to_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "compute.instance.booting.time",
            "disk.ephemeral.size",
            "disk.root.size",
            "memory",
            "vcpus"
        ]
    );
    let vcpus = got.iter().find(|s| s.name == json!("vcpus")).unwrap();
    assert_eq!(vcpus.volume, json!(2));
    assert_eq!(
        vcpus.resource_metadata["flavor_name"],
        json!("m1.tiny"),
        "merge key applied"
    );
    assert_eq!(
        vcpus.resource_metadata["user_metadata"],
        json!({"server_group": "web"})
    );
    assert!(
        !vcpus.resource_metadata.contains_key("deleted_at"),
        "falsy values dropped"
    );
    assert_eq!(vcpus.timestamp, "2026-11-20T09:15:44.601733+00:00");
    let booting = got
        .iter()
        .find(|s| s.name == json!("compute.instance.booting.time"))
        .unwrap();
    assert_eq!(booting.volume, json!(30.5));
    // No user_id path: the context's user (Ceilometer's fallback never matches).
    assert_eq!(booting.user_id, json!("ctx-user"));
    assert_eq!(booting.project_id, json!("p-1"));
    // create.start and update match nothing.
    assert!(samples(
        &set,
        &notification("compute.instance.create.start", instance_payload())
    )
    .is_empty());
    assert!(samples(
        &set,
        &notification("compute.instance.update", instance_payload())
    )
    .is_empty());
}

#[test]
fn later_definitions_in_a_file_win_and_earlier_files_win() {
    let text = "metric:\n- {name: m, event_type: e, type: gauge, unit: A, volume: 1, resource_id: $.payload.id}\n- {name: m, event_type: e, type: gauge, unit: B, volume: 2, resource_id: $.payload.id}\n";
    let set = DefinitionSet::from_yaml("x.yaml", text).unwrap();
    let got = samples(&set, &notification("e", json!({"id": "r"})));
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].unit, json!("B"));
    assert_eq!(set.problems()[0].kind, "duplicate");
}

#[test]
fn broken_definitions_are_reported_by_name_and_the_rest_load() {
    let text = r#"
metric:
  - {name: ok, event_type: e, type: gauge, unit: B, volume: 1, resource_id: $.payload.id}
  - {name: no-volume, event_type: e, type: gauge, unit: B, resource_id: $.payload.id}
  - {name: bad-type, event_type: e, type: rate, unit: B, volume: 1, resource_id: $.payload.id}
  - {name: bad-path, event_type: e, type: gauge, unit: B, volume: '$.payload[', resource_id: $.payload.id}
  - {name: bad-regex, event_type: 'e(', type: gauge, unit: B, volume: 1, resource_id: $.payload.id}
  - {name: float, event_type: e, type: gauge, unit: B, volume: 1.5, resource_id: $.payload.id}
  - {name: plugin, event_type: e, type: gauge, unit: B, volume: {fields: $.a, plugin: nope}, resource_id: $.payload.id}
  - {name: pct, event_type: e, type: gauge, unit: '%', volume: 1, resource_id: $.payload.id}
"#;
    let set = DefinitionSet::from_yaml("x.yaml", text).unwrap();
    let rejected: Vec<&str> = set
        .problems()
        .iter()
        .map(|p| p.definition.as_str())
        .collect();
    assert_eq!(
        rejected,
        [
            "plugin",
            "float",
            "bad-regex",
            "bad-path",
            "bad-type",
            "no-volume"
        ]
    );
    // A unit that is no JSONPath is taken as written (Ceilometer rejects the definition).
    let got = samples(&set, &notification("e", json!({"id": "r"})));
    let pct = got.iter().find(|s| s.name == json!("pct")).unwrap();
    assert_eq!(pct.unit, json!("%"));
}

#[test]
fn files_that_are_not_definitions_fail_the_load() {
    assert!(DefinitionSet::from_yaml("x", "metric: [").is_err());
    assert!(DefinitionSet::from_yaml("x", "meters: []").is_err());
    assert!(DefinitionSet::from_yaml("x", "").is_err());
}

#[test]
fn event_types_are_python_re_match() {
    let text = "metric:\n- {name: m, event_type: image.upload, type: gauge, unit: B, volume: 1, resource_id: $.payload.id}\n";
    let set = DefinitionSet::from_yaml("x", text).unwrap();
    for hit in ["image.upload", "image.uploadXYZ", "imageXupload"] {
        assert!(set.any_match(hit), "{hit}");
    }
    assert!(!set.any_match("an image.upload"));
}

#[test]
fn lookup_definitions_give_one_sample_per_meter_or_none() {
    let set = DefinitionSet::load(&[]).unwrap();
    let payload = json!({
        "target": {"id": "AUTH_p"}, "initiator": {"id": "u", "project_id": "p"},
        "measurements": [
            {"metric": {"name": "storage.objects.incoming.bytes", "unit": "B"}, "result": 10},
            {"metric": {"name": "storage.objects.outgoing.bytes", "unit": "B"}, "result": 20},
        ],
    });
    let got = samples(
        &set,
        &notification("objectstore.http.request", payload.clone()),
    );
    assert_eq!(got.len(), 2);
    assert_eq!(got[1].volume, json!(20));
    assert_eq!(got[1].resource_id, json!("AUTH_p"));
    // One measurement without a unit: no sample at all.
    let mut broken = payload;
    broken["measurements"][1]["metric"]
        .as_object_mut()
        .unwrap()
        .remove("unit");
    let outcome = set
        .evaluate(
            &notification("objectstore.http.request", broken),
            &SampleOptions::default(),
        )
        .unwrap();
    assert!(
        matches!(&outcome[0].result, Ok(f) if matches!(f.as_slice(), [Finished::Dropped { .. }]))
    );
}

#[test]
fn fatal_values_are_errors_and_missing_ones_drops() {
    let set = DefinitionSet::load(&[]).unwrap();
    let dict_volume = json!({"id": "i", "size": {"bytes": 1}, "owner": "p"});
    let outcome = set
        .evaluate(
            &notification("image.upload", dict_volume),
            &SampleOptions::default(),
        )
        .unwrap();
    assert!(outcome[0].result.is_err());
    let no_volume = json!({"id": "i", "owner": "p"});
    let outcome = set
        .evaluate(
            &notification("image.upload", no_volume),
            &SampleOptions::default(),
        )
        .unwrap();
    assert!(
        matches!(&outcome[0].result, Ok(f) if matches!(f.as_slice(), [Finished::Dropped { .. }]))
    );
    let identity = json!({"outcome": "success", "initiator": {"id": "u-1"}});
    let got = samples(&set, &notification("identity.authenticate", identity));
    assert_eq!(got[0].name, json!("identity.authenticate.success"));
    assert_eq!(got[0].volume, json!(1));
}

#[test]
fn user_metadata_keeps_reserved_keys_only() {
    let rules = UserMetadataRules::default();
    let source =
        json!({"metering.server.group": "web", "owner": "alice", "metering.long": "x".repeat(300)});
    let mut metadata = Map::new();
    rules.add(source.as_object().unwrap(), &mut metadata);
    let kept = &metadata["user_metadata"];
    assert_eq!(kept["server_group"], json!("web"));
    assert_eq!(kept["long"].as_str().unwrap().len(), 256);
    assert!(kept.get("owner").is_none());
}

#[test]
fn a_reload_swaps_definitions_and_a_broken_file_keeps_the_old_ones() {
    let dir = std::env::temp_dir().join(format!("tidings-defs-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("meters.yaml");
    let definition = |name: &str| {
        format!("metric:\n- {{name: {name}, event_type: e, type: gauge, unit: B, volume: 1, resource_id: $.payload.id}}\n")
    };
    std::fs::write(&file, definition("first")).unwrap();
    let handle = MeterDefinitions::new(vec![Source::Path(dir.clone())]);
    let names = |h: &MeterDefinitions| {
        h.snapshot()
            .unwrap()
            .names()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&handle), ["first"]);
    let held = handle.snapshot().unwrap();
    std::fs::write(&file, definition("second")).unwrap();
    assert_eq!(handle.reload().unwrap().loaded, 1);
    assert_eq!(names(&handle), ["second"]);
    // A snapshot taken before stays whole.
    assert_eq!(held.names().collect::<Vec<_>>(), ["first"]);
    std::fs::write(&file, "metric: [").unwrap();
    assert!(handle.reload().is_err());
    assert_eq!(
        names(&handle),
        ["second"],
        "the broken file changed nothing"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// How many notifications a second the definitions turn into samples, broker aside:
/// `cargo test --release -p tidings-metering --lib evaluation_throughput -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement, not a rule"]
fn evaluation_throughput() {
    let set = DefinitionSet::load(&[]).unwrap();
    let options = SampleOptions::default();
    let cases = [
        ("compute.instance.exists", instance_payload()),
        (
            "image.upload",
            json!({"id": "img", "size": 12716032, "owner": "p", "name": "cirros", "status": "active"}),
        ),
        (
            "volume.create.end",
            json!({"volume_id": "v", "size": 10, "user_id": "u", "tenant_id": "p",
                                     "glance_metadata": [{"key": "image_id", "value": "i"}], "volume_attachment": []}),
        ),
        (
            "port.create.end",
            json!({"port": {"id": "port-1", "project_id": "p", "name": "x", "status": "DOWN"}}),
        ),
    ];
    for (event_type, payload) in cases {
        let start = std::time::Instant::now();
        let mut samples = 0;
        let rounds = 20_000;
        for _ in 0..rounds {
            let root = notification(event_type, payload.clone());
            for outcome in set.evaluate(&root, &options).unwrap() {
                for finished in outcome.result.unwrap() {
                    if let Finished::Sample(sample) = finished {
                        let _ = sample.to_message("id", "secret");
                        samples += 1;
                    }
                }
            }
        }
        let per_second = f64::from(rounds) / start.elapsed().as_secs_f64();
        println!(
            "{event_type}: {per_second:.0} notifications/s ({} samples each, signed)",
            samples / rounds
        );
    }
}
