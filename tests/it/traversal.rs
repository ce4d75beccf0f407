//! Path traversal: every value that becomes part of an archive path is rejected unless it is a
//! plain name or a non-negative integer. Such values are the cluster, jobId and startTime of a
//! trigger, and the path parameters of the job routes. No rejected request creates a file.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{example_job, start_server, synthetic_job, TestDirs};

const TRIGGER: &str = "/api/jobs/archive";

/// Returns every file and folder under `root`, relative to it, leaving out the contents of
/// `skip`.
fn walk(root: &Path, skip: &Path) -> BTreeSet<PathBuf> {
    let mut found = BTreeSet::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(folder) = pending.pop() {
        for entry in std::fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() && path != skip {
                pending.push(path.clone());
            }
            found.insert(path.strip_prefix(root).unwrap().to_path_buf());
        }
    }
    found
}

/// Builds a fritz job with `key` set to `value`.
fn job_with(key: &str, value: Value) -> Value {
    let mut job = synthetic_job(1);
    job[key] = value;
    job
}

/// Sends `method target` as written, with no normalization of `.` and `..` segments or of
/// percent-encoding, and returns the status and the reply.
fn raw_request(addr: &str, method: &str, target: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connecting to the server");
    stream.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let request = format!(
        "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).expect("sending the request");
    let mut reply = Vec::new();
    let _ = stream.read_to_end(&mut reply);
    let text = String::from_utf8_lossy(&reply).into_owned();
    let status = text.split_whitespace().nth(1).and_then(|code| code.parse().ok()).unwrap_or(0);
    (status, text)
}

#[tokio::test]
async fn traversal_in_job_fields_gets_400() {
    let dirs = TestDirs::new();
    let server = start_server(dirs.config()).await;
    // A name that would appear beside the test's folder if a path escaped the archive root.
    let root_name = dirs.root.path().file_name().unwrap().to_string_lossy().into_owned();
    let escape_name = format!("{root_name}-escaped");
    let escape = format!("../../{escape_name}");
    let before = walk(dirs.root.path(), &dirs.store);

    let clusters: Vec<Value> = vec![
        json!(".."),
        json!("."),
        json!("a/b"),
        json!("../x"),
        json!(escape),
        json!("fritz/../emmy"),
        json!("fritz/."),
        json!("%2e%2e"),
        json!("%2e%2e%2fetc"),
        json!("x\u{0}y"),
        json!("fritz\u{0}"),
        json!("fritz\n"),
        json!(" fritz"),
        json!("a".repeat(129)),
        json!("a".repeat(5000)),
        json!("/etc"),
        json!("/"),
        json!("..\\..\\x"),
        json!("C:\\x"),
        json!("~"),
        json!("\u{ff0e}\u{ff0e}"),
        json!("\u{2024}\u{2024}"),
        json!("fritz\u{2215}x"),
        json!(""),
        json!(null),
        json!(["fritz"]),
        json!({"name": "fritz"}),
    ];
    for cluster in clusters {
        let (status, body) = server.post_json(TRIGGER, &job_with("cluster", cluster.clone())).await;
        assert_eq!(status, 400, "cluster {cluster}: {body}");
        let error = body["error"].as_str().unwrap_or_default();
        assert!(
            error.starts_with("cluster"),
            "cluster {cluster}: error {error:?} names another field"
        );
    }

    let integers: Vec<(Value, &str)> = vec![
        (json!(-1), "negative"),
        (json!(i64::MIN), "negative"),
        (json!(9_223_372_036_854_775_808u64), "64-bit range"),
        (json!(1e20), "64-bit range"),
        (json!(1e3), "64-bit range"),
        (json!(1.0), "64-bit range"),
        (json!(1.5), "64-bit range"),
        (json!("../1"), "an integer"),
        (json!("1/../.."), "an integer"),
        (json!("1"), "an integer"),
        (json!(null), "missing"),
        (json!(true), "an integer"),
        (json!([1]), "an integer"),
    ];
    for field in ["jobId", "startTime"] {
        for (value, problem) in &integers {
            let (status, body) = server.post_json(TRIGGER, &job_with(field, value.clone())).await;
            assert_eq!(status, 400, "{field} {value}: {body}");
            let error = body["error"].as_str().unwrap_or_default();
            assert!(
                error.starts_with(field),
                "{field} {value}: error {error:?} names another field"
            );
            assert!(error.contains(problem), "{field} {value}: error {error:?} lacks {problem:?}");
        }
    }
    // The numbers as JSON text, where a parser could read them differently.
    for text in ["1e3", "1E3", "-0.0", "1e400", "123456789012345678901234567890"] {
        let body = format!(
            r#"{{"jobId": {text}, "cluster": "fritz", "startTime": 1675954353, "numNodes": 1,
               "duration": 1, "resources": [{{"hostname": "f0649"}}]}}"#
        );
        let (status, reply) = server.post_bytes(TRIGGER, body.into_bytes()).await;
        assert_eq!(status, 400, "jobId {text}: {reply}");
    }

    let (_, queue) = server.get_json("/api/queue").await;
    for state in ["queued", "archiving", "archived", "failed"] {
        assert_eq!(queue[state], 0, "{state} count after the rejected triggers: {queue}");
    }
    server.stop().await;

    let after = walk(dirs.root.path(), &dirs.store);
    let new: Vec<&PathBuf> = after.difference(&before).collect();
    assert!(new.is_empty(), "rejected triggers created {new:?}");
    let parent = dirs.root.path().parent().unwrap();
    assert!(
        !parent.join(&escape_name).exists(),
        "a trigger created {escape_name} beside the test folder"
    );
}

