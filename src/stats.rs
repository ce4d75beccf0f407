//! Statistics of a job's metric data: per series min, avg and max over the non-missing samples,
//! and per metric the job-level entry of `meta.json`'s `statistics`, computed as ClusterCockpit
//! computes it.
//!
//! Everything here is a pure function over [`JobData`], so the archiver can call it on a
//! blocking thread and tests can check it without I/O.

use std::collections::BTreeMap;

use crate::cluster::Cluster;
use crate::job_data::{JobData, MetricScope, SeriesStats, StatisticsSeries, Unit};

/// Series count from which a (metric, scope) gets a `statisticsSeries`, as ClusterCockpit's
/// `LoadData` decides it.
pub const STATISTICS_SERIES_MIN_SERIES: usize = 8;

/// Minimum number of non-missing values at a time step for its `statisticsSeries` entry. Steps
/// with fewer values get NaN.
const STATISTICS_SERIES_MIN_VALUES: usize = 3;

/// One metric's entry in `meta.json`'s `statistics`.
#[derive(Debug, Clone, PartialEq)]
pub struct JobStatistic {
    pub unit: Unit,
    pub avg: f64,
    pub min: f64,
    pub max: f64,
}

/// Rounds to 2 decimals the way ClusterCockpit does: `round(x * 100) / 100`, with halves
/// rounded away from zero.
pub fn round2(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}

/// Computes min, avg and max over the samples that are not NaN, each rounded to 2 decimals.
///
/// Returns 0, 0, 0 when no sample is present or when any result is not finite (an infinite
/// sample), as ClusterCockpit's `SanitizeStats` does for NaN, so the result is always safe to
/// write to JSON.
pub fn series_stats(data: &[f64]) -> SeriesStats {
    let mut n_samples = 0usize;
    let mut sum = 0.0;
    let mut min = f64::INFINITY;
    let mut max = f64::NEG_INFINITY;
    for &sample in data {
        if sample.is_nan() {
            continue;
        }
        n_samples += 1;
        sum += sample;
        min = min.min(sample);
        max = max.max(sample);
    }

    let zero = SeriesStats { min: 0.0, avg: 0.0, max: 0.0 };
    if n_samples == 0 {
        return zero;
    }
    let stats =
        SeriesStats { min: round2(min), avg: round2(sum / n_samples as f64), max: round2(max) };
    let all_finite = stats.min.is_finite() && stats.avg.is_finite() && stats.max.is_finite();
    if !all_finite {
        return zero;
    }
    stats
}

/// Sets every series' `statistics` from its `data`, replacing what the source reported.
pub fn fill_series_stats(data: &mut JobData) {
    for scopes in data.values_mut() {
        for metric in scopes.values_mut() {
            for series in &mut metric.series {
                series.statistics = Some(series_stats(&series.data));
            }
        }
    }
}

/// Computes `meta.json`'s `statistics` from the node-scope series of each metric.
///
/// For each metric with a node scope that has at least one series:
/// - `avg` is `round2(Σ series avg / num_nodes)`. The divisor is the job's node count, not the
///   series count, so a host without a series lowers the average, as in ClusterCockpit.
/// - `min` is the smallest series min and `max` the largest series max.
/// - `unit` is the cluster's unit for the metric, or the data's unit when the cluster does not
///   list the metric.
///
/// Metrics without a node scope, or with an empty one, get no entry. A series without
/// `statistics` contributes the statistics of its data.
pub fn job_statistics(
    data: &JobData,
    num_nodes: u32,
    cluster: &Cluster,
) -> BTreeMap<String, JobStatistic> {
    debug_assert!(num_nodes >= 1, "a job has at least one node");
    let divisor = f64::from(num_nodes.max(1));

    let mut res = BTreeMap::new();
    for (name, scopes) in data {
        let Some(node_metric) = scopes.get(&MetricScope::Node) else {
            continue;
        };
        if node_metric.series.is_empty() {
            continue;
        }

        let mut avg_sum = 0.0;
        let mut min = f64::INFINITY;
        let mut max = f64::NEG_INFINITY;
        for series in &node_metric.series {
            let stats = match series.statistics {
                Some(stats) => stats,
                None => series_stats(&series.data),
            };
            avg_sum += stats.avg;
            min = min.min(stats.min);
            max = max.max(stats.max);
        }

        let unit = match cluster.metric(name) {
            Some(config) => config.unit.clone(),
            None => node_metric.unit.clone(),
        };
        res.insert(name.clone(), JobStatistic { unit, avg: round2(avg_sum / divisor), min, max });
    }
    res
}

