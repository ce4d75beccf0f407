//! Property tests: random and mutated trigger bodies against the parser and a real server,
//! random and mutated cc-metric-store replies against the client, and the archive layout for
//! jobs with arbitrary non-identity fields.
//!
//! Each property runs a fixed number of cases with a fresh random seed. Failures are not saved
//! to a regressions file, so a failing run prints its shrunk input and that must be copied into
//! a fixed test.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use job_archiver::api::parse_trigger_body;
use job_archiver::cluster::Cluster;
use job_archiver::config::MetricSourceConfig;
use job_archiver::job::{JobId, JobMeta};
use job_archiver::metric_source::cc_metric_store::CcMetricStore;
use job_archiver::metric_source::{LoadRequest, MetricSource, SourceError};
use job_archiver::scopes::archive_scopes;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};
use serde_json::{json, Value};

use crate::fake_metric_store::{FakeMetricStore, FakeStoreConfig, Mode};
use crate::support::{example_job, repo_path, start_server, TestDirs, TestServer};

const TRIGGER: &str = "/api/jobs/archive";

/// The batch limit used when calling the parser directly.
const MAX_BATCH: usize = 10_000;

/// Builds a runner for `cases` cases with no regressions file and a bounded shrink, because
/// each shrink step of the server properties is a request to a server whose state has moved on.
fn runner(cases: u32) -> TestRunner {
    TestRunner::new(ProptestConfig {
        cases,
        failure_persistence: None,
        max_shrink_iters: 256,
        ..ProptestConfig::default()
    })
}

/// Builds the runtime for the properties that drive async code from the synchronous runner.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("building a tokio runtime")
}

/// Keys of the job format, so that random objects often look like jobs.
const JOB_KEYS: &[&str] = &[
    "jobId",
    "cluster",
    "startTime",
    "numNodes",
    "duration",
    "resources",
    "hostname",
    "hwthreads",
    "accelerators",
    "subCluster",
    "numAcc",
    "metaData",
    "user",
];

/// Number texts at and beyond the edges of what JSON parsers can represent.
const EDGE_NUMBERS: &[&str] = &[
    "0",
    "-0",
    "1",
    "-1",
    "1.5",
    "1e3",
    "1E3",
    "1.0",
    "1e308",
    "-1e308",
    "1e400",
    "-1e400",
    "1e-400",
    "4.9e-324",
    "123456789012345678901234567890",
    "-123456789012345678901234567890",
    "9223372036854775807",
    "9223372036854775808",
    "-9223372036854775808",
    "-9223372036854775809",
    "18446744073709551615",
    "18446744073709551616",
    "4294967295",
    "4294967296",
];

/// Texts that look like values but are not JSON.
const INVALID_VALUES: &[&str] =
    &["NaN", "-NaN", "Infinity", "-Infinity", "+1", "01", ".5", "1.", "0x10", "undefined", "'a'"];

/// Generates strings with control characters, unicode and path-like content.
fn text() -> BoxedStrategy<String> {
    prop_oneof![
        prop::collection::vec(any::<char>(), 0..24).prop_map(|chars| chars.into_iter().collect()),
        prop::sample::select(vec![
            "",
            "..",
            "../../etc/passwd",
            "/etc",
            "a/b",
            "x\u{0}y",
            "%2e%2e",
            "\u{ff0e}\u{ff0e}",
            "\u{202e}gnp.exe",
            "\r\n\t\u{7f}",
            "\u{fffd}\u{10ffff}",
            "fritz",
        ])
        .prop_map(str::to_owned),
    ]
    .boxed()
}