#[tokio::test]
async fn traversal_in_route_paths_gets_4xx() {
    let dirs = TestDirs::new();
    let server = start_server(dirs.config()).await;
    let (status, body) = server.post_json(TRIGGER, &example_job("fritz-398764")).await;
    assert_eq!(status, 202, "trigger of the fritz job: {body}");
    server.wait_for_state("fritz/398764/1675954353", "archived").await;
    let before = walk(dirs.root.path(), &dirs.store);
    let addr = server.url.trim_start_matches("http://").to_owned();

    // (path after /api/jobs, status of GET and of POST .../retry)
    let cases: Vec<(&str, u16)> = vec![
        ("/..%2F..%2Fetc/1/1", 400),
        ("/..%2f..%2fetc/1/1", 400),
        ("/fritz%2F..%2F..%2Fetc/1/1", 400),
        ("/%2e%2e/1/1", 400),
        ("/%2E%2E/1/1", 400),
        ("/%2e/1/1", 400),
        ("/../1/1", 400),
        ("/./1/1", 400),
        ("/fritz/../../1", 404),
        ("/fritz/398764/../../..", 404),
        ("/%2Fetc/1/1", 400),
        ("/fritz%5C..%5Cetc/1/1", 400),
        ("/x%00y/1/1", 400),
        ("/%EF%BC%8E%EF%BC%8E/1/1", 400),
        ("/fritz/..%2F1/1", 400),
        ("/fritz/1/..%2F..%2F1", 400),
        ("/fritz/-1/1", 400),
        ("/fritz/1/-1", 400),
        ("/fritz/1e3/1", 400),
        ("/fritz/1.0/1", 400),
        ("/fritz/99999999999999999999/1", 400),
        ("/fritz/398764/1675954353%2F..", 400),
        ("/fritz/398764/1675954353/..", 404),
    ];
    let mut statuses = Vec::new();
    for (path, expected) in &cases {
        let get_target = format!("/api/jobs{path}");
        let retry_target = format!("/api/jobs{path}/retry");
        let addr = addr.clone();
        let (get, retry) = tokio::task::spawn_blocking(move || {
            (raw_request(&addr, "GET", &get_target), raw_request(&addr, "POST", &retry_target))
        })
        .await
        .unwrap();
        statuses.push((*path, *expected, get, retry));
    }
    for (path, expected, (get, get_text), (retry, retry_text)) in &statuses {
        assert_eq!(get, expected, "GET /api/jobs{path}: {get_text}");
        assert!(
            *retry == 400 || *retry == 404,
            "POST /api/jobs{path}/retry got {retry}: {retry_text}"
        );
        assert!(
            get_text.contains("\"error\""),
            "GET /api/jobs{path}: reply is not a JSON error: {get_text}"
        );
    }

    // A path parameter that is not UTF-8 gets the API's JSON error.
    let invalid_utf8 = addr.clone();
    let (status, text) =
        tokio::task::spawn_blocking(move || raw_request(&invalid_utf8, "GET", "/api/jobs/%ff/1/1"))
            .await
            .unwrap();
    assert_eq!(status, 400, "GET /api/jobs/%ff/1/1: {text}");
    assert!(text.contains("Invalid UTF-8 in `cluster`"), "GET /api/jobs/%ff/1/1: {text}");
    assert!(text.contains("\"error\""), "GET /api/jobs/%ff/1/1 is not a JSON error: {text}");

    // Each job has one id text: a sign or leading zeros are rejected, not read as aliases.
    for alias in
        ["fritz/%2B398764/1675954353", "fritz/0398764/1675954353", "fritz/398764/+1675954353"]
    {
        let (status, job) = server.get_json(&format!("/api/jobs/{alias}")).await;
        assert_eq!(status, 400, "GET /api/jobs/{alias}: {job}");
    }

    // The archived job is unchanged and a well-formed path still finds it.
    let (status, job) = server.get_json("/api/jobs/fritz/398764/1675954353").await;
    assert_eq!(status, 200, "the fritz job after the traversal attempts: {job}");
    assert_eq!(job["state"], "archived", "state of the fritz job");
    assert_eq!(job["attempts"], 1, "attempts of the fritz job");
    server.stop().await;

    let after = walk(dirs.root.path(), &dirs.store);
    let new: Vec<&PathBuf> = after.difference(&before).collect();
    assert!(new.is_empty(), "requests with traversal paths created {new:?}");
    let removed: Vec<&PathBuf> = before.difference(&after).collect();
    assert!(removed.is_empty(), "requests with traversal paths removed {removed:?}");
}

