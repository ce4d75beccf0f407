//! A metric source that queries ClusterCockpit's cc-metric-store over HTTP (`{url}/api/query`).
//!
//! One job is one request: the queries come from [`crate::scopes::build_queries`], and each
//! result element is mapped back to a series with the scope and id its query recorded. The wire
//! format is that of cc-metric-store v1.5 (`version=v2` queries); its serde types are private to
//! this module.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use prometheus::IntCounterVec;
use reqwest::header::{HeaderValue, AUTHORIZATION};
use reqwest::Url;
use serde::{Deserialize, Serialize};

use crate::job::JobMeta;
use crate::job_data::{JobData, JobMetric, Series, SeriesStats};
use crate::metric_source::{LoadRequest, Loaded, MetricSource, SourceError};
use crate::scopes::{build_queries, Query};

/// How many characters of an error reply body go into [`SourceError::Status`].
const STATUS_BODY_MAX_CHARS: usize = 200;

const BAD_TOKEN: &str =
    "token: contains characters not allowed in an HTTP header; use the JWT text as issued";

/// How many partial errors the per-job warning lists in full.
const LOGGED_PARTIAL_ERRORS: usize = 3;

/// A cc-metric-store client.
pub struct CcMetricStore {
    client: reqwest::Client,
    /// `{url}/api/query?version=v2`.
    query_url: Url,
    /// The value of the `Authorization` header, marked sensitive; `None` sends no header.
    authorization: Option<HeaderValue>,
    timeout: Duration,
    /// Counter of requests with an `outcome` label; `None` counts nothing.
    request_counter: Option<IntCounterVec>,
}

/// Outcome of one query request. Its names are the `outcome` label values of the request
/// counter, so the set is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestOutcome {
    /// Every query returned its series.
    Ok,
    /// Some series came back as errors or were missing; the job is archived without them.
    Partial,
    /// Every query failed or returned nothing.
    NoData,
    /// The store replied with an HTTP error status.
    ErrorStatus,
    /// The connection failed or broke off.
    Unreachable,
    /// No complete reply within the configured timeout.
    Timeout,
    /// The reply was not query results, or had the wrong number of result arrays.
    InvalidReply,
}

impl RequestOutcome {
    pub const ALL: [RequestOutcome; 7] = [
        RequestOutcome::Ok,
        RequestOutcome::Partial,
        RequestOutcome::NoData,
        RequestOutcome::ErrorStatus,
        RequestOutcome::Unreachable,
        RequestOutcome::Timeout,
        RequestOutcome::InvalidReply,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RequestOutcome::Ok => "ok",
            RequestOutcome::Partial => "partial",
            RequestOutcome::NoData => "no_data",
            RequestOutcome::ErrorStatus => "error_status",
            RequestOutcome::Unreachable => "unreachable",
            RequestOutcome::Timeout => "timeout",
            RequestOutcome::InvalidReply => "invalid_reply",
        }
    }
}

/// A cc-metric-store setting that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("invalid cc-metric-store setting: {0}")]
pub struct InvalidStoreConfig(String);

