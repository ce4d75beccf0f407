//! A metric source that replays a job's `data.json[.gz]` from another job-archive folder.
//!
//! It serves demos and tests without a running cc-metric-store: the job's data is read from
//! `{root}/{cluster}/{jobId/1000}/{jobId%1000:03}/{startTime}/` and cut down to the metrics and
//! scopes a metric store would have returned for the same request.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use async_trait::async_trait;

use crate::archive::format;
use crate::archive::fs::job_dir_under;
use crate::job_data::{JobData, MetricScope};
use crate::metric_source::{LoadRequest, Loaded, MetricSource, SourceError};

/// Replays job data from the job-archive at `root`.
#[derive(Debug, Clone)]
pub struct ArchiveReplay {
    root: PathBuf,
}

impl ArchiveReplay {
    pub fn new(root: PathBuf) -> ArchiveReplay {
        ArchiveReplay { root }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
}

#[async_trait]
impl MetricSource for ArchiveReplay {
    /// Loads the job's data file, `data.json.gz` if present and else `data.json`, and returns
    /// the requested metrics that the cluster configuration lists.
    ///
    /// Each such metric is returned at `max(native scope, requested scope)` for every requested
    /// scope, as a metric store would return it, with the unit of the cluster configuration. A
    /// (metric, scope) pair that the file lacks is left out without an error. The resolution of the request is ignored: the data keeps the
    /// timestep it was archived with.
    ///
    /// Errors: [`SourceError::NoData`] when the job folder or its data file does not exist, and
    /// [`SourceError::InvalidReply`] when the file cannot be read or is not a valid data file.
    async fn load(&self, request: &LoadRequest<'_>) -> Result<Loaded, SourceError> {
        let job_dir = job_dir_under(&self.root, &request.job.id);
        let stored = match tokio::task::spawn_blocking(move || read_job_data(&job_dir)).await {
            Ok(res) => res?,
            Err(err) => {
                return Err(SourceError::InvalidReply(format!(
                    "reading the job data failed: {err}"
                )))
            }
        };
        Ok(Loaded { data: select(stored, request), partial_errors: Vec::new() })
    }
}

/// Reads and parses the data file of the job folder `job_dir`.
fn read_job_data(job_dir: &Path) -> Result<JobData, SourceError> {
    if !job_dir.is_dir() {
        return Err(SourceError::NoData(format!(
            "job folder {} does not exist",
            job_dir.display()
        )));
    }
    for (name, gzipped) in [("data.json.gz", true), ("data.json", false)] {
        let path = job_dir.join(name);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
            Err(err) => {
                return Err(SourceError::InvalidReply(format!("{}: {err}", path.display())));
            }
        };
        return format::decode_data_file(&bytes, gzipped)
            .map_err(|err| SourceError::InvalidReply(format!("{}: {err}", path.display())));
    }
    Err(SourceError::NoData(format!(
        "job folder {} has neither data.json.gz nor data.json",
        job_dir.display()
    )))
}