/// Generates the JSON text of a random value: leaves of every type, edge numbers, and objects
/// and arrays nested up to 6 deep. Some leaves are not valid JSON, such as NaN, Infinity or a
/// string with an unescaped control character.
fn json_text() -> BoxedStrategy<String> {
    let leaf = prop_oneof![
        2 => Just("null".to_owned()),
        2 => any::<bool>().prop_map(|value| value.to_string()),
        2 => any::<i64>().prop_map(|value| value.to_string()),
        2 => any::<u64>().prop_map(|value| value.to_string()),
        2 => any::<f64>()
            .prop_filter("finite", |value| value.is_finite())
            .prop_map(|value| serde_json::to_string(&value).unwrap()),
        2 => prop::sample::select(EDGE_NUMBERS).prop_map(str::to_owned),
        2 => text().prop_map(|text| serde_json::to_string(&text).unwrap()),
        // Unescaped, so control characters and quotes may make the text invalid.
        1 => text().prop_map(|text| format!("\"{text}\"")),
        1 => prop::sample::select(INVALID_VALUES).prop_map(str::to_owned),
    ];
    leaf.prop_recursive(6, 64, 6, |inner| {
        let key = prop_oneof![prop::sample::select(JOB_KEYS).prop_map(str::to_owned), text(),]
            .prop_map(|key| serde_json::to_string(&key).unwrap());
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6)
                .prop_map(|items| format!("[{}]", items.join(","))),
            prop::collection::vec((key, inner), 0..6).prop_map(|members| {
                let members: Vec<String> =
                    members.into_iter().map(|(key, value)| format!("{key}:{value}")).collect();
                format!("{{{}}}", members.join(","))
            }),
        ]
    })
    .boxed()
}

/// Returns the valid jobs that mutations start from.
fn base_jobs() -> Vec<Value> {
    vec![
        example_job("fritz-398764"),
        example_job("emmy-1403244"),
        json!({
            "jobId": 42, "cluster": "fritz", "subCluster": "main", "startTime": 1_675_954_353,
            "numNodes": 1, "numAcc": 1, "duration": 60, "user": "u", "project": "p",
            "resources": [{"hostname": "f0649", "hwthreads": [0, 1, 2, 3], "accelerators": ["0"]}],
            "metaData": {"jobName": "n", "jobScript": "#!/bin/sh"}
        }),
    ]
}

/// JSON pointers of the places a mutation changes.
const MUTATION_POINTERS: &[&str] = &[
    "/jobId",
    "/cluster",
    "/startTime",
    "/numNodes",
    "/duration",
    "/numAcc",
    "/subCluster",
    "/resources",
    "/resources/0",
    "/resources/0/hostname",
    "/resources/0/hwthreads",
    "/resources/0/hwthreads/0",
    "/resources/0/accelerators",
    "/metaData",
    "/user",
];

