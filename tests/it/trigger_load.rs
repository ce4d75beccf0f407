//! Concurrent trigger load for the crash and soak tests: clients that send unique synthetic
//! jobs until a pool of ids runs out or the server dies, a ledger of what was acknowledged, and
//! a replay source that has metric data for every synthetic job.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

use crate::support;

/// `startTime` of every synthetic job, as set by [`support::synthetic_job`].
pub(crate) const SYNTHETIC_START_TIME: i64 = 1_675_954_353;

/// What the clients sent and which of it was acknowledged, over all rounds.
#[derive(Debug, Default, Clone)]
pub(crate) struct Ledger {
    /// Jobs in every trigger body a client tried to send, whether or not it reached the server.
    pub sent: BTreeSet<i64>,
    /// Jobs whose trigger got 202 (or 200).
    pub acknowledged: BTreeSet<i64>,
    /// Jobs whose trigger was sent on an open connection but got no reply before the kill.
    pub cut_off: BTreeSet<i64>,
    /// Replies other than 202, as (status, body). Ids are unique, so 200 is unexpected too.
    pub unexpected: Vec<(u16, String)>,
}

/// Job ids a round may send: `next..end`, handed out to the clients in order.
pub(crate) struct IdPool {
    next: AtomicI64,
    end: i64,
}

impl IdPool {
    pub fn new(first: i64, end: i64) -> IdPool {
        IdPool { next: AtomicI64::new(first), end }
    }

    /// Takes up to `count` unused ids, and none once the pool is used up.
    pub fn take(&self, count: usize) -> Vec<i64> {
        let first = self.next.fetch_add(count as i64, Ordering::SeqCst);
        (first..(first + count as i64).min(self.end)).collect()
    }
}

/// One client of a round: sends triggers until the pool is used up or the server is gone.
pub(crate) struct TriggerSender {
    pub client: reqwest::Client,
    pub url: String,
    pub pool: Arc<IdPool>,
    pub ledger: Arc<Mutex<Ledger>>,
    pub rng: StdRng,
    /// Maximum number of jobs in one trigger body.
    pub max_batch: usize,
    /// Maximum pause between two triggers of this client.
    pub max_pause: Duration,
}

impl TriggerSender {
    pub async fn run(mut self) {
        loop {
            let size = self.rng.random_range(1..=self.max_batch);
            let ids = self.pool.take(size);
            if ids.is_empty() {
                return;
            }
            let jobs: Vec<Value> = ids.iter().map(|id| support::synthetic_job(*id)).collect();
            // A single job goes out as an object or as a one-element array.
            let body = match jobs.len() == 1 && self.rng.random_bool(0.5) {
                true => jobs[0].clone(),
                false => Value::Array(jobs),
            };
            self.lock_ledger().sent.extend(&ids);

            let request = self.client.post(format!("{}/api/jobs/archive", self.url)).json(&body);
            let response = match request.send().await {
                Ok(response) => response,
                Err(err) => {
                    // The server was killed: before the connection, or with the request in
                    // flight, in which case the job may or may not be stored.
                    if !err.is_connect() {
                        self.lock_ledger().cut_off.extend(&ids);
                    }
                    return;
                }
            };
            // The status line alone is the acknowledgment, since the kill may cut off the body.
            let status = response.status().as_u16();
            let text = response.text().await.unwrap_or_default();
            {
                let mut ledger = self.lock_ledger();
                if matches!(status, 200 | 202) {
                    ledger.acknowledged.extend(&ids);
                }
                if status != 202 {
                    ledger.unexpected.push((status, text));
                }
            }

            // Pauses spread a round's jobs over about the longest kill delay, so a kill often
            // lands while a trigger is in flight.
            let pause = self.max_pause.mul_f64(self.rng.random::<f64>());
            tokio::time::sleep(pause).await;
        }
    }

    fn lock_ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().expect("no client panicked while holding the ledger")
    }
}

/// A job-archive to replay metric data from: the fritz `cluster.json` and, per synthetic job,
/// a hard link to the fritz example `data.json`.
pub(crate) struct ReplaySource {
    pub root: PathBuf,
    /// Copy of the example `data.json` that every job folder links to.
    template: PathBuf,
}

impl ReplaySource {
    pub fn create(root: &Path) -> ReplaySource {
        let fritz = root.join("fritz");
        std::fs::create_dir_all(&fritz).expect("creating the replay source folder");
        let examples = support::repo_path("examples/archive/fritz");
        std::fs::copy(examples.join("cluster.json"), fritz.join("cluster.json"))
            .expect("copying the fritz cluster.json");
        let template = root.join("fritz-data.json");
        std::fs::copy(examples.join("398/764/1675954353/data.json"), &template)
            .expect("copying the fritz example data.json");
        std::fs::write(root.join("version.txt"), "3\n").expect("writing version.txt");
        ReplaySource { root: root.to_path_buf(), template }
    }

    /// Adds the data of the synthetic fritz job `job_id`.
    pub fn add_job(&self, job_id: i64) {
        let dir = self.root.join(format!(
            "fritz/{}/{:03}/{SYNTHETIC_START_TIME}",
            job_id / 1000,
            job_id % 1000
        ));
        std::fs::create_dir_all(&dir).expect("creating a replay job folder");
        let target = dir.join("data.json");
        if std::fs::hard_link(&self.template, &target).is_err() {
            std::fs::copy(&self.template, &target)
                .expect("copying data.json into the replay source");
        }
    }
}

/// The trigger load of one kill round: how many clients, jobs, jobs per body and pause.
pub(crate) struct RoundLoad {
    pub clients: usize,
    pub jobs_per_round: i64,
    pub max_batch: usize,
    pub max_pause: Duration,
}

impl RoundLoad {
    /// Adds replay data for the jobs `first..first + jobs_per_round` and starts the clients
    /// that send them to `url`.
    pub fn start(
        &self,
        source: &ReplaySource,
        first: i64,
        client: &reqwest::Client,
        url: &str,
        ledger: &Arc<Mutex<Ledger>>,
        rng: &mut StdRng,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        for job_id in first..first + self.jobs_per_round {
            source.add_job(job_id);
        }
        let pool = Arc::new(IdPool::new(first, first + self.jobs_per_round));
        (0..self.clients)
            .map(|_| {
                let sender = TriggerSender {
                    max_batch: self.max_batch,
                    max_pause: self.max_pause,
                    client: client.clone(),
                    url: url.to_owned(),
                    pool: Arc::clone(&pool),
                    ledger: Arc::clone(ledger),
                    rng: StdRng::seed_from_u64(rng.random()),
                };
                tokio::spawn(sender.run())
            })
            .collect()
    }
}

/// Waits for the clients of a round, which stop once the server is killed.
pub(crate) async fn join_clients(clients: Vec<tokio::task::JoinHandle<()>>) {
    for task in clients {
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("trigger client stopped within 30 s of the kill")
            .expect("trigger client task joined");
    }
}
