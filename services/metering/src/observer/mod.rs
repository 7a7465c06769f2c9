//! What the all-in-one agent shows on its standard output, so that a first run tells its
//! story: a demo alarm on the host's load ([`ensure_demo_alarm`]), and an observer that prints
//! the meters stored, the load samples and every alarm transition as they come.
//!
//! It reads the store only; it owns no data and takes no part in metering itself.

mod config;
mod manifold;

use std::collections::HashSet;
use std::sync::Mutex;

use chrono::Utc;

pub use config::ObserverConfig;
pub use manifold::{manifold, ObserverInputs};

use crate::model::{
    Alarm, AlarmState, ComparisonOperator, QueryTerm, StatisticKind, StatisticsQuery, ThresholdRule,
};
use crate::store::{self, Store, StoreError};

/// Name of the demo alarm.
pub const DEMO_ALARM: &str = "demo-host-load";

/// The meter the demo alarm and the observer watch: the host's 1-minute load average.
const LOAD_METER: &str = "load.1";

/// The demo alarm: `host`'s 1-minute load above 4 over two 10 s periods, logged on change.
pub fn demo_alarm(host: &str) -> Alarm {
    let now = Utc::now();
    Alarm {
        alarm_id: uuid::Uuid::new_v4().to_string(),
        name: DEMO_ALARM.to_owned(),
        description: String::new(),
        alarm_type: "threshold".to_owned(),
        threshold_rule: ThresholdRule {
            meter_name: LOAD_METER.to_owned(),
            threshold: 4.0,
            comparison_operator: ComparisonOperator::Gt,
            statistic: StatisticKind::Avg,
            period: 10,
            evaluation_periods: 2,
            query: vec![QueryTerm {
                field: "resource_id".to_owned(),
                op: "eq".to_owned(),
                value: host.to_owned(),
            }],
        },
        state: AlarmState::InsufficientData,
        state_reason: "Not evaluated yet".to_owned(),
        state_timestamp: now,
        alarm_actions: vec!["log://".to_owned()],
        ok_actions: vec!["log://".to_owned()],
        insufficient_data_actions: Vec::new(),
        repeat_actions: false,
        severity: "low".to_owned(),
        enabled: true,
        timestamp: now,
        project_id: None,
        user_id: None,
        time_constraints: Vec::new(),
        evaluate_timestamp: None,
    }
}

/// Stores the demo alarm for `host` in the store at `store_url` unless one of that name
/// exists.
pub async fn ensure_demo_alarm(store_url: &str, host: &str) -> Result<(), StoreError> {
    let store = store::open(store_url).await?;
    let alarms = store.alarms().await?;
    if !alarms.iter().any(|a| a.name == DEMO_ALARM) {
        store.create_alarm(&demo_alarm(host)).await?;
    }
    Ok(())
}

/// Prints what changed since the last call; `printed` remembers the lines already shown.
async fn print_progress(
    store: &dyn Store,
    printed: &Mutex<HashSet<String>>,
) -> Result<(), StoreError> {
    let meters = store.meters(None).await?;
    let mut names: Vec<&str> = meters.iter().map(|m| m.name.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    let load = store
        .statistics(&StatisticsQuery {
            meter: LOAD_METER.to_owned(),
            ..Default::default()
        })
        .await?;
    let count = load.first().map_or(0, |s| s.count);
    let highest = load.first().map_or(0.0, |s| s.max);
    let meters_line = format!("meters stored: {}", names.join(", "));
    let new_meters = printed
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(meters_line.clone());
    if new_meters {
        println!("{meters_line}");
    }
    println!("samples: {count} {LOAD_METER} samples stored (highest load {highest})");
    for alarm in store.alarms().await? {
        for change in store.history(&alarm.alarm_id).await? {
            let key = format!(
                "{}-{}-{}",
                alarm.alarm_id,
                change.timestamp.timestamp_micros(),
                change.current.as_str()
            );
            let fresh = printed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(key);
            if fresh {
                let previous = change.previous.map_or("-", |p| p.as_str());
                println!(
                    "alarm {}: {} -> {} ({})",
                    alarm.name,
                    previous,
                    change.current.as_str(),
                    change.reason
                );
            }
        }
    }
    Ok(())
}