/// One change to a valid job.
#[derive(Debug, Clone)]
enum Mutation {
    /// Removes the member at a pointer.
    Remove(&'static str),
    /// Puts JSON text, valid or not, at a pointer.
    Replace(&'static str, String),
    /// Wraps the job in this many arrays.
    Wrap(usize),
    /// Sends the job this many times in one array.
    Repeat(usize),
    /// Adds a member with any key, such as a field the job format does not know.
    AddMember(String, String),
    /// Adds a second member for a key in front, so the key appears twice.
    DuplicateKey(&'static str, String),
    /// Cuts the text at a position.
    Truncate(Index),
    /// Puts a byte, maybe not UTF-8, at a position.
    InsertByte(Index, u8),
}

fn mutation() -> BoxedStrategy<Mutation> {
    let pointer = prop::sample::select(MUTATION_POINTERS);
    prop_oneof![
        1 => pointer.clone().prop_map(Mutation::Remove),
        3 => (pointer, json_text()).prop_map(|(pointer, text)| Mutation::Replace(pointer, text)),
        1 => (1usize..4).prop_map(Mutation::Wrap),
        1 => (2usize..5).prop_map(Mutation::Repeat),
        2 => (text(), json_text()).prop_map(|(key, text)| Mutation::AddMember(key, text)),
        1 => (prop::sample::select(JOB_KEYS), json_text())
            .prop_map(|(key, text)| Mutation::DuplicateKey(key, text)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
        1 => (any::<Index>(), any::<u8>()).prop_map(|(at, byte)| Mutation::InsertByte(at, byte)),
    ]
    .boxed()
}

/// Marks the spot where [`Mutation::Replace`] puts its text.
const PLACEHOLDER: &str = "\u{1}replaced\u{1}";

/// Removes the member at `pointer`, when it exists.
fn remove_at(value: &mut Value, pointer: &str) {
    let (parent, last) = pointer.rsplit_once('/').expect("pointers start with /");
    match value.pointer_mut(parent) {
        Some(Value::Object(members)) => {
            members.remove(last);
        }
        Some(Value::Array(items)) => {
            if let Ok(position) = last.parse::<usize>() {
                if position < items.len() {
                    items.remove(position);
                }
            }
        }
        _ => (),
    }
}

/// Applies mutations in order to a job and returns the body text.
fn mutate(job: &Value, mutations: &[Mutation]) -> Vec<u8> {
    let mut job = job.clone();
    let mut replacements = Vec::new();
    let mut prefix = String::new();
    let mut wraps = 0;
    let mut repeats = 1;
    let mut byte_edits = Vec::new();

    // Changes to the value come first, then the text is written, then the byte edits.
    for mutation in mutations {
        match mutation {
            Mutation::Remove(pointer) => remove_at(&mut job, pointer),
            Mutation::Replace(pointer, text) => {
                if let Some(slot) = job.pointer_mut(pointer) {
                    let marker = format!("{PLACEHOLDER}{}", replacements.len());
                    *slot = Value::String(marker.clone());
                    replacements.push((serde_json::to_string(&marker).unwrap(), text.clone()));
                }
            }
            Mutation::AddMember(key, text) => {
                if let Value::Object(members) = &mut job {
                    let marker = format!("{PLACEHOLDER}{}", replacements.len());
                    members.insert(key.clone(), Value::String(marker.clone()));
                    replacements.push((serde_json::to_string(&marker).unwrap(), text.clone()));
                }
            }
            Mutation::Wrap(count) => wraps += count,
            Mutation::Repeat(count) => repeats = *count,
            Mutation::DuplicateKey(key, text) => {
                prefix.push_str(&format!("{}:{text},", serde_json::to_string(key).unwrap()));
            }
            Mutation::Truncate(_) | Mutation::InsertByte(..) => byte_edits.push(mutation.clone()),
        }
    }

    let mut text = serde_json::to_string(&job).unwrap();
    for (marker, replacement) in &replacements {
        text = text.replace(marker, replacement);
    }
    if !prefix.is_empty() && text.starts_with('{') {
        text = format!("{{{prefix}{}", &text[1..]);
    }
    if repeats > 1 {
        text = format!("[{}]", vec![text; repeats].join(","));
    }
    let text = format!("{}{text}{}", "[".repeat(wraps), "]".repeat(wraps));

    let mut bytes = text.into_bytes();
    for edit in byte_edits {
        match edit {
            Mutation::Truncate(at) => bytes.truncate(at.index(bytes.len() + 1)),
            Mutation::InsertByte(at, byte) => bytes.insert(at.index(bytes.len() + 1), byte),
            _ => unreachable!("only byte edits are collected"),
        }
    }
    bytes
}

/// Generates trigger bodies: random JSON, mutated valid jobs, random bytes, and valid jobs with
/// invalid UTF-8 inside a string.
fn trigger_body() -> BoxedStrategy<Vec<u8>> {
    let jobs = base_jobs();
    let mutated = (prop::sample::select(jobs.clone()), prop::collection::vec(mutation(), 0..4))
        .prop_map(|(job, mutations)| mutate(&job, &mutations));
    let invalid_utf8 = (prop::sample::select(jobs), prop::collection::vec(128u8..=255, 1..4))
        .prop_map(|(mut job, bytes)| {
            job["user"] = json!("@user@");
            let text = serde_json::to_string(&job).unwrap();
            let (head, tail) = text.split_once("@user@").unwrap();
            let mut body = head.as_bytes().to_vec();
            body.extend_from_slice(&bytes);
            body.extend_from_slice(tail.as_bytes());
            body
        });
    prop_oneof![
        4 => mutated,
        3 => json_text().prop_map(String::into_bytes),
        1 => prop::collection::vec(any::<u8>(), 0..256),
        1 => invalid_utf8,
    ]
    .boxed()
}

/// Checks the parser's result for one body: jobs that keep their invariants, or a 4xx error.
/// Returns the status the server must reply with, 0 for an accepted body, and the ids.
fn check_parse(body: &[u8]) -> Result<(u16, Vec<String>), TestCaseError> {
    match parse_trigger_body(body, MAX_BATCH) {
        Ok((jobs, is_batch)) => {
            prop_assert!(!jobs.is_empty(), "accepted body without jobs");
            let first = body.iter().find(|byte| !byte.is_ascii_whitespace());
            prop_assert_eq!(is_batch, first == Some(&b'['), "batch flag of an accepted body");
            let mut ids = Vec::new();
            for job in &jobs {
                let id = job.id.to_string();
                let parsed: Result<JobId, _> = id.parse();
                prop_assert_eq!(parsed.as_ref(), Ok(&job.id), "id {} does not parse back", id);
                prop_assert!(job.num_nodes >= 1, "numNodes {} of {}", job.num_nodes, id);
                prop_assert!(job.duration >= 0, "duration {} of {}", job.duration, id);
                prop_assert!(!job.resources.is_empty(), "no resources in {}", id);
                let again = JobMeta::from_json(Value::Object(job.raw.clone()));
                prop_assert_eq!(again.as_ref(), Ok(job), "raw object of {} parses again", id);
                ids.push(id);
            }
            Ok((0, ids))
        }
        Err((reason, err)) => {
            let status = err.status();
            prop_assert!(
                status.is_client_error(),
                "status {} ({}) for a body: {}",
                status,
                reason.as_str(),
                err.message()
            );
            prop_assert!(!err.message().is_empty(), "empty message for status {}", status);
            Ok((status.as_u16(), Vec::new()))
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 2000,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn parser_accepts_or_gives_4xx(body in trigger_body()) {
        check_parse(&body)?;
    }
}

#[test]
fn deep_nesting_gives_400() {
    let cases = [
        ("200 nested arrays", format!("{}{}", "[".repeat(200), "]".repeat(200))),
        ("200 nested objects", format!("{}1{}", "{\"a\":".repeat(200), "}".repeat(200))),
        ("100000 open arrays", "[".repeat(100_000)),
        ("job in 200 arrays", {
            let job = serde_json::to_string(&example_job("fritz-398764")).unwrap();
            format!("{}{job}{}", "[".repeat(200), "]".repeat(200))
        }),
    ];
    for (label, body) in cases {
        let result = parse_trigger_body(body.as_bytes(), MAX_BATCH);
        let Err((_, err)) = result else { panic!("{label}: accepted") };
        assert_eq!(err.status().as_u16(), 400, "{label}: {}", err.message());
    }
}

#[test]
fn server_never_answers_5xx() {
    let runtime = runtime();
    let dirs = TestDirs::new();
    let mut config = dirs.config();
    // Accepted jobs are archived meanwhile; the stop at the end does not wait long for one.
    config.worker.shutdown_timeout = Duration::from_secs(2);
    let server = runtime.block_on(start_server(config));

    let mut runner = runner(64);
    let result = runner.run(&trigger_body(), |body| {
        let (expected, ids) = check_parse(&body)?;
        let (status, reply) = runtime.block_on(server.post_bytes(TRIGGER, body.clone()));
        prop_assert!(status < 500, "status {} for a trigger: {}", status, reply);
        if expected != 0 {
            prop_assert_eq!(status, expected, "status differs from the parser's: {}", reply);
            prop_assert!(reply["error"].is_string(), "error reply without message: {}", reply);
            return Ok(());
        }
        prop_assert!(
            status == 200 || status == 202,
            "status {} for a valid body: {}",
            status,
            reply
        );
        let replies = match &reply {
            Value::Array(replies) => replies.clone(),
            single => vec![single.clone()],
        };
        let reply_ids: Vec<String> =
            replies.iter().map(|item| item["id"].as_str().unwrap_or("").to_owned()).collect();
        prop_assert_eq!(&reply_ids, &ids, "ids of the trigger reply");
        for id in &reply_ids {
            prop_assert!(id.parse::<JobId>().is_ok(), "reply id {} does not parse", id);
        }
        Ok(())
    });
    if let Err(err) = result {
        panic!("{err}");
    }

    let (status, body) = runtime.block_on(server.get_json("/healthz"));
    assert_eq!(status, 200, "/healthz after the random triggers: {body}");
    let (status, body) = runtime.block_on(server.get_json("/readyz"));
    assert_eq!(status, 200, "/readyz after the random triggers: {body}");
    runtime.block_on(server.stop());
}

/// A change to a valid metric-store reply.
#[derive(Debug, Clone)]
enum ReplyChange {
    /// The reply as the store sends it.
    Unchanged,
    /// Removes the chosen object member.
    RemoveMember(Index),
    /// Puts random JSON text at the chosen place.
    Replace(Index, String),
    /// Puts an array of `len` numbers in place of the chosen series' samples.
    HugeArray(Index, usize),
    /// Wraps the value at the chosen place in an array.
    Wrap(Index),
    /// Replaces the chosen number with an edge or invalid value.
    Number(Index, &'static str),
    /// Cuts the text at a position.
    Truncate(Index),
    /// A random JSON text in place of the reply.
    Random(String),
}

/// Replacement numbers for [`ReplyChange::Number`].
const REPLY_NUMBERS: &[&str] = &[
    "NaN",
    "Infinity",
    "-Infinity",
    "1e400",
    "-1e400",
    "1e308",
    "-1e308",
    "123456789012345678901234567890",
    "-9223372036854775809",
    "4294967296",
    "-1",
    "0",
    "null",
    "\"1\"",
    "true",
];

fn reply_change() -> BoxedStrategy<ReplyChange> {
    prop_oneof![
        1 => Just(ReplyChange::Unchanged),
        3 => any::<Index>().prop_map(ReplyChange::RemoveMember),
        3 => (any::<Index>(), json_text()).prop_map(|(at, text)| ReplyChange::Replace(at, text)),
        1 => (any::<Index>(), 0usize..50_000).prop_map(|(at, len)| ReplyChange::HugeArray(at, len)),
        2 => any::<Index>().prop_map(ReplyChange::Wrap),
        3 => (any::<Index>(), prop::sample::select(REPLY_NUMBERS))
            .prop_map(|(at, number)| ReplyChange::Number(at, number)),
        2 => any::<Index>().prop_map(ReplyChange::Truncate),
        1 => json_text().prop_map(ReplyChange::Random),
    ]
    .boxed()
}

/// Collects the JSON pointers of every value in `value` into `all`, and those of every object
/// member into `members`.
fn pointers(value: &Value, at: String, all: &mut Vec<String>, members: &mut Vec<String>) {
    match value {
        Value::Object(object) => {
            for (key, child) in object {
                let pointer = format!("{at}/{}", key.replace('~', "~0").replace('/', "~1"));
                members.push(pointer.clone());
                pointers(child, pointer, all, members);
            }
        }
        Value::Array(items) => {
            for (position, child) in items.iter().enumerate() {
                pointers(child, format!("{at}/{position}"), all, members);
            }
        }
        _ => (),
    }
    all.push(at);
}

/// Puts `text` in place of the value at `pointer` and returns the new reply text.
fn replace_at(reply: &Value, pointer: &str, text: &str) -> String {
    let mut reply = reply.clone();
    if pointer.is_empty() {
        return text.to_owned();
    }
    *reply.pointer_mut(pointer).expect("the pointer came from this reply") = json!(PLACEHOLDER);
    let marker = serde_json::to_string(PLACEHOLDER).unwrap();
    serde_json::to_string(&reply).unwrap().replacen(&marker, text, 1)
}

/// Applies a change to the valid reply and returns the body to serve.
fn change_reply(reply: &Value, change: &ReplyChange) -> String {
    let reply_text = serde_json::to_string(reply).unwrap();
    let (mut all, mut members) = (Vec::new(), Vec::new());
    pointers(reply, String::new(), &mut all, &mut members);
    match change {
        ReplyChange::Unchanged => reply_text,
        ReplyChange::RemoveMember(at) => {
            let mut changed = reply.clone();
            remove_at(&mut changed, at.get(&members).as_str());
            serde_json::to_string(&changed).unwrap()
        }
        ReplyChange::Replace(at, text) => replace_at(reply, at.get(&all).as_str(), text),
        ReplyChange::HugeArray(at, len) => {
            // In place of a series' samples, where the client must take it as data.
            let samples: Vec<String> =
                members.iter().filter(|pointer| pointer.ends_with("/data")).cloned().collect();
            let numbers: Vec<String> = (0..*len).map(|n| format!("{}.5", n % 1000)).collect();
            replace_at(reply, at.get(&samples).as_str(), &format!("[{}]", numbers.join(",")))
        }
        ReplyChange::Wrap(at) => {
            let pointer = at.get(&all).as_str();
            let inner = reply.pointer(pointer).expect("the pointer came from this reply");
            replace_at(reply, pointer, &format!("[{inner}]"))
        }
        ReplyChange::Number(at, number) => {
            let numbers = number_spans(&reply_text);
            if numbers.is_empty() {
                return reply_text;
            }
            let (start, end) = *at.get(&numbers);
            format!("{}{number}{}", &reply_text[..start], &reply_text[end..])
        }
        ReplyChange::Truncate(at) => {
            let mut bytes = reply_text.into_bytes();
            bytes.truncate(at.index(bytes.len() + 1));
            String::from_utf8_lossy(&bytes).into_owned()
        }
        ReplyChange::Random(text) => text.clone(),
    }
}

/// Returns the byte ranges of the number tokens of a JSON text, skipping strings.
fn number_spans(text: &str) -> Vec<(usize, usize)> {
    let bytes = text.as_bytes();
    let mut spans = Vec::new();
    let mut in_string = false;
    let mut position = 0;
    while position < bytes.len() {
        let byte = bytes[position];
        if in_string {
            if byte == b'\\' {
                position += 1;
            } else if byte == b'"' {
                in_string = false;
            }
            position += 1;
        } else if byte == b'"' {
            in_string = true;
            position += 1;
        } else if byte == b'-' || byte.is_ascii_digit() {
            let start = position;
            while position < bytes.len()
                && matches!(bytes[position], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
            {
                position += 1;
            }
            spans.push((start, position));
        } else {
            position += 1;
        }
    }
    spans
}

fn fritz_cluster() -> Cluster {
    let bytes = std::fs::read(repo_path("examples/archive/fritz/cluster.json")).unwrap();
    Cluster::from_json(&bytes).unwrap()
}

/// Status codes the fake store replies with; most cases use 200.
fn reply_status() -> BoxedStrategy<u16> {
    prop_oneof![
        12 => Just(200u16),
        1 => prop::sample::select(vec![400u16, 401, 404, 422, 500, 502, 503]),
    ]
    .boxed()
}

#[test]
fn store_replies_load_or_fail_cleanly() {
    let runtime = runtime();
    let store = runtime.block_on(FakeMetricStore::start(FakeStoreConfig::fritz()));
    let source = CcMetricStore::new(&store.url(), None, Duration::from_secs(5)).unwrap();
    let cluster = fritz_cluster();
    let job = JobMeta::from_json(example_job("fritz-398764")).unwrap();
    let sub_cluster = cluster.sub_cluster_for(&job).map(|sub_cluster| sub_cluster.name.clone());
    let metrics: Vec<String> = cluster
        .metrics_for(sub_cluster.as_deref())
        .iter()
        .map(|metric| metric.name.clone())
        .collect();
    let scopes = archive_scopes(&job, 8);
    let request = LoadRequest {
        job: &job,
        cluster: &cluster,
        metrics: &metrics,
        scopes: &scopes,
        resolution: 0,
    };
    let load = || {
        let loading =
            async { tokio::time::timeout(Duration::from_secs(20), source.load(&request)).await };
        runtime.block_on(loading).expect("load did not finish within 20 s")
    };

    // The valid reply is the store's reply in normal mode to the request the client sends.
    let loaded = load().expect("loading from the fake store in normal mode");
    assert!(!loaded.data.is_empty(), "normal mode loaded no data");
    let query = store.requests().pop().expect("the store recorded the query");
    let reply_text = runtime.block_on(async {
        let client = reqwest::Client::new();
        let response = client
            .get(format!("{}/api/query?version=v2", store.url()))
            .body(query.body.clone())
            .send()
            .await
            .expect("query sent");
        response.text().await.expect("reply read")
    });
    let reply: Value = serde_json::from_str(&reply_text).expect("the valid reply is JSON");

    let mut runner = runner(64);
    let result = runner.run(&(reply_status(), reply_change()), |(status, change)| {
        let body = change_reply(&reply, &change);
        store.set_mode(Mode::Fixed { status, body });
        match load() {
            Ok(loaded) => {
                prop_assert_eq!(status, 200, "load succeeded on HTTP {}", status);
                for (metric, scopes) in &loaded.data {
                    prop_assert!(metrics.contains(metric), "unrequested metric {}", metric);
                    for (scope, job_metric) in scopes {
                        let label = format!("{metric} {}", scope.as_str());
                        prop_assert!(job_metric.timestep > 0, "timestep 0 for {}", label);
                        for series in &job_metric.series {
                            prop_assert_eq!(&series.hostname, "f0649", "hostname in {}", label);
                            for value in &series.data {
                                prop_assert!(!value.is_infinite(), "infinite sample in {}", label);
                            }
                            if let Some(stats) = &series.statistics {
                                for stat in [stats.min, stats.avg, stats.max] {
                                    prop_assert!(
                                        stat.is_finite(),
                                        "statistic {} in {}",
                                        stat,
                                        label
                                    );
                                }
                            }
                        }
                    }
                }
            }
            Err(err) if status == 200 => {
                let decoding = matches!(err, SourceError::InvalidReply(_) | SourceError::NoData(_));
                prop_assert!(decoding, "HTTP 200 gave {}", err);
            }
            Err(SourceError::Status { status: got, .. }) => {
                prop_assert_eq!(got, status, "status in the error");
            }
            Err(err) => prop_assert!(false, "HTTP {} gave {}", status, err),
        }
        Ok(())
    });
    if let Err(err) = result {
        panic!("{err}");
    }
    runtime.block_on(store.stop());
}

/// Generates strings for the fields that become file content but never part of a path.
fn free_text() -> BoxedStrategy<String> {
    prop_oneof![
        text(),
        prop::collection::vec(any::<char>(), 0..200).prop_map(|chars| chars.into_iter().collect()),
    ]
    .boxed()
}

/// A fritz job with a random identity and random user, project and metaData.
#[derive(Debug, Clone)]
struct ArchiveCase {
    job_id: i64,
    start_time: i64,
    user: String,
    project: String,
    meta_data: Value,
}

fn archive_case() -> BoxedStrategy<ArchiveCase> {
    let job_id = prop_oneof![0i64..3000, 0i64..=i64::MAX];
    let start_time = prop_oneof![1_500_000_000i64..1_800_000_000, 0i64..=i64::MAX];
    let meta_data = (free_text(), free_text(), text(), free_text()).prop_map(
        |(job_name, job_script, key, value)| {
            let mut meta_data = json!({"jobName": job_name, "jobScript": job_script});
            meta_data[key] = json!(value);
            meta_data
        },
    );
    (job_id, start_time, free_text(), free_text(), meta_data)
        .prop_map(|(job_id, start_time, user, project, meta_data)| ArchiveCase {
            job_id,
            start_time,
            user,
            project,
            meta_data,
        })
        .boxed()
}

impl ArchiveCase {
    fn job(&self) -> Value {
        let mut job = example_job("fritz-398764");
        job["jobId"] = json!(self.job_id);
        job["startTime"] = json!(self.start_time);
        job["user"] = json!(self.user);
        job["project"] = json!(self.project);
        job["metaData"] = self.meta_data.clone();
        job
    }

    fn id(&self) -> String {
        format!("fritz/{}/{}", self.job_id, self.start_time)
    }

    /// Returns the job folder under `root`, built here rather than by the product's function.
    fn folder(&self, root: &Path) -> PathBuf {
        root.join("fritz")
            .join((self.job_id / 1000).to_string())
            .join(format!("{:03}", self.job_id % 1000))
            .join(self.start_time.to_string())
    }
}

/// Polls a job until it is archived or failed, for up to 30 s, and returns its status body.
fn wait_for_outcome(runtime: &tokio::runtime::Runtime, server: &TestServer, id: &str) -> Value {
    runtime.block_on(async {
        let mut last = Value::Null;
        for _ in 0..600 {
            let (_, body) = server.get_json(&format!("/api/jobs/{id}")).await;
            if body["state"] == "archived" || body["state"] == "failed" {
                return body;
            }
            last = body;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("job {id} neither archived nor failed within 30 s; last status: {last}");
    })
}

/// Returns every file and folder under `root`, relative to it.
fn walk(root: &Path) -> BTreeSet<PathBuf> {
    let mut found = BTreeSet::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(folder) = pending.pop() {
        for entry in std::fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path.clone());
            }
            found.insert(path.strip_prefix(root).unwrap().to_path_buf());
        }
    }
    found
}

#[test]
fn archived_jobs_keep_layout() {
    let runtime = runtime();
    let dirs = TestDirs::new();
    let replay = dirs.root.path().join("replay");
    let mut config = dirs.config_with_source(MetricSourceConfig::Archive { path: replay.clone() });
    // Above the size of the fritz data, so every job gets a plain data.json to read back.
    config.archive.compress_threshold_bytes = 200_000;
    let server = runtime.block_on(start_server(config));
    let data = repo_path("examples/archive/fritz/398/764/1675954353/data.json");
    // The runner takes a `Fn` closure, so the state shared across cases sits in cells.
    let expected_folders: RefCell<BTreeSet<PathBuf>> = RefCell::new(BTreeSet::new());
    let seen = RefCell::new(HashSet::new());

    let mut runner = runner(24);
    let result = runner.run(&archive_case(), |case| {
        if !seen.borrow_mut().insert(case.id()) {
            // A repeated identity is already archived and would get 200 with no new write.
            return Ok(());
        }
        let source_folder = case.folder(&replay);
        std::fs::create_dir_all(&source_folder).unwrap();
        std::fs::copy(&data, source_folder.join("data.json")).unwrap();

        let (status, reply) = runtime.block_on(server.post_json(TRIGGER, &case.job()));
        prop_assert_eq!(status, 202, "trigger of {}: {}", case.id(), reply);
        let outcome = wait_for_outcome(&runtime, &server, &case.id());
        prop_assert_eq!(&outcome["state"], "archived", "outcome of {}: {}", case.id(), outcome);

        let folder = case.folder(&dirs.archive);
        prop_assert_eq!(
            outcome["archivePath"].as_str(),
            Some(folder.to_str().unwrap()),
            "archivePath of {}",
            case.id()
        );
        let names: BTreeSet<String> = std::fs::read_dir(&folder)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        let expected_names: BTreeSet<String> =
            ["data.json", "meta.json"].iter().map(|name| name.to_string()).collect();
        prop_assert_eq!(&names, &expected_names, "files in {}", folder.display());
        let siblings: Vec<String> = std::fs::read_dir(folder.parent().unwrap())
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.starts_with('.'))
            .collect();
        prop_assert!(siblings.is_empty(), "leftovers beside {}: {:?}", folder.display(), siblings);

        let meta: Value = serde_json::from_slice(&std::fs::read(folder.join("meta.json")).unwrap())
            .map_err(|err| TestCaseError::fail(format!("meta.json of {}: {err}", case.id())))?;
        prop_assert_eq!(&meta["jobId"], &json!(case.job_id), "jobId in meta.json");
        prop_assert_eq!(&meta["startTime"], &json!(case.start_time), "startTime in meta.json");
        prop_assert_eq!(&meta["cluster"], "fritz", "cluster in meta.json");
        prop_assert_eq!(&meta["user"], &json!(case.user), "user in meta.json");
        prop_assert_eq!(&meta["project"], &json!(case.project), "project in meta.json");
        prop_assert_eq!(&meta["metaData"], &case.meta_data, "metaData in meta.json");
        let data: Result<Value, _> =
            serde_json::from_slice(&std::fs::read(folder.join("data.json")).unwrap());
        prop_assert!(data.is_ok(), "data.json of {} is not JSON", case.id());
        let relative = folder.strip_prefix(&dirs.archive).unwrap().to_path_buf();
        expected_folders.borrow_mut().insert(relative);
        Ok(())
    });
    if let Err(err) = result {
        panic!("{err}");
    }

    // The archive contains the clusters' files and the job folders, and nothing else.
    let mut allowed: BTreeSet<PathBuf> =
        ["version.txt", "emmy", "emmy/cluster.json", "fritz", "fritz/cluster.json"]
            .iter()
            .map(PathBuf::from)
            .collect();
    for folder in expected_folders.borrow().iter() {
        allowed.extend(
            folder.ancestors().filter(|path| !path.as_os_str().is_empty()).map(Path::to_path_buf),
        );
        allowed.insert(folder.join("meta.json"));
        allowed.insert(folder.join("data.json"));
    }
    let found = walk(&dirs.archive);
    let unexpected: Vec<&PathBuf> = found.difference(&allowed).collect();
    assert!(unexpected.is_empty(), "unexpected paths in the archive: {unexpected:?}");
    runtime.block_on(server.stop());
}