impl CcMetricStore {
    /// Creates a client for the store at `url`, for example `http://127.0.0.1:8082`.
    ///
    /// `token` is sent as `Authorization: Bearer <token>` when it is set and not empty.
    /// `timeout` bounds a whole request, from connecting to the end of the reply body.
    /// Fails when `url` is not an `http` or `https` URL without credentials, query or fragment,
    /// or when the token cannot be sent in an HTTP header.
    pub fn new(
        url: &str,
        token: Option<String>,
        timeout: Duration,
    ) -> Result<CcMetricStore, InvalidStoreConfig> {
        let base = Url::parse(url).map_err(|err| {
            InvalidStoreConfig(format!("url {url:?}: {err}; use for example http://host:8082"))
        })?;
        // Credentials in the URL would make reqwest send a second `Authorization` header.
        let usable_base = matches!(base.scheme(), "http" | "https")
            && base.host().is_some()
            && base.username().is_empty()
            && base.password().is_none()
            && base.query().is_none()
            && base.fragment().is_none();
        if !usable_base {
            return Err(InvalidStoreConfig(format!(
                "url {}: use an http or https URL without credentials, query or fragment, for \
                 example http://host:8082, and set the token separately",
                redacted(&base)
            )));
        }
        let joined = format!("{}/api/query?version=v2", base.as_str().trim_end_matches('/'));
        let query_url = Url::parse(&joined).map_err(|err| {
            InvalidStoreConfig(format!("url {}: cannot append /api/query: {err}", redacted(&base)))
        })?;

        let authorization = match token.filter(|token| !token.is_empty()) {
            None => None,
            Some(token) => {
                // The error leaves the token out, so that it cannot end up in a log.
                let Ok(mut value) = HeaderValue::from_str(&format!("Bearer {token}")) else {
                    return Err(InvalidStoreConfig(BAD_TOKEN.to_owned()));
                };
                value.set_sensitive(true);
                Some(value)
            }
        };

        // Redirects are not followed: the store API does not redirect, and a redirect would
        // carry the token to wherever it points.
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|err| InvalidStoreConfig(format!("http client: {}", error_chain(&err))))?;
        Ok(CcMetricStore { client, query_url, authorization, timeout, request_counter: None })
    }

    /// Counts every query request in `counter`, which must have exactly one label, `outcome`;
    /// its values are those of [`RequestOutcome::as_str`]. A load that needs no request (no
    /// metric to query) counts nothing.
    pub fn with_request_counter(mut self, counter: IntCounterVec) -> CcMetricStore {
        self.request_counter = Some(counter);
        self
    }

    fn count(&self, outcome: RequestOutcome) {
        if let Some(counter) = &self.request_counter {
            counter.with_label_values(&[outcome.as_str()]).inc();
        }
    }

    /// Sends one query request and returns the decoded reply.
    async fn send(&self, body: &QueryRequest<'_>) -> Result<QueryReply, SourceError> {
        // The store expects GET with a JSON body, as cc-backend sends it.
        let mut request = self.client.get(self.query_url.clone()).json(body);
        if let Some(authorization) = &self.authorization {
            request = request.header(AUTHORIZATION, authorization.clone());
        }
        let response = request.send().await.map_err(|err| self.unreachable(err))?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|err| self.unreachable(err))?;
        if !status.is_success() {
            let text = String::from_utf8_lossy(&bytes);
            let mut body: String = text.chars().take(STATUS_BODY_MAX_CHARS).collect();
            if text.chars().nth(STATUS_BODY_MAX_CHARS).is_some() {
                body.push_str("...");
            }
            self.count(RequestOutcome::ErrorStatus);
            return Err(SourceError::Status { status: status.as_u16(), body });
        }
        serde_json::from_slice(&bytes).map_err(|err| {
            self.count(RequestOutcome::InvalidReply);
            SourceError::InvalidReply(format!("{}: reply is not query results: {err}", self.url()))
        })
    }

    /// Counts a failed connection or a timeout and turns it into a [`SourceError`].
    fn unreachable(&self, err: reqwest::Error) -> SourceError {
        // The message names the URL once, in front, rather than inside reqwest's text.
        let problem = match err.is_timeout() {
            true => {
                self.count(RequestOutcome::Timeout);
                format!("request timed out after {:?}", self.timeout)
            }
            false => {
                self.count(RequestOutcome::Unreachable);
                error_chain(&err.without_url())
            }
        };
        SourceError::Unreachable(format!("{}: {problem}", self.url()))
    }

    /// Returns the query URL without credentials, for messages.
    fn url(&self) -> String {
        redacted(&self.query_url)
    }
}

impl fmt::Debug for CcMetricStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CcMetricStore")
            .field("query_url", &self.url())
            .field("token", &self.authorization.as_ref().map(|_| "<redacted>"))
            .field("timeout", &self.timeout)
            .finish()
    }
}