/// Keeps the requested metrics known to the cluster, each at the scopes the request implies.
/// Units are taken from the cluster configuration, as ClusterCockpit sets them on data loaded
/// from a metric store, because archived files may carry outdated units.
fn select(mut stored: JobData, request: &LoadRequest<'_>) -> JobData {
    let mut res = JobData::new();
    for name in request.metrics {
        let Some(config) = request.cluster.metric(name) else {
            continue;
        };
        let Some(stored_scopes) = stored.get_mut(name) else {
            continue;
        };
        let mut scopes = BTreeMap::new();
        for &requested in request.scopes {
            let scope: MetricScope = config.scope.max(requested);
            if let Some(mut metric) = stored_scopes.remove(&scope) {
                metric.unit = config.unit.clone();
                scopes.insert(scope, metric);
            }
        }
        if !scopes.is_empty() {
            res.insert(name.clone(), scopes);
        }
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::Cluster;
    use crate::job::JobMeta;

    const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples");

    fn cluster(name: &str) -> Cluster {
        let path = format!("{EXAMPLES}/archive/{name}/cluster.json");
        let bytes = std::fs::read(&path).expect("example cluster.json is in the repository");
        Cluster::from_json(&bytes).expect("example cluster.json is valid")
    }

    fn job(file: &str) -> JobMeta {
        let bytes = std::fs::read(format!("{EXAMPLES}/jobs/{file}")).expect("example job");
        JobMeta::from_json(serde_json::from_slice(&bytes).expect("valid JSON")).expect("valid")
    }

    fn scopes_of(data: &JobData, metric: &str) -> Vec<MetricScope> {
        match data.get(metric) {
            Some(scopes) => scopes.keys().copied().collect(),
            None => Vec::new(),
        }
    }

    fn replay() -> ArchiveReplay {
        ArchiveReplay::new(PathBuf::from(format!("{EXAMPLES}/archive")))
    }

    #[tokio::test]
    async fn fritz_job_at_node_and_core() {
        let cluster = cluster("fritz");
        let job = job("fritz-398764-meta.json");
        let metrics: Vec<String> = cluster.metrics.iter().map(|m| m.name.clone()).collect();
        let scopes = [MetricScope::Node, MetricScope::Core];
        let request = LoadRequest {
            job: &job,
            cluster: &cluster,
            metrics: &metrics,
            scopes: &scopes,
            resolution: 0,
        };

        let loaded = replay().load(&request).await.expect("the example job loads");

        use MetricScope::{Core, Node, Socket};
        let data = &loaded.data;
        assert!(loaded.partial_errors.is_empty());
        assert_eq!(scopes_of(data, "clock"), [Core, Node]);
        assert_eq!(scopes_of(data, "cpu_power"), [Socket, Node]);
        assert_eq!(scopes_of(data, "mem_bw"), [Socket, Node]);
        assert_eq!(scopes_of(data, "cpu_load"), [Node]);
        assert_eq!(scopes_of(data, "mem_used"), [Node]);
        assert_eq!(scopes_of(data, "ipc"), [Core, Node]);
        assert_eq!(data["clock"][&Core].series.len(), 72);
        assert_eq!(data.len(), 19, "every fritz metric is in the file: {:?}", data.keys());
    }

    #[tokio::test]
    async fn only_requested_metrics_are_returned() {
        let cluster = cluster("fritz");
        let job = job("fritz-398764-meta.json");
        let metrics = vec!["mem_bw".to_owned(), "not_a_metric".to_owned()];
        let scopes = [MetricScope::Node];
        let request = LoadRequest {
            job: &job,
            cluster: &cluster,
            metrics: &metrics,
            scopes: &scopes,
            resolution: 0,
        };

        let loaded = replay().load(&request).await.expect("the example job loads");

        assert_eq!(loaded.data.keys().collect::<Vec<_>>(), ["mem_bw"]);
        assert_eq!(scopes_of(&loaded.data, "mem_bw"), [MetricScope::Node]);
    }

    #[tokio::test]
    async fn emmy_job_at_node() {
        let cluster = cluster("emmy");
        let job = job("emmy-1403244-meta.json");
        let mut metrics: Vec<String> = cluster.metrics.iter().map(|m| m.name.clone()).collect();
        metrics.push("rapl_power".to_owned());
        let scopes = [MetricScope::Node];
        let request = LoadRequest {
            job: &job,
            cluster: &cluster,
            metrics: &metrics,
            scopes: &scopes,
            resolution: 0,
        };

        let loaded = replay().load(&request).await.expect("the example job loads");

        let names: Vec<&str> = loaded.data.keys().map(String::as_str).collect();
        let expected =
            ["clock", "cpu_load", "flops_any", "flops_dp", "flops_sp", "ipc", "mem_bw", "mem_used"];
        assert_eq!(names, expected, "rapl_power is not in the emmy cluster.json");
        for (name, scopes) in &loaded.data {
            assert_eq!(scopes.keys().copied().collect::<Vec<_>>(), [MetricScope::Node], "{name}");
            assert_eq!(scopes[&MetricScope::Node].series.len(), 32, "{name}");
        }
        let mem_used = &loaded.data["mem_used"][&MetricScope::Node];
        assert_eq!(mem_used.unit.base, "B", "the file says B/s, the cluster.json says B");
        let ipc = &loaded.data["ipc"][&MetricScope::Node].series[0];
        assert!(ipc.statistics.is_none(), "the emmy ipc series carry no statistics");
        assert_eq!(ipc.data.len(), 1441);
    }

    #[tokio::test]
    async fn missing_job_folder_is_no_data() {
        let cluster = cluster("fritz");
        let mut raw = job("fritz-398764-meta.json").raw;
        raw.insert("jobId".to_owned(), serde_json::json!(1));
        let job = JobMeta::from_json(serde_json::Value::Object(raw)).expect("valid");
        let request =
            LoadRequest { job: &job, cluster: &cluster, metrics: &[], scopes: &[], resolution: 0 };

        let err = replay().load(&request).await.expect_err("no such job");

        assert!(matches!(err, SourceError::NoData(_)), "{err:?}");
        assert!(err.to_string().contains("fritz/0/001/1675954353"), "{err}");
    }

    #[tokio::test]
    async fn invalid_data_file_is_invalid_reply() {
        let temp = tempfile::tempdir().expect("temp dir");
        let job_dir = temp.path().join("fritz/398/764/1675954353");
        std::fs::create_dir_all(&job_dir).expect("writable");
        std::fs::write(job_dir.join("data.json.gz"), b"not gzip").expect("writable");
        std::fs::write(job_dir.join("data.json"), b"{}").expect("writable");
        let cluster = cluster("fritz");
        let job = job("fritz-398764-meta.json");
        let request =
            LoadRequest { job: &job, cluster: &cluster, metrics: &[], scopes: &[], resolution: 0 };

        let err = ArchiveReplay::new(temp.path().to_path_buf())
            .load(&request)
            .await
            .expect_err("the gzip file is preferred and corrupt");

        assert!(matches!(err, SourceError::InvalidReply(_)), "{err:?}");
        assert!(err.to_string().contains("data.json.gz"), "{err}");
    }

    #[tokio::test]
    async fn folder_without_data_file_is_no_data() {
        let temp = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(temp.path().join("fritz/398/764/1675954353")).expect("writable");
        let cluster = cluster("fritz");
        let job = job("fritz-398764-meta.json");
        let request =
            LoadRequest { job: &job, cluster: &cluster, metrics: &[], scopes: &[], resolution: 0 };

        let err = ArchiveReplay::new(temp.path().to_path_buf())
            .load(&request)
            .await
            .expect_err("no data file");

        assert!(matches!(err, SourceError::NoData(_)), "{err:?}");
    }
}
