//! What the store manifold needs: where the store is, how long samples live, and which
//! roll-up periods it keeps.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::default_url;

/// Roll-up periods kept when none are configured: an hour and a day (seconds). Finer ones
/// would hold a row per sample of a meter polled every few minutes.
pub const DEFAULT_ROLLUP_PERIODS: [u64; 2] = [3_600, 86_400];

/// How often the background expiry runs when samples have a time to live (seconds).
pub const DEFAULT_EXPIRY_INTERVAL: u64 = 600;

/// Most samples one expiry step deletes, so that a step never holds the writer for long.
pub const DEFAULT_EXPIRY_BATCH: usize = 5_000;

/// Settings of the store manifold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreConfig {
    /// Which store to open: `sqlite://PATH`, `sqlite::memory:` or `postgres://…` (see
    /// [`open`](super::open)). May hold a password: show it through [`redact`](super::redact).
    pub url: String,
    /// How long samples are kept and which roll-ups the store maintains.
    pub layout: StoreLayout,
}

impl StoreConfig {
    /// The store at `url`, with the default layout (samples kept forever).
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            layout: StoreLayout::default(),
        }
    }

    /// The same store with `layout`.
    pub fn with_layout(mut self, layout: StoreLayout) -> Self {
        self.layout = layout;
        self
    }
}

impl Default for StoreConfig {
    /// The embedded SQLite file of [`default_url`].
    fn default() -> Self {
        Self::new(default_url())
    }
}

/// Retention and roll-ups, as the `[database]` table of the agents' TOML file holds them
/// (Ceilometer's `[database]` section names the time to live the same way).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreLayout {
    /// Seconds a sample is kept after its timestamp; `-1` (or any value ≤ 0) keeps samples
    /// forever, as Ceilometer's `metering_time_to_live`.
    pub metering_time_to_live: i64,
    /// Per-meter times to live (seconds, `-1` for forever), overriding
    /// `metering_time_to_live` for the meters named.
    pub meter_time_to_live: BTreeMap<String, i64>,
    /// Roll-up periods in seconds (Gnocchi's archive-policy granularities): statistics whose
    /// period and range line up with them are answered from the roll-ups. Each must divide
    /// the largest, and the expiry cutoff is aligned on the largest.
    pub rollup_periods: Vec<u64>,
    /// Seconds between background expiry runs.
    pub expiry_interval: u64,
    /// Most samples deleted per expiry step.
    pub expiry_batch: usize,
}

impl Default for StoreLayout {
    fn default() -> Self {
        Self {
            metering_time_to_live: -1,
            meter_time_to_live: BTreeMap::new(),
            rollup_periods: DEFAULT_ROLLUP_PERIODS.to_vec(),
            expiry_interval: DEFAULT_EXPIRY_INTERVAL,
            expiry_batch: DEFAULT_EXPIRY_BATCH,
        }
    }
}

impl StoreLayout {
    /// Whether any sample ever expires.
    pub fn expires(&self) -> bool {
        self.metering_time_to_live > 0 || self.meter_time_to_live.values().any(|t| *t > 0)
    }

    /// The time to live of `meter`, `None` for forever.
    pub fn time_to_live(&self, meter: &str) -> Option<Duration> {
        let seconds = self
            .meter_time_to_live
            .get(meter)
            .copied()
            .unwrap_or(self.metering_time_to_live);
        u64::try_from(seconds)
            .ok()
            .filter(|s| *s > 0)
            .map(Duration::from_secs)
    }

    /// The roll-up periods, sorted, duplicates and zeros removed; an error names a period that
    /// does not divide the largest.
    pub fn periods(&self) -> Result<Vec<u64>, String> {
        let mut periods: Vec<u64> = self
            .rollup_periods
            .iter()
            .copied()
            .filter(|p| *p > 0)
            .collect();
        periods.sort_unstable();
        periods.dedup();
        if let Some(largest) = periods.last().copied() {
            if let Some(odd) = periods.iter().find(|p| largest % **p != 0) {
                return Err(format!(
                    "roll-up period {odd} s does not divide the largest, {largest} s"
                ));
            }
        }
        Ok(periods)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_live_forever_unless_a_time_to_live_is_set() {
        let mut layout = StoreLayout::default();
        assert!(!layout.expires());
        assert_eq!(layout.time_to_live("cpu"), None);
        layout.metering_time_to_live = 3_600;
        layout.meter_time_to_live.insert("cpu".into(), -1);
        layout.meter_time_to_live.insert("disk".into(), 60);
        assert!(layout.expires());
        assert_eq!(layout.time_to_live("cpu"), None);
        assert_eq!(layout.time_to_live("disk"), Some(Duration::from_secs(60)));
        assert_eq!(layout.time_to_live("mem"), Some(Duration::from_secs(3_600)));
    }

    #[test]
    fn roll_up_periods_must_divide_the_largest() {
        let layout = StoreLayout {
            rollup_periods: vec![3_600, 0, 300, 300],
            ..StoreLayout::default()
        };
        assert_eq!(layout.periods(), Ok(vec![300, 3_600]));
        let odd = StoreLayout {
            rollup_periods: vec![700, 3_600],
            ..StoreLayout::default()
        };
        assert!(odd.periods().is_err());
    }

    #[test]
    fn the_database_table_reads_from_toml() {
        let layout: StoreLayout = toml::from_str(
            "metering_time_to_live = 86400\nrollup_periods = [60, 3600]\n\
             [meter_time_to_live]\ncpu = 600\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(layout.metering_time_to_live, 86_400);
        assert_eq!(layout.meter_time_to_live.get("cpu"), Some(&600));
        assert_eq!(layout.rollup_periods, vec![60, 3_600]);
        assert_eq!(layout.expiry_batch, DEFAULT_EXPIRY_BATCH);
    }
}