#[async_trait]
impl MetricSource for CcMetricStore {
    async fn load(&self, request: &LoadRequest<'_>) -> Result<Loaded, SourceError> {
        let job = request.job;
        let plan = build_queries(job, request.cluster, request.metrics, request.scopes);
        let mut partial_errors: Vec<String> =
            plan.errors.iter().map(|error| error.to_string()).collect();
        if plan.queries.is_empty() {
            return finish(job, JobData::new(), partial_errors);
        }

        let body = QueryRequest {
            cluster: job.id.cluster(),
            queries: plan
                .queries
                .iter()
                .map(|query| QueryEntry {
                    query_type: query.query_type.map(|scope| scope.as_str()),
                    metric: &query.metric,
                    host: &query.hostname,
                    resolution: request.resolution,
                    type_ids: &query.type_ids,
                    aggregate: query.aggregate,
                })
                .collect(),
            for_all_nodes: None,
            from: job.id.start_time(),
            to: job.end_time(),
            with_stats: true,
            with_data: true,
        };
        let n_queries = plan.queries.len();
        tracing::debug!(job_id = %job.id, n_queries, "querying cc-metric-store");
        let reply = self.send(&body).await?;

        let results = reply.results.unwrap_or_default();
        if results.len() != plan.queries.len() {
            self.count(RequestOutcome::InvalidReply);
            return Err(SourceError::InvalidReply(format!(
                "{}: expected {} result arrays, one per query, got {}",
                self.url(),
                plan.queries.len(),
                results.len()
            )));
        }
        let mut data = JobData::new();
        let errors_before_reply = partial_errors.len();
        for (query, elements) in plan.queries.iter().zip(results) {
            add_results(request, query, elements, &mut data, &mut partial_errors);
        }
        let outcome = if data.is_empty() {
            RequestOutcome::NoData
        } else if partial_errors.len() > errors_before_reply {
            RequestOutcome::Partial
        } else {
            RequestOutcome::Ok
        };
        self.count(outcome);
        finish(job, data, partial_errors)
    }
}

/// Adds the series of one query's result elements to `data`, and their errors to
/// `partial_errors`.
fn add_results(
    request: &LoadRequest<'_>,
    query: &Query,
    elements: Vec<ResultElement>,
    data: &mut JobData,
    partial_errors: &mut Vec<String>,
) {
    let label = format!("metric {}, scope {}, host {}", query.metric, query.scope, query.hostname);
    let expected = query.series_ids.len();
    if elements.len() > expected {
        partial_errors.push(format!(
            "{label}: expected {expected} series, got {} result elements; series dropped",
            elements.len()
        ));
        return;
    }
    if elements.is_empty() {
        // The store leaves out selectors whose host or metric it does not know.
        partial_errors.push(format!("{label}: the store returned no series; is the host known?"));
        return;
    }
    if elements.len() < expected {
        // The remaining elements may not line up with the type ids. They keep ids by position,
        // as ClusterCockpit assigns them.
        partial_errors.push(format!(
            "{label}: the store returned {} of {expected} series; series ids may be shifted",
            elements.len()
        ));
    }
    let Some(metric) = request.cluster.metric(&query.metric) else {
        // `build_queries` only queries metrics of the cluster configuration.
        debug_assert!(false, "query for metric {} not in the cluster", query.metric);
        return;
    };
    for (element, series_id) in elements.into_iter().zip(&query.series_ids) {
        let element_label = match series_id {
            Some(id) => format!("{label}, id {id}"),
            None => label.clone(),
        };
        if let Some(error) = element.error {
            partial_errors.push(format!("{element_label}: {error}"));
            continue;
        }
        let Some(values) = element.data else {
            partial_errors.push(format!("{element_label}: the store returned no data"));
            continue;
        };
        let statistics = match (element.min, element.avg, element.max) {
            (Some(min), Some(avg), Some(max)) => Some(SeriesStats { min, avg, max }),
            _ => None,
        };
        let series = Series {
            hostname: query.hostname.clone(),
            id: series_id.clone(),
            statistics,
            data: values.into_iter().map(|value| value.unwrap_or(f64::NAN)).collect(),
        };
        let job_metric = data.entry(query.metric.clone()).or_default().entry(query.scope);
        let job_metric = job_metric.or_insert_with(|| {
            // The first element's resolution is the timestep; 0 or an unusable value means the
            // store reported none, so the configured native timestep applies.
            let timestep = element
                .resolution
                .and_then(|resolution| u32::try_from(resolution).ok())
                .filter(|resolution| *resolution > 0)
                .unwrap_or(metric.timestep);
            JobMetric {
                unit: metric.unit.clone(),
                timestep,
                series: Vec::new(),
                statistics_series: None,
            }
        });
        job_metric.series.push(series);
    }
}

