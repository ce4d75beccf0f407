//! A fake cc-metric-store: a real HTTP server on 127.0.0.1 that speaks the store's query API
//! (`/api/query?version=v2`, GET with a JSON body) and replies from a job-archive `data.json`.
//!
//! It maps each query back to a fixture series with the cluster topology, the way the real store
//! would aggregate. A plain query, or an aggregate over every unit of the node, gives the node
//! series. An aggregate over one core's hwthreads gives that core's series. A non-aggregated
//! query gives one series per type id. Knobs let tests record requests, inject per-metric error
//! elements and make the whole store fail.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use serde_json::Value;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What the store does with the next requests.
#[derive(Debug, Clone, PartialEq)]
pub enum Mode {
    /// Reply to queries from the fixture.
    Normal,
    /// Reply HTTP 500 with a short text body.
    Status500,
    /// Reply HTTP 200 with a body that is not JSON.
    Garbage,
    /// Never reply, until the store stops.
    Hang,
    /// Reply with this status and body.
    Fixed { status: u16, body: String },
}

/// The data a fake store serves.
pub struct FakeStoreConfig {
    /// A `cluster.json` document; the store uses its name and one sub-cluster's topology.
    pub cluster: Value,
    /// The sub-cluster whose topology the store's hosts have.
    pub sub_cluster: String,
    /// A job-archive `data.json` document; its series are the store's only data.
    pub data: Value,
    /// The bearer token the store requires; `None` accepts every request.
    pub token: Option<String>,
}

impl FakeStoreConfig {
    /// Returns the setup for the 1-node fritz example job (host f0649, sub-cluster main) from
    /// `examples/archive`.
    pub fn fritz() -> FakeStoreConfig {
        let archive = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/archive/fritz");
        FakeStoreConfig {
            cluster: read_json(&archive.join("cluster.json")),
            sub_cluster: "main".to_owned(),
            data: read_json(&archive.join("398/764/1675954353/data.json")),
            token: None,
        }
    }
}

