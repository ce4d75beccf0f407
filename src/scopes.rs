//! Which scopes to archive for a job, and the cc-metric-store queries that follow from them.
//!
//! The query construction follows ClusterCockpit's `buildQueries` (cc-backend v1.5): for each
//! metric, requested scope and host, the metric is loaded at `max(native, requested)` scope, and
//! each [`Query`] records which scope and series ids its result elements map back to. Pure
//! functions, no I/O.

use std::collections::BTreeSet;

use crate::cluster::{Cluster, MetricConfig, Topology};
use crate::job::{JobMeta, Resource};
use crate::job_data::MetricScope;

/// One cc-metric-store query, with the mapping of its result elements back to series.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub metric: String,
    pub hostname: String,
    /// The `type` of the query: the scope that `type_ids` are ids of. `None` for a plain query
    /// of a node-native metric.
    pub query_type: Option<MetricScope>,
    /// Hwthread ids, core, socket or memory-domain indexes into the topology, or accelerator
    /// ids. Empty exactly when `query_type` is `None`.
    pub type_ids: Vec<String>,
    /// Whether the store combines all `type_ids` into one element.
    pub aggregate: bool,
    /// The scope the returned series belong to in the job data.
    pub scope: MetricScope,
    /// The series id of each result element, in order: one entry for an aggregated or plain
    /// query, one per type id otherwise.
    pub series_ids: Vec<Option<String>>,
}

/// The queries for a job, with the metrics or scopes that could not be turned into queries.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueryPlan {
    pub queries: Vec<Query>,
    pub errors: Vec<QueryError>,
}

/// A metric, or one scope or host of it, that cannot be queried.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error(
        "metric {metric}: not in the metricConfig of cluster {cluster}; add it to cluster.json \
         or drop it from the metric list"
    )]
    UnknownMetric { metric: String, cluster: String },
    #[error(
        "metric {metric}, scope {scope}: the {native}-native metric needs the node topology, but \
         job {job} names no known subCluster and host {hostname} matches no node list in \
         cluster.json; set subCluster or add the host to a node list"
    )]
    NoTopology {
        metric: String,
        native: MetricScope,
        scope: MetricScope,
        job: String,
        hostname: String,
    },
    #[error(
        "metric {metric}, scope {scope}, host {hostname}: the job's hwthreads belong to no \
         {native} of sub-cluster {sub_cluster}; check resources[].hwthreads against the topology"
    )]
    NoUnits {
        metric: String,
        native: MetricScope,
        scope: MetricScope,
        hostname: String,
        sub_cluster: String,
    },
}

/// Returns the scopes to archive for a job, as ClusterCockpit chooses them: node always, core
/// for jobs of at most `core_scope_max_nodes` nodes, accelerator for jobs with accelerators.
pub fn archive_scopes(job: &JobMeta, core_scope_max_nodes: u32) -> Vec<MetricScope> {
    let mut scopes = vec![MetricScope::Node];
    if job.num_nodes <= core_scope_max_nodes {
        scopes.push(MetricScope::Core);
    }
    if job.num_acc > 0 {
        scopes.push(MetricScope::Accelerator);
    }
    scopes
}

