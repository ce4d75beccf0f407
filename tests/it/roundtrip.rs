//! Round trips through the whole service: fixture data served by a fake cc-metric-store (or
//! replayed from the example archive), archived by the worker, read back from the job-archive
//! and compared with the fixture.

use std::collections::BTreeMap;

use job_archiver::archive::format;
use job_archiver::config::MetricSourceConfig;
use job_archiver::job_data::{JobData, MetricScope};
use serde_json::Value;

use crate::fake_metric_store::{FakeMetricStore, FakeStoreConfig};
use crate::support::{example_job, repo_path, start_server, TestDirs};

const FRITZ_DATA: &str = "examples/archive/fritz/398/764/1675954353/data.json";
const EMMY_DATA: &str = "examples/archive/emmy/1403/244/1608923076/data.json.gz";

/// Reads the archived data file of a job folder, gzipped or not.
fn read_archived_data(folder: &std::path::Path) -> JobData {
    let gz = folder.join("data.json.gz");
    let plain = folder.join("data.json");
    assert!(gz.exists() != plain.exists(), "exactly one data file in {}", folder.display());
    let (bytes, gzipped) = match std::fs::read(&gz) {
        Ok(bytes) => (bytes, true),
        Err(_) => (std::fs::read(&plain).unwrap(), false),
    };
    format::decode_data_file(&bytes, gzipped).expect("archived data file decodes")
}

fn read_fixture(path: &str) -> JobData {
    let bytes = std::fs::read(repo_path(path)).unwrap();
    format::decode_data_file(&bytes, path.ends_with(".gz")).unwrap()
}

type SeriesKey = (String, MetricScope, String, Option<String>);

/// Every series by (metric, scope, hostname, id), with its position among equal keys so that
/// the fixture's duplicated socket ids still pair up in order.
fn index(data: &JobData) -> BTreeMap<(SeriesKey, usize), Vec<f64>> {
    let mut out = BTreeMap::new();
    for (metric, scopes) in data {
        for (scope, job_metric) in scopes {
            let mut seen: BTreeMap<SeriesKey, usize> = BTreeMap::new();
            for series in &job_metric.series {
                let key = (metric.clone(), *scope, series.hostname.clone(), series.id.clone());
                let position = seen.entry(key.clone()).or_default();
                out.insert((key, *position), series.data.clone());
                *position += 1;
            }
        }
    }
    out
}

fn assert_same_samples(label: &str, expected: &[f64], actual: &[f64]) {
    assert_eq!(expected.len(), actual.len(), "{label}: sample count");
    for (idx, (want, got)) in expected.iter().zip(actual).enumerate() {
        if want.is_nan() {
            assert!(got.is_nan(), "{label}[{idx}]: expected a missing sample, got {got}");
        } else {
            assert!((want - got).abs() <= 0.01, "{label}[{idx}]: expected {want}, got {got}");
        }
    }
}

