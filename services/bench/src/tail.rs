//! The tail section: call latency percentiles under a fixed offered load (an open loop), for
//! tidings and for the bare-lapin request/reply baseline side by side.
//!
//! `call-1` and `call-64` are closed loops: a call is only sent when an earlier one returned,
//! so when the system stalls the load stalls with it and the slow moment is measured once
//! instead of for every request that should have gone out meanwhile (coordinated omission).
//! Here each request has a scheduled send time on a fixed-rate schedule, and its latency runs
//! from that scheduled time: a stall counts for every call it delayed.
//!
//! Each side first measures its own maximum sustained rate (64 calls in flight, as
//! `call-64/json`), then runs at `LOAD_PERCENTS` of that maximum, so both are compared at the
//! same share of their own capacity. Loads alternate between the sides, which keeps them close
//! in time on a shared machine.

use hdrhistogram::Histogram;
use serde::Serialize;

use super::harness::{self, Result, Wire};
use super::{baseline, scenarios, Env};

/// The offered loads, in percent of each side's maximum sustained rate.
pub(crate) const LOAD_PERCENTS: [u32; 3] = [25, 50, 80];

/// Latency percentiles of one side at one load, in µs from the scheduled send time.
#[derive(Clone, Debug, Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// The rate this side was offered (its percentage of its own maximum).
    pub rate_per_s: f64,
    /// This side's maximum sustained rate, closed loop.
    pub max_rate_per_s: f64,
    /// Calls measured.
    pub calls: u64,
}

impl Percentiles {
    fn of(histogram: &Histogram<u64>, rate_per_s: f64, max_rate_per_s: f64) -> Self {
        Self {
            p50_us: histogram.value_at_quantile(0.5),
            p99_us: histogram.value_at_quantile(0.99),
            p999_us: histogram.value_at_quantile(0.999),
            rate_per_s,
            max_rate_per_s,
            calls: histogram.len(),
        }
    }
}

/// One load of the tail section.
#[derive(Clone, Debug, Serialize)]
pub struct TailRow {
    /// Percent of each side's maximum sustained rate.
    pub load_percent: u32,
    /// The rate offered to tidings (to the baseline when only it ran); each side's own rate is
    /// in its entry.
    pub rate_per_s: f64,
    /// Through tidings (absent when `--side baseline`).
    pub tidings: Option<Percentiles>,
    /// Through the bare-lapin baseline (absent when `--side tidings`).
    pub baseline: Option<Percentiles>,
    /// tidings' p99 ÷ the baseline's (lower is better; `null` when a side did not run).
    pub p99_ratio: Option<f64>,
}

/// The client and server of one side, kept for the whole section (boxed: they are large and
/// moved around).
enum Side {
    Tidings(Box<scenarios::EchoRpc>),
    Baseline(Box<baseline::EchoRpc>),
}

impl Side {
    fn name(&self) -> &'static str {
        match self {
            Side::Tidings(_) => "tidings",
            Side::Baseline(_) => "baseline",
        }
    }

    async fn call(&self) -> Result<()> {
        match self {
            Side::Tidings(rpc) => rpc.call().await,
            Side::Baseline(rpc) => rpc.call().await,
        }
    }

    async fn stop(self) {
        match self {
            Side::Tidings(rpc) => rpc.stop().await,
            Side::Baseline(rpc) => rpc.stop().await,
        }
    }
}

/// Progress steps the section reports for `sides` sides.
pub(crate) fn steps(sides: usize) -> usize {
    sides * (1 + LOAD_PERCENTS.len())
}

/// Runs the section on the sides `--side` allows (`None`: both), with oslo JSON; `step` is
/// told what starts next.
pub(crate) async fn run(
    env: &Env,
    only_side: Option<&str>,
    step: &mut dyn FnMut(&str),
) -> Result<Vec<TailRow>> {
    let wire = Wire::Json;
    let mut sides = Vec::new();
    if only_side.is_none_or(|only| only == "tidings") {
        sides.push(Side::Tidings(Box::new(
            scenarios::EchoRpc::start(env, wire).await?,
        )));
    }
    if only_side.is_none_or(|only| only == "baseline") {
        match baseline::EchoRpc::start(env, wire, baseline::Confirms::On).await {
            Ok(rpc) => sides.push(Side::Baseline(Box::new(rpc))),
            Err(error) => {
                stop_all(sides).await;
                return Err(error);
            }
        }
    }
    let result = measure(env, &sides, step).await;
    stop_all(sides).await;
    result
}

async fn stop_all(sides: Vec<Side>) {
    for side in sides {
        side.stop().await;
    }
}

async fn measure(env: &Env, sides: &[Side], step: &mut dyn FnMut(&str)) -> Result<Vec<TailRow>> {
    let mut maxima = Vec::with_capacity(sides.len());
    for side in sides {
        step(&format!("tail: {} maximum rate", side.name()));
        let call = || side.call();
        harness::latency(env.warm_up(), call).await?;
        maxima.push(harness::throughput(env.duration, |_| side.call()).await?);
    }
    let mut rows = Vec::with_capacity(LOAD_PERCENTS.len());
    for load_percent in LOAD_PERCENTS {
        let mut measured: Vec<Percentiles> = Vec::with_capacity(sides.len());
        for (side, &max_rate) in sides.iter().zip(&maxima) {
            step(&format!("tail: {} at {load_percent} %", side.name()));
            let rate = max_rate * f64::from(load_percent) / 100.0;
            let histogram = harness::open_loop(rate, env.duration, || side.call()).await?;
            measured.push(Percentiles::of(&histogram, rate, max_rate));
        }
        let mut tidings = None;
        let mut bare = None;
        for (side, figures) in sides.iter().zip(measured) {
            match side {
                Side::Tidings(_) => tidings = Some(figures),
                Side::Baseline(_) => bare = Some(figures),
            }
        }
        let rate_per_s = tidings
            .as_ref()
            .or(bare.as_ref())
            .map_or(f64::NAN, |p| p.rate_per_s);
        let p99_ratio = match (&tidings, &bare) {
            (Some(t), Some(b)) if b.p99_us > 0 => Some(t.p99_us as f64 / b.p99_us as f64),
            _ => None,
        };
        rows.push(TailRow {
            load_percent,
            rate_per_s,
            tidings,
            baseline: bare,
            p99_ratio,
        });
    }
    Ok(rows)
}
