//! Prometheus metrics of the service, named `job_archiver_*`, plus the standard `process_*`
//! metrics of the process collector.
//!
//! Labels take values from closed sets only (job states, failure steps, outcomes, rejection
//! reasons). Every labelled series is created at start, so the number of series does not grow
//! with the number of jobs. Queue gauges are read from the store's persisted counters at each
//! scrape, so they are right after a restart.

use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::archiver::Step;
use crate::job::JobState;
use crate::metric_source::cc_metric_store::RequestOutcome;
use crate::queue::QueueStats;
use crate::store::JobRecord;

/// Buckets for archiving one job: 1 ms to 10 min.
const ARCHIVE_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0, 600.0,
];

/// Buckets for waits measured in seconds to days: queue wait and lag behind job end.
const WAIT_BUCKETS: &[f64] = &[
    0.01, 0.1, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 21600.0, 86400.0,
    259200.0, 604800.0,
];

/// Buckets for the trigger acknowledgement: 50 µs to 5 s.
const ACK_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0,
];

/// Every metric's name, help and buckets are constants that the crate accepts.
const STATIC_OPTIONS: &str = "static metric options are valid";

/// The `outcome` label values of `job_archiver_archive_duration_seconds`.
const ARCHIVE_OUTCOMES: [&str; 2] = ["archived", "failed"];

/// Reason for rejecting a trigger. Its names are the `reason` label values, so the set is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    InvalidJson,
    InvalidJob,
    TooLarge,
    ShuttingDown,
    StoreError,
    /// The queue limit or the free-disk floor was reached.
    QueueFull,
}

impl RejectReason {
    pub const ALL: [RejectReason; 6] = [
        RejectReason::InvalidJson,
        RejectReason::InvalidJob,
        RejectReason::TooLarge,
        RejectReason::ShuttingDown,
        RejectReason::StoreError,
        RejectReason::QueueFull,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::InvalidJson => "invalid_json",
            RejectReason::InvalidJob => "invalid_job",
            RejectReason::TooLarge => "too_large",
            RejectReason::ShuttingDown => "shutting_down",
            RejectReason::StoreError => "store_error",
            RejectReason::QueueFull => "queue_full",
        }
    }
}

/// Every metric of the service, registered in one registry.
pub struct Metrics {
    registry: Registry,
    pub queued_jobs: IntGauge,
    pub jobs: IntGaugeVec,
    pub oldest_queued: IntGauge,
    pub worker_busy: IntGauge,
    pub archive_duration: HistogramVec,
    pub lag: Histogram,
    pub queue_wait: Histogram,
    pub ack_duration: Histogram,
    pub accepted: IntCounter,
    pub archived: IntCounter,
    pub failed: IntCounterVec,
    pub retries: IntCounter,
    pub archived_bytes: IntCounter,
    /// Requests to cc-metric-store by [`RequestOutcome`]; the client increments it.
    pub metric_store_requests: IntCounterVec,
    pub rejected: IntCounterVec,
    pub shutdown_timeouts: IntCounter,
    pub auth_failures: IntCounterVec,
    pub retries_scheduled: IntCounter,
    pub archive_degraded: IntGauge,
}

