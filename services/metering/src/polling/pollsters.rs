//! Pollsters for the host this agent runs on, read from `/proc`: CPU time, load, memory, and
//! bytes read/written per disk and received/sent per network interface. Parsing is separate
//! from reading so it is tested on fixed text.

use std::collections::BTreeMap;

use super::super::model::CounterType;

/// One measurement, before it becomes a sample.
#[derive(Clone, Debug, PartialEq)]
pub struct Measurement {
    /// Meter name, e.g. `cpu`.
    pub meter: &'static str,
    /// Sample type.
    pub counter_type: CounterType,
    /// Unit.
    pub unit: &'static str,
    /// Value.
    pub volume: f64,
    /// Resource measured: the host, or `<host>-<device>`.
    pub resource_id: String,
    /// Extra facts for `resource_metadata`.
    pub metadata: BTreeMap<&'static str, String>,
}

/// Every meter these pollsters can produce.
pub const METERS: &[&str] = &[
    "cpu",
    "load.1",
    "load.5",
    "load.15",
    "memory.total",
    "memory.usage",
    "disk.device.read.bytes",
    "disk.device.write.bytes",
    "network.incoming.bytes",
    "network.outgoing.bytes",
];

/// Kernel clock ticks per second for `/proc/stat` (USER_HZ, 100 on Linux).
const USER_HZ: f64 = 100.0;

fn host_measurement(
    meter: &'static str,
    counter_type: CounterType,
    unit: &'static str,
    volume: f64,
    host: &str,
) -> Measurement {
    Measurement {
        meter,
        counter_type,
        unit,
        volume,
        resource_id: host.to_owned(),
        metadata: BTreeMap::from([("host", host.to_owned())]),
    }
}

fn device_measurement(meter: &'static str, volume: f64, host: &str, device: &str) -> Measurement {
    Measurement {
        meter,
        counter_type: CounterType::Cumulative,
        unit: "B",
        volume,
        resource_id: format!("{host}-{device}"),
        metadata: BTreeMap::from([("host", host.to_owned()), ("device", device.to_owned())]),
    }
}

/// `cpu`: CPU time used since boot (all but idle and iowait), in nanoseconds.
pub fn parse_cpu(stat: &str, host: &str) -> Vec<Measurement> {
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return Vec::new();
    };
    let fields: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    if fields.len() < 4 {
        return Vec::new();
    }
    // user nice system idle iowait irq softirq steal …: busy = all - idle - iowait.
    let idle = fields[3] + fields.get(4).copied().unwrap_or(0.0);
    let total: f64 = fields.iter().take(8).sum();
    let busy_ns = (total - idle) / USER_HZ * 1e9;
    vec![host_measurement(
        "cpu",
        CounterType::Cumulative,
        "ns",
        busy_ns,
        host,
    )]
}

/// `load.1`, `load.5`, `load.15`: the load averages.
pub fn parse_loadavg(loadavg: &str, host: &str) -> Vec<Measurement> {
    let values: Vec<f64> = loadavg
        .split_whitespace()
        .take(3)
        .filter_map(|f| f.parse().ok())
        .collect();
    if values.len() < 3 {
        return Vec::new();
    }
    ["load.1", "load.5", "load.15"]
        .into_iter()
        .zip(values)
        .map(|(meter, value)| host_measurement(meter, CounterType::Gauge, "process", value, host))
        .collect()
}

/// `memory.total` and `memory.usage` (total − available), in MB as Ceilometer reports memory.
pub fn parse_meminfo(meminfo: &str, host: &str) -> Vec<Measurement> {
    let kb = |key: &str| {
        meminfo
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<f64>()
                    .ok()
            })
    };
    let (Some(total), Some(available)) = (kb("MemTotal:"), kb("MemAvailable:")) else {
        return Vec::new();
    };
    vec![
        host_measurement(
            "memory.total",
            CounterType::Gauge,
            "MB",
            total / 1024.0,
            host,
        ),
        host_measurement(
            "memory.usage",
            CounterType::Gauge,
            "MB",
            (total - available) / 1024.0,
            host,
        ),
    ]
}

/// Bytes read and written per block device (512-byte sectors), skipping loop and ram devices
/// and partitions of devices already counted.
pub fn parse_diskstats(diskstats: &str, host: &str) -> Vec<Measurement> {
    let mut out = Vec::new();
    for line in diskstats.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 10 {
            continue;
        }
        let device = fields[2];
        if device.starts_with("loop") || device.starts_with("ram") || is_partition(device) {
            continue;
        }
        let (Ok(read), Ok(written)) = (fields[5].parse::<f64>(), fields[9].parse::<f64>()) else {
            continue;
        };
        out.push(device_measurement(
            "disk.device.read.bytes",
            read * 512.0,
            host,
            device,
        ));
        out.push(device_measurement(
            "disk.device.write.bytes",
            written * 512.0,
            host,
            device,
        ));
    }
    out
}

