//! The HTTP API end to end on 127.0.0.1: triggers, job state, listing, retries, queue counts,
//! health, and the files the worker writes.

use serde_json::{json, Value};

use crate::support::{example_job, start_server, synthetic_job, TestDirs};

#[tokio::test]
async fn trigger_archives_fritz_job() {
    let dirs = TestDirs::new();
    let server = start_server(dirs.config()).await;

    let (status, body) = server.post_json("/api/jobs/archive", &example_job("fritz-398764")).await;
    assert_eq!(status, 202, "trigger reply: {body}");
    assert_eq!(body, json!({"id": "fritz/398764/1675954353", "state": "queued"}));

    let job = server.wait_for_state("fritz/398764/1675954353", "archived").await;
    assert_eq!(job["attempts"], 1, "attempts in {job}");
    assert_eq!(job["error"], Value::Null, "error in {job}");
    let folder = dirs.archive.join("fritz/398/764/1675954353");
    assert_eq!(job["archivePath"], folder.display().to_string(), "archivePath in {job}");
    assert!(folder.join("meta.json").is_file(), "meta.json missing in {}", folder.display());
    assert!(folder.join("data.json.gz").is_file(), "data.json.gz missing in {}", folder.display());
    assert!(!folder.join("data.json").exists(), "plain data.json beside the gzip");
    for key in ["enqueuedAt", "startedAt", "archivedAt"] {
        assert!(job[key].is_string(), "{key} missing in {job}");
    }

    let meta: Value =
        serde_json::from_slice(&std::fs::read(folder.join("meta.json")).unwrap()).unwrap();
    assert_eq!(meta["jobId"], 398764, "jobId in meta.json");
    assert_eq!(meta["user"], "k106eb10", "user carried over into meta.json");
    let cpu_load = &meta["statistics"]["cpu_load"];
    assert!(cpu_load["avg"].as_f64().is_some(), "statistics.cpu_load in meta.json: {cpu_load}");
    assert_eq!(cpu_load["unit"], json!({"base": ""}), "cpu_load unit from cluster.json");

    assert_eq!(
        std::fs::read_to_string(dirs.archive.join("version.txt")).unwrap(),
        "3\n",
        "archive version file"
    );
    server.stop().await;
}

#[tokio::test]
async fn duplicate_trigger_gets_current_state() {
    let dirs = TestDirs::new();
    let server = start_server(dirs.config()).await;
    let job = example_job("fritz-398764");

    let (status, _) = server.post_json("/api/jobs/archive", &job).await;
    assert_eq!(status, 202, "first trigger");
    server.wait_for_state("fritz/398764/1675954353", "archived").await;

    let (status, body) = server.post_json("/api/jobs/archive", &job).await;
    assert_eq!(status, 200, "a known job gets 200: {body}");
    assert_eq!(body["state"], "archived", "reply state for a known job");
    let (_, queue) = server.get_json("/api/queue").await;
    assert_eq!(queue["archived"], 1, "archived count after a duplicate: {queue}");
    assert_eq!(queue["queued"], 0, "queued count after a duplicate: {queue}");
    server.stop().await;
}

#[tokio::test]
async fn batch_is_stored_and_replied_per_job() {
    let dirs = TestDirs::new();
    let server = start_server(dirs.config()).await;
    let batch = json!([example_job("fritz-398764"), synthetic_job(7), example_job("fritz-398764")]);

    let (status, body) = server.post_json("/api/jobs/archive", &batch).await;
    assert_eq!(status, 202, "batch reply: {body}");
    let replies = body.as_array().expect("batch reply is an array");
    assert_eq!(replies.len(), 3, "one reply per job: {body}");
    assert_eq!(replies[0], json!({"id": "fritz/398764/1675954353", "state": "queued"}));
    assert_eq!(replies[1], json!({"id": "fritz/7/1675954353", "state": "queued"}));
    assert_eq!(replies[2]["state"], "queued", "a repeat inside the batch sees the first: {body}");

    server.wait_for_state("fritz/398764/1675954353", "archived").await;
    let failed = server.wait_for_state("fritz/7/1675954353", "failed").await;
    assert_eq!(failed["failedStep"], "load", "failing step in {failed}");
    let error = failed["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("fritz/0/007/1675954353"),
        "error names the missing data folder: {error}"
    );
    server.stop().await;
}