impl Metrics {
    /// Creates and registers every metric, with the process collector on Linux.
    pub fn new() -> Metrics {
        let metrics = Metrics {
            queued_jobs: gauge("job_archiver_queued_jobs", "Jobs waiting in the queue."),
            jobs: gauge_vec("job_archiver_jobs", "Jobs in the store per state.", "state"),
            oldest_queued: gauge(
                "job_archiver_oldest_queued_job_timestamp_seconds",
                "Unix time when the oldest job in the queue (queued or archiving) was accepted; \
                 0 when the queue is empty.",
            ),
            worker_busy: gauge("job_archiver_worker_busy", "1 while the worker archives a job."),
            archive_duration: HistogramVec::new(
                HistogramOpts::new(
                    "job_archiver_archive_duration_seconds",
                    "Time to archive one job, from claim to the outcome, by outcome.",
                )
                .buckets(ARCHIVE_BUCKETS.to_vec()),
                &["outcome"],
            )
            .expect(STATIC_OPTIONS),
            lag: histogram(
                "job_archiver_archive_lag_seconds",
                "Time from a job's end (startTime + duration) to the moment it was archived.",
                WAIT_BUCKETS,
            ),
            queue_wait: histogram(
                "job_archiver_queue_wait_seconds",
                "Time from a job's acceptance to the start of its first attempt.",
                WAIT_BUCKETS,
            ),
            ack_duration: histogram(
                "job_archiver_trigger_ack_duration_seconds",
                "Time from receiving a trigger to its durable reply.",
                ACK_BUCKETS,
            ),
            accepted: counter(
                "job_archiver_jobs_accepted_total",
                "Jobs newly queued by HTTP triggers, including failed jobs triggered again.",
            ),
            archived: counter("job_archiver_jobs_archived_total", "Jobs archived."),
            failed: counter_vec(
                "job_archiver_jobs_failed_total",
                "Jobs marked failed, by failing step.",
                "step",
            ),
            retries: counter(
                "job_archiver_job_retries_total",
                "Failed jobs queued again by a retry request.",
            ),
            archived_bytes: counter(
                "job_archiver_archived_bytes_total",
                "Bytes of meta.json and data files written to the job-archive.",
            ),
            metric_store_requests: counter_vec(
                "job_archiver_metric_store_requests_total",
                "Query requests to cc-metric-store, by outcome.",
                "outcome",
            ),
            rejected: counter_vec(
                "job_archiver_triggers_rejected_total",
                "Trigger requests rejected, by reason.",
                "reason",
            ),
            shutdown_timeouts: counter(
                "job_archiver_shutdown_timeouts_total",
                "Shutdowns that cancelled the current job after the shutdown timeout.",
            ),
            auth_failures: counter_vec(
                "job_archiver_auth_failures_total",
                "API requests rejected with 401, by reason.",
                "reason",
            ),
            retries_scheduled: counter(
                "job_archiver_retries_scheduled_total",
                "Attempts that failed transiently and were scheduled to run again after a backoff.",
            ),
            archive_degraded: IntGauge::new(
                "job_archiver_archive_degraded",
                "1 while the last archive read or write failed with an I/O error.",
            )
            .expect(STATIC_OPTIONS),
            registry: Registry::new(),
        };
        metrics.register_all();
        metrics.create_labelled_series();
        metrics
    }