/// Builds the queries for `metrics` of a job at the requested `scopes`, in the order metric,
/// scope, host.
///
/// A metric is loaded at `max(native, requested)`, each (metric, effective scope) once.
/// Metrics removed for the job's sub-cluster and accelerator-native metrics of jobs without
/// accelerators are skipped without an error. Unknown metrics and metrics that need a topology
/// the job does not have end up in [`QueryPlan::errors`].
pub fn build_queries(
    job: &JobMeta,
    cluster: &Cluster,
    metrics: &[String],
    scopes: &[MetricScope],
) -> QueryPlan {
    let sub_cluster = cluster.sub_cluster_for(job);
    let topology = sub_cluster.map(|sub_cluster| &sub_cluster.topology);
    let mut plan = QueryPlan::default();
    for metric_name in metrics {
        let Some(metric) = cluster.metric(metric_name) else {
            plan.errors.push(QueryError::UnknownMetric {
                metric: metric_name.clone(),
                cluster: cluster.name.clone(),
            });
            continue;
        };
        let removed = match sub_cluster {
            Some(sub_cluster) => metric.removed_for.contains(&sub_cluster.name),
            None => false,
        };
        if removed || (metric.scope == MetricScope::Accelerator && job.num_acc == 0) {
            continue;
        }

        let mut handled_scopes = BTreeSet::new();
        for &requested in scopes {
            let scope = metric.scope.max(requested);
            if !handled_scopes.insert(scope) {
                continue;
            }
            // Hosts without a topology fail alike, so only the first of them is reported.
            let mut no_topology_reported = false;
            for resource in &job.resources {
                let host = Host { metric, resource, topology };
                match host.queries(scope) {
                    Ok(queries) => plan.queries.extend(queries),
                    Err(HostError::NoTopology) if no_topology_reported => (),
                    Err(HostError::NoTopology) => {
                        no_topology_reported = true;
                        plan.errors.push(QueryError::NoTopology {
                            metric: metric.name.clone(),
                            native: metric.scope,
                            scope,
                            job: job.id.to_string(),
                            hostname: resource.hostname.clone(),
                        });
                    }
                    Err(HostError::NoUnits) => plan.errors.push(QueryError::NoUnits {
                        metric: metric.name.clone(),
                        native: metric.scope,
                        scope,
                        hostname: resource.hostname.clone(),
                        sub_cluster: sub_cluster.map(|sc| sc.name.clone()).unwrap_or_default(),
                    }),
                }
            }
        }
    }
    plan
}

/// The reason that no query could be built for one host.
enum HostError {
    /// The metric needs the topology and the job has no sub-cluster.
    NoTopology,
    /// The job's hwthreads belong to no unit of the native scope.
    NoUnits,
}

/// One metric on one host of a job, with the topology of the job's sub-cluster if known.
struct Host<'a> {
    metric: &'a MetricConfig,
    resource: &'a Resource,
    topology: Option<&'a Topology>,
}

