//! Roll-ups: per meter, resource (or all of a meter's resources), project, unit and period,
//! the count, sum, min, max and first and last times of the samples in each period-long
//! bucket (Gnocchi's pre-aggregated series; the periods are its archive policy's
//! granularities). This module owns what they hold, how a batch of new samples adds to them,
//! and how a statistics query is answered from them and the raw samples together.
//!
//! Buckets are aligned on the Unix epoch: `bucket_start = ts - ts mod period`. A query whose
//! buckets are made of whole roll-up buckets (its period a multiple of a roll-up period, its
//! origin on that period's boundary) reads the roll-ups for the whole buckets inside its
//! range and the raw samples for the ragged edges ([`plan`]); any other query reads raw
//! samples only, as before. Both give the same buckets: counts, minima, maxima and times are
//! the same numbers, sums and averages the same up to the rounding of adding in another order.
//!
//! Two kinds of row: scope [`SCOPE_RESOURCE`] (one resource) and [`SCOPE_METER`] (every
//! resource of the meter, `resource_id` empty), so that a meter's statistics read one row per
//! bucket and project rather than one per resource.
//!
//! Project and user ids are stored as keys ([`owner_key`]): empty for none, `=` and the id
//! otherwise, so that a primary key can hold "no project" in both databases.

use std::collections::BTreeMap;

use super::sql::{chunk_of, micros, period_micros, Param, SampleRow, StatsRow};
use crate::model::StatisticsQuery;

/// Roll-up rows of one resource.
pub(super) const SCOPE_RESOURCE: i64 = 0;
/// Roll-up rows of every resource of a meter.
pub(super) const SCOPE_METER: i64 = 1;

/// Columns of `sample_rollups`, in the order [`RollupKey`] and [`Aggregate`] hold them.
pub(super) const ROLLUP_COLUMNS: &str = "meter, scope, period, resource_id, project_key, unit, \
     bucket_start, n, total, low, high, first_ts, last_ts";

/// The primary key of `sample_rollups`.
pub(super) const ROLLUP_KEY: &str =
    "meter, scope, period, resource_id, project_key, unit, bucket_start";

/// An id that may be missing as the text a primary key can hold.
pub(super) fn owner_key(id: Option<&str>) -> String {
    id.map_or_else(String::new, |id| format!("={id}"))
}

/// The id behind an [`owner_key`].
pub(super) fn from_owner_key(key: &str) -> Option<String> {
    key.strip_prefix('=').map(str::to_owned)
}

/// The SQL expression of [`owner_key`] over a column.
pub(super) fn owner_key_sql(column: &str) -> String {
    format!("COALESCE('=' || {column}, '')")
}

/// The start of the `length`-long epoch-aligned bucket holding `ts` (µs).
pub(super) fn bucket_start(ts: i64, length: i64) -> i64 {
    ts - ts.rem_euclid(length)
}

/// The SQL expression of [`bucket_start`] over `ts` with the length as the given text.
pub(super) fn bucket_start_sql(length: &str) -> String {
    format!("(ts - (((ts % {length}) + {length}) % {length}))")
}

/// Count, sum, extremes and times of some samples.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Aggregate {
    pub count: i64,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
    pub first: i64,
    pub last: i64,
}

impl Aggregate {
    /// One sample.
    pub fn of(ts: i64, volume: f64) -> Self {
        Self {
            count: 1,
            sum: volume,
            min: volume,
            max: volume,
            first: ts,
            last: ts,
        }
    }

    /// The statistics row of bucket `bucket` from `origin` (µs) in `unit`.
    pub fn into_row(self, bucket: i64, unit: String, origin: i64) -> StatsRow {
        StatsRow {
            bucket,
            unit,
            count: self.count,
            sum: self.sum,
            avg: self.sum / self.count as f64,
            min: self.min,
            max: self.max,
            first: self.first,
            last: self.last,
            origin,
        }
    }

    /// Adds `other`'s samples.
    pub fn add(&mut self, other: &Aggregate) {
        self.count += other.count;
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        self.first = self.first.min(other.first);
        self.last = self.last.max(other.last);
    }
}

