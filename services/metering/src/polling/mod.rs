//! The polling agent: on timers, polls this host's meters for each configured source and
//! publishes them as Ceilometer's polling agent does — notifications with priority `sample`,
//! event type `telemetry.polling`, payload `{"samples": [...]}`, on exchange `ceilometer`,
//! topic `notifications` — in batches, each sample signed with the telemetry secret.
//!
//! [`start`] runs it without the engine; [`manifold`] declares it for the engine, and
//! [`PollingConfig`] says what to poll. [`start_serving`] also serves [`rpc::POLL_NOW`], run as
//! a job (see `tidings_jobs`), so that `tidings meter poll-now` can make every agent poll at
//! once.
//!
//! Sources with the same interval share one timer, as in Ceilometer; within a cycle a
//! (meter, resource) pair is polled for the first source that wants it only.

pub mod config;
mod manifold;
pub mod pollsters;
pub mod rpc;
pub mod yaml;

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use chrono::Utc;
use serde_json::{json, Value};
use tidings::notify::Notifier;
use tidings::{Context, Transport};
use tidings_runtime::{PeriodicTasks, Schedule, TaskWorker, WorkerError};

pub use self::config::PollingConfig;
pub use self::manifold::{manifold, PollingInputs};

use self::config::{validate_sources, Source, SourceError};
use self::pollsters::Measurement;
use super::model::Sample;
use super::sample::to_wire;

pub use crate::sample::contract::{
    EXCHANGE, POLLING_EVENT_TYPE as EVENT_TYPE, POLLING_PUBLISHER_ID as PUBLISHER_ID,
    POLLING_TOPIC as TOPIC,
};

/// Counters shown in the worker's report.
#[derive(Debug, Default)]
struct Counters {
    cycles: AtomicU64,
    samples: AtomicU64,
    notifications: AtomicU64,
    failures: AtomicU64,
}

/// Polls and publishes one cycle for the sources of one interval.
#[derive(Debug)]
struct Cycle {
    sources: Vec<Source>,
    config: PollingConfig,
    notifier: Notifier,
    counters: Arc<Counters>,
}

impl Cycle {
    fn samples(&self, measurements: Vec<Measurement>) -> Vec<Sample> {
        let now = Utc::now();
        let mut seen = HashSet::new();
        let mut samples = Vec::new();
        for source in &self.sources {
            for m in &measurements {
                if !source.wants(m.meter) || !seen.insert((m.meter, m.resource_id.clone())) {
                    continue;
                }
                samples.push(Sample {
                    source: source.name.clone(),
                    name: m.meter.to_owned(),
                    counter_type: m.counter_type,
                    unit: m.unit.to_owned(),
                    volume: m.volume,
                    user_id: None,
                    project_id: None,
                    resource_id: m.resource_id.clone(),
                    timestamp: now,
                    resource_metadata: m
                        .metadata
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), Value::String(v.clone())))
                        .collect(),
                    message_id: uuid::Uuid::new_v4().to_string(),
                });
            }
        }
        samples
    }

    async fn run(&self) -> Result<(), WorkerError> {
        self.poll().await.map(|_| ())
    }

    /// Polls and publishes once; the samples and notifications published.
    async fn poll(&self) -> Result<rpc::PollReport, WorkerError> {
        let samples = self.samples(pollsters::poll_host(&self.config.host).await);
        self.counters.cycles.fetch_add(1, Ordering::Relaxed);
        let secret = self.config.telemetry_secret.as_deref().unwrap_or("");
        let wire: Vec<Value> = samples
            .iter()
            .map(|s| Value::Object(to_wire(s, secret)))
            .collect();
        let batch = if self.config.batch_size == 0 {
            1
        } else {
            self.config.batch_size
        };
        let mut report = rpc::PollReport::default();
        for chunk in wire.chunks(batch) {
            let sent = self
                .notifier
                .sample(&Context::new(), EVENT_TYPE, json!({ "samples": chunk }))
                .await;
            match sent {
                Ok(()) => {
                    self.counters.notifications.fetch_add(1, Ordering::Relaxed);
                    self.counters
                        .samples
                        .fetch_add(chunk.len() as u64, Ordering::Relaxed);
                    report.notifications += 1;
                    report.samples += chunk.len() as u64;
                }
                Err(error) => {
                    self.counters.failures.fetch_add(1, Ordering::Relaxed);
                    return Err(WorkerError::failed(error));
                }
            }
        }
        Ok(report)
    }
}