/// Adds a `statisticsSeries` to every (metric, scope) with at least
/// [`STATISTICS_SERIES_MIN_SERIES`] series that has none yet: per time step the min, median and
/// max across series.
///
/// A step where fewer than 3 series have a value is NaN, and so is every step past the end of the
/// shortest series, as in ClusterCockpit. `percentiles` stays empty. The median is taken over the
/// values present; ClusterCockpit (cc-lib v2.12.0) counts a missing value as 0 in its median,
/// which this function deliberately does not copy.
pub fn add_statistics_series(data: &mut JobData) {
    for scopes in data.values_mut() {
        for metric in scopes.values_mut() {
            let needs_series = metric.statistics_series.is_none()
                && metric.series.len() >= STATISTICS_SERIES_MIN_SERIES;
            if needs_series {
                let columns: Vec<&[f64]> =
                    metric.series.iter().map(|series| series.data.as_slice()).collect();
                metric.statistics_series = Some(statistics_series(&columns));
            }
        }
    }
}

/// Computes the per-step min, median and max across `columns`.
fn statistics_series(columns: &[&[f64]]) -> StatisticsSeries {
    let n_steps = columns.iter().map(|column| column.len()).max().unwrap_or(0);
    let n_common = columns.iter().map(|column| column.len()).min().unwrap_or(0);

    let mut res = StatisticsSeries {
        min: vec![f64::NAN; n_steps],
        median: vec![f64::NAN; n_steps],
        max: vec![f64::NAN; n_steps],
        percentiles: BTreeMap::new(),
    };
    let mut values = Vec::with_capacity(columns.len());
    for step in 0..n_common {
        values.clear();
        values.extend(columns.iter().map(|column| column[step]).filter(|value| !value.is_nan()));
        if values.len() < STATISTICS_SERIES_MIN_VALUES {
            continue;
        }
        values.sort_unstable_by(f64::total_cmp);
        let middle = values.len() / 2;
        res.min[step] = values[0];
        res.max[step] = values[values.len() - 1];
        res.median[step] = match values.len() % 2 {
            0 => (values[middle - 1] + values[middle]) / 2.0,
            _ => values[middle],
        };
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::MetricConfig;
    use crate::job_data::{JobMetric, Series};

    const NAN: f64 = f64::NAN;

    fn series(hostname: &str, data: &[f64]) -> Series {
        Series { hostname: hostname.to_owned(), id: None, statistics: None, data: data.to_vec() }
    }

    fn metric(series: Vec<Series>) -> JobMetric {
        JobMetric {
            unit: Unit { base: "W".to_owned(), prefix: None },
            timestep: 60,
            series,
            statistics_series: None,
        }
    }

    fn cluster_with(name: &str, unit: Unit) -> Cluster {
        Cluster {
            name: "test".to_owned(),
            metrics: vec![MetricConfig {
                name: name.to_owned(),
                unit,
                scope: MetricScope::Node,
                timestep: 60,
                removed_for: vec![],
            }],
            sub_clusters: vec![],
        }
    }

    fn stats(min: f64, avg: f64, max: f64) -> SeriesStats {
        SeriesStats { min, avg, max }
    }

    #[test]
    fn round2_rounds_half_away_from_zero() {
        assert_eq!(round2(1.005), 1.0, "1.005 is 1.00499.. in binary");
        assert_eq!(round2(2.675), 2.68);
        assert_eq!(round2(-1.125), -1.13);
        assert_eq!(round2(0.0), 0.0);
    }

    #[test]
    fn series_stats_skip_nan() {
        assert_eq!(series_stats(&[1.0, NAN, 3.0, 2.0]), stats(1.0, 2.0, 3.0));
        assert_eq!(series_stats(&[NAN, 0.333, 0.334]), stats(0.33, 0.33, 0.33));
        assert_eq!(series_stats(&[10.0, 20.0, 25.0]), stats(10.0, 18.33, 25.0));
    }

    #[test]
    fn series_stats_without_samples_are_zero() {
        assert_eq!(series_stats(&[]), stats(0.0, 0.0, 0.0));
        assert_eq!(series_stats(&[NAN, NAN]), stats(0.0, 0.0, 0.0));
    }

    #[test]
    fn series_stats_with_infinity_are_zero() {
        assert_eq!(series_stats(&[1.0, f64::INFINITY]), stats(0.0, 0.0, 0.0));
        assert_eq!(series_stats(&[f64::NEG_INFINITY, 1.0]), stats(0.0, 0.0, 0.0));
    }

    #[test]
    fn fill_series_stats_recomputes() {
        let mut wrong = series("h1", &[1.0, 3.0]);
        wrong.statistics = Some(stats(9.0, 9.0, 9.0));
        let mut data = JobData::new();
        data.entry("power".to_owned())
            .or_default()
            .insert(MetricScope::Node, metric(vec![wrong, series("h2", &[NAN])]));

        fill_series_stats(&mut data);

        let series = &data["power"][&MetricScope::Node].series;
        assert_eq!(series[0].statistics, Some(stats(1.0, 2.0, 3.0)));
        assert_eq!(series[1].statistics, Some(stats(0.0, 0.0, 0.0)));
    }

    #[test]
    fn job_statistics_divide_by_num_nodes() {
        let mut data = JobData::new();
        let node = metric(vec![series("h1", &[10.0, 20.0]), series("h2", &[30.0, 50.0])]);
        data.entry("power".to_owned()).or_default().insert(MetricScope::Node, node);
        let cluster = cluster_with("other", Unit::default());

        let three_nodes = job_statistics(&data, 3, &cluster);
        let power = &three_nodes["power"];
        assert_eq!(power.avg, 18.33, "(15 + 40) / 3 nodes");
        assert_eq!(power.min, 10.0);
        assert_eq!(power.max, 50.0);

        let two_nodes = job_statistics(&data, 2, &cluster);
        assert_eq!(two_nodes["power"].avg, 27.5);
    }

    #[test]
    fn job_statistics_take_unit_from_cluster() {
        let mut data = JobData::new();
        let node = metric(vec![series("h1", &[1.0])]);
        data.entry("mem".to_owned()).or_default().insert(MetricScope::Node, node.clone());
        data.entry("power".to_owned()).or_default().insert(MetricScope::Node, node);
        let cluster_unit = Unit { base: "B".to_owned(), prefix: Some("G".to_owned()) };
        let cluster = cluster_with("mem", cluster_unit.clone());

        let res = job_statistics(&data, 1, &cluster);
        assert_eq!(res["mem"].unit, cluster_unit);
        assert_eq!(res["power"].unit, Unit { base: "W".to_owned(), prefix: None });
    }

    #[test]
    fn job_statistics_skip_metrics_without_node_scope() {
        let mut data = JobData::new();
        let core = metric(vec![series("h1", &[1.0])]);
        data.entry("ipc".to_owned()).or_default().insert(MetricScope::Core, core);
        data.entry("empty".to_owned()).or_default().insert(MetricScope::Node, metric(vec![]));

        let res = job_statistics(&data, 1, &cluster_with("ipc", Unit::default()));
        assert!(res.is_empty(), "got {res:?}");
    }

    #[test]
    fn job_statistics_use_data_when_statistics_missing() {
        let mut data = JobData::new();
        let mut reported = series("h1", &[1.0, 2.0]);
        reported.statistics = Some(stats(0.0, 5.0, 8.0));
        let node = metric(vec![reported, series("h2", &[NAN, 4.0])]);
        data.entry("ipc".to_owned()).or_default().insert(MetricScope::Node, node);

        let res = job_statistics(&data, 2, &cluster_with("ipc", Unit::default()));
        assert_eq!(res["ipc"].avg, 4.5, "(5 + 4) / 2");
        assert_eq!(res["ipc"].min, 0.0);
        assert_eq!(res["ipc"].max, 8.0);
    }

    #[test]
    fn job_statistics_count_empty_host_as_zero() {
        let mut data = JobData::new();
        let node = metric(vec![series("h1", &[4.0]), series("h2", &[NAN, NAN])]);
        data.entry("power".to_owned()).or_default().insert(MetricScope::Node, node);
        fill_series_stats(&mut data);

        let res = job_statistics(&data, 2, &cluster_with("power", Unit::default()));
        assert_eq!(res["power"].avg, 2.0);
        assert_eq!(res["power"].min, 0.0, "a host without samples has min 0");
    }

    #[test]
    fn statistics_series_need_eight_series() {
        let mut data = JobData::new();
        let seven = (0..7).map(|host| series(&format!("h{host}"), &[1.0])).collect();
        data.entry("few".to_owned()).or_default().insert(MetricScope::Core, metric(seven));
        let eight = (0..8).map(|host| series(&format!("h{host}"), &[1.0])).collect();
        data.entry("many".to_owned()).or_default().insert(MetricScope::Core, metric(eight));

        add_statistics_series(&mut data);

        assert!(data["few"][&MetricScope::Core].statistics_series.is_none());
        assert!(data["many"][&MetricScope::Core].statistics_series.is_some());
    }

    #[test]
    fn statistics_series_per_step() {
        let columns: Vec<Vec<f64>> = vec![
            vec![1.0, NAN, 5.0, 1.0],
            vec![2.0, NAN, 6.0, 2.0],
            vec![3.0, 7.0, 7.0, 3.0],
            vec![10.0, 8.0, NAN, 4.0],
            vec![0.5, NAN, 9.0],
        ];
        let columns: Vec<&[f64]> = columns.iter().map(Vec::as_slice).collect();

        let res = statistics_series(&columns);

        assert_eq!(res.min.len(), 4);
        assert_eq!((res.min[0], res.median[0], res.max[0]), (0.5, 2.0, 10.0));
        assert!(res.min[1].is_nan(), "step 1 has only 2 values");
        assert!(res.median[1].is_nan());
        assert!(res.max[1].is_nan());
        assert_eq!((res.min[2], res.median[2], res.max[2]), (5.0, 6.5, 9.0));
        assert!(res.median[3].is_nan(), "step 3 is past the shortest series");
        assert!(res.percentiles.is_empty());
    }
}