/// A request as the store received it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: Method,
    /// Path and query, for example `/api/query?version=v2`.
    pub uri: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl RecordedRequest {
    /// Parses the body as JSON, giving `Value::Null` if it is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// A running fake store. Dropping it stops the server.
pub struct FakeMetricStore {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    server: Option<JoinHandle<()>>,
}

impl FakeMetricStore {
    /// Starts a store on a free port of 127.0.0.1.
    pub async fn start(config: FakeStoreConfig) -> FakeMetricStore {
        let fixture = Fixture::new(&config);
        let (stop, stopped) = watch::channel(false);
        let shared = Arc::new(Shared {
            fixture,
            token: config.token,
            mode: Mutex::new(Mode::Normal),
            metric_errors: Mutex::new(HashMap::new()),
            requests: Mutex::new(Vec::new()),
            kill_pid_on_host: Mutex::new(None),
            stopped: stopped.clone(),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router =
            Router::new().route("/api/query", any(handle_query)).with_state(shared.clone());
        let mut stopped_for_server = stopped;
        let server = tokio::spawn(async move {
            let shutdown = async move {
                // An error means the sender is gone, which also means stop.
                let _ = stopped_for_server.wait_for(|stopped| *stopped).await;
            };
            axum::serve(listener, router).with_graceful_shutdown(shutdown).await.unwrap();
        });
        FakeMetricStore { addr, shared, stop, server: Some(server) }
    }

    /// Returns the base URL to give a client, `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set_mode(&self, mode: Mode) {
        *lock(&self.shared.mode) = mode;
    }

    /// Makes every result element of `metric` an error element with `message`.
    pub fn set_metric_error(&self, metric: &str, message: &str) {
        lock(&self.shared.metric_errors).insert(metric.to_owned(), message.to_owned());
    }

    /// Makes a query for `hostname` send SIGKILL to process `pid` before the store replies, or
    /// turns that off with `None`. Tests use it to crash the service during an attempt.
    pub fn set_kill_pid_on_host(&self, target: Option<(&str, u32)>) {
        *lock(&self.shared.kill_pid_on_host) =
            target.map(|(hostname, pid)| (hostname.to_owned(), pid));
    }

    /// Returns the requests received so far, oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.shared.requests).clone()
    }

    /// Stops the server, releasing hanging requests, and waits until it has stopped.
    pub async fn stop(mut self) {
        self.stop.send_replace(true);
        if let Some(server) = self.server.take() {
            tokio::time::timeout(Duration::from_secs(5), server)
                .await
                .expect("fake store did not stop within 5 s")
                .unwrap();
        }
    }
}

impl Drop for FakeMetricStore {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

struct Shared {
    fixture: Fixture,
    token: Option<String>,
    mode: Mutex<Mode>,
    metric_errors: Mutex<HashMap<String, String>>,
    requests: Mutex<Vec<RecordedRequest>>,
    /// A hostname and a process id: a query for that host sends SIGKILL to that process.
    kill_pid_on_host: Mutex<Option<(String, u32)>>,
    stopped: watch::Receiver<bool>,
}

async fn handle_query(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let uri_text = uri.path_and_query().map_or_else(|| uri.to_string(), |pq| pq.to_string());
    let request = RecordedRequest { method, uri: uri_text, headers: headers.clone(), body };
    lock(&shared.requests).push(request.clone());
    kill_if_host_queried(&shared, &request);

    if let Some(token) = &shared.token {
        let expected = format!("Bearer {token}");
        let authorization = headers.get("authorization").and_then(|value| value.to_str().ok());
        if authorization != Some(expected.as_str()) {
            return (StatusCode::UNAUTHORIZED, "{\"error\":\"unauthorized\"}").into_response();
        }
    }
    let mode = lock(&shared.mode).clone();
    match mode {
        Mode::Normal => (),
        Mode::Status500 => {
            return (StatusCode::INTERNAL_SERVER_ERROR, "fake store: internal error")
                .into_response()
        }
        Mode::Garbage => return (StatusCode::OK, "<html>not json{{").into_response(),
        Mode::Hang => {
            let mut stopped = shared.stopped.clone();
            let _ = stopped.wait_for(|stopped| *stopped).await;
            return (StatusCode::SERVICE_UNAVAILABLE, "fake store: stopped").into_response();
        }
        Mode::Fixed { status, body } => {
            let status = StatusCode::from_u16(status).unwrap();
            return (status, body).into_response();
        }
    }
    if request.uri != "/api/query?version=v2" {
        return (StatusCode::BAD_REQUEST, "fake store: expected /api/query?version=v2")
            .into_response();
    }
    let body = match serde_json::from_slice::<Value>(&request.body) {
        Ok(body) => body,
        Err(err) => {
            return (StatusCode::BAD_REQUEST, format!("fake store: invalid body: {err}"))
                .into_response()
        }
    };
    let metric_errors = lock(&shared.metric_errors).clone();
    match shared.fixture.reply(&body, &metric_errors) {
        Ok(reply) => ([("content-type", "application/json")], reply).into_response(),
        Err(problem) => (StatusCode::BAD_REQUEST, format!("fake store: {problem}")).into_response(),
    }
}

/// Sends SIGKILL to the process set by [`FakeMetricStore::set_kill_pid_on_host`] when the
/// request queries its host. The `kill` command keeps the tests free of unsafe code; its exit
/// status is ignored, because the process may have died already.
fn kill_if_host_queried(shared: &Shared, request: &RecordedRequest) {
    let Some((hostname, pid)) = lock(&shared.kill_pid_on_host).clone() else {
        return;
    };
    let body = request.json();
    let queries = body["queries"].as_array().cloned().unwrap_or_default();
    if queries.iter().any(|query| query["host"] == hostname.as_str()) {
        let _ = std::process::Command::new("kill").arg("-KILL").arg(pid.to_string()).status();
    }
}

/// One fixture series.
struct FixtureSeries {
    id: Option<String>,
    data: Vec<Option<f64>>,
}

/// The fixture data indexed for lookups, with the topology of its hosts.
struct Fixture {
    cluster: String,
    /// (metric, scope, hostname) to series in file order.
    series: HashMap<(String, String, String), Vec<FixtureSeries>>,
    /// (metric, scope) to timestep.
    timesteps: HashMap<(String, String), i64>,
    node: BTreeSet<u32>,
    /// Scope name to the hwthread sets of its units, for core, socket and memoryDomain.
    units: HashMap<&'static str, Vec<BTreeSet<u32>>>,
}

impl Fixture {
    fn new(config: &FakeStoreConfig) -> Fixture {
        let sub_cluster = config.cluster["subClusters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|sub_cluster| sub_cluster["name"] == config.sub_cluster.as_str())
            .unwrap_or_else(|| panic!("fixture has no sub-cluster {}", config.sub_cluster));
        let topology = &sub_cluster["topology"];
        let hwthread_sets = |key: &str| -> Vec<BTreeSet<u32>> {
            let lists = topology[key].as_array().cloned().unwrap_or_default();
            lists.iter().map(ids_of).collect()
        };
        let units = HashMap::from([
            ("core", hwthread_sets("core")),
            ("socket", hwthread_sets("socket")),
            ("memoryDomain", hwthread_sets("memoryDomain")),
        ]);

        let mut series: HashMap<(String, String, String), Vec<FixtureSeries>> = HashMap::new();
        let mut timesteps = HashMap::new();
        for (metric, scopes) in config.data.as_object().unwrap() {
            for (scope, job_metric) in scopes.as_object().unwrap() {
                let timestep = job_metric["timestep"].as_i64().unwrap();
                timesteps.insert((metric.clone(), scope.clone()), timestep);
                for item in job_metric["series"].as_array().unwrap() {
                    let hostname = item["hostname"].as_str().unwrap().to_owned();
                    let data = item["data"].as_array().unwrap().iter().map(Value::as_f64).collect();
                    let id = item["id"].as_str().map(str::to_owned);
                    let key = (metric.clone(), scope.clone(), hostname);
                    series.entry(key).or_default().push(FixtureSeries { id, data });
                }
            }
        }
        Fixture {
            cluster: config.cluster["name"].as_str().unwrap().to_owned(),
            series,
            timesteps,
            node: ids_of(&topology["node"]),
            units,
        }
    }

    /// Builds the reply body for a query request, or an error naming the invalid part.
    fn reply(
        &self,
        body: &Value,
        metric_errors: &HashMap<String, String>,
    ) -> Result<String, String> {
        let cluster = body["cluster"].as_str().ok_or("cluster is missing")?;
        let queries = body["queries"].as_array().ok_or("queries is not an array")?;
        let from = body["from"].as_i64().ok_or("from is not an integer")?;
        let to = body["to"].as_i64().ok_or("to is not an integer")?;
        let mut results = Vec::with_capacity(queries.len());
        for query in queries {
            let elements = match cluster == self.cluster {
                true => self.answer(query, metric_errors)?,
                // The real store leaves out selectors it does not know.
                false => Vec::new(),
            };
            let elements: Vec<String> =
                elements.into_iter().map(|element| element.to_json(from, to)).collect();
            results.push(format!("[{}]", elements.join(",")));
        }
        Ok(format!("{{\"results\":[{}]}}", results.join(",")))
    }

    /// Returns the result elements of one query.
    fn answer<'a>(
        &'a self,
        query: &Value,
        metric_errors: &HashMap<String, String>,
    ) -> Result<Vec<Element<'a>>, String> {
        let metric = query["metric"].as_str().ok_or("query without metric")?;
        let host = query["host"].as_str().ok_or("query without host")?;
        let aggregate = query["aggreg"].as_bool().ok_or("query without aggreg")?;
        let query_type = match &query["type"] {
            Value::Null => None,
            Value::String(query_type) => Some(query_type.as_str()),
            other => return Err(format!("type {other} is not a string")),
        };
        let type_ids: Vec<String> = match &query["type-ids"] {
            Value::Null => Vec::new(),
            Value::Array(ids) => {
                ids.iter().map(|id| id.as_str().unwrap_or("?").to_owned()).collect()
            }
            other => return Err(format!("type-ids {other} is not an array")),
        };
        let known = self.series.keys().any(|(m, _, h)| m == metric && h == host);
        if !known {
            return Ok(Vec::new());
        }
        let n_elements = match (query_type, aggregate) {
            (Some(_), false) => type_ids.len(),
            _ => 1,
        };
        if let Some(message) = metric_errors.get(metric) {
            return Ok((0..n_elements).map(|_| Element::Error(message.clone())).collect());
        }

        let label = format!("metric {metric}, host {host}, type {query_type:?}, ids {type_ids:?}");
        let element = |scope: &str, found: Option<&'a FixtureSeries>| match found {
            Some(series) => {
                let timestep = self.timesteps[&(metric.to_owned(), scope.to_owned())];
                Element::Series { series, timestep }
            }
            None => Element::Error(format!("fake store: no fixture series for {label}")),
        };
        let Some(query_type) = query_type else {
            return Ok(vec![element("node", self.node_series(metric, host))]);
        };
        if aggregate {
            let (scope, found) = self.aggregated(metric, host, query_type, &type_ids);
            return Ok(vec![element(scope, found)]);
        }
        let scope_series = self.host_series(metric, query_type, host);
        let elements = type_ids
            .iter()
            .enumerate()
            .map(|(position, id)| {
                let found = scope_series.and_then(|series| match query_type {
                    // The fixture's socket series all carry id "0", so sockets and memory
                    // domains are matched by position.
                    "socket" | "memoryDomain" => series.get(position),
                    _ => series.iter().find(|series| series.id.as_deref() == Some(id)),
                });
                element(query_type, found)
            })
            .collect();
        Ok(elements)
    }

    /// Looks up the series of an aggregated query: over every unit of the node it is the node
    /// series, over the hwthreads of one core, socket or memory domain it is that unit's series.
    fn aggregated(
        &self,
        metric: &str,
        host: &str,
        query_type: &str,
        type_ids: &[String],
    ) -> (&'static str, Option<&FixtureSeries>) {
        let numbers: Option<BTreeSet<u32>> = type_ids.iter().map(|id| id.parse().ok()).collect();
        let all_units: Option<BTreeSet<u32>> = match query_type {
            "hwthread" => Some(self.node.clone()),
            "core" | "socket" | "memoryDomain" => {
                Some((0..self.units[query_type].len() as u32).collect())
            }
            _ => None,
        };
        if query_type == "accelerator" || (numbers.is_some() && numbers == all_units) {
            return ("node", self.node_series(metric, host));
        }
        let Some(hwthreads) = numbers.filter(|_| query_type == "hwthread") else {
            return ("node", None);
        };
        for scope in ["core", "socket", "memoryDomain"] {
            let Some(unit_idx) = self.units[scope].iter().position(|unit| *unit == hwthreads)
            else {
                continue;
            };
            let found = self.host_series(metric, scope, host).and_then(|series| match scope {
                // Fixture core series carry their core index as id.
                "core" => series.iter().find(|series| series.id == Some(unit_idx.to_string())),
                _ => series.get(unit_idx),
            });
            return (scope, found);
        }
        ("node", None)
    }

    fn host_series(&self, metric: &str, scope: &str, host: &str) -> Option<&Vec<FixtureSeries>> {
        self.series.get(&(metric.to_owned(), scope.to_owned(), host.to_owned()))
    }

    fn node_series(&self, metric: &str, host: &str) -> Option<&FixtureSeries> {
        self.host_series(metric, "node", host).and_then(|series| series.first())
    }
}