impl Host<'_> {
    /// Builds the queries that load the metric at `scope`, which is never finer than native.
    fn queries(&self, scope: MetricScope) -> Result<Vec<Query>, HostError> {
        let native = self.metric.scope;
        match (native, scope) {
            (MetricScope::Node, _) => Ok(vec![self.plain_query()]),
            (MetricScope::Accelerator, MetricScope::Accelerator) => {
                let ids = self.resource.accelerators.clone().unwrap_or_default();
                Ok(self.split_query(native, ids).into_iter().collect())
            }
            (MetricScope::Accelerator, MetricScope::Node) => {
                let ids = self.resource.accelerators.clone().unwrap_or_default();
                Ok(self
                    .aggregated_query(native, ids, MetricScope::Node, None)
                    .into_iter()
                    .collect())
            }
            // ClusterCockpit loads accelerator metrics at no scope between accelerator and node.
            (MetricScope::Accelerator, _) => Ok(Vec::new()),
            (native, MetricScope::Node) => {
                let ids = self.job_units(native)?;
                Ok(self
                    .aggregated_query(native, ids, MetricScope::Node, None)
                    .into_iter()
                    .collect())
            }
            (native, scope) if native == scope => {
                let ids = self.job_units(native)?;
                Ok(self.split_query(native, ids).into_iter().collect())
            }
            (native, scope) => self.per_unit_queries(native, scope),
        }
    }

    /// Builds one aggregated query per unit of `scope` that the job uses, over the units of the
    /// native scope inside it. A hwthread-native metric at core scope thus becomes one query per
    /// core over all hwthreads of that core.
    ///
    /// The series id is the unit's index. ClusterCockpit uses the first type id instead, which
    /// is the same for cores of one hwthread but names a hwthread, not the core, with SMT.
    fn per_unit_queries(
        &self,
        native: MetricScope,
        scope: MetricScope,
    ) -> Result<Vec<Query>, HostError> {
        let topology = self.topology.ok_or(HostError::NoTopology)?;
        let Some(outer_units) = topology.units(scope) else {
            debug_assert!(false, "per-unit queries for scope {scope} without topology units");
            return Ok(Vec::new());
        };
        let job_hwthreads = self.hwthreads()?;
        let mut queries = Vec::new();
        for (outer_idx, outer_hwthreads) in outer_units.iter().enumerate() {
            if !overlaps(outer_hwthreads, job_hwthreads) {
                continue;
            }
            let inner_ids = match topology.units(native) {
                Some(inner_units) => indexes_overlapping(inner_units, outer_hwthreads),
                None => outer_hwthreads.iter().map(u32::to_string).collect(),
            };
            let series_id = Some(outer_idx.to_string());
            queries.extend(self.aggregated_query(native, inner_ids, scope, series_id));
        }
        match queries.is_empty() {
            true => Err(HostError::NoUnits),
            false => Ok(queries),
        }
    }

    /// Returns the ids of the units of `native` scope that the job uses on this host: its
    /// hwthreads, or the indexes of the cores, sockets or memory domains that hold any of them.
    fn job_units(&self, native: MetricScope) -> Result<Vec<String>, HostError> {
        let hwthreads = self.hwthreads()?;
        let ids: Vec<String> = match native {
            MetricScope::Hwthread => hwthreads.iter().map(u32::to_string).collect(),
            native => {
                let topology = self.topology.ok_or(HostError::NoTopology)?;
                let units = topology.units(native).unwrap_or_default();
                indexes_overlapping(units, hwthreads)
            }
        };
        match ids.is_empty() {
            true => Err(HostError::NoUnits),
            false => Ok(ids),
        }
    }

    /// Returns the job's hwthreads on this host: those listed in `resources`, else the whole
    /// node of the topology.
    fn hwthreads(&self) -> Result<&[u32], HostError> {
        match (&self.resource.hwthreads, self.topology) {
            (Some(hwthreads), _) => Ok(hwthreads),
            (None, Some(topology)) => Ok(&topology.node),
            (None, None) => Err(HostError::NoTopology),
        }
    }

    fn plain_query(&self) -> Query {
        Query {
            metric: self.metric.name.clone(),
            hostname: self.resource.hostname.clone(),
            query_type: None,
            type_ids: Vec::new(),
            aggregate: false,
            scope: MetricScope::Node,
            series_ids: vec![None],
        }
    }

    /// Builds a non-aggregated query that returns one series per id, or nothing without ids.
    fn split_query(&self, native: MetricScope, ids: Vec<String>) -> Option<Query> {
        if ids.is_empty() {
            return None;
        }
        Some(Query {
            metric: self.metric.name.clone(),
            hostname: self.resource.hostname.clone(),
            query_type: Some(native),
            series_ids: ids.iter().cloned().map(Some).collect(),
            type_ids: ids,
            aggregate: false,
            scope: native,
        })
    }

    /// Builds an aggregated query, or nothing without ids. Without a `series_id`, the series
    /// takes the first type id, as ClusterCockpit does for node-scope series.
    fn aggregated_query(
        &self,
        native: MetricScope,
        ids: Vec<String>,
        scope: MetricScope,
        series_id: Option<String>,
    ) -> Option<Query> {
        let series_id = match series_id {
            Some(series_id) => series_id,
            None => ids.first()?.clone(),
        };
        if ids.is_empty() {
            return None;
        }
        Some(Query {
            metric: self.metric.name.clone(),
            hostname: self.resource.hostname.clone(),
            query_type: Some(native),
            type_ids: ids,
            aggregate: true,
            scope,
            series_ids: vec![Some(series_id)],
        })
    }
}

/// Returns the indexes, as strings, of the units that contain any of `hwthreads`.
fn indexes_overlapping(units: &[Vec<u32>], hwthreads: &[u32]) -> Vec<String> {
    units
        .iter()
        .enumerate()
        .filter(|(_, unit)| overlaps(unit, hwthreads))
        .map(|(idx, _)| idx.to_string())
        .collect()
}

