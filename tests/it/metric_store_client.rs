//! The cc-metric-store client against the fake store: the fritz example job must come back as
//! the series of its `data.json`, and every failure of the store must map to its
//! `SourceError`.

use std::path::Path;
use std::time::Duration;

use job_archiver::cluster::Cluster;
use job_archiver::job::JobMeta;
use job_archiver::job_data::{JobData, MetricScope};
use job_archiver::metric_source::cc_metric_store::CcMetricStore;
use job_archiver::metric_source::{LoadRequest, Loaded, MetricSource, SourceError};
use job_archiver::scopes::archive_scopes;
use serde_json::{json, Value};

use crate::fake_metric_store::{FakeMetricStore, FakeStoreConfig, Mode};

/// The time a test waits for a load before it fails, far above the client timeouts used here.
const TEST_DEADLINE: Duration = Duration::from_secs(20);

const FRITZ_JOB: &str = "examples/archive/fritz/398/764/1675954353";

fn read_json(relative: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
}

fn fritz_cluster() -> Cluster {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/archive/fritz/cluster.json");
    Cluster::from_json(&std::fs::read(path).unwrap()).unwrap()
}

fn fritz_job() -> JobMeta {
    JobMeta::from_json(read_json(&format!("{FRITZ_JOB}/meta.json"))).unwrap()
}

fn client(store: &FakeMetricStore, token: Option<&str>) -> CcMetricStore {
    CcMetricStore::new(&store.url(), token.map(str::to_owned), Duration::from_secs(5)).unwrap()
}

/// Loads every metric of a job's sub-cluster at the scopes ClusterCockpit archives (node, and
/// core for jobs of at most 8 nodes).
async fn load(source: &CcMetricStore, job: &JobMeta) -> Result<Loaded, SourceError> {
    let cluster = fritz_cluster();
    let sub_cluster = cluster.sub_cluster_for(job).map(|sub_cluster| sub_cluster.name.as_str());
    let metrics: Vec<String> =
        cluster.metrics_for(sub_cluster).iter().map(|metric| metric.name.clone()).collect();
    load_metrics(source, job, &metrics).await
}

/// Loads the given metrics of a job at node and core scope.
async fn load_metrics(
    source: &CcMetricStore,
    job: &JobMeta,
    metrics: &[String],
) -> Result<Loaded, SourceError> {
    let cluster = fritz_cluster();
    let scopes = archive_scopes(job, 8);
    let request = LoadRequest { job, cluster: &cluster, metrics, scopes: &scopes, resolution: 0 };
    tokio::time::timeout(TEST_DEADLINE, source.load(&request))
        .await
        .expect("load did not finish within the test deadline")
}

/// Asserts that `loaded` contains exactly the series of a `data.json` document, matched by
/// metric, scope, hostname and id, with data within 0.01 and missing samples in the same places.
/// Socket series are matched by position, because the fixture gives every socket the id "0".
#[track_caller]
fn assert_reproduces(fixture: &Value, loaded: &JobData) {
    let cluster = fritz_cluster();
    let fixture = fixture.as_object().unwrap();
    let fixture_keys: Vec<(String, String)> = fixture
        .iter()
        .flat_map(|(metric, scopes)| {
            scopes.as_object().unwrap().keys().map(move |scope| (metric.clone(), scope.clone()))
        })
        .collect();
    let mut loaded_keys: Vec<(String, String)> = loaded
        .iter()
        .flat_map(|(metric, scopes)| {
            scopes.keys().map(move |scope| (metric.clone(), scope.as_str().to_owned()))
        })
        .collect();
    let mut sorted_fixture_keys = fixture_keys.clone();
    sorted_fixture_keys.sort();
    loaded_keys.sort();
    assert_eq!(loaded_keys, sorted_fixture_keys, "loaded (metric, scope) pairs");

    for (metric, scope) in fixture_keys {
        let expected = &fixture[&metric][&scope];
        let scope_value: MetricScope = scope.parse().unwrap();
        let job_metric = &loaded[&metric][&scope_value];
        let config = cluster.metric(&metric).unwrap();
        assert_eq!(job_metric.unit, config.unit, "{metric} {scope} unit");
        assert_eq!(i64::from(job_metric.timestep), expected["timestep"], "{metric} {scope}");

        let expected_series = expected["series"].as_array().unwrap();
        assert_eq!(job_metric.series.len(), expected_series.len(), "{metric} {scope} count");
        for (position, expected) in expected_series.iter().enumerate() {
            let hostname = expected["hostname"].as_str().unwrap();
            let id = expected["id"].as_str();
            let found = match scope_value {
                MetricScope::Socket => job_metric.series.get(position),
                _ => job_metric
                    .series
                    .iter()
                    .find(|series| series.hostname == hostname && series.id.as_deref() == id),
            };
            let label = format!("{metric} {scope} host {hostname} id {id:?} #{position}");
            let Some(found) = found else { panic!("{label}: series missing") };
            assert_eq!(found.hostname, hostname, "{label}");
            let expected_data = expected["data"].as_array().unwrap();
            assert_eq!(found.data.len(), expected_data.len(), "{label}: sample count");
            for (sample_idx, (got, want)) in found.data.iter().zip(expected_data).enumerate() {
                match want.as_f64() {
                    None => assert!(got.is_nan(), "{label}[{sample_idx}]: want NaN, got {got}"),
                    Some(want) => {
                        assert!(
                            (got - want).abs() <= 0.01,
                            "{label}[{sample_idx}]: {got} vs {want}"
                        )
                    }
                }
            }
        }
    }
}