/// One result element: a series or an error.
enum Element<'a> {
    Series { series: &'a FixtureSeries, timestep: i64 },
    Error(String),
}

impl Element<'_> {
    /// Encodes the element as the store does: data with 3 decimals, statistics over the
    /// non-missing samples with 2 decimals, and `null` for missing values.
    fn to_json(&self, from: i64, to: i64) -> String {
        let (series, timestep) = match self {
            Element::Error(message) => {
                return format!("{{\"error\":{}}}", serde_json::to_string(message).unwrap())
            }
            Element::Series { series, timestep } => (series, timestep),
        };
        let data: Vec<String> = series
            .data
            .iter()
            .map(|value| match value {
                Some(value) => format!("{value:.3}"),
                None => "null".to_owned(),
            })
            .collect();
        let present: Vec<f64> = series.data.iter().flatten().copied().collect();
        let stat = |value: Option<f64>| match value {
            Some(value) => format!("{value:.2}"),
            None => "null".to_owned(),
        };
        let (avg, min, max) = match present.is_empty() {
            true => (None, None, None),
            false => (
                Some(present.iter().sum::<f64>() / present.len() as f64),
                present.iter().copied().reduce(f64::min),
                present.iter().copied().reduce(f64::max),
            ),
        };
        let (avg, min, max) = (stat(avg), stat(min), stat(max));
        let data = data.join(",");
        format!(
            "{{\"data\":[{data}],\"from\":{from},\"to\":{to},\"resolution\":{timestep},\
             \"avg\":{avg},\"min\":{min},\"max\":{max}}}"
        )
    }
}

fn ids_of(list: &Value) -> BTreeSet<u32> {
    let ids = list.as_array().cloned().unwrap_or_default();
    ids.iter().map(|id| id.as_u64().unwrap() as u32).collect()
}

fn read_json(path: &Path) -> Value {
    let bytes = std::fs::read(path).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
    serde_json::from_slice(&bytes).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

/// Locks a mutex, ignoring poisoning: a panicking test must not break the others' store.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