/// Starts polling: one periodic task per distinct interval, first run at once.
pub fn start(transport: &Transport, config: PollingConfig) -> Result<TaskWorker, SourceError> {
    let (cycles, counters) = cycles(transport, &config)?;
    Ok(spawn_cycles(&cycles, &counters))
}

/// Like [`start`], and serves [`rpc::POLL_NOW`] (as a plain call and as a job) on
/// [`rpc::TOPIC`] as server `config.host`, until the worker is stopped.
pub async fn start_serving(
    transport: &Transport,
    config: PollingConfig,
) -> Result<TaskWorker, WorkerError> {
    let (cycles, counters) = cycles(transport, &config).map_err(WorkerError::fatal)?;
    let server = rpc::serve(transport, &config.host, cycles.clone())
        .await
        .map_err(WorkerError::failed)?;
    let polling = spawn_cycles(&cycles, &counters);
    let report = counters.clone();
    Ok(TaskWorker::spawn(|stop| async move {
        use tidings_runtime::Worker;
        let ended_alone = tokio::select! {
            () = stop.cancelled() => false,
            () = server.stopped() => true,
        };
        polling.kill();
        let polled = polling.wait().await;
        server.stop(std::time::Duration::from_secs(5)).await;
        if ended_alone {
            return Err(WorkerError::failed(
                "the polling agent's RPC server stopped: transport closed",
            ));
        }
        polled
    })
    .with_report(move || counters_report(&report)))
}

/// One cycle per distinct interval, sharing the agent's counters.
fn cycles(
    transport: &Transport,
    config: &PollingConfig,
) -> Result<(Vec<Arc<Cycle>>, Arc<Counters>), SourceError> {
    validate_sources(&config.sources)?;
    let counters = Arc::new(Counters::default());
    let notifier = Notifier::new(transport, PUBLISHER_ID)
        .exchange(EXCHANGE)
        .topics([TOPIC]);
    let mut by_interval: BTreeMap<u64, Vec<Source>> = BTreeMap::new();
    for source in &config.sources {
        by_interval
            .entry(source.interval)
            .or_default()
            .push(source.clone());
    }
    let cycles = by_interval
        .into_values()
        .map(|sources| {
            Arc::new(Cycle {
                sources,
                config: config.clone(),
                notifier: notifier.clone(),
                counters: counters.clone(),
            })
        })
        .collect();
    Ok((cycles, counters))
}

fn spawn_cycles(cycles: &[Arc<Cycle>], counters: &Arc<Counters>) -> TaskWorker {
    let mut tasks = PeriodicTasks::new();
    for cycle in cycles {
        let interval = cycle.sources.first().map_or(0, |s| s.interval);
        // Validation refused zero intervals, so the schedule is valid.
        let Ok(schedule) = Schedule::every(std::time::Duration::from_secs(interval)) else {
            continue;
        };
        let cycle = cycle.clone();
        tasks = tasks.add(
            format!("poll-every-{interval}s"),
            schedule.run_immediately(true),
            move |_stop| {
                let cycle = cycle.clone();
                async move { cycle.run().await }
            },
        );
    }
    let report = counters.clone();
    tasks.spawn().with_report(move || counters_report(&report))
}

fn counters_report(report: &Counters) -> Value {
    json!({
        "cycles": report.cycles.load(Ordering::Relaxed),
        "samples_published": report.samples.load(Ordering::Relaxed),
        "notifications": report.notifications.load(Ordering::Relaxed),
        "publish_failures": report.failures.load(Ordering::Relaxed),
    })
}

/// The samples of a polling notification payload (`{"samples": [...]}`).
pub fn samples_of(payload: &Value) -> Option<&Vec<Value>> {
    payload.get("samples").and_then(Value::as_array)
}
