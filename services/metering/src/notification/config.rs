//! How the notification agent runs: where it listens (Ceilometer's exchanges and topic), which
//! meter definitions it reads, how it signs and names what it publishes, and its batches.

use std::time::Duration;

use super::definitions::{MeterDefinitions, SampleOptions};

/// **Contract**: Ceilometer 27.0.0's default `[notification] notification_control_exchanges`,
/// the exchanges the agent binds its queues to unless told otherwise. `manila` is not among
/// them (add it to meter shares).
pub const DEFAULT_CONTROL_EXCHANGES: [&str; 14] = [
    "nova",
    "glance",
    "neutron",
    "cinder",
    "heat",
    "keystone",
    "trove",
    "zaqar",
    "swift",
    "ceilometer",
    "magnum",
    "dns",
    "ironic",
    "aodh",
];

/// **Contract**: `[oslo_messaging_notifications] topics`' default: the services publish on
/// `notifications.<priority>`.
pub const DEFAULT_TOPIC: &str = "notifications";

/// The agent's settings.
#[derive(Clone, Debug)]
pub struct NotificationConfig {
    /// Exchanges whose `<topic>.<priority>` keys are bound to the agent's queues.
    pub control_exchanges: Vec<String>,
    /// Topics listened to (queues `<topic>.<priority>`).
    pub topics: Vec<String>,
    /// The meter definitions (reloaded on SIGHUP by whoever holds a clone).
    pub definitions: MeterDefinitions,
    /// Ceilometer's telemetry secret: published samples are signed with it (unsigned when unset).
    pub telemetry_secret: Option<String>,
    /// This host: the publisher id is `telemetry.publisher.<host>`.
    pub host: String,
    /// `sample_source` and the `user_metadata` rules.
    pub samples: SampleOptions,
    /// Notifications handled together (one publish per notification, in parallel).
    pub batch_size: usize,
    /// Longest wait for a batch to fill.
    pub batch_timeout: Duration,
    /// Batches handled at once.
    pub max_batches_in_flight: usize,
    /// How long a stop waits for batches in flight.
    pub stop_deadline: Duration,
    /// Publish the samples of a whole batch in one message (up to 1000 samples each) instead
    /// of one message per notification as Ceilometer does: the same format, which every
    /// consumer of `metering.sample` reads, for about half the broker's work per notification.
    pub group_samples: bool,
}

impl Default for NotificationConfig {
    fn default() -> Self {
        Self {
            control_exchanges: DEFAULT_CONTROL_EXCHANGES
                .iter()
                .map(|e| (*e).to_owned())
                .collect(),
            topics: vec![DEFAULT_TOPIC.to_owned()],
            definitions: MeterDefinitions::new(Vec::new()),
            telemetry_secret: None,
            host: "localhost".to_owned(),
            samples: SampleOptions::default(),
            batch_size: 100,
            batch_timeout: Duration::from_millis(50),
            max_batches_in_flight: 4,
            stop_deadline: Duration::from_secs(10),
            group_samples: false,
        }
    }
}

/// `[meter]` of the configuration file, named as Ceilometer names it.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeterSection {
    /// Files or directories of meter definitions (`*.yaml`), in order; the built-in file when
    /// empty.
    #[serde(default)]
    pub meter_definitions_dirs: Vec<std::path::PathBuf>,
}

/// `[notification]` of the configuration file, named as Ceilometer names it.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotificationSection {
    /// The exchanges listened to ([`DEFAULT_CONTROL_EXCHANGES`] when empty).
    #[serde(default)]
    pub notification_control_exchanges: Vec<String>,
    /// The topics listened to (`notifications` when empty).
    #[serde(default)]
    pub topics: Vec<String>,
    /// Notifications handled together (default 100).
    pub batch_size: Option<usize>,
    /// `[DEFAULT] sample_source` (default `openstack`).
    pub sample_source: Option<String>,
    /// Publish a batch's samples in one message (default false: one per notification, as
    /// Ceilometer).
    pub group_samples: Option<bool>,
}

impl NotificationConfig {
    /// The agent's settings from the file's sections and the command line's lists (which win
    /// when not empty).
    pub fn resolve(
        meter: &MeterSection,
        notification: &NotificationSection,
        control_exchanges: &[String],
        meter_definitions: &[std::path::PathBuf],
        telemetry_secret: Option<String>,
        host: String,
    ) -> Self {
        let defaults = Self::default();
        let pick = |flags: &[String], file: &[String], default: Vec<String>| {
            if !flags.is_empty() {
                flags.to_vec()
            } else if !file.is_empty() {
                file.to_vec()
            } else {
                default
            }
        };
        let paths = if meter_definitions.is_empty() {
            &meter.meter_definitions_dirs
        } else {
            meter_definitions
        };
        let mut samples = defaults.samples.clone();
        if let Some(source) = &notification.sample_source {
            samples.source = source.clone();
        }
        Self {
            control_exchanges: pick(
                control_exchanges,
                &notification.notification_control_exchanges,
                defaults.control_exchanges.clone(),
            ),
            topics: pick(&[], &notification.topics, defaults.topics.clone()),
            definitions: MeterDefinitions::new(
                paths
                    .iter()
                    .map(|p| super::definitions::Source::Path(p.clone()))
                    .collect(),
            ),
            telemetry_secret,
            host,
            samples,
            batch_size: notification
                .batch_size
                .unwrap_or(defaults.batch_size)
                .max(1),
            group_samples: notification.group_samples.unwrap_or(defaults.group_samples),
            ..defaults
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{MeterConfig, Overrides};
    use crate::graph::Agent;
    use crate::notification::definitions::Source;

    #[test]
    fn the_file_names_them_as_ceilometer_and_flags_win() {
        let text = "url = \"rabbit://h/\"\n[meter]\nmeter_definitions_dirs = [\"/etc/ceilometer/meters.d\"]\n\
                    [notification]\nnotification_control_exchanges = [\"nova\", \"manila\"]\n";
        let file: MeterConfig = toml::from_str(text).unwrap_or_else(|e| panic!("{e}"));
        let resolved = file
            .resolve(Agent::Notification, &Overrides::default())
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(resolved.notification.control_exchanges, ["nova", "manila"]);
        assert_eq!(
            resolved.notification.definitions.sources(),
            [Source::Path("/etc/ceilometer/meters.d".into())]
        );
        let flags = Overrides {
            control_exchanges: vec!["glance".into()],
            meter_definitions: vec!["/tmp/m.yaml".into()],
            ..Overrides::default()
        };
        let resolved = file
            .resolve(Agent::Notification, &flags)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(resolved.notification.control_exchanges, ["glance"]);
        assert_eq!(
            resolved.notification.definitions.sources(),
            [Source::Path("/tmp/m.yaml".into())]
        );
        let defaults = MeterConfig::default()
            .resolve(Agent::AllInOne, &Overrides::default())
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            defaults.notification.control_exchanges.len(),
            DEFAULT_CONTROL_EXCHANGES.len()
        );
        assert!(
            defaults.notification.definitions.sources().is_empty(),
            "the built-in file"
        );
    }
}