#[tokio::test]
async fn round_trip_fritz_job() {
    let store = FakeMetricStore::start(FakeStoreConfig::fritz()).await;
    let loaded = load(&client(&store, None), &fritz_job()).await.unwrap();
    assert!(loaded.partial_errors.is_empty(), "{:?}", loaded.partial_errors);
    assert_reproduces(&read_json(&format!("{FRITZ_JOB}/data.json")), &loaded.data);

    // Node series of aggregated queries carry the first type id, as in ClusterCockpit.
    let clock_node = &loaded.data["clock"][&MetricScope::Node].series[0];
    assert_eq!(clock_node.id.as_deref(), Some("0"));
    let cpu_load_node = &loaded.data["cpu_load"][&MetricScope::Node].series[0];
    assert_eq!(cpu_load_node.id, None);
    let stats = cpu_load_node.statistics.unwrap();
    assert!(stats.min <= stats.avg, "{stats:?}");
    assert!(stats.avg <= stats.max, "{stats:?}");
    let socket_ids: Vec<Option<&str>> = loaded.data["mem_bw"][&MetricScope::Socket]
        .series
        .iter()
        .map(|series| series.id.as_deref())
        .collect();
    assert_eq!(socket_ids, [Some("0"), Some("1")]);
    store.stop().await;
}

#[tokio::test]
async fn round_trip_missing_samples() {
    let mut config = FakeStoreConfig::fritz();
    config.data["cpu_load"]["node"]["series"][0]["data"] = json!([null, 17.36, null]);
    config.data["clock"]["core"]["series"][5]["data"] = json!([null, null, null]);
    let fixture = config.data.clone();
    let store = FakeMetricStore::start(config).await;
    let loaded = load(&client(&store, None), &fritz_job()).await.unwrap();
    assert!(loaded.partial_errors.is_empty(), "{:?}", loaded.partial_errors);
    assert_reproduces(&fixture, &loaded.data);

    let cpu_load = &loaded.data["cpu_load"][&MetricScope::Node].series[0];
    assert!(cpu_load.data[0].is_nan());
    assert_eq!(cpu_load.statistics.map(|stats| stats.avg), Some(17.36));
    let empty_core = loaded.data["clock"][&MetricScope::Core]
        .series
        .iter()
        .find(|series| series.data.iter().all(|value| value.is_nan()))
        .expect("the all-missing core series is kept");
    assert_eq!(empty_core.statistics, None, "no statistics without samples");
    store.stop().await;
}