/// Turns the collected data and errors into the result of a load, and logs the errors once.
fn finish(
    job: &JobMeta,
    data: JobData,
    partial_errors: Vec<String>,
) -> Result<Loaded, SourceError> {
    if partial_errors.is_empty() {
        return Ok(Loaded { data, partial_errors });
    }
    let first_errors = &partial_errors[..partial_errors.len().min(LOGGED_PARTIAL_ERRORS)];
    if data.is_empty() {
        return Err(SourceError::NoData(format!(
            "every query failed or returned nothing ({} errors), first: {}",
            partial_errors.len(),
            first_errors.join("; ")
        )));
    }
    tracing::warn!(
        job_id = %job.id,
        n_errors = partial_errors.len(),
        first_errors = ?first_errors,
        "some metrics or scopes of the job failed to load from cc-metric-store"
    );
    Ok(Loaded { data, partial_errors })
}

/// Formats an error with its sources, `outer: inner: innermost`.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(inner) = source {
        let inner_text = inner.to_string();
        // Some errors repeat their source's text; print each part once.
        if !text.ends_with(&inner_text) {
            text.push_str(": ");
            text.push_str(&inner_text);
        }
        source = inner.source();
    }
    text
}

/// Returns a URL as text without its password.
fn redacted(url: &Url) -> String {
    let mut url = url.clone();
    // `set_password` fails only for URLs without a host, and those carry no password.
    let _ = url.set_password(None);
    url.to_string()
}

/// The body of a query request.
#[derive(Serialize)]
struct QueryRequest<'a> {
    cluster: &'a str,
    queries: Vec<QueryEntry<'a>>,
    /// Always `null`: the queries name their hosts.
    #[serde(rename = "for-all-nodes")]
    for_all_nodes: Option<()>,
    from: i64,
    to: i64,
    #[serde(rename = "with-stats")]
    with_stats: bool,
    #[serde(rename = "with-data")]
    with_data: bool,
}

#[derive(Serialize)]
struct QueryEntry<'a> {
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    query_type: Option<&'static str>,
    metric: &'a str,
    host: &'a str,
    resolution: u32,
    #[serde(rename = "type-ids", skip_serializing_if = "<[String]>::is_empty")]
    type_ids: &'a [String],
    #[serde(rename = "aggreg")]
    aggregate: bool,
}

/// The reply to a query request: one array of elements per query, in query order.
#[derive(Deserialize)]
struct QueryReply {
    results: Option<Vec<Vec<ResultElement>>>,
}

/// One series of a reply, or the error that replaced it.
#[derive(Deserialize)]
struct ResultElement {
    #[serde(default)]
    error: Option<String>,
    /// Samples; `null` marks a missing one.
    #[serde(default)]
    data: Option<Vec<Option<f64>>>,
    #[serde(default)]
    resolution: Option<i64>,
    #[serde(default)]
    avg: Option<f64>,
    #[serde(default)]
    min: Option<f64>,
    #[serde(default)]
    max: Option<f64>,
}