#[tokio::test]
async fn fritz_job_round_trips_through_metric_store() {
    let store = FakeMetricStore::start(FakeStoreConfig::fritz()).await;
    let dirs = TestDirs::new();
    let source = MetricSourceConfig::CcMetricStore {
        url: store.url(),
        token_file: None,
        timeout: std::time::Duration::from_secs(10),
    };
    let server = start_server(dirs.config_with_source(source)).await;

    let (status, body) = server.post_json("/api/jobs/archive", &example_job("fritz-398764")).await;
    assert_eq!(status, 202, "trigger reply: {body}");
    let job = server.wait_for_state("fritz/398764/1675954353", "archived").await;
    let folder = std::path::PathBuf::from(job["archivePath"].as_str().unwrap());
    let archived = read_archived_data(&folder);

    // Series may be archived with the socket ids the topology gives ("0", "1") where the
    // fixture repeats "0", so compare sockets by position and everything else by id.
    let fixture = read_fixture(FRITZ_DATA);
    let scopes: Vec<(String, Vec<MetricScope>)> = fixture
        .iter()
        .map(|(metric, scopes)| (metric.clone(), scopes.keys().copied().collect()))
        .collect();
    for (metric, metric_scopes) in &scopes {
        for scope in metric_scopes {
            let want = &fixture[metric][scope];
            let got = archived
                .get(metric)
                .and_then(|scopes| scopes.get(scope))
                .unwrap_or_else(|| panic!("{metric}/{scope} missing in the archive"));
            assert_eq!(want.series.len(), got.series.len(), "{metric}/{scope}: series count");
            assert_eq!(want.timestep, got.timestep, "{metric}/{scope}: timestep");
            let mut want_series: Vec<_> = want.series.iter().collect();
            let mut got_series: Vec<_> = got.series.iter().collect();
            if *scope != MetricScope::Socket {
                want_series.sort_by(|a, b| a.id.cmp(&b.id));
                got_series.sort_by(|a, b| a.id.cmp(&b.id));
            }
            for (want, got) in want_series.iter().zip(&got_series) {
                let label = format!("{metric}/{scope}/{}/{:?}", want.hostname, want.id);
                assert_eq!(want.hostname, got.hostname, "{label}: hostname");
                if *scope != MetricScope::Socket {
                    assert_eq!(want.id, got.id, "{label}: id");
                }
                assert_same_samples(&label, &want.data, &got.data);
                let want_stats = want.statistics.expect("fixture series have statistics");
                let got_stats = got.statistics.expect("archived series have statistics");
                for (name, a, b) in [
                    ("min", want_stats.min, got_stats.min),
                    ("avg", want_stats.avg, got_stats.avg),
                    ("max", want_stats.max, got_stats.max),
                ] {
                    assert!((a - b).abs() <= 0.011, "{label}: statistics.{name} {a} vs {b}");
                }
            }
        }
    }
    assert_eq!(
        archived.keys().collect::<Vec<_>>(),
        fixture.keys().collect::<Vec<_>>(),
        "archived metrics"
    );

    // The job statistics follow ClusterCockpit's formula over the node series.
    let meta: Value =
        serde_json::from_slice(&std::fs::read(folder.join("meta.json")).unwrap()).unwrap();
    let node_avg = fixture["cpu_load"][&MetricScope::Node].series[0].statistics.unwrap().avg;
    assert_eq!(meta["statistics"]["cpu_load"]["avg"], node_avg, "cpu_load avg in meta.json");
    server.stop().await;
    store.stop().await;
}

#[tokio::test]
async fn emmy_job_archives_32_nodes_at_node_scope() {
    let dirs = TestDirs::new();
    let server = start_server(dirs.config()).await;

    let (status, body) = server.post_json("/api/jobs/archive", &example_job("emmy-1403244")).await;
    assert_eq!(status, 202, "trigger reply: {body}");
    let job = server.wait_for_state("emmy/1403244/1608923076", "archived").await;
    let folder = dirs.archive.join("emmy/1403/244/1608923076");
    assert_eq!(job["archivePath"], folder.display().to_string(), "archivePath");
    let archived = read_archived_data(&folder);
    assert!(folder.join("data.json.gz").exists(), "the large data file is gzipped");

    // The job's hostnames are unknown to the emmy cluster.json, which is fine at node scope.
    let fixture = read_fixture(EMMY_DATA);
    let expected_metrics =
        ["clock", "cpu_load", "flops_any", "flops_dp", "flops_sp", "ipc", "mem_bw", "mem_used"];
    assert_eq!(
        archived.keys().map(String::as_str).collect::<Vec<_>>(),
        expected_metrics,
        "archived metrics: the cluster's metrics that the source has"
    );
    let want = index(&fixture);
    for ((key, position), data) in index(&archived) {
        assert_eq!(key.1, MetricScope::Node, "{key:?}: only node scope for a 32-node job");
        let label = format!("{key:?}");
        let expected =
            want.get(&(key.clone(), position)).unwrap_or_else(|| panic!("{label} not in fixture"));
        assert_same_samples(&label, expected, &data);
    }
    for metric in expected_metrics {
        let series = &archived[metric][&MetricScope::Node].series;
        assert_eq!(series.len(), 32, "{metric}: one series per node");
        assert!(series.iter().all(|s| s.data.len() == 1441), "{metric}: 1441 samples per series");
    }
    // The source's ipc series have no statistics; the archive computes them from the data.
    let ipc = &archived["ipc"][&MetricScope::Node].series[0];
    let stats = ipc.statistics.expect("ipc series statistics");
    assert!(stats.min <= stats.avg, "ipc statistics: min above avg: {stats:?}");
    assert!(stats.avg <= stats.max, "ipc statistics: avg above max: {stats:?}");

    let meta: Value =
        serde_json::from_slice(&std::fs::read(folder.join("meta.json")).unwrap()).unwrap();
    assert_eq!(meta["numNodes"], 32, "numNodes in meta.json");
    let unit = &meta["statistics"]["mem_used"]["unit"];
    assert_eq!(unit["base"], "B", "mem_used unit comes from cluster.json, not the source file");
    server.stop().await;
}