/// Which roll-up row.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct RollupKey {
    pub meter: String,
    pub scope: i64,
    /// Seconds.
    pub period: i64,
    pub resource_id: String,
    pub project_key: String,
    pub unit: String,
    pub bucket_start: i64,
}

/// What newly stored samples add to the roll-ups of `periods` (seconds), in key order (the
/// order every writer locks rows in, so that concurrent writers cannot deadlock).
pub(super) fn deltas<'a>(
    rows: impl IntoIterator<Item = &'a SampleRow>,
    periods: &[u64],
) -> BTreeMap<RollupKey, Aggregate> {
    let mut out: BTreeMap<RollupKey, Aggregate> = BTreeMap::new();
    for row in rows {
        let project_key = owner_key(row.project_id.as_deref());
        for &period in periods {
            let length = period_micros(period);
            let start = bucket_start(row.ts, length);
            for scope in [SCOPE_RESOURCE, SCOPE_METER] {
                let key = RollupKey {
                    meter: row.meter.clone(),
                    scope,
                    period: i64::try_from(period).unwrap_or(i64::MAX),
                    resource_id: if scope == SCOPE_RESOURCE {
                        row.resource_id.clone()
                    } else {
                        String::new()
                    },
                    project_key: project_key.clone(),
                    unit: row.unit.clone(),
                    bucket_start: start,
                };
                let one = Aggregate::of(row.ts, row.volume);
                out.entry(key).and_modify(|a| a.add(&one)).or_insert(one);
            }
        }
    }
    out
}

/// The statement that fills the roll-ups of one period from the stored samples (a period the
/// store did not keep before, or a database made before roll-ups existed). One parameter-free
/// statement per scope; `length` is the period in µs, `period` in seconds.
pub(super) fn backfill_sql(period: u64) -> [String; 2] {
    let length = period_micros(period).to_string();
    let bucket = bucket_start_sql(&length);
    let project = owner_key_sql("project_id");
    let aggregates = "COUNT(*), SUM(volume), MIN(volume), MAX(volume), MIN(ts), MAX(ts)";
    [
        format!(
            "INSERT INTO sample_rollups ({ROLLUP_COLUMNS}) SELECT meter, {SCOPE_RESOURCE}, \
             {period}, resource_id, {project}, unit, {bucket}, {aggregates} FROM samples \
             GROUP BY meter, resource_id, {project}, unit, {bucket}"
        ),
        format!(
            "INSERT INTO sample_rollups ({ROLLUP_COLUMNS}) SELECT meter, {SCOPE_METER}, \
             {period}, '', {project}, unit, {bucket}, {aggregates} FROM samples \
             GROUP BY meter, {project}, unit, {bucket}"
        ),
    ]
}

/// A piece of a statistics query's range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Segment {
    /// Raw samples with `from <= ts <= to` (µs).
    Raw { from: i64, to: i64 },
    /// Roll-ups of `period` (seconds) with `from <= bucket_start < until` (µs, aligned).
    Rollup { period: u64, from: i64, until: i64 },
}

/// How to answer a statistics query from segments: every part's rows are grouped into
/// buckets `(time - origin) / length` (µs; one bucket when the query has no period).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Plan {
    pub origin: i64,
    pub length: i64,
    pub segments: Vec<Segment>,
}

/// What [`plan`] needs to know of the stored samples when the query leaves a side of its
/// range open: the first and last time of the matching samples (from the roll-ups).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Extent {
    pub first: i64,
    pub last: i64,
}

/// Whether [`plan`] needs an [`Extent`] for `query`.
pub(super) fn needs_extent(query: &StatisticsQuery) -> bool {
    query.start.is_none() || query.end.is_none()
}

