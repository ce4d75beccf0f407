//! Malformed trigger bodies: each gets a 400 whose message names the field at fault, and
//! nothing is stored.

use serde_json::{json, Value};

use crate::support::{start_server, synthetic_job, TestDirs};

/// A valid job with `key` set to `value`, or removed when `value` is `None`.
fn job_with(key: &str, value: Option<Value>) -> Vec<u8> {
    let mut job = synthetic_job(1);
    match value {
        Some(value) => job[key] = value,
        None => {
            job.as_object_mut().unwrap().remove(key);
        }
    }
    serde_json::to_vec(&job).unwrap()
}

#[tokio::test]
async fn malformed_bodies_get_400_naming_field() {
    let dirs = TestDirs::new();
    let server = start_server(dirs.config()).await;
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("not JSON", b"{\"jobId\": ".to_vec(), "invalid JSON"),
        ("plain text", b"archive please".to_vec(), "invalid JSON"),
        ("empty body", Vec::new(), "invalid JSON"),
        ("a number", b"42".to_vec(), "body"),
        ("empty array", b"[]".to_vec(), "empty array"),
        ("missing jobId", job_with("jobId", None), "jobId"),
        ("missing cluster", job_with("cluster", None), "cluster"),
        ("missing startTime", job_with("startTime", None), "startTime"),
        ("missing numNodes", job_with("numNodes", None), "numNodes"),
        ("missing duration", job_with("duration", None), "duration"),
        ("missing resources", job_with("resources", None), "resources"),
        ("empty resources", job_with("resources", Some(json!([]))), "resources"),
        ("negative duration", job_with("duration", Some(json!(-5))), "duration"),
        ("jobId as string", job_with("jobId", Some(json!("1"))), "jobId"),
        ("fractional startTime", job_with("startTime", Some(json!(1.5))), "startTime"),
        ("numNodes zero", job_with("numNodes", Some(json!(0))), "numNodes"),
        ("numNodes not the host count", job_with("numNodes", Some(json!(5))), "numNodes"),
        ("cluster with slash", job_with("cluster", Some(json!("a/b"))), "cluster"),
        ("cluster dot-dot", job_with("cluster", Some(json!(".."))), "cluster"),
        ("cluster dot", job_with("cluster", Some(json!("."))), "cluster"),
        ("cluster traversal", job_with("cluster", Some(json!("../../etc"))), "cluster"),
        ("cluster empty", job_with("cluster", Some(json!(""))), "cluster"),
        ("cluster as number", job_with("cluster", Some(json!(7))), "cluster"),
        ("negative jobId", job_with("jobId", Some(json!(-1))), "jobId"),
        ("huge jobId", b"{\"jobId\": 1e400}".to_vec(), "invalid JSON"),
        ("resources not array", job_with("resources", Some(json!({"hostname": "x"}))), "resources"),
        ("hostname missing", job_with("resources", Some(json!([{}]))), "resources[0].hostname"),
        (
            "hostname number",
            job_with("resources", Some(json!([{"hostname": 3}]))),
            "resources[0].hostname",
        ),
        (
            "hwthreads strings",
            job_with("resources", Some(json!([{"hostname": "f1", "hwthreads": ["a"]}]))),
            "resources[0].hwthreads[0]",
        ),
        ("numAcc negative", job_with("numAcc", Some(json!(-2))), "numAcc"),
        (
            "second job of batch",
            serde_json::to_vec(&json!([synthetic_job(2), {"jobId": 3}])).unwrap(),
            "[1].cluster",
        ),
    ];
    assert!(cases.len() >= 15, "the table covers at least 15 bodies");

    for (name, body, needle) in &cases {
        let (status, reply) = server.post_bytes("/api/jobs/archive", body.clone()).await;
        assert_eq!(status, 400, "{name}: status, reply {reply}");
        let error = reply["error"].as_str().unwrap_or_default();
        assert!(error.contains(needle), "{name}: error {error:?} does not name {needle:?}");
    }

    let (_, queue) = server.get_json("/api/queue").await;
    for key in ["queued", "archiving", "archived", "failed"] {
        assert_eq!(queue[key], 0, "{key} after only malformed bodies: {queue}");
    }
    let (_, page) = server.get_json("/api/jobs").await;
    assert_eq!(page["jobs"], json!([]), "nothing stored after malformed bodies");
    let mut entries: Vec<String> = std::fs::read_dir(&dirs.archive)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    entries.sort();
    assert_eq!(entries, ["emmy", "fritz", "version.txt"], "archive root after malformed bodies");
    server.stop().await;
}
