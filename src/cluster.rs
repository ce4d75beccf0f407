//! A cluster's configuration from its job-archive `cluster.json`: the metric list with native
//! scopes and units, and each sub-cluster's node list and hardware topology.
//!
//! The serde types for parts of the file are private to this module. [`Cluster::from_json`] reads
//! each field on its own, so that an error names the entry and field at fault, and converts the
//! file into the plain types below.

use std::collections::BTreeSet;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::job::{json_type_name, JobMeta};
use crate::job_data::{MetricScope, Unit};

/// A parsed `cluster.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct Cluster {
    pub name: String,
    /// Cluster-level metric configuration, in file order.
    pub metrics: Vec<MetricConfig>,
    pub sub_clusters: Vec<SubCluster>,
}

/// One `metricConfig` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricConfig {
    pub name: String,
    pub unit: Unit,
    /// The finest scope the metric is measured at.
    pub scope: MetricScope,
    /// Native seconds between samples.
    pub timestep: u32,
    /// Sub-cluster names for which the metric has `remove: true`.
    pub removed_for: Vec<String>,
}

/// One `subClusters` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct SubCluster {
    pub name: String,
    /// The hostlist expression, for example `f[0101-0188,0201-0288]`, or `*`.
    pub nodes: String,
    pub topology: Topology,
}

/// Hardware topology of one node type, as lists of hwthread ids.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Topology {
    pub node: Vec<u32>,
    pub socket: Vec<Vec<u32>>,
    pub memory_domain: Vec<Vec<u32>>,
    pub core: Vec<Vec<u32>>,
    /// Accelerator ids, in file order.
    pub accelerators: Vec<String>,
}

/// A `cluster.json` that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("invalid cluster.json: {0}")]
pub struct InvalidCluster(pub String);

impl Cluster {
    /// Parses and checks a `cluster.json` document.
    ///
    /// The checks are those of ClusterCockpit's loader: `name` is not empty, every metric has a
    /// `timestep` of at least 1 and a known `scope` (an empty scope means `node`). In addition,
    /// every sub-cluster's `nodes` must be a valid hostlist expression. The error names the
    /// entry and field at fault.
    pub fn from_json(bytes: &[u8]) -> Result<Cluster, InvalidCluster> {
        let (name, metric_entries, sub_cluster_entries) = parse_top_level(bytes)?;
        let mut metrics = Vec::with_capacity(metric_entries.len());
        for (idx, entry) in metric_entries.iter().enumerate() {
            metrics.push(parse_metric_config(idx, entry)?);
        }
        let mut sub_clusters = Vec::with_capacity(sub_cluster_entries.len());
        for (idx, entry) in sub_cluster_entries.iter().enumerate() {
            sub_clusters.push(parse_sub_cluster(idx, entry)?);
        }
        Ok(Cluster { name, metrics, sub_clusters })
    }

    /// Finds the sub-cluster of a job: the one named by `subCluster` when the cluster has it,
    /// else the first whose node list matches the first host of the job.
    ///
    /// A known name wins over the node lists, because real jobs name sub-clusters whose node
    /// lists do not contain their hosts.
    pub fn sub_cluster_for(&self, job: &JobMeta) -> Option<&SubCluster> {
        let named = job.sub_cluster.as_deref().and_then(|name| self.sub_cluster(name));
        if named.is_some() {
            return named;
        }
        // `JobMeta` guarantees at least one resource; `first` keeps this total anyway.
        let hostname = &job.resources.first()?.hostname;
        self.sub_clusters.iter().find(|sub_cluster| nodes_match(&sub_cluster.nodes, hostname))
    }

    /// Finds a sub-cluster by name.
    pub fn sub_cluster(&self, name: &str) -> Option<&SubCluster> {
        self.sub_clusters.iter().find(|sub_cluster| sub_cluster.name == name)
    }

    /// The metrics to archive for a job on `sub_cluster`: every cluster metric not removed for
    /// it, in file order.
    pub fn metrics_for(&self, sub_cluster: Option<&str>) -> Vec<&MetricConfig> {
        self.metrics
            .iter()
            .filter(|metric| match sub_cluster {
                Some(name) => !metric.removed_for.iter().any(|removed| removed == name),
                None => true,
            })
            .collect()
    }