/// The segments that answer `query` with roll-ups of `periods` (seconds, ascending, each
/// dividing the largest), or `None` when the roll-ups cannot help (no periods, or a periodic
/// query whose buckets do not line up with any) and the raw query answers alone. `extent` is
/// the matching samples' first and last time when [`needs_extent`]; `Ok(None)` from the
/// caller's extent lookup (no matching roll-up at all) means no samples match either.
pub(super) fn plan(
    query: &StatisticsQuery,
    periods: &[u64],
    extent: Option<Extent>,
) -> Option<Plan> {
    let largest = period_micros(*periods.last()?);
    let start = query.start.as_ref().map(micros);
    let end = query.end.as_ref().map(micros);
    if needs_extent(query) && extent.is_none() {
        // Nothing stored matches: an empty answer, as the raw query would give.
        return Some(Plan {
            origin: 0,
            length: i64::MAX,
            segments: Vec::new(),
        });
    }
    let (origin, length) = if query.period == 0 {
        (0, i64::MAX)
    } else {
        let origin = match start {
            Some(start) => start,
            None => extent?.first,
        };
        (origin, period_micros(query.period))
    };
    let usable: Vec<i64> = periods
        .iter()
        .rev()
        .map(|p| period_micros(*p))
        .filter(|p| query.period == 0 || (length % p == 0 && origin.rem_euclid(*p) == 0))
        .collect();
    if usable.is_empty() {
        return None;
    }
    // No samples lie outside the extent, so an open side may be widened to a boundary of
    // every period (each divides the largest), which leaves no ragged edge there.
    let from = match (start, extent) {
        (Some(start), _) => start,
        (None, Some(extent)) if query.period == 0 => bucket_start(extent.first, largest),
        (None, _) => origin,
    };
    let to = match (end, extent) {
        (Some(end), _) => end,
        (None, Some(extent)) => bucket_start(extent.last, largest).saturating_add(largest - 1),
        (None, None) => return None,
    };
    let mut segments = Vec::new();
    decompose(from, to, &usable, &mut segments);
    Some(Plan {
        origin,
        length,
        segments,
    })
}

/// Splits `[from, to]` into the longest whole buckets of `periods` (µs, descending) and raw
/// edges.
fn decompose(from: i64, to: i64, periods: &[i64], out: &mut Vec<Segment>) {
    if from > to {
        return;
    }
    let Some((&length, smaller)) = periods.split_first() else {
        out.push(Segment::Raw { from, to });
        return;
    };
    let first = bucket_start(from.saturating_add(length - 1), length);
    let until = bucket_start(to.saturating_add(1), length);
    if first < until {
        decompose(from, first - 1, smaller, out);
        out.push(Segment::Rollup {
            period: u64::try_from(length / 1_000_000).unwrap_or(0),
            from: first,
            until,
        });
        decompose(until, to, smaller, out);
    } else {
        decompose(from, to, smaller, out);
    }
}

/// A query's meter, resource and project as a filter of `sample_rollups`.
fn rollup_filter(
    query: &StatisticsQuery,
    params: &mut Vec<Param>,
    placeholder: fn(usize) -> String,
) -> String {
    let mut sql = String::new();
    let mut push = |clause: &str, param: Param, params: &mut Vec<Param>| {
        params.push(param);
        sql.push_str(" AND ");
        sql.push_str(clause);
        sql.push_str(&placeholder(params.len()));
    };
    push("meter = ", Param::Text(query.meter.clone()), params);
    match &query.resource_id {
        Some(resource) => {
            push("scope = ", Param::Int(SCOPE_RESOURCE), params);
            push("resource_id = ", Param::Text(resource.clone()), params);
        }
        None => {
            push("scope = ", Param::Int(SCOPE_METER), params);
            // Spelled out, so that the primary key's prefix is the obvious index to use.
            push("resource_id = ", Param::Text(String::new()), params);
        }
    }
    if let Some(project) = &query.project_id {
        push(
            "project_key = ",
            Param::Text(owner_key(Some(project))),
            params,
        );
    }
    sql
}