#[tokio::test]
async fn valid_edge_ids_stay_in_layout() {
    let dirs = TestDirs::new();
    let server = start_server(dirs.config()).await;
    let before = walk(dirs.root.path(), &dirs.store);

    // Plain names and integers at the edges are valid, and fail without writing a folder: the
    // cluster has no cluster.json, or the archive replay has no data for the job.
    let mut edge_jobs = Vec::new();
    for cluster in ["...", ".hidden", "-rf", "a".repeat(128).as_str(), "version.txt"] {
        edge_jobs.push(job_with("cluster", json!(cluster)));
    }
    edge_jobs.push(job_with("jobId", json!(i64::MAX)));
    edge_jobs.push(job_with("startTime", json!(i64::MAX)));
    edge_jobs.push(job_with("jobId", json!(0)));
    for job in &edge_jobs {
        let (status, body) = server.post_json(TRIGGER, job).await;
        assert_eq!(
            status, 202,
            "trigger with {} {} {}: {body}",
            job["cluster"], job["jobId"], job["startTime"]
        );
        let id = body["id"].as_str().expect("trigger reply id").to_owned();
        let failed = server.wait_for_state(&id, "failed").await;
        let step = failed["failedStep"].as_str().unwrap_or_default();
        assert!(step == "cluster" || step == "load", "job {id} failed in step {step:?}: {failed}");
        // Each is the client's fault, so it fails at once instead of being retried.
        assert_eq!(failed["attempts"], 1, "attempts of {id}: {failed}");
    }
    // A cluster named after a file of the archive root ("version.txt") is an unknown cluster,
    // not a sign of a broken archive.
    let (status, body) = server.get_json("/readyz").await;
    assert_eq!(status, 200, "/readyz after the failed edge jobs: {body}");
    server.stop().await;

    let after = walk(dirs.root.path(), &dirs.store);
    let new: Vec<&PathBuf> = after.difference(&before).collect();
    assert!(new.is_empty(), "jobs that failed before writing created {new:?}");
}