/// `sda1`, `vda2`, `nvme0n1p1`: partitions, whose bytes their disk already counts.
fn is_partition(device: &str) -> bool {
    if let Some((_, tail)) = device.rsplit_once('p') {
        if device.starts_with("nvme") || device.starts_with("mmcblk") {
            return !tail.is_empty() && tail.bytes().all(|b| b.is_ascii_digit());
        }
    }
    (device.starts_with("sd")
        || device.starts_with("vd")
        || device.starts_with("hd")
        || device.starts_with("xvd"))
        && device.bytes().last().is_some_and(|b| b.is_ascii_digit())
}

/// Bytes received and sent per network interface, skipping loopback.
pub fn parse_net_dev(net_dev: &str, host: &str) -> Vec<Measurement> {
    let mut out = Vec::new();
    for line in net_dev.lines().skip(2) {
        let Some((name, counters)) = line.split_once(':') else {
            continue;
        };
        let name = name.trim();
        if name == "lo" {
            continue;
        }
        let fields: Vec<f64> = counters
            .split_whitespace()
            .filter_map(|f| f.parse().ok())
            .collect();
        if fields.len() < 9 {
            continue;
        }
        out.push(device_measurement(
            "network.incoming.bytes",
            fields[0],
            host,
            name,
        ));
        out.push(device_measurement(
            "network.outgoing.bytes",
            fields[8],
            host,
            name,
        ));
    }
    out
}

/// Reads every `/proc` source this host offers; a missing file just yields no measurements.
pub async fn poll_host(host: &str) -> Vec<Measurement> {
    async fn read(path: &str) -> String {
        tokio::fs::read_to_string(path).await.unwrap_or_default()
    }
    let mut all = parse_cpu(&read("/proc/stat").await, host);
    all.extend(parse_loadavg(&read("/proc/loadavg").await, host));
    all.extend(parse_meminfo(&read("/proc/meminfo").await, host));
    all.extend(parse_diskstats(&read("/proc/diskstats").await, host));
    all.extend(parse_net_dev(&read("/proc/net/dev").await, host));
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_is_busy_jiffies_in_nanoseconds() {
        let m = parse_cpu("cpu  100 0 50 1000 10 0 0 0 0 0\ncpu0 1 2 3 4\n", "h");
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].volume, 150.0 / 100.0 * 1e9);
        assert_eq!(
            (m[0].counter_type, m[0].unit),
            (CounterType::Cumulative, "ns")
        );
    }

    #[test]
    fn load_and_memory_are_gauges() {
        let load = parse_loadavg("0.50 1.25 2.00 1/100 42\n", "h");
        assert_eq!(
            load.iter().map(|m| m.volume).collect::<Vec<_>>(),
            [0.5, 1.25, 2.0]
        );
        let mem = parse_meminfo(
            "MemTotal:  2048 kB\nMemFree: 100 kB\nMemAvailable:  1024 kB\n",
            "h",
        );
        assert_eq!(mem[0].volume, 2.0);
        assert_eq!(mem[1].volume, 1.0);
    }

    #[test]
    fn disks_and_interfaces_are_per_device() {
        let disks = parse_diskstats(
            " 7 0 loop0 1 0 8 0 0 0 0 0 0 0 0\n 253 0 vda 10 0 4 0 5 0 2 0 0 0 0\n 253 1 vda1 10 0 4 0 5 0 2 0 0 0 0\n",
            "h",
        );
        assert_eq!(disks.len(), 2, "{disks:?}");
        assert_eq!(disks[0].resource_id, "h-vda");
        assert_eq!(disks[0].volume, 4.0 * 512.0);
        assert_eq!(disks[1].volume, 2.0 * 512.0);
        let net = parse_net_dev(
            "Inter-|\n face |\n    lo: 5 1 0 0 0 0 0 0 5 1 0 0 0 0 0 0\n  eth0: 100 1 0 0 0 0 0 0 200 2 0 0 0 0 0 0\n",
            "h",
        );
        assert_eq!(net.len(), 2);
        assert_eq!((net[0].volume, net[1].volume), (100.0, 200.0));
        assert_eq!(net[0].resource_id, "h-eth0");
    }

    #[test]
    fn garbage_yields_nothing_rather_than_panicking() {
        for text in ["", "cpu x y", "nonsense\n\n", "MemTotal: lots"] {
            assert!(parse_cpu(text, "h").is_empty() || text.starts_with("cpu"));
            assert!(parse_meminfo(text, "h").is_empty());
            let _ = parse_diskstats(text, "h");
            let _ = parse_net_dev(text, "h");
        }
    }

    #[tokio::test]
    async fn this_host_reports_every_kind_of_meter() {
        let all = poll_host("test-host").await;
        for meter in ["cpu", "load.1", "memory.total", "memory.usage"] {
            assert!(all.iter().any(|m| m.meter == meter), "{meter} missing");
        }
    }
}