/// The [`Extent`] query: one row of first and last time (both null when nothing matches),
/// from the roll-ups of the largest period.
pub(super) fn extent_sql(
    query: &StatisticsQuery,
    largest: u64,
    placeholder: fn(usize) -> String,
) -> (String, Vec<Param>) {
    let mut params = Vec::new();
    let mut filter = rollup_filter(query, &mut params, placeholder);
    params.push(Param::Int(i64::try_from(largest).unwrap_or(i64::MAX)));
    filter.push_str(&format!(" AND period = {}", placeholder(params.len())));
    if let Some(start) = &query.start {
        params.push(Param::Int(micros(start)));
        filter.push_str(&format!(" AND last_ts >= {}", placeholder(params.len())));
    }
    if let Some(end) = &query.end {
        params.push(Param::Int(micros(end)));
        filter.push_str(&format!(" AND first_ts <= {}", placeholder(params.len())));
    }
    (
        format!("SELECT MIN(first_ts), MAX(last_ts) FROM sample_rollups WHERE 1 = 1{filter}"),
        params,
    )
}

/// The query of one segment. Columns: bucket, unit, count, sum, min, max, first, last — see
/// [`Part`].
pub(super) fn segment_sql(
    query: &StatisticsQuery,
    plan: &Plan,
    segment: &Segment,
    chunk_us: Option<i64>,
    placeholder: fn(usize) -> String,
) -> (String, Vec<Param>) {
    let mut params = vec![Param::Int(plan.origin), Param::Int(plan.length)];
    let origin = placeholder(1);
    let length = placeholder(2);
    match *segment {
        Segment::Raw { from, to } => {
            let mut filter = format!("meter = {}", {
                params.push(Param::Text(query.meter.clone()));
                placeholder(params.len())
            });
            if let Some(resource) = &query.resource_id {
                params.push(Param::Text(resource.clone()));
                filter.push_str(&format!(" AND resource_id = {}", placeholder(params.len())));
            }
            if let Some(project) = &query.project_id {
                params.push(Param::Text(project.clone()));
                filter.push_str(&format!(" AND project_id = {}", placeholder(params.len())));
            }
            params.push(Param::Int(from));
            filter.push_str(&format!(" AND ts >= {}", placeholder(params.len())));
            params.push(Param::Int(to));
            filter.push_str(&format!(" AND ts <= {}", placeholder(params.len())));
            // See `sql::sample_filter`.
            if let Some(length) = chunk_us {
                params.push(Param::Int(chunk_of(from, length)));
                filter.push_str(&format!(" AND chunk >= {}", placeholder(params.len())));
                params.push(Param::Int(chunk_of(to, length)));
                filter.push_str(&format!(" AND chunk <= {}", placeholder(params.len())));
            }
            (
                format!(
                    "SELECT (ts - CAST({origin} AS BIGINT)) / CAST({length} AS BIGINT) AS k, \
                     unit, COUNT(*), SUM(volume), MIN(volume), MAX(volume), MIN(ts), MAX(ts) \
                     FROM samples WHERE {filter} GROUP BY k, unit"
                ),
                params,
            )
        }
        Segment::Rollup {
            period,
            from,
            until,
        } => {
            let mut filter = rollup_filter(query, &mut params, placeholder);
            params.push(Param::Int(i64::try_from(period).unwrap_or(i64::MAX)));
            filter.push_str(&format!(" AND period = {}", placeholder(params.len())));
            // `+bucket_start`: no index ranges over it, so the primary key (meter, scope,
            // period, resource) is used, not the expiry's index (meter, bucket_start) that
            // would read every resource's rows of the meter.
            params.push(Param::Int(from));
            filter.push_str(&format!(
                " AND +bucket_start >= {}",
                placeholder(params.len())
            ));
            params.push(Param::Int(until));
            filter.push_str(&format!(
                " AND +bucket_start < {}",
                placeholder(params.len())
            ));
            (
                format!(
                    "SELECT (bucket_start - CAST({origin} AS BIGINT)) / CAST({length} AS BIGINT) \
                     AS k, unit, CAST(SUM(n) AS BIGINT), SUM(total), MIN(low), MAX(high), \
                     MIN(first_ts), MAX(last_ts) FROM sample_rollups WHERE 1 = 1{filter} \
                     GROUP BY k, unit"
                ),
                params,
            )
        }
    }
}