#[tokio::test]
async fn request_follows_the_protocol() {
    let store = FakeMetricStore::start(FakeStoreConfig::fritz()).await;
    let job = fritz_job();
    load(&client(&store, None), &job).await.unwrap();

    let requests = store.requests();
    assert_eq!(requests.len(), 1, "one request per job");
    let request = &requests[0];
    assert_eq!(request.method, "GET");
    assert_eq!(request.uri, "/api/query?version=v2");
    assert_eq!(request.headers["content-type"], "application/json");
    let body = request.json();
    assert_eq!(body["cluster"], "fritz");
    assert_eq!(body["from"], 1675954353);
    assert_eq!(body["to"], 1675954353 + 177);
    assert_eq!(body["for-all-nodes"], Value::Null);
    assert!(body.as_object().unwrap().contains_key("for-all-nodes"));
    assert_eq!(body["with-stats"], true);
    assert_eq!(body["with-data"], true);

    // 7 hwthread-native metrics x (1 node + 72 cores), 3 socket-native x 2, 9 node-native x 1.
    let queries = body["queries"].as_array().unwrap();
    assert_eq!(queries.len(), 7 * 73 + 3 * 2 + 9);
    let cpu_load = queries.iter().find(|query| query["metric"] == "cpu_load").unwrap();
    assert_eq!(
        cpu_load,
        &json!({"metric": "cpu_load", "host": "f0649", "resolution": 0, "aggreg": false})
    );
    let mem_bw: Vec<&Value> = queries.iter().filter(|query| query["metric"] == "mem_bw").collect();
    assert_eq!(
        mem_bw,
        [
            &json!({"type": "socket", "metric": "mem_bw", "host": "f0649", "resolution": 0,
                    "type-ids": ["0", "1"], "aggreg": true}),
            &json!({"type": "socket", "metric": "mem_bw", "host": "f0649", "resolution": 0,
                    "type-ids": ["0", "1"], "aggreg": false}),
        ]
    );
    let clock_keys: Vec<&String> = queries
        .iter()
        .find(|query| query["metric"] == "clock")
        .unwrap()
        .as_object()
        .unwrap()
        .keys()
        .collect();
    assert_eq!(clock_keys, ["type", "metric", "host", "resolution", "type-ids", "aggreg"]);
    store.stop().await;
}

#[tokio::test]
async fn bearer_token_is_sent() {
    let mut config = FakeStoreConfig::fritz();
    config.token = Some("secret-jwt".to_owned());
    let store = FakeMetricStore::start(config).await;
    let loaded = load(&client(&store, Some("secret-jwt")), &fritz_job()).await.unwrap();
    assert!(!loaded.data.is_empty());
    let requests = store.requests();
    assert_eq!(requests[0].headers["authorization"], "Bearer secret-jwt");
    store.stop().await;
}

#[tokio::test]
async fn no_token_no_header() {
    let store = FakeMetricStore::start(FakeStoreConfig::fritz()).await;
    load(&client(&store, None), &fritz_job()).await.unwrap();
    load(&client(&store, Some("")), &fritz_job()).await.unwrap();
    for request in store.requests() {
        assert!(!request.headers.contains_key("authorization"), "{:?}", request.headers);
    }
    store.stop().await;
}

#[tokio::test]
async fn wrong_token_is_status_401() {
    let mut config = FakeStoreConfig::fritz();
    config.token = Some("secret-jwt".to_owned());
    let store = FakeMetricStore::start(config).await;
    let err = load(&client(&store, Some("other")), &fritz_job()).await.unwrap_err();
    assert!(matches!(err, SourceError::Status { status: 401, .. }), "{err}");
    assert!(!err.is_transient());
    assert!(!err.to_string().contains("other"), "the token leaked into {err}");
    store.stop().await;
}

#[tokio::test]
async fn partial_errors_keep_the_rest() {
    let store = FakeMetricStore::start(FakeStoreConfig::fritz()).await;
    store.set_metric_error("mem_bw", "simulated read failure");
    let loaded = load(&client(&store, None), &fritz_job()).await.unwrap();

    assert!(!loaded.data.contains_key("mem_bw"), "a metric with no series is dropped");
    assert_eq!(loaded.data.len(), 18);
    assert_eq!(
        loaded.partial_errors,
        [
            "metric mem_bw, scope node, host f0649, id 0: simulated read failure",
            "metric mem_bw, scope socket, host f0649, id 0: simulated read failure",
            "metric mem_bw, scope socket, host f0649, id 1: simulated read failure",
        ]
    );
    store.stop().await;
}

