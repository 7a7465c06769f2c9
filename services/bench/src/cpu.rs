//! CPU time per delivery: this process's and the broker's, over one measurement.
//!
//! On a small machine the client and the broker share the cores, and a throughput figure is
//! bounded by the CPU both spend on each message. Splitting that cost by side says where a gap
//! between tidings and the baseline lies: in the client, or in work the client makes the
//! broker do.

use serde::Serialize;

/// Clock ticks per second of the CPU times in `/proc/<pid>/stat` (the kernel's `USER_HZ`,
/// fixed at 100 for user space whatever the kernel's own tick).
const USER_HZ: f64 = 100.0;

/// CPU time per delivery (or per call) over one measurement, in µs.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct CpuCost {
    /// This process: the client side and whatever serves it (servers, listeners).
    pub process_us: f64,
    /// The broker's node, when it runs on this machine and could be found.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broker_us: Option<f64>,
}

/// CPU times read when a measurement started.
#[derive(Debug)]
pub(crate) struct CpuMeter {
    broker_pid: Option<u32>,
    process: Option<f64>,
    broker: Option<f64>,
}

impl CpuMeter {
    /// Starts measuring this process and, when given, the broker's.
    pub(crate) fn start(broker_pid: Option<u32>) -> Self {
        Self {
            broker_pid,
            process: cpu_seconds("self"),
            broker: broker_pid.and_then(|pid| cpu_seconds(&pid.to_string())),
        }
    }

    /// The CPU spent since the start, per one of `units` (deliveries or calls); `None` when
    /// nothing was counted or this process's times cannot be read.
    pub(crate) fn per_unit(&self, units: f64) -> Option<CpuCost> {
        if units.is_nan() || units < 1.0 {
            return None;
        }
        let spent = |before: Option<f64>, now: Option<f64>| Some((now? - before?) * 1e6 / units);
        Some(CpuCost {
            process_us: spent(self.process, cpu_seconds("self"))?,
            broker_us: spent(
                self.broker,
                self.broker_pid
                    .and_then(|pid| cpu_seconds(&pid.to_string())),
            ),
        })
    }
}

/// User and system CPU time of process `pid` (or `self`), in seconds.
fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_cpu_ticks(&stat).map(|ticks| ticks as f64 / USER_HZ)
}

/// utime + stime from a `/proc/<pid>/stat` line. The command name (field 2) is in parentheses
/// and may hold spaces, so fields are counted from the last `)`: state is field 3, utime 14 and
/// stime 15.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let after_name = stat.get(stat.rfind(')')? + 1..)?;
    let mut fields = after_name.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// The OS process id of the local RabbitMQ node, asked of `rabbitmqctl`; `None` when it cannot
/// tell (the figures then leave the broker out).
pub(crate) fn local_broker_pid() -> Option<u32> {
    let output = std::process::Command::new("rabbitmqctl")
        .args(["-q", "eval", "os:getpid()."])
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .trim_matches('"')
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn ticks_are_read_after_a_name_with_spaces_and_parentheses() {
        let stat = "4242 (tokio (rt) worker) S 1 4242 4242 0 -1 4194560 100 0 0 0 \
                    1234 567 0 0 20 0 8 0 100 1000 200";
        assert_eq!(parse_cpu_ticks(stat), Some(1234 + 567));
        assert_eq!(parse_cpu_ticks("4242 (cut short) S 1"), None);
    }

    #[test]
    fn this_process_spends_cpu_that_the_meter_sees() {
        let meter = CpuMeter::start(None);
        // Busy until the kernel has counted a tick of it (10 ms), or ten seconds have passed.
        let give_up = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut spins = 0u64;
        let cost = loop {
            spins = std::hint::black_box(spins + 1);
            if spins % 100_000 == 0 {
                let cost = meter.per_unit(1.0).unwrap();
                if cost.process_us > 0.0 || std::time::Instant::now() > give_up {
                    break cost;
                }
            }
        };
        assert!(cost.process_us >= 1e6 / USER_HZ, "{cost:?}");
        assert!(cost.broker_us.is_none());
        assert!(meter.per_unit(0.0).is_none());
    }
}