    pub fn metric(&self, name: &str) -> Option<&MetricConfig> {
        self.metrics.iter().find(|metric| metric.name == name)
    }
}

impl Topology {
    /// Returns the hwthread lists of the units of a scope: `core`, `socket` or `memoryDomain`.
    /// Returns `None` for the other scopes, whose units are not lists of hwthreads here.
    pub fn units(&self, scope: MetricScope) -> Option<&[Vec<u32>]> {
        match scope {
            MetricScope::Core => Some(&self.core),
            MetricScope::Socket => Some(&self.socket),
            MetricScope::MemoryDomain => Some(&self.memory_domain),
            MetricScope::Accelerator | MetricScope::Hwthread | MetricScope::Node => None,
        }
    }
}

/// Returns true if and only if `hostname` is one of the hosts of a hostlist expression.
///
/// The expression is a comma-separated list of terms such as `f[0101-0188,0201-0288]` or
/// `w12[01-08],w13[01-31,33-56]`, and `*` alone matches every host. A bracket contains ranges
/// whose bounds have the same number of digits, or single numbers, and a host matches a range
/// when it has exactly that many digits at that place. An invalid expression matches nothing;
/// [`Cluster::from_json`] rejects such expressions up front.
pub fn nodes_match(expr: &str, hostname: &str) -> bool {
    if expr.trim() == "*" {
        return true;
    }
    match parse_hostlist(expr) {
        Ok(terms) => terms.iter().any(|term| term_matches(term, hostname)),
        Err(_) => false,
    }
}

/// One part of a hostlist term: literal text, or a bracket of numeric ranges.
#[derive(Debug, Clone, PartialEq)]
enum HostPart {
    Literal(String),
    Ranges(Vec<NumberRange>),
}

/// An inclusive range of zero-padded numbers, all `digits` wide.
#[derive(Debug, Clone, Copy, PartialEq)]
struct NumberRange {
    start: u64,
    end: u64,
    digits: usize,
}

/// Splits a hostlist expression into terms, each a sequence of parts. The error names the
/// offending text and the expected form.
fn parse_hostlist(expr: &str) -> Result<Vec<Vec<HostPart>>, String> {
    let mut terms = Vec::new();
    let mut parts = Vec::new();
    let mut literal = String::new();
    let mut rest = expr;
    while let Some(c) = rest.chars().next() {
        match c {
            ',' => {
                push_literal(&mut parts, &mut literal);
                if parts.is_empty() {
                    return Err(format!("empty host name before ',' in {expr:?}"));
                }
                terms.push(std::mem::take(&mut parts));
                rest = &rest[1..];
            }
            '[' => {
                let Some(close) = rest.find(']') else {
                    return Err(format!("unclosed '[' in {expr:?}"));
                };
                push_literal(&mut parts, &mut literal);
                parts.push(HostPart::Ranges(parse_ranges(&rest[1..close], expr)?));
                rest = &rest[close + 1..];
            }
            c if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') => {
                literal.push(c);
                rest = &rest[1..];
            }
            c => {
                return Err(format!(
                    "invalid character {c:?} in {expr:?}: use letters, digits, '-', '_', '.' and \
                     brackets such as f[0101-0188,0201-0288]"
                ))
            }
        }
    }
    push_literal(&mut parts, &mut literal);
    if parts.is_empty() {
        return Err(format!("empty host name at the end of {expr:?}"));
    }
    terms.push(parts);
    return Ok(terms);

    fn push_literal(parts: &mut Vec<HostPart>, literal: &mut String) {
        if !literal.is_empty() {
            parts.push(HostPart::Literal(std::mem::take(literal)));
        }
    }
}