#[tokio::test]
async fn only_errors_is_no_data() {
    let store = FakeMetricStore::start(FakeStoreConfig::fritz()).await;
    for metric in fritz_cluster().metrics {
        store.set_metric_error(&metric.name, "simulated read failure");
    }
    let err = load(&client(&store, None), &fritz_job()).await.unwrap_err();
    assert!(matches!(err, SourceError::NoData(_)), "{err}");
    assert!(err.to_string().contains("simulated read failure"), "{err}");
    store.stop().await;
}

#[tokio::test]
async fn unknown_host_is_no_data() {
    let store = FakeMetricStore::start(FakeStoreConfig::fritz()).await;
    let mut meta = read_json(&format!("{FRITZ_JOB}/meta.json"));
    meta["resources"] = json!([{"hostname": "f0650"}]);
    let job = JobMeta::from_json(meta).unwrap();
    let err = load(&client(&store, None), &job).await.unwrap_err();
    let SourceError::NoData(message) = &err else { panic!("expected NoData, got {err}") };
    assert!(message.contains("host f0650"), "{message}");
    assert!(message.contains("the store returned no series"), "{message}");
    store.stop().await;
}

#[tokio::test]
async fn status_500_is_transient() {
    let store = FakeMetricStore::start(FakeStoreConfig::fritz()).await;
    store.set_mode(Mode::Status500);
    let err = load(&client(&store, None), &fritz_job()).await.unwrap_err();
    let SourceError::Status { status, body } = &err else { panic!("expected Status, got {err}") };
    assert_eq!(*status, 500);
    assert_eq!(body, "fake store: internal error");
    assert!(err.is_transient());
    store.stop().await;
}

#[tokio::test]
async fn status_body_is_truncated() {
    let store = FakeMetricStore::start(FakeStoreConfig::fritz()).await;
    store.set_mode(Mode::Fixed { status: 404, body: "é".repeat(1000) });
    let err = load(&client(&store, None), &fritz_job()).await.unwrap_err();
    let SourceError::Status { status, body } = &err else { panic!("expected Status, got {err}") };
    assert_eq!(*status, 404);
    assert_eq!(body.chars().count(), 203, "200 characters and an ellipsis");
    assert!(!err.is_transient());
    store.stop().await;
}

#[tokio::test]
async fn garbage_is_invalid_reply() {
    let store = FakeMetricStore::start(FakeStoreConfig::fritz()).await;
    store.set_mode(Mode::Garbage);
    let err = load(&client(&store, None), &fritz_job()).await.unwrap_err();
    assert!(matches!(err, SourceError::InvalidReply(_)), "{err}");
    assert!(!err.is_transient());
    store.stop().await;
}

#[tokio::test]
async fn wrongly_shaped_replies_are_invalid() {
    let store = FakeMetricStore::start(FakeStoreConfig::fritz()).await;
    let replies = [
        ("{\"results\":[]}", "expected 526 result arrays, one per query, got 0"),
        ("{}", "expected 526 result arrays"),
        ("{\"results\":\"none\"}", "invalid type"),
        ("{\"results\":[[{\"data\":[\"1\"]}]]}", "invalid type"),
        ("{\"results\":[[{\"data\":[1],\"resolution\":1.5}]]}", "invalid type"),
        ("[1,2]", "invalid type"),
    ];
    for (reply, expected) in replies {
        store.set_mode(Mode::Fixed { status: 200, body: reply.to_owned() });
        let err = load(&client(&store, None), &fritz_job()).await.unwrap_err();
        let SourceError::InvalidReply(message) = &err else {
            panic!("reply {reply}: expected InvalidReply, got {err}")
        };
        assert!(message.contains(expected), "reply {reply}: {message}");
    }
    store.stop().await;
}

