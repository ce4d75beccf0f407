//! A job's metric data, the in-memory form of the job-archive's `data.json`: for each metric
//! and scope, a unit, a timestep and one series per host or hardware unit.
//!
//! Missing samples are `f64::NAN` here; they are `null` in JSON. Reading and writing JSON lives
//! in `archive::format` and in the metric sources, so these types do not derive serde.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// The level a series describes. Ordered from finest to coarsest, as ClusterCockpit ranks them
/// (accelerator 1, hwthread 2, core 3, memoryDomain 4, socket 5, node 10), so `max` of two
/// scopes is the coarser one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MetricScope {
    Accelerator,
    Hwthread,
    Core,
    MemoryDomain,
    Socket,
    Node,
}

impl MetricScope {
    pub const ALL: [MetricScope; 6] = [
        MetricScope::Accelerator,
        MetricScope::Hwthread,
        MetricScope::Core,
        MetricScope::MemoryDomain,
        MetricScope::Socket,
        MetricScope::Node,
    ];

    /// The name used in `cluster.json`, `data.json` and metric-store queries.
    pub fn as_str(self) -> &'static str {
        match self {
            MetricScope::Accelerator => "accelerator",
            MetricScope::Hwthread => "hwthread",
            MetricScope::Core => "core",
            MetricScope::MemoryDomain => "memoryDomain",
            MetricScope::Socket => "socket",
            MetricScope::Node => "node",
        }
    }
}

impl fmt::Display for MetricScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for MetricScope {
    type Err = String;

    fn from_str(text: &str) -> Result<MetricScope, String> {
        MetricScope::ALL.into_iter().find(|scope| scope.as_str() == text).ok_or_else(|| {
            format!(
                "unknown scope {text:?}: use one of node, socket, memoryDomain, core, hwthread, \
                 accelerator"
            )
        })
    }
}

/// A metric unit, `{base, prefix?}` in JSON.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Unit {
    pub base: String,
    pub prefix: Option<String>,
}

/// Minimum, average and maximum of one series over its non-missing samples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SeriesStats {
    pub min: f64,
    pub avg: f64,
    pub max: f64,
}

/// One time series: a host, or one hardware unit of a host when `id` is set.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub hostname: String,
    /// Core, socket, memory domain or accelerator id; `None` for node-native series.
    pub id: Option<String>,
    /// Statistics as the source reported them; the archiver recomputes them from `data`.
    pub statistics: Option<SeriesStats>,
    /// Samples, one per `timestep`; `NAN` marks a missing sample.
    pub data: Vec<f64>,
}

/// Per-timestep statistics across series, written when a metric has many series.
#[derive(Debug, Clone, PartialEq)]
pub struct StatisticsSeries {
    pub min: Vec<f64>,
    pub median: Vec<f64>,
    pub max: Vec<f64>,
    /// Percentile name (`"25"`, `"75"`) to values.
    pub percentiles: BTreeMap<String, Vec<f64>>,
}

/// All series of one metric at one scope.
#[derive(Debug, Clone, PartialEq)]
pub struct JobMetric {
    pub unit: Unit,
    /// Seconds between samples.
    pub timestep: u32,
    pub series: Vec<Series>,
    pub statistics_series: Option<StatisticsSeries>,
}

/// Metric name to scope to data, the content of `data.json`.
pub type JobData = BTreeMap<String, BTreeMap<MetricScope, JobMetric>>;