/// Parses the inside of a bracket, `0101-0188,0201-0288` or `05`.
fn parse_ranges(inside: &str, expr: &str) -> Result<Vec<NumberRange>, String> {
    let mut ranges = Vec::new();
    for range in inside.split(',') {
        let (first, last) = range.split_once('-').unwrap_or((range, range));
        let is_number = |text: &str| {
            !text.is_empty() && text.len() <= 18 && text.bytes().all(|b| b.is_ascii_digit())
        };
        if !is_number(first) || !is_number(last) || first.len() != last.len() {
            return Err(format!(
                "invalid range {range:?} in {expr:?}: use two numbers of the same width, such \
                 as 0101-0188, or one number"
            ));
        }
        // Both parts are at most 18 ASCII digits, so they fit in a u64.
        let start: u64 = first.parse().map_err(|err| format!("{first:?} in {expr:?}: {err}"))?;
        let end: u64 = last.parse().map_err(|err| format!("{last:?} in {expr:?}: {err}"))?;
        if start > end {
            return Err(format!("invalid range {range:?} in {expr:?}: the start exceeds the end"));
        }
        ranges.push(NumberRange { start, end, digits: first.len() });
    }
    Ok(ranges)
}

/// Matches a hostname against one term.
///
/// A bracket whose ranges have different widths can match at several lengths, so the match
/// tracks the set of hostname positions reachable after each part. That keeps the work linear in
/// the number of parts, without backtracking.
fn term_matches(parts: &[HostPart], hostname: &str) -> bool {
    let mut positions = BTreeSet::from([0usize]);
    for part in parts {
        let mut next_positions = BTreeSet::new();
        for &position in &positions {
            let rest = &hostname[position..];
            match part {
                HostPart::Literal(literal) => {
                    if rest.starts_with(literal.as_str()) {
                        next_positions.insert(position + literal.len());
                    }
                }
                HostPart::Ranges(ranges) => {
                    for range in ranges {
                        if range_matches(range, rest) {
                            next_positions.insert(position + range.digits);
                        }
                    }
                }
            }
        }
        if next_positions.is_empty() {
            return false;
        }
        positions = next_positions;
    }
    return positions.contains(&hostname.len());

    /// Returns true if `text` starts with a number of exactly the range's width inside it.
    fn range_matches(range: &NumberRange, text: &str) -> bool {
        let Some(digits) = text.get(..range.digits) else {
            return false;
        };
        let all_digits = digits.bytes().all(|b| b.is_ascii_digit());
        all_digits && digits.parse::<u64>().is_ok_and(|n| range.start <= n && n <= range.end)
    }
}

/// A `unit` object, `{base, prefix?}`.
#[derive(Deserialize)]
#[serde(expecting = "a unit object with a string base and an optional string prefix")]
struct UnitEntry {
    base: String,
    #[serde(default)]
    prefix: Option<String>,
}

/// A per-sub-cluster override of a metric; only `remove` matters to the archiver.
#[derive(Deserialize)]
#[serde(expecting = "an object with a string name and an optional boolean remove")]
struct MetricSubClusterEntry {
    name: String,
    #[serde(default)]
    remove: Option<bool>,
}

/// A `topology.accelerators` entry; only `id` matters to the archiver.
#[derive(Deserialize)]
#[serde(expecting = "an object with a string id")]
struct AcceleratorEntry {
    id: String,
}

/// Splits the document into its three top-level parts.
fn parse_top_level(bytes: &[u8]) -> Result<(String, Vec<Value>, Vec<Value>), InvalidCluster> {
    let document: Value = serde_json::from_slice(bytes)
        .map_err(|err| InvalidCluster(format!("not valid JSON: {err}")))?;
    let Value::Object(object) = document else {
        return Err(InvalidCluster(format!(
            "expected an object with name, metricConfig and subClusters, got {}",
            json_type_name(&document)
        )));
    };
    let name: String = required(&object, "name", "")?;
    if name.is_empty() {
        return Err(InvalidCluster("name: must not be empty".to_owned()));
    }
    let metric_config = required(&object, "metricConfig", "")?;
    let sub_clusters = required(&object, "subClusters", "")?;
    Ok((name, metric_config, sub_clusters))
}