#[tokio::test]
async fn element_counts_that_do_not_match() {
    let store = FakeMetricStore::start(FakeStoreConfig::fritz()).await;
    let source = client(&store, None);
    let mem_bw = ["mem_bw".to_owned()];
    let element =
        r#"{"data":[1.0,null,3.0],"from":1,"to":2,"resolution":0,"avg":2,"min":1,"max":3}"#;

    // The node query gets one element, the socket query one of its two.
    let short = format!(r#"{{"results":[[{element}],[{element}]]}}"#);
    store.set_mode(Mode::Fixed { status: 200, body: short });
    let loaded = load_metrics(&source, &fritz_job(), &mem_bw).await.unwrap();
    assert_eq!(
        loaded.partial_errors,
        ["metric mem_bw, scope socket, host f0649: the store returned 1 of 2 series; series ids \
          may be shifted"]
    );
    let sockets = &loaded.data["mem_bw"][&MetricScope::Socket];
    assert_eq!(sockets.series.len(), 1);
    assert_eq!(sockets.series[0].id.as_deref(), Some("0"));
    assert_eq!(sockets.timestep, 60, "resolution 0 falls back to the configured timestep");
    assert!(sockets.series[0].data[1].is_nan());

    // The node query gets two elements for its one series.
    let long = format!(r#"{{"results":[[{element},{element}],[{element},{element}]]}}"#);
    store.set_mode(Mode::Fixed { status: 200, body: long });
    let loaded = load_metrics(&source, &fritz_job(), &mem_bw).await.unwrap();
    assert_eq!(
        loaded.partial_errors,
        ["metric mem_bw, scope node, host f0649: expected 1 series, got 2 result elements; \
          series dropped"]
    );
    assert!(!loaded.data["mem_bw"].contains_key(&MetricScope::Node));
    assert_eq!(loaded.data["mem_bw"][&MetricScope::Socket].series.len(), 2);
    store.stop().await;
}

#[tokio::test]
async fn hanging_store_times_out() {
    let store = FakeMetricStore::start(FakeStoreConfig::fritz()).await;
    store.set_mode(Mode::Hang);
    let timeout = Duration::from_millis(500);
    let source = CcMetricStore::new(&store.url(), None, timeout).unwrap();
    let started = tokio::time::Instant::now();
    let err = load(&source, &fritz_job()).await.unwrap_err();
    let elapsed = started.elapsed();
    assert!(matches!(err, SourceError::Unreachable(_)), "{err}");
    assert!(err.to_string().contains("timed out after 500ms"), "{err}");
    assert!(err.is_transient());
    assert!(elapsed >= timeout, "gave up after {elapsed:?}");
    assert!(elapsed < Duration::from_secs(3), "took {elapsed:?}");
    store.stop().await;
}

#[tokio::test]
async fn closed_port_is_unreachable() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let source = CcMetricStore::new(&url, None, Duration::from_secs(5)).unwrap();
    let err = load(&source, &fritz_job()).await.unwrap_err();
    assert!(matches!(err, SourceError::Unreachable(_)), "{err}");
    assert!(err.to_string().contains(&url), "{err}");
    assert!(err.is_transient());
}

#[tokio::test]
async fn invalid_settings_are_rejected() {
    let timeout = Duration::from_secs(1);
    let urls = [
        "",
        "not a url",
        "ftp://127.0.0.1:8082",
        "http://127.0.0.1:8082/?a=b",
        "http://127.0.0.1:8082/#top",
        "http://user:password@127.0.0.1:8082",
    ];
    for url in urls {
        let err = CcMetricStore::new(url, None, timeout).unwrap_err();
        assert!(err.to_string().contains("url"), "{url:?}: {err}");
        assert!(!err.to_string().contains("password"), "{url:?}: {err}");
    }
    let err =
        CcMetricStore::new("http://127.0.0.1:8082", Some("a\nb".to_owned()), timeout).unwrap_err();
    assert!(err.to_string().starts_with("invalid cc-metric-store setting: token"), "{err}");
    assert!(!err.to_string().contains("a\nb"), "the token leaked into {err}");

    let source =
        CcMetricStore::new("http://127.0.0.1:8082/", Some("secret".to_owned()), timeout).unwrap();
    let debug = format!("{source:?}");
    assert!(debug.contains("http://127.0.0.1:8082/api/query?version=v2"), "{debug}");
    assert!(!debug.contains("secret"), "the token leaked into {debug}");
}