fn overlaps(unit: &[u32], hwthreads: &[u32]) -> bool {
    unit.iter().any(|hwthread| hwthreads.contains(hwthread))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn fritz() -> Cluster {
        let path = format!("{}/examples/archive/fritz/cluster.json", env!("CARGO_MANIFEST_DIR"));
        Cluster::from_json(&std::fs::read(path).unwrap()).unwrap()
    }

    /// Builds a small cluster with two sockets of two cores of two hwthreads, one memory domain per
    /// socket, and two accelerators.
    fn tiny() -> Cluster {
        let value = json!({
            "name": "tiny",
            "metricConfig": [
                {"name": "load", "unit": {"base": ""}, "scope": "node", "timestep": 30},
                {"name": "ipc", "unit": {"base": "IPC"}, "scope": "hwthread", "timestep": 30},
                {"name": "flops", "unit": {"base": "F/s"}, "scope": "core", "timestep": 30},
                {"name": "bw", "unit": {"base": "B/s"}, "scope": "memoryDomain", "timestep": 30},
                {"name": "power", "unit": {"base": "W"}, "scope": "socket", "timestep": 30},
                {"name": "gpu", "unit": {"base": ""}, "scope": "accelerator", "timestep": 30},
            ],
            "subClusters": [{
                "name": "main", "nodes": "t[01-04]",
                "topology": {
                    "node": [0, 1, 2, 3, 4, 5, 6, 7],
                    "socket": [[0, 4, 1, 5], [2, 6, 3, 7]],
                    "memoryDomain": [[0, 4, 1, 5], [2, 6, 3, 7]],
                    "core": [[0, 4], [1, 5], [2, 6], [3, 7]],
                    "accelerators": [{"id": "gpu0"}, {"id": "gpu1"}],
                },
            }],
        });
        Cluster::from_json(value.to_string().as_bytes()).unwrap()
    }

    fn job(extra: Value) -> JobMeta {
        let mut value = json!({
            "jobId": 398764, "cluster": "fritz", "startTime": 1675954353, "duration": 177,
            "numNodes": 1, "resources": [{"hostname": "f0649"}],
        });
        for (key, item) in extra.as_object().unwrap() {
            value[key] = item.clone();
        }
        // A job lists one host per node.
        if value.get("resources") == Some(&json!([{"hostname": "f0649"}])) {
            let nodes = value["numNodes"].as_u64().unwrap();
            let hosts: Vec<Value> =
                (0..nodes).map(|n| json!({"hostname": format!("f{:04}", 649 + n)})).collect();
            value["resources"] = Value::Array(hosts);
        }
        JobMeta::from_json(value).unwrap()
    }

    fn plan(job: &JobMeta, cluster: &Cluster, metric: &str, scopes: &[MetricScope]) -> QueryPlan {
        build_queries(job, cluster, &[metric.to_owned()], scopes)
    }

    fn strings(ids: impl IntoIterator<Item = impl ToString>) -> Vec<String> {
        ids.into_iter().map(|id| id.to_string()).collect()
    }

    const NODE_CORE: [MetricScope; 2] = [MetricScope::Node, MetricScope::Core];

    #[test]
    fn archive_scopes_by_job_size() {
        let small = job(json!({}));
        assert_eq!(archive_scopes(&small, 8), [MetricScope::Node, MetricScope::Core]);
        assert_eq!(archive_scopes(&small, 0), [MetricScope::Node]);
        let gpu = job(json!({"numNodes": 9, "numAcc": 4}));
        assert_eq!(archive_scopes(&gpu, 8), [MetricScope::Node, MetricScope::Accelerator]);
        let eight = job(json!({"numNodes": 8}));
        assert_eq!(archive_scopes(&eight, 8), [MetricScope::Node, MetricScope::Core]);
    }

    #[test]
    fn fritz_clock_at_node_and_core() {
        let plan = plan(&job(json!({"subCluster": "main"})), &fritz(), "clock", &NODE_CORE);
        assert!(plan.errors.is_empty(), "{:?}", plan.errors);
        assert_eq!(plan.queries.len(), 73);

        let node = &plan.queries[0];
        assert_eq!(node.metric, "clock");
        assert_eq!(node.hostname, "f0649");
        assert_eq!(node.query_type, Some(MetricScope::Hwthread));
        assert!(node.aggregate);
        assert_eq!(node.type_ids, strings(0..72));
        assert_eq!(node.scope, MetricScope::Node);
        assert_eq!(node.series_ids, [Some("0".to_owned())]);

        for (core, query) in plan.queries[1..].iter().enumerate() {
            assert_eq!(query.query_type, Some(MetricScope::Hwthread), "core {core}");
            assert!(query.aggregate, "core {core}");
            assert_eq!(query.type_ids, [core.to_string()], "core {core}");
            assert_eq!(query.scope, MetricScope::Core, "core {core}");
            assert_eq!(query.series_ids, [Some(core.to_string())], "core {core}");
        }
    }

    #[test]
    fn fritz_mem_bw_at_core_is_socket() {
        let plan = plan(&job(json!({"subCluster": "main"})), &fritz(), "mem_bw", &NODE_CORE);
        assert!(plan.errors.is_empty(), "{:?}", plan.errors);
        assert_eq!(plan.queries.len(), 2);

        let node = &plan.queries[0];
        assert_eq!(node.query_type, Some(MetricScope::Socket));
        assert!(node.aggregate);
        assert_eq!(node.type_ids, ["0", "1"]);
        assert_eq!(node.scope, MetricScope::Node);
        assert_eq!(node.series_ids, [Some("0".to_owned())]);

        let socket = &plan.queries[1];
        assert_eq!(socket.query_type, Some(MetricScope::Socket));
        assert!(!socket.aggregate);
        assert_eq!(socket.type_ids, ["0", "1"]);
        assert_eq!(socket.scope, MetricScope::Socket);
        assert_eq!(socket.series_ids, [Some("0".to_owned()), Some("1".to_owned())]);
    }

    #[test]
    fn fritz_cpu_load_is_one_plain_query() {
        let plan = plan(&job(json!({"subCluster": "main"})), &fritz(), "cpu_load", &NODE_CORE);
        assert!(plan.errors.is_empty(), "{:?}", plan.errors);
        let expected = Query {
            metric: "cpu_load".to_owned(),
            hostname: "f0649".to_owned(),
            query_type: None,
            type_ids: Vec::new(),
            aggregate: false,
            scope: MetricScope::Node,
            series_ids: vec![None],
        };
        assert_eq!(plan.queries, [expected]);
    }

    #[test]
    fn sub_cluster_from_hostname_gives_topology() {
        // No subCluster: f0649 is in the node list of "main".
        let plan = plan(&job(json!({})), &fritz(), "clock", &NODE_CORE);
        assert!(plan.errors.is_empty(), "{:?}", plan.errors);
        assert_eq!(plan.queries.len(), 73);
    }

    #[test]
    fn job_hwthreads_select_cores_and_sockets() {
        let resources = json!([{"hostname": "f0649", "hwthreads": [0, 1, 40]}]);
        let job = job(json!({"resources": resources}));
        let clock = plan(&job, &fritz(), "clock", &NODE_CORE);
        assert_eq!(clock.queries[0].type_ids, ["0", "1", "40"]);
        let cores: Vec<&[String]> = clock.queries[1..].iter().map(|q| &q.type_ids[..]).collect();
        assert_eq!(cores, [["0"], ["1"], ["40"]]);

        let mem_bw = plan(&job, &fritz(), "mem_bw", &NODE_CORE);
        assert_eq!(mem_bw.queries[1].type_ids, ["0", "1"]);
        let first_socket = json!([{"hostname": "f0649", "hwthreads": [3, 4]}]);
        let mem_bw =
            plan(&self::job(json!({"resources": first_socket})), &fritz(), "mem_bw", &NODE_CORE);
        assert_eq!(mem_bw.queries[0].type_ids, ["0"]);
        assert_eq!(mem_bw.queries[1].type_ids, ["0"]);
    }

    #[test]
    fn one_query_set_per_host() {
        let resources = json!([{"hostname": "f0649"}, {"hostname": "f0650"}]);
        let job = job(json!({"numNodes": 2, "resources": resources}));
        let plan = plan(&job, &fritz(), "mem_bw", &NODE_CORE);
        let order: Vec<(&str, MetricScope)> =
            plan.queries.iter().map(|q| (q.hostname.as_str(), q.scope)).collect();
        assert_eq!(
            order,
            [
                ("f0649", MetricScope::Node),
                ("f0650", MetricScope::Node),
                ("f0649", MetricScope::Socket),
                ("f0650", MetricScope::Socket),
            ]
        );
    }

    #[test]
    fn duplicate_effective_scopes_are_skipped() {
        let job = job(json!({}));
        let scopes = [MetricScope::Node, MetricScope::Core, MetricScope::Node, MetricScope::Socket];
        let plan = plan(&job, &fritz(), "cpu_power", &scopes);
        let found: Vec<MetricScope> = plan.queries.iter().map(|q| q.scope).collect();
        assert_eq!(found, [MetricScope::Node, MetricScope::Socket]);
    }

    #[test]
    fn unknown_host_without_sub_cluster() {
        let resources = json!([{"hostname": "x001"}, {"hostname": "x002"}]);
        let job = job(json!({"numNodes": 2, "resources": resources}));
        let metrics = strings(["cpu_load", "clock", "mem_bw"]);
        let plan = build_queries(&job, &fritz(), &metrics, &NODE_CORE);

        let loaded: Vec<(&str, &str)> =
            plan.queries.iter().map(|q| (q.metric.as_str(), q.hostname.as_str())).collect();
        assert_eq!(loaded, [("cpu_load", "x001"), ("cpu_load", "x002")]);
        // One error per metric and scope, not per host.
        assert_eq!(plan.errors.len(), 4, "{:?}", plan.errors);
        for error in &plan.errors {
            assert!(matches!(error, QueryError::NoTopology { .. }), "{error}");
        }
        let message = plan.errors[0].to_string();
        assert!(message.contains("metric clock, scope node"), "{message}");
        assert!(message.contains("fritz/398764/1675954353"), "{message}");
        assert!(message.contains("x001"), "{message}");
    }

    #[test]
    fn given_hwthreads_need_no_topology_at_node() {
        let resources = json!([{"hostname": "x001", "hwthreads": [4, 5]}]);
        let plan = plan(&job(json!({"resources": resources})), &fritz(), "clock", &NODE_CORE);
        assert_eq!(plan.queries.len(), 1);
        assert_eq!(plan.queries[0].type_ids, ["4", "5"]);
        assert_eq!(plan.queries[0].series_ids, [Some("4".to_owned())]);
        let scopes: Vec<MetricScope> = plan
            .errors
            .iter()
            .map(|e| match e {
                QueryError::NoTopology { scope, .. } => *scope,
                other => panic!("unexpected error {other}"),
            })
            .collect();
        assert_eq!(scopes, [MetricScope::Core]);
    }

    #[test]
    fn hosts_without_hwthreads_fail_alone() {
        let resources = json!([
            {"hostname": "x001"},
            {"hostname": "x002", "hwthreads": [0, 1]},
            {"hostname": "x003"},
        ]);
        let job = job(json!({"numNodes": 3, "resources": resources}));
        let plan = plan(&job, &fritz(), "clock", &[MetricScope::Node]);
        let hosts: Vec<&str> = plan.queries.iter().map(|q| q.hostname.as_str()).collect();
        assert_eq!(hosts, ["x002"]);
        assert_eq!(plan.errors.len(), 1, "{:?}", plan.errors);
        assert!(plan.errors[0].to_string().contains("host x001"), "{}", plan.errors[0]);
    }

    #[test]
    fn hwthreads_outside_topology() {
        let resources = json!([{"hostname": "f0649", "hwthreads": [500]}]);
        let job = job(json!({"resources": resources}));
        let clock = plan(&job, &fritz(), "clock", &NODE_CORE);
        assert_eq!(clock.queries.len(), 1, "the node query passes the ids through");
        assert!(matches!(clock.errors[..], [QueryError::NoUnits { scope: MetricScope::Core, .. }]));
        let mem_bw = plan(&job, &fritz(), "mem_bw", &NODE_CORE);
        assert!(mem_bw.queries.is_empty());
        assert_eq!(mem_bw.errors.len(), 2);
        assert!(mem_bw.errors[0].to_string().contains("belong to no socket of sub-cluster main"));
    }

    #[test]
    fn unknown_and_removed_metrics() {
        let job = job(json!({"subCluster": "spr2tb", "resources": [{"hostname": "f2181"}]}));
        let metrics = strings(["mem_bw", "no_such_metric", "cpu_load"]);
        let plan = build_queries(&job, &fritz(), &metrics, &NODE_CORE);
        let loaded: Vec<&str> = plan.queries.iter().map(|q| q.metric.as_str()).collect();
        assert_eq!(loaded, ["cpu_load"]);
        assert_eq!(
            plan.errors,
            [QueryError::UnknownMetric {
                metric: "no_such_metric".to_owned(),
                cluster: "fritz".to_owned()
            }]
        );
    }

    #[test]
    fn tiny_native_scopes_at_core() {
        let tiny_job = job(json!({"cluster": "tiny", "resources": [{"hostname": "t01"}]}));
        let cluster = tiny();
        let check =
            |metric: &str, expected: &[(Option<MetricScope>, &[&str], bool, MetricScope)]| {
                let plan = plan(&tiny_job, &cluster, metric, &[MetricScope::Core]);
                assert!(plan.errors.is_empty(), "{metric}: {:?}", plan.errors);
                let found: Vec<(Option<MetricScope>, Vec<String>, bool, MetricScope)> = plan
                    .queries
                    .iter()
                    .map(|q| (q.query_type, q.type_ids.clone(), q.aggregate, q.scope))
                    .collect();
                let expected: Vec<(Option<MetricScope>, Vec<String>, bool, MetricScope)> = expected
                    .iter()
                    .map(|(kind, ids, aggregate, scope)| (*kind, strings(*ids), *aggregate, *scope))
                    .collect();
                assert_eq!(found, expected, "{metric}");
            };
        use MetricScope::*;
        check(
            "ipc",
            &[
                (Some(Hwthread), &["0", "4"], true, Core),
                (Some(Hwthread), &["1", "5"], true, Core),
                (Some(Hwthread), &["2", "6"], true, Core),
                (Some(Hwthread), &["3", "7"], true, Core),
            ],
        );
        check("flops", &[(Some(Core), &["0", "1", "2", "3"], false, Core)]);
        check("bw", &[(Some(MemoryDomain), &["0", "1"], false, MemoryDomain)]);
        check("power", &[(Some(Socket), &["0", "1"], false, Socket)]);
        check("load", &[(None, &[], false, Node)]);
        check("gpu", &[]);
    }

    #[test]
    fn tiny_aggregation_to_socket() {
        let resources = json!([{"hostname": "t01", "hwthreads": [2, 6]}]);
        let tiny_job = job(json!({"cluster": "tiny", "resources": resources}));
        let cluster = tiny();
        let ipc = plan(&tiny_job, &cluster, "ipc", &[MetricScope::Socket]);
        assert_eq!(ipc.queries.len(), 1);
        assert_eq!(ipc.queries[0].type_ids, ["2", "6", "3", "7"]);
        assert_eq!(ipc.queries[0].series_ids, [Some("1".to_owned())]);
        let flops = plan(&tiny_job, &cluster, "flops", &[MetricScope::Socket]);
        assert_eq!(flops.queries[0].query_type, Some(MetricScope::Core));
        assert_eq!(flops.queries[0].type_ids, ["2", "3"]);
        assert_eq!(flops.queries[0].scope, MetricScope::Socket);
        let flops_node = plan(&tiny_job, &cluster, "flops", &[MetricScope::Node]);
        assert_eq!(flops_node.queries[0].type_ids, ["2"]);
        assert_eq!(flops_node.queries[0].series_ids, [Some("2".to_owned())]);
    }

    #[test]
    fn tiny_accelerators() {
        let resources = json!([{"hostname": "t01", "accelerators": ["gpu0", "gpu1"]}]);
        let gpu_job = job(json!({"cluster": "tiny", "numAcc": 2, "resources": resources}));
        let cluster = tiny();
        let scopes = archive_scopes(&gpu_job, 8);
        assert_eq!(scopes, [MetricScope::Node, MetricScope::Core, MetricScope::Accelerator]);

        let gpu = plan(&gpu_job, &cluster, "gpu", &scopes);
        assert!(gpu.errors.is_empty(), "{:?}", gpu.errors);
        assert_eq!(gpu.queries.len(), 2);
        assert!(gpu.queries[0].aggregate);
        assert_eq!(gpu.queries[0].scope, MetricScope::Node);
        assert_eq!(gpu.queries[0].series_ids, [Some("gpu0".to_owned())]);
        assert!(!gpu.queries[1].aggregate);
        assert_eq!(gpu.queries[1].scope, MetricScope::Accelerator);
        assert_eq!(gpu.queries[1].type_ids, ["gpu0", "gpu1"]);

        // Requested at accelerator scope, a CPU metric keeps its native scope.
        let ipc = plan(&gpu_job, &cluster, "ipc", &[MetricScope::Accelerator]);
        assert_eq!(ipc.queries.len(), 1);
        assert_eq!(ipc.queries[0].scope, MetricScope::Hwthread);
        assert!(!ipc.queries[0].aggregate);
        assert_eq!(ipc.queries[0].type_ids, strings(0..8));

        // Without accelerators the accelerator-native metric is skipped, not an error.
        let cpu_job = job(json!({"cluster": "tiny", "resources": [{"hostname": "t01"}]}));
        let gpu = plan(&cpu_job, &cluster, "gpu", &scopes);
        assert_eq!(gpu, QueryPlan::default());
    }
}