    fn register_all(&self) {
        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(self.queued_jobs.clone()),
            Box::new(self.jobs.clone()),
            Box::new(self.oldest_queued.clone()),
            Box::new(self.worker_busy.clone()),
            Box::new(self.archive_duration.clone()),
            Box::new(self.lag.clone()),
            Box::new(self.queue_wait.clone()),
            Box::new(self.ack_duration.clone()),
            Box::new(self.accepted.clone()),
            Box::new(self.archived.clone()),
            Box::new(self.failed.clone()),
            Box::new(self.retries.clone()),
            Box::new(self.archived_bytes.clone()),
            Box::new(self.metric_store_requests.clone()),
            Box::new(self.rejected.clone()),
            Box::new(self.shutdown_timeouts.clone()),
            Box::new(self.auth_failures.clone()),
            Box::new(self.retries_scheduled.clone()),
            Box::new(self.archive_degraded.clone()),
        ];
        for collector in collectors {
            self.registry.register(collector).expect("metric names are unique");
        }
        let build_info = gauge_vec(
            "job_archiver_build_info",
            "Version of the running job-archiver; always 1.",
            "version",
        );
        build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        self.registry.register(Box::new(build_info)).expect("metric names are unique");
        // The collector reads /proc/self, so it exists on Linux only. Its metrics keep their
        // standard `process_*` names, which dashboards for any service use.
        #[cfg(target_os = "linux")]
        {
            let process = prometheus::process_collector::ProcessCollector::for_self();
            self.registry.register(Box::new(process)).expect("metric names are unique");
        }
    }

    /// Creates every labelled series with its value 0, so that dashboards and alerts see zeros
    /// instead of gaps, and the series count is the same from the first scrape on.
    fn create_labelled_series(&self) {
        for state in JobState::ALL {
            self.jobs.with_label_values(&[state.as_str()]);
        }
        for step in Step::ALL {
            self.failed.with_label_values(&[step.as_str()]);
        }
        for outcome in ARCHIVE_OUTCOMES {
            self.archive_duration.with_label_values(&[outcome]);
        }
        for outcome in RequestOutcome::ALL {
            self.metric_store_requests.with_label_values(&[outcome.as_str()]);
        }
        for reason in RejectReason::ALL {
            self.rejected.with_label_values(&[reason.as_str()]);
        }
        for failure in crate::auth::AuthFailure::ALL {
            self.auth_failures.with_label_values(&[failure.as_str()]);
        }
    }

    /// Sets the queue gauges from the store's counters.
    pub fn refresh_queue(&self, stats: &QueueStats) {
        self.queued_jobs.set(stats.counts.queued as i64);
        for state in JobState::ALL {
            self.jobs.with_label_values(&[state.as_str()]).set(stats.counts.get(state) as i64);
        }
        self.oldest_queued.set(stats.oldest_enqueued_at_ms.map(|ms| ms / 1000).unwrap_or(0));
    }

    /// Records an archived job from its final record.
    pub fn observe_archived(&self, record: &JobRecord, duration: Duration, bytes: u64) {
        self.archived.inc();
        self.archived_bytes.inc_by(bytes);
        self.archive_duration.with_label_values(&["archived"]).observe(duration.as_secs_f64());
        if let Some(archived_at_ms) = record.archived_at_ms {
            let lag = archived_at_ms as f64 / 1000.0 - record.job_end_time as f64;
            self.lag.observe(lag.max(0.0));
        }
    }

    /// Records the queue wait of a job whose first attempt just started; later attempts of
    /// the same job are not observed again.
    pub fn observe_claimed(&self, record: &JobRecord) {
        if record.attempts != 1 {
            return;
        }
        if let Some(started_at_ms) = record.started_at_ms {
            let wait = (started_at_ms - record.enqueued_at_ms) as f64 / 1000.0;
            self.queue_wait.observe(wait.max(0.0));
        }
    }

    /// Records a failed job.
    pub fn observe_failed(&self, step: Step, duration: Duration) {
        self.failed.with_label_values(&[step.as_str()]).inc();
        self.archive_duration.with_label_values(&["failed"]).observe(duration.as_secs_f64());
    }

    /// Encodes every metric in the Prometheus text format.
    pub fn encode(&self) -> Vec<u8> {
        let mut buffer = Vec::new();
        let encoder = TextEncoder::new();
        // Encoding into a Vec fails only on invalid metric families, which `register` prevents.
        if let Err(err) = encoder.encode(&self.registry.gather(), &mut buffer) {
            tracing::error!(error = %err, "encoding metrics failed");
        }
        buffer
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

fn gauge(name: &str, help: &str) -> IntGauge {
    IntGauge::new(name, help).expect(STATIC_OPTIONS)
}

fn gauge_vec(name: &str, help: &str, label: &str) -> IntGaugeVec {
    IntGaugeVec::new(Opts::new(name, help), &[label]).expect(STATIC_OPTIONS)
}

fn counter(name: &str, help: &str) -> IntCounter {
    IntCounter::new(name, help).expect(STATIC_OPTIONS)
}

fn counter_vec(name: &str, help: &str, label: &str) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), &[label]).expect(STATIC_OPTIONS)
}

fn histogram(name: &str, help: &str, buckets: &[f64]) -> Histogram {
    Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))
        .expect(STATIC_OPTIONS)
}

#[cfg(test)]
mod tests {
    use prometheus::proto::MetricType;

    use super::*;

    #[test]
    fn names_follow_prometheus_conventions() {
        let metrics = Metrics::new();
        for family in metrics.registry.gather() {
            let name = family.name();
            let is_counter = family.get_field_type() == MetricType::COUNTER;
            assert!(
                name.starts_with("job_archiver_") || name.starts_with("process_"),
                "metric {name} has neither the job_archiver_ nor the process_ prefix"
            );
            assert_eq!(
                name.ends_with("_total"),
                is_counter,
                "metric {name}: only counters, and every counter, end in _total"
            );
            assert!(!family.help().is_empty(), "metric {name} has no help text");
        }
    }

    #[test]
    fn labelled_series_exist_from_start() {
        let metrics = Metrics::new();
        let text = String::from_utf8(metrics.encode()).expect("the text format is UTF-8");
        let expected = [
            "job_archiver_jobs{state=\"archiving\"} 0",
            "job_archiver_jobs_failed_total{step=\"internal\"} 0",
            "job_archiver_archive_duration_seconds_count{outcome=\"failed\"} 0",
            "job_archiver_metric_store_requests_total{outcome=\"unreachable\"} 0",
            "job_archiver_triggers_rejected_total{reason=\"shutting_down\"} 0",
        ];
        for line in expected {
            assert!(
                text.lines().any(|candidate| candidate == line),
                "no line {line:?} in:\n{text}"
            );
        }
    }
}