fn parse_metric_config(idx: usize, entry: &Value) -> Result<MetricConfig, InvalidCluster> {
    let label = entry_label("metricConfig", idx, entry);
    let Value::Object(entry) = entry else {
        return Err(InvalidCluster(format!(
            "{label}: expected an object, got {}",
            json_type_name(entry)
        )));
    };
    let name: String = required(entry, "name", &label)?;
    if name.is_empty() {
        return Err(InvalidCluster(format!("{label}.name: must not be empty")));
    }
    let unit: UnitEntry = required(entry, "unit", &label)?;

    let timestep: i64 = required(entry, "timestep", &label)?;
    let timestep = match u32::try_from(timestep) {
        Ok(timestep) if timestep >= 1 => timestep,
        _ => {
            return Err(InvalidCluster(format!(
                "{label}.timestep: must be a number of seconds from 1 to {}, got {timestep}",
                u32::MAX
            )))
        }
    };

    let scope: String = optional(entry, "scope", &label)?.unwrap_or_default();
    let scope = match scope.as_str() {
        "" => MetricScope::Node,
        scope => scope
            .parse::<MetricScope>()
            .map_err(|problem| InvalidCluster(format!("{label}.scope: {problem}")))?,
    };

    let overrides: Vec<MetricSubClusterEntry> =
        optional(entry, "subClusters", &label)?.unwrap_or_default();
    let removed_for = overrides
        .into_iter()
        .filter(|sub_cluster| sub_cluster.remove == Some(true))
        .map(|sub_cluster| sub_cluster.name)
        .collect();
    let prefix = unit.prefix.filter(|prefix| !prefix.is_empty());
    Ok(MetricConfig { name, unit: Unit { base: unit.base, prefix }, scope, timestep, removed_for })
}

fn parse_sub_cluster(idx: usize, entry: &Value) -> Result<SubCluster, InvalidCluster> {
    let label = entry_label("subClusters", idx, entry);
    let Value::Object(entry) = entry else {
        return Err(InvalidCluster(format!(
            "{label}: expected an object, got {}",
            json_type_name(entry)
        )));
    };
    let name: String = required(entry, "name", &label)?;
    if name.is_empty() {
        return Err(InvalidCluster(format!("{label}.name: must not be empty")));
    }
    let nodes: String = required(entry, "nodes", &label)?;
    if nodes.trim() != "*" {
        if let Err(problem) = parse_hostlist(&nodes) {
            return Err(InvalidCluster(format!("{label}.nodes: {problem}")));
        }
    }
    let topology = match entry.get("topology") {
        Some(Value::Object(topology)) => topology,
        None | Some(Value::Null) => {
            return Err(InvalidCluster(format!("{label}.topology: is missing")));
        }
        Some(other) => {
            return Err(InvalidCluster(format!(
                "{label}.topology: expected an object, got {}",
                json_type_name(other)
            )))
        }
    };
    let label = format!("{label}.topology");
    let accelerators: Vec<AcceleratorEntry> =
        optional(topology, "accelerators", &label)?.unwrap_or_default();
    let topology = Topology {
        node: required(topology, "node", &label)?,
        socket: required(topology, "socket", &label)?,
        memory_domain: required(topology, "memoryDomain", &label)?,
        core: optional(topology, "core", &label)?.unwrap_or_default(),
        accelerators: accelerators.into_iter().map(|accelerator| accelerator.id).collect(),
    };
    Ok(SubCluster { name, nodes, topology })
}

/// Reads a required field of an object with serde; the error names `{label}.{key}`.
fn required<T: DeserializeOwned>(
    object: &Map<String, Value>,
    key: &str,
    label: &str,
) -> Result<T, InvalidCluster> {
    match optional(object, key, label)? {
        Some(value) => Ok(value),
        None => Err(InvalidCluster(format!("{}: is missing", field_path(label, key)))),
    }
}

/// Reads an optional field of an object with serde; `null` counts as absent.
fn optional<T: DeserializeOwned>(
    object: &Map<String, Value>,
    key: &str,
    label: &str,
) -> Result<Option<T>, InvalidCluster> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => T::deserialize(value)
            .map(Some)
            .map_err(|err| InvalidCluster(format!("{}: {err}", field_path(label, key)))),
    }
}

fn field_path(label: &str, key: &str) -> String {
    match label {
        "" => key.to_owned(),
        label => format!("{label}.{key}"),
    }
}