#[tokio::test]
async fn failed_job_lists_and_retries() {
    let dirs = TestDirs::new();
    let server = start_server(dirs.config()).await;
    for job_id in [11, 12, 13] {
        let (status, _) = server.post_json("/api/jobs/archive", &synthetic_job(job_id)).await;
        assert_eq!(status, 202, "trigger of synthetic job {job_id}");
    }
    for job_id in [11, 12, 13] {
        server.wait_for_state(&format!("fritz/{job_id}/1675954353"), "failed").await;
    }

    let (status, page) = server.get_json("/api/jobs?state=failed&limit=2").await;
    assert_eq!(status, 200, "list reply: {page}");
    let ids: Vec<&str> =
        page["jobs"].as_array().unwrap().iter().map(|job| job["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["fritz/11/1675954353", "fritz/12/1675954353"], "first page");
    assert_eq!(page["next"], "fritz/12/1675954353", "cursor of the first page");
    let (_, page) =
        server.get_json("/api/jobs?state=failed&limit=2&after=fritz/12/1675954353").await;
    let ids: Vec<&str> =
        page["jobs"].as_array().unwrap().iter().map(|job| job["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["fritz/13/1675954353"], "second page");
    assert_eq!(page["next"], Value::Null, "no cursor after the last page");

    let (status, body) =
        server.post_json("/api/jobs/fritz/11/1675954353/retry", &json!(null)).await;
    assert_eq!(status, 202, "retry of one job: {body}");
    let retried = server.wait_for_state("fritz/11/1675954353", "failed").await;
    assert_eq!(retried["attempts"], 1, "attempts restart after a retry: {retried}");
    assert_eq!(
        retried["errorHistory"].as_array().map(Vec::len),
        Some(2),
        "history keeps both attempts: {retried}"
    );

    let (status, body) = server.post_json("/api/jobs/retry?state=failed", &json!(null)).await;
    assert_eq!(status, 202, "retry of all failed jobs: {body}");
    assert_eq!(body["retried"], 3, "number retried");

    let (status, body) = server.post_json("/api/jobs/fritz/999/1/retry", &json!(null)).await;
    assert_eq!(status, 404, "retry of an unknown job: {body}");
    server.stop().await;
}

#[tokio::test]
async fn retriggering_failed_job_queues_it() {
    let dirs = TestDirs::new();
    let server = start_server(dirs.config()).await;
    let job = synthetic_job(21);
    server.post_json("/api/jobs/archive", &job).await;
    server.wait_for_state("fritz/21/1675954353", "failed").await;

    let (status, body) = server.post_json("/api/jobs/archive", &job).await;
    assert_eq!(status, 202, "a failed job is queued again by a trigger: {body}");
    assert_eq!(body["state"], "queued", "reply state");
    server.stop().await;
}

#[tokio::test]
async fn unknown_cluster_fails_with_reason() {
    let dirs = TestDirs::new();
    let server = start_server(dirs.config()).await;
    let mut job = synthetic_job(5);
    job["cluster"] = json!("nosuch");
    let (status, _) = server.post_json("/api/jobs/archive", &job).await;
    assert_eq!(status, 202, "the trigger is accepted; the cluster is checked by the worker");

    let failed = server.wait_for_state("nosuch/5/1675954353", "failed").await;
    assert_eq!(failed["failedStep"], "cluster", "failing step: {failed}");
    let error = failed["error"].as_str().unwrap();
    assert!(error.contains("nosuch"), "error names the cluster: {error}");
    assert!(!dirs.archive.join("nosuch").exists(), "no folder for an unknown cluster");
    server.stop().await;
}

#[tokio::test]
async fn queue_health_and_metrics_endpoints() {
    let dirs = TestDirs::new();
    let server = start_server(dirs.config()).await;

    let (status, body) = server.get_json("/healthz").await;
    assert_eq!(status, 200, "healthz: {body}");
    let (status, body) = server.get_json("/readyz").await;
    assert_eq!(status, 200, "readyz after recovery: {body}");
    let (status, queue) = server.get_json("/api/queue").await;
    assert_eq!(status, 200, "queue: {queue}");
    for key in ["queued", "archiving", "archived", "failed"] {
        assert_eq!(queue[key], 0, "{key} on an empty store: {queue}");
    }
    assert_eq!(queue["oldestQueuedAgeSeconds"], Value::Null, "no oldest job: {queue}");

    server.post_json("/api/jobs/archive", &example_job("fritz-398764")).await;
    server.wait_for_state("fritz/398764/1675954353", "archived").await;
    let response = server.client.get(format!("{}/metrics", server.url)).send().await.unwrap();
    assert_eq!(response.status(), 200, "metrics status");
    let text = response.text().await.unwrap();
    for needle in [
        "job_archiver_queued_jobs 0",
        "job_archiver_jobs{state=\"archived\"} 1",
        "job_archiver_jobs_archived_total 1",
        "job_archiver_archive_duration_seconds_count{outcome=\"archived\"} 1",
    ] {
        assert!(text.contains(needle), "metrics lack {needle:?}:\n{text}");
    }
    server.stop().await;
}

#[tokio::test]
async fn bad_paths_and_queries_get_400() {
    let dirs = TestDirs::new();
    let server = start_server(dirs.config()).await;
    let cases = [
        ("/api/jobs/fritz/abc/1", "jobId"),
        ("/api/jobs/..%2F../1/1", "cluster"),
        ("/api/jobs?state=done", "state"),
        ("/api/jobs?limit=0", "limit"),
        ("/api/jobs?colour=red", "colour"),
    ];
    for (path, needle) in cases {
        let (status, body) = server.get_json(path).await;
        assert_eq!(status, 400, "GET {path}: {body}");
        let error = body["error"].as_str().unwrap_or_default();
        assert!(error.contains(needle), "GET {path}: error {error:?} lacks {needle:?}");
    }
    let (status, body) = server.get_json("/api/jobs/fritz/1/1").await;
    assert_eq!(status, 404, "unknown job: {body}");
    let (status, body) = server.get_json("/api/jobs/archive").await;
    assert_eq!(status, 405, "GET on the trigger route: {body}");
    assert!(body["error"].as_str().unwrap_or_default().contains("GET"), "405 body: {body}");
    let (status, body) = server.post_json("/api/jobs/retry?state=queued", &json!(null)).await;
    assert_eq!(status, 400, "retry of a state other than failed: {body}");
    server.stop().await;
}

#[tokio::test]
async fn restart_resumes_backlog_in_order() {
    let dirs = TestDirs::new();
    // Fill the store without a worker: a batch command that is stopped before it starts would
    // do the same, but the queue API is simpler here.
    {
        use job_archiver::job::JobMeta;
        use job_archiver::queue::{JobQueue, SledQueue};
        let store = job_archiver::store::Store::open(&dirs.store, 8 << 20).unwrap();
        let queue = SledQueue::new(
            std::sync::Arc::new(store),
            job_archiver::commit::Durability::Fsync,
            job_archiver::queue::QueueLimits::NONE,
        );
        let jobs: Vec<JobMeta> =
            [example_job("fritz-398764"), synthetic_job(31), synthetic_job(32)]
                .into_iter()
                .map(|job| JobMeta::from_json(job).unwrap())
                .collect();
        queue.enqueue(&jobs).await.unwrap();
        let claimed = queue.claim_next().await.unwrap().unwrap();
        assert_eq!(claimed.key, "fritz/398764/1675954353", "the oldest job is claimed first");
        // Dropped here while `archiving`, as a crash would leave it.
    }

    let server = start_server(dirs.config()).await;
    let job = server.wait_for_state("fritz/398764/1675954353", "archived").await;
    assert_eq!(job["attempts"], 2, "the interrupted attempt is counted: {job}");
    let last = server.wait_for_state("fritz/32/1675954353", "failed").await;
    let first = server.wait_for_state("fritz/31/1675954353", "failed").await;
    assert!(
        first["startedAt"].as_str() <= last["startedAt"].as_str(),
        "backlog order: job 31 started {} after job 32 {}",
        first["startedAt"],
        last["startedAt"]
    );
    server.stop().await;
}
