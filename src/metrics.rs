//! Prometheus metrics of the service, all prefixed `job_archiver_`.
//!
//! Labels take values from closed sets only (job states, failure steps, outcomes, rejection
//! reasons), so the number of series does not grow with the number of jobs. Queue gauges are
//! read from the store's persisted counters at each scrape, so they are right after a restart.

use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::archiver::Step;
use crate::job::JobState;
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

/// Why a trigger was rejected; a closed set of label values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    InvalidJson,
    InvalidJob,
    TooLarge,
    ShuttingDown,
    StoreError,
}

impl RejectReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::InvalidJson => "invalid_json",
            RejectReason::InvalidJob => "invalid_job",
            RejectReason::TooLarge => "too_large",
            RejectReason::ShuttingDown => "shutting_down",
            RejectReason::StoreError => "store_error",
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
    pub metric_store_requests: IntCounterVec,
    pub rejected: IntCounterVec,
    pub shutdown_timeouts: IntCounter,
}

impl Metrics {
    /// Creates and registers every metric, with the process collector.
    pub fn new() -> Metrics {
        let registry = Registry::new_custom(Some("job_archiver".to_owned()), None)
            .expect("the prefix is a valid metric name");
        let metrics = Metrics {
            queued_jobs: IntGauge::new("queued_jobs", "Jobs waiting in the queue.")
                .expect(STATIC_OPTIONS),
            jobs: IntGaugeVec::new(Opts::new("jobs", "Jobs in the store per state."), &["state"])
                .expect(STATIC_OPTIONS),
            oldest_queued: IntGauge::new(
                "oldest_queued_job_timestamp_seconds",
                "Unix time when the oldest queued job was accepted; 0 when the queue is empty.",
            )
            .expect(STATIC_OPTIONS),
            worker_busy: IntGauge::new("worker_busy", "1 while the worker archives a job.")
                .expect(STATIC_OPTIONS),
            archive_duration: HistogramVec::new(
                HistogramOpts::new(
                    "archive_duration_seconds",
                    "Time to archive one job, from claim to the outcome, by outcome.",
                )
                .buckets(ARCHIVE_BUCKETS.to_vec()),
                &["outcome"],
            )
            .expect(STATIC_OPTIONS),
            lag: Histogram::with_opts(
                HistogramOpts::new(
                    "archive_lag_seconds",
                    "Time from a job's end (startTime + duration) to its archived moment.",
                )
                .buckets(WAIT_BUCKETS.to_vec()),
            )
            .expect(STATIC_OPTIONS),
            queue_wait: Histogram::with_opts(
                HistogramOpts::new(
                    "queue_wait_seconds",
                    "Time from a job's acceptance to the start of its last attempt.",
                )
                .buckets(WAIT_BUCKETS.to_vec()),
            )
            .expect(STATIC_OPTIONS),
            ack_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "trigger_ack_duration_seconds",
                    "Time from receiving a trigger to its durable reply.",
                )
                .buckets(ACK_BUCKETS.to_vec()),
            )
            .expect(STATIC_OPTIONS),
            accepted: IntCounter::new("jobs_accepted_total", "Jobs newly queued by triggers.")
                .expect(STATIC_OPTIONS),
            archived: IntCounter::new("jobs_archived_total", "Jobs archived.")
                .expect(STATIC_OPTIONS),
            failed: IntCounterVec::new(
                Opts::new("jobs_failed_total", "Jobs marked failed, by failing step."),
                &["step"],
            )
            .expect(STATIC_OPTIONS),
            retries: IntCounter::new("job_retries_total", "Failed jobs queued again.")
                .expect(STATIC_OPTIONS),
            archived_bytes: IntCounter::new(
                "archived_bytes_total",
                "Bytes of meta.json and data files written to the job-archive.",
            )
            .expect(STATIC_OPTIONS),
            metric_store_requests: IntCounterVec::new(
                Opts::new(
                    "metric_store_requests_total",
                    "Requests to the metric source, by outcome.",
                ),
                &["outcome"],
            )
            .expect(STATIC_OPTIONS),
            rejected: IntCounterVec::new(
                Opts::new("triggers_rejected_total", "Trigger requests rejected, by reason."),
                &["reason"],
            )
            .expect(STATIC_OPTIONS),
            shutdown_timeouts: IntCounter::new(
                "shutdown_timeouts_total",
                "Shutdowns that cancelled the current job after the shutdown timeout.",
            )
            .expect(STATIC_OPTIONS),
            registry,
        };
        metrics.register_all();
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
        ];
        for collector in collectors {
            self.registry.register(collector).expect("metric names are unique");
        }
        let build_info = IntGaugeVec::new(
            Opts::new("build_info", "Version of the running job-archiver; always 1."),
            &["version"],
        )
        .expect(STATIC_OPTIONS);
        build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        self.registry.register(Box::new(build_info)).expect("metric names are unique");
        #[cfg(target_os = "linux")]
        {
            let process = prometheus::process_collector::ProcessCollector::for_self();
            self.registry.register(Box::new(process)).expect("metric names are unique");
        }
        // Create the labelled series up front, so dashboards see zeros instead of gaps.
        for state in JobState::ALL {
            self.jobs.with_label_values(&[state.as_str()]);
        }
        for step in Step::ALL {
            self.failed.with_label_values(&[step.as_str()]);
        }
        for outcome in ["archived", "failed"] {
            self.archive_duration.with_label_values(&[outcome]);
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