/// Names an array entry for error messages, with its `name` when it has one:
/// `metricConfig[3] "mem_bw"`.
fn entry_label(array: &str, idx: usize, entry: &Value) -> String {
    match entry.get("name").and_then(Value::as_str) {
        Some(name) => format!("{array}[{idx}] {name:?}"),
        None => format!("{array}[{idx}]"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fixture(cluster: &str) -> Cluster {
        let path =
            format!("{}/examples/archive/{cluster}/cluster.json", env!("CARGO_MANIFEST_DIR"));
        let bytes = std::fs::read(&path).unwrap();
        Cluster::from_json(&bytes).unwrap()
    }

    fn minimal() -> Value {
        json!({
            "name": "tiny",
            "metricConfig": [
                {"name": "cpu_load", "unit": {"base": ""}, "scope": "node", "timestep": 60},
            ],
            "subClusters": [
                {"name": "main", "nodes": "t[01-04]",
                 "topology": {"node": [0, 1], "socket": [[0, 1]], "memoryDomain": [[0, 1]],
                              "core": [[0], [1]]}},
            ],
        })
    }

    fn parse(value: &Value) -> Result<Cluster, InvalidCluster> {
        Cluster::from_json(value.to_string().as_bytes())
    }

    fn job(sub_cluster: Option<&str>, hostname: &str) -> JobMeta {
        JobMeta::from_json(json!({
            "jobId": 1, "cluster": "emmy", "startTime": 100, "numNodes": 1, "duration": 60,
            "subCluster": sub_cluster, "resources": [{"hostname": hostname}],
        }))
        .unwrap()
    }

    #[test]
    fn fritz_fixture_parses() {
        let cluster = fixture("fritz");
        assert_eq!(cluster.name, "fritz");
        assert_eq!(cluster.metrics.len(), 19);
        assert_eq!(cluster.sub_clusters.len(), 3);

        let mem_bw = cluster.metric("mem_bw").unwrap();
        assert_eq!(mem_bw.scope, MetricScope::Socket);
        assert_eq!(mem_bw.timestep, 60);
        assert_eq!(mem_bw.unit, Unit { base: "B/s".to_owned(), prefix: Some("G".to_owned()) });
        assert_eq!(mem_bw.removed_for, ["spr1tb", "spr2tb"]);
        assert_eq!(cluster.metric("flops_any").unwrap().removed_for, ["spr2tb"]);
        assert!(cluster.metric("cpu_load").unwrap().removed_for.is_empty());
        assert_eq!(cluster.metric("cpu_load").unwrap().unit.prefix, None);

        let main = cluster.sub_cluster("main").unwrap();
        assert_eq!(main.topology.node, (0..72).collect::<Vec<u32>>());
        assert_eq!(main.topology.core.len(), 72);
        assert_eq!(main.topology.socket.len(), 2);
        assert_eq!(main.topology.memory_domain.len(), 4);
        assert!(main.topology.accelerators.is_empty());
        assert_eq!(cluster.sub_cluster("spr1tb").unwrap().topology.core.len(), 104);
    }

    #[test]
    fn fritz_metrics_for_sub_cluster() {
        let cluster = fixture("fritz");
        assert_eq!(cluster.metrics_for(Some("main")).len(), 19);
        let spr2tb: Vec<&str> =
            cluster.metrics_for(Some("spr2tb")).iter().map(|m| m.name.as_str()).collect();
        assert!(!spr2tb.contains(&"flops_any"));
        assert!(!spr2tb.contains(&"clock"));
        assert!(spr2tb.contains(&"cpu_load"));
    }

    #[test]
    fn emmy_fixture_parses() {
        let cluster = fixture("emmy");
        assert_eq!(cluster.name, "emmy");
        assert_eq!(cluster.metrics.len(), 13);
        let names: Vec<&str> = cluster.sub_clusters.iter().map(|sc| sc.name.as_str()).collect();
        assert_eq!(names, ["haswell", "skylake", "kabylake", "icelake"]);
        assert_eq!(cluster.metric("cpu_user").unwrap().removed_for, ["haswell", "skylake"]);
        assert_eq!(cluster.metric("clock").unwrap().scope, MetricScope::Hwthread);
        let haswell = cluster.sub_cluster("haswell").unwrap();
        assert_eq!(haswell.topology.core, [[0], [1], [2], [3]]);
    }

    #[test]
    fn sub_cluster_name_wins_over_node_list() {
        let cluster = fixture("emmy");
        // The emmy example job runs on e0xxx hosts, which no emmy node list contains.
        let found = cluster.sub_cluster_for(&job(Some("haswell"), "e0101"));
        assert_eq!(found.map(|sc| sc.name.as_str()), Some("haswell"));
    }

    #[test]
    fn sub_cluster_from_hostname() {
        let cluster = fixture("emmy");
        let cases = [
            ("w1127", Some("haswell")),
            ("w1346", Some("skylake")),
            ("w1332", None),
            ("w1506", None),
            ("w1507", Some("kabylake")),
            ("w2335", Some("icelake")),
            ("e0101", None),
        ];
        for (hostname, expected) in cases {
            let found = cluster.sub_cluster_for(&job(None, hostname));
            assert_eq!(found.map(|sc| sc.name.as_str()), expected, "host {hostname}");
        }
        // An unknown name falls back to the node lists.
        let found = cluster.sub_cluster_for(&job(Some("cascadelake"), "w1201"));
        assert_eq!(found.map(|sc| sc.name.as_str()), Some("skylake"));
    }

    #[test]
    fn star_matches_every_host() {
        let mut value = minimal();
        value["subClusters"][0]["nodes"] = json!("*");
        let cluster = parse(&value).unwrap();
        let found = cluster.sub_cluster_for(&job(None, "anything"));
        assert_eq!(found.map(|sc| sc.name.as_str()), Some("main"));
    }

    #[test]
    fn hostlist_matching() {
        let fritz = "f[0101-0188,0201-0288]";
        assert!(nodes_match(fritz, "f0101"));
        assert!(nodes_match(fritz, "f0188"));
        assert!(nodes_match(fritz, "f0250"));
        assert!(!nodes_match(fritz, "f0189"));
        assert!(!nodes_match(fritz, "f101"));
        assert!(!nodes_match(fritz, "f01010"));
        assert!(!nodes_match(fritz, "g0101"));
        assert!(!nodes_match(fritz, "f01a1"));

        let emmy = "w12[01-08],w13[01-31,33-56]";
        assert!(nodes_match(emmy, "w1208"));
        assert!(nodes_match(emmy, "w1333"));
        assert!(!nodes_match(emmy, "w1332"));
        assert!(!nodes_match(emmy, "w1209"));

        assert!(nodes_match("*", "x"));
        assert!(nodes_match("login1,login2", "login2"));
        assert!(!nodes_match("login1,login2", "login3"));
        assert!(nodes_match("n[1-9,10-12]", "n11"));
        assert!(nodes_match("n[1-9,10-12]", "n7"));
        assert!(nodes_match("r[1-2]n[01-04]-ib", "r2n03-ib"));
        assert!(!nodes_match("r[1-2]n[01-04]-ib", "r2n03"));
        assert!(nodes_match("a[007]", "a007"));
        assert!(!nodes_match("f[0101-0188", "f0101"));
    }

    #[test]
    fn hostlist_matching_is_not_exponential() {
        // With backtracking, a mismatch at the end would try about 3^60 splits of the digits.
        let expr = "n".to_owned() + &"[1-9,10-99,100-999]".repeat(60);
        let hostname = "n".to_owned() + &"1".repeat(120) + "x";
        assert!(!nodes_match(&expr, &hostname));
        assert!(nodes_match(&expr, &("n".to_owned() + &"1".repeat(120))));
    }

    #[test]
    fn hostlist_errors() {
        for bad in ["f[0101-0188", "f[01-1]", "f[10-01]", "f[a-b]", "f,,g", "f g", "f[]", ","] {
            assert!(parse_hostlist(bad).is_err(), "{bad:?} should be rejected");
        }
        let huge = "f[0000000000000000000-9999999999999999999]";
        assert!(parse_hostlist(huge).is_err());
    }

    #[test]
    fn minimal_cluster_parses() {
        let cluster = parse(&minimal()).unwrap();
        assert_eq!(cluster.metrics[0].scope, MetricScope::Node);
        assert_eq!(cluster.sub_clusters[0].topology.core, [[0], [1]]);
    }

    #[test]
    fn empty_scope_means_node() {
        let mut value = minimal();
        value["metricConfig"][0]["scope"] = json!("");
        assert_eq!(parse(&value).unwrap().metrics[0].scope, MetricScope::Node);
        value["metricConfig"][0].as_object_mut().unwrap().remove("scope");
        assert_eq!(parse(&value).unwrap().metrics[0].scope, MetricScope::Node);
    }

    #[test]
    fn malformed_inputs_name_the_field() {
        let cases: [(&str, Value, &str); 12] = [
            ("name", json!(""), "name: must not be empty"),
            ("name", json!(7), "name: invalid type: integer `7`, expected a string"),
            ("scope", json!("board"), "metricConfig[0] \"cpu_load\".scope: unknown scope"),
            ("timestep", json!(0), "metricConfig[0] \"cpu_load\".timestep: must be"),
            ("timestep", json!(-60), "metricConfig[0] \"cpu_load\".timestep: must be"),
            ("timestep", json!(1.5), "metricConfig[0] \"cpu_load\".timestep: invalid type"),
            ("unit", json!(null), "metricConfig[0] \"cpu_load\".unit: is missing"),
            ("unit", json!({"prefix": "G"}), "metricConfig[0] \"cpu_load\".unit: missing field"),
            ("metricName", json!(""), "metricConfig[0] \"\".name: must not be empty"),
            ("nodes", json!("t[01-"), "subClusters[0] \"main\".nodes: unclosed '['"),
            ("node", json!([-1]), "subClusters[0] \"main\".topology.node: invalid value"),
            ("socket", json!(null), "subClusters[0] \"main\".topology.socket: is missing"),
        ];
        for (field, value, expected) in cases {
            let mut cluster = minimal();
            match field {
                "name" => cluster["name"] = value.clone(),
                "scope" | "timestep" | "unit" => cluster["metricConfig"][0][field] = value.clone(),
                "metricName" => cluster["metricConfig"][0]["name"] = value.clone(),
                "nodes" => cluster["subClusters"][0]["nodes"] = value.clone(),
                _ => cluster["subClusters"][0]["topology"][field] = value.clone(),
            }
            let err = parse(&cluster).unwrap_err().to_string();
            assert!(err.contains(expected), "{field} = {value}: got {err:?}");
        }
    }

    #[test]
    fn missing_parts_are_errors() {
        for key in ["name", "metricConfig", "subClusters"] {
            let mut value = minimal();
            value.as_object_mut().unwrap().remove(key);
            let err = parse(&value).unwrap_err().to_string();
            assert!(err.contains(key), "without {key}: got {err:?}");
        }
        let mut value = minimal();
        value["metricConfig"][0].as_object_mut().unwrap().remove("timestep");
        let err = parse(&value).unwrap_err().to_string();
        assert!(err.contains("metricConfig[0] \"cpu_load\".timestep: is missing"), "got {err:?}");
    }

    #[test]
    fn garbage_never_panics() {
        let inputs: [&[u8]; 8] = [
            b"",
            b"null",
            b"[]",
            b"{",
            b"\xff\xfe",
            b"{\"name\":\"x\",\"metricConfig\":{},\"subClusters\":[]}",
            b"{\"name\":\"x\",\"metricConfig\":[1],\"subClusters\":[]}",
            b"{\"name\":\"x\",\"metricConfig\":[],\"subClusters\":[{\"name\":[]}]}",
        ];
        for input in inputs {
            assert!(Cluster::from_json(input).is_err(), "{:?}", String::from_utf8_lossy(input));
        }
        let deep = "[".repeat(10_000);
        assert!(Cluster::from_json(deep.as_bytes()).is_err());
    }

    #[test]
    fn accelerators_and_removed_metrics() {
        let mut value = minimal();
        value["subClusters"][0]["topology"]["accelerators"] =
            json!([{"id": "00000000:3B:00.0", "type": "Nvidia GPU", "model": "A100"}]);
        value["metricConfig"][0]["subClusters"] =
            json!([{"name": "main", "remove": true}, {"name": "other", "remove": false}]);
        let cluster = parse(&value).unwrap();
        assert_eq!(cluster.sub_clusters[0].topology.accelerators, ["00000000:3B:00.0"]);
        assert_eq!(cluster.metrics[0].removed_for, ["main"]);
        assert!(cluster.metrics_for(Some("main")).is_empty());
    }
}