/// One row of a [`segment_sql`].
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Part {
    pub bucket: i64,
    pub unit: String,
    pub aggregate: Aggregate,
}

/// The statistics rows of a plan from its segments' parts: buckets in order, units in order
/// within a bucket.
pub(super) fn merge(plan: &Plan, parts: impl IntoIterator<Item = Part>) -> Vec<StatsRow> {
    let mut buckets: BTreeMap<(i64, String), Aggregate> = BTreeMap::new();
    for part in parts {
        buckets
            .entry((part.bucket, part.unit))
            .and_modify(|a| a.add(&part.aggregate))
            .or_insert(part.aggregate);
    }
    buckets
        .into_iter()
        .map(|((bucket, unit), a)| a.into_row(bucket, unit, plan.origin))
        .collect()
}

#[cfg(test)]
mod tests {
    use chrono::DateTime;

    use super::*;

    const HOUR: i64 = 3_600_000_000;
    const DAY: i64 = 24 * HOUR;

    fn query(period: u64, start: Option<i64>, end: Option<i64>) -> StatisticsQuery {
        StatisticsQuery {
            meter: "cpu".into(),
            period,
            start: start.and_then(DateTime::from_timestamp_micros),
            end: end.and_then(DateTime::from_timestamp_micros),
            ..StatisticsQuery::default()
        }
    }

    #[test]
    fn an_open_range_is_read_from_the_largest_roll_ups_alone() {
        let extent = Extent {
            first: 10 * DAY + 5,
            last: 12 * DAY + 7,
        };
        let plan = plan(&query(0, None, None), &[3_600, 86_400], Some(extent));
        assert_eq!(
            plan.map(|p| p.segments),
            Some(vec![Segment::Rollup {
                period: 86_400,
                from: 10 * DAY,
                until: 13 * DAY
            }])
        );
    }

    #[test]
    fn ragged_edges_are_read_from_smaller_roll_ups_then_raw_samples() {
        let start = 10 * DAY + 90 * 60_000_000;
        let end = 12 * DAY + HOUR + 17;
        let plan = plan(&query(0, Some(start), Some(end)), &[3_600, 86_400], None);
        assert_eq!(
            plan.map(|p| p.segments),
            Some(vec![
                Segment::Raw {
                    from: start,
                    to: 10 * DAY + 2 * HOUR - 1
                },
                Segment::Rollup {
                    period: 3_600,
                    from: 10 * DAY + 2 * HOUR,
                    until: 11 * DAY
                },
                Segment::Rollup {
                    period: 86_400,
                    from: 11 * DAY,
                    until: 12 * DAY
                },
                Segment::Rollup {
                    period: 3_600,
                    from: 12 * DAY,
                    until: 12 * DAY + HOUR
                },
                Segment::Raw {
                    from: 12 * DAY + HOUR,
                    to: end
                },
            ])
        );
    }

    #[test]
    fn a_period_that_does_not_line_up_reads_raw_samples() {
        let start = 10 * DAY + 90 * 60_000_000;
        assert_eq!(
            plan(
                &query(3_600, Some(start), None),
                &[3_600],
                Some(Extent {
                    first: start,
                    last: start
                })
            ),
            None
        );
        assert_eq!(
            plan(
                &query(5_400, Some(10 * DAY), None),
                &[3_600],
                Some(Extent { first: 0, last: 0 })
            ),
            None
        );
        assert!(plan(
            &query(7_200, Some(10 * DAY), Some(11 * DAY)),
            &[3_600],
            None
        )
        .is_some());
        assert_eq!(plan(&query(0, None, None), &[], None), None);
    }

    #[test]
    fn owner_keys_tell_no_id_from_an_empty_one() {
        assert_eq!(owner_key(None), "");
        assert_eq!(owner_key(Some("")), "=");
        assert_eq!(from_owner_key(&owner_key(Some("p"))), Some("p".to_owned()));
        assert_eq!(from_owner_key(""), None);
    }
}
