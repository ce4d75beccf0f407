//! Authentication of the API: static bearer tokens from a file, Ed25519-signed JWTs as
//! cc-backend issues them, the probes with and without `public_probes`, the failure counter,
//! config validation of `[server] auth`, and the CLI's `client.token_file`.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use job_archiver::auth::Authenticator;
use job_archiver::config::{self, AuthConfig, Config, ConfigError};
use job_archiver::service::{self, Components};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::Method;
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::support::{self, example_job, repo_path, ServerProcess, TestDirs};

const ALPHA_TOKEN: &str = "alpha-token-Kx81mQ";
const BETA_TOKEN: &str = "beta-token-Qz27pW";
/// A token that no server in these tests accepts.
const WRONG_TOKEN: &str = "wrong-token-Vb55nT";

const FRITZ_ID: &str = "fritz/398764/1675954353";

/// Writes a token file with two tokens, a comment and blank lines, as operators write them.
fn write_token_file(dirs: &TestDirs) -> PathBuf {
    let path = dirs.root.path().join("api-tokens");
    let text = format!("# accepted API tokens\n\n{ALPHA_TOKEN}\n   {BETA_TOKEN}  \n\n");
    std::fs::write(&path, text).expect("writing the token file");
    path
}

/// A server in this process whose readiness check can send credentials, which
/// `support::start_server` cannot when the probes need authentication.
struct AuthServer {
    url: String,
    client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

/// Starts the real router and worker on 127.0.0.1:0 and waits until `/readyz`, requested with
/// `ready_headers`, returns 200.
async fn start(config: Config, ready_headers: &[(&str, &str)]) -> AuthServer {
    let components = Components::open(&config).expect("opening the store and archive");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        service::serve(&config, components, listener, async move {
            let _ = stop_rx.await;
            "test stop"
        })
        .await
    });
    let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
    let server = AuthServer { url, client, stop: Some(stop_tx), task };
    let ready = support::wait_until(Duration::from_secs(10), || async {
        server.send(Method::GET, "/readyz", ready_headers, None).await.0 == 200
    })
    .await;
    assert!(ready, "server at {} did not become ready within 10 s", server.url);
    server
}

impl AuthServer {
    /// Sends a request with `headers` and an optional JSON body, and returns the status and
    /// the body, parsed as JSON when it is JSON.
    async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&Value>,
    ) -> (u16, Value) {
        let mut request = self.client.request(method, format!("{}{path}", self.url));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(serde_json::to_vec(body).unwrap());
        }
        let response = match request.send().await {
            Ok(response) => response,
            // A failed connection counts as "not ready" in the readiness loop.
            Err(_) => return (0, Value::Null),
        };
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(60), &mut self.task)
            .await
            .expect("server stopped within 60 s")
            .expect("server task joined")
            .expect("server stopped cleanly");
    }
}

/// Returns the value of one series line of the Prometheus text format, such as
/// `job_archiver_auth_failures_total{reason="missing"}`.
fn metric_value(text: &str, series: &str) -> f64 {
    let line = text
        .lines()
        .find(|line| line.strip_prefix(series).is_some_and(|rest| rest.starts_with(' ')))
        .unwrap_or_else(|| panic!("/metrics has no series {series}:\n{text}"));
    line[series.len()..].trim().parse().unwrap_or_else(|_| panic!("unparsable line {line:?}"))
}

/// Asserts that a reply is the 401 JSON error body with a message containing `message`.
#[track_caller]
fn assert_unauthorized(label: &str, (status, body): &(u16, Value), message: &str) {
    assert_eq!(*status, 401, "{label}: status, body {body}");
    assert_eq!(body["status"], "Unauthorized", "{label}: status field of {body}");
    let error = body["error"].as_str().unwrap_or_default();
    assert!(error.contains(message), "{label}: error {error:?} lacks {message:?}");
}

/// Every `/api` route with its method, each with a path that exists when a job is stored.
fn api_routes() -> Vec<(Method, String, Option<Value>)> {
    vec![
        (Method::POST, "/api/jobs/archive".to_owned(), Some(example_job("fritz-398764"))),
        (Method::GET, "/api/jobs".to_owned(), None),
        (Method::GET, format!("/api/jobs/{FRITZ_ID}"), None),
        (Method::POST, format!("/api/jobs/{FRITZ_ID}/retry"), None),
        (Method::POST, "/api/jobs/retry?state=failed".to_owned(), None),
        (Method::GET, "/api/queue".to_owned(), None),
    ]
}

#[tokio::test]
async fn token_auth_guards_api_routes() {
    let dirs = TestDirs::new();
    let mut config = dirs.config();
    config.server.auth = AuthConfig::Token { file: write_token_file(&dirs) };
    let server = start(config, &[]).await;
    let alpha = format!("Bearer {ALPHA_TOKEN}");
    let beta = format!("Bearer {BETA_TOKEN}");
    let wrong = format!("Bearer {WRONG_TOKEN}");
    let mut missing = 0;
    let mut invalid = 0;

    for (method, path, body) in api_routes() {
        let label = format!("{method} {path}");
        let reply = server.send(method.clone(), &path, &[], body.as_ref()).await;
        assert_unauthorized(&format!("{label} without a header"), &reply, "missing credentials");
        missing += 1;
        let headers = [("authorization", wrong.as_str())];
        let reply = server.send(method.clone(), &path, &headers, body.as_ref()).await;
        assert_unauthorized(&format!("{label} with a wrong token"), &reply, "invalid");
        invalid += 1;
    }

    // Near misses of an accepted token, and the comment line of the token file.
    let near_misses = [
        format!("Bearer {}", &ALPHA_TOKEN[..ALPHA_TOKEN.len() - 1]),
        format!("Bearer {ALPHA_TOKEN}x"),
        format!("Bearer {}", ALPHA_TOKEN.to_uppercase()),
        "Bearer # accepted API tokens".to_owned(),
        format!("Bearer {ALPHA_TOKEN} {BETA_TOKEN}"),
    ];
    for header in &near_misses {
        let reply =
            server.send(Method::GET, "/api/queue", &[("authorization", header)], None).await;
        assert_unauthorized(&format!("Authorization: {header}"), &reply, "invalid");
        invalid += 1;
    }
    // Headers that carry no bearer token count as missing credentials.
    let no_bearer = [
        ("authorization", format!("Basic {ALPHA_TOKEN}")),
        ("authorization", "Bearer ".to_owned()),
        ("authorization", ALPHA_TOKEN.to_owned()),
        // Static tokens are read from `Authorization: Bearer` only, because X-Auth-Token
        // carries JWTs.
        ("x-auth-token", ALPHA_TOKEN.to_owned()),
    ];
    for (name, value) in &no_bearer {
        let reply = server.send(Method::GET, "/api/queue", &[(name, value)], None).await;
        assert_unauthorized(&format!("{name}: {value}"), &reply, "missing credentials");
        missing += 1;
    }
    // Authentication comes before the body is read: an invalid body still gets 401.
    let reply = server.send(Method::POST, "/api/jobs/archive", &[], Some(&json!(42))).await;
    assert_unauthorized("invalid body without a header", &reply, "missing credentials");
    missing += 1;

    // Nothing was stored by the rejected triggers.
    let (status, body) =
        server.send(Method::GET, "/api/queue", &[("authorization", &beta)], None).await;
    assert_eq!(status, 200, "queue with the second token: {body}");
    for state in ["queued", "archiving", "archived", "failed"] {
        assert_eq!(body[state], 0, "{state} count after rejected triggers: {body}");
    }

    // Either token works, and the scheme name is case-insensitive.
    let job = example_job("fritz-398764");
    let (status, body) = server
        .send(Method::POST, "/api/jobs/archive", &[("authorization", &alpha)], Some(&job))
        .await;
    assert_eq!(status, 202, "trigger with the first token: {body}");
    let lower = format!("bearer {BETA_TOKEN}");
    let path = format!("/api/jobs/{FRITZ_ID}");
    let (status, body) = server.send(Method::GET, &path, &[("authorization", &lower)], None).await;
    assert_eq!(status, 200, "job status with `bearer` in lower case: {body}");
    assert_eq!(body["id"], FRITZ_ID, "id of the job status");

    // The probes stay open by default.
    for probe in ["/healthz", "/readyz", "/metrics"] {
        let (status, body) = server.send(Method::GET, probe, &[], None).await;
        assert_eq!(status, 200, "{probe} without a header: {body}");
    }

    let (_, metrics) = server.send(Method::GET, "/metrics", &[], None).await;
    let metrics = metrics.as_str().expect("/metrics is text").to_owned();
    let failures = "job_archiver_auth_failures_total";
    let missing_count = metric_value(&metrics, &format!("{failures}{{reason=\"missing\"}}"));
    assert_eq!(missing_count, f64::from(missing), "auth failures with reason missing");
    let invalid_count = metric_value(&metrics, &format!("{failures}{{reason=\"invalid\"}}"));
    assert_eq!(invalid_count, f64::from(invalid), "auth failures with reason invalid");
    let expired_count = metric_value(&metrics, &format!("{failures}{{reason=\"expired\"}}"));
    assert_eq!(expired_count, 0.0, "auth failures with reason expired");
    server.stop().await;
}

#[tokio::test]
async fn probes_need_token_unless_public() {
    let dirs = TestDirs::new();
    let mut config = dirs.config();
    config.server.auth = AuthConfig::Token { file: write_token_file(&dirs) };
    config.server.public_probes = false;
    let header = format!("Bearer {BETA_TOKEN}");
    let server = start(config, &[("authorization", &header)]).await;

    for probe in ["/healthz", "/readyz", "/metrics"] {
        let reply = server.send(Method::GET, probe, &[], None).await;
        assert_unauthorized(&format!("{probe} without a header"), &reply, "missing credentials");
        let wrong = format!("Bearer {WRONG_TOKEN}");
        let reply = server.send(Method::GET, probe, &[("authorization", &wrong)], None).await;
        assert_unauthorized(&format!("{probe} with a wrong token"), &reply, "invalid");
        let (status, body) =
            server.send(Method::GET, probe, &[("authorization", &header)], None).await;
        assert_eq!(status, 200, "{probe} with a token: {body}");
    }
    let (_, metrics) =
        server.send(Method::GET, "/metrics", &[("authorization", &header)], None).await;
    let metrics = metrics.as_str().expect("/metrics is text").to_owned();
    let missing = metric_value(&metrics, "job_archiver_auth_failures_total{reason=\"missing\"}");
    assert_eq!(missing, 3.0, "auth failures with reason missing, one per probe");
    let invalid = metric_value(&metrics, "job_archiver_auth_failures_total{reason=\"invalid\"}");
    assert_eq!(invalid, 3.0, "auth failures with reason invalid, one per probe");
    server.stop().await;
}

/// Writes a config file for the binary with token authentication and `client` TOML lines.
fn write_token_config(dirs: &TestDirs, name: &str, token_file: &Path, client: &str) -> PathBuf {
    let path = dirs.root.path().join(name);
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nauth = \"token\"\ntoken_file = \"{}\"\n\n\
         [store]\npath = \"{}\"\ncache_bytes = 8388608\n\n[archive]\npath = \"{}\"\n\n\
         [metric_source]\nkind = \"archive\"\npath = \"{}\"\n\n[client]\n{client}\n",
        token_file.display(),
        dirs.store.display(),
        dirs.archive.display(),
        repo_path("examples/archive").display(),
    );
    std::fs::write(&path, text).expect("writing the config file");
    path
}

#[tokio::test]
async fn token_never_appears_in_log() {
    let dirs = TestDirs::new();
    let config = write_token_config(&dirs, "token.toml", &write_token_file(&dirs), "");
    let mut process = ServerProcess::start(&config, dirs.root.path(), "token-log");
    let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
    let job = serde_json::to_vec(&example_job("fritz-398764")).unwrap();
    let trigger = |authorization: Option<String>| {
        let mut request = client
            .post(format!("{}/api/jobs/archive", process.url))
            .header("content-type", "application/json")
            .body(job.clone());
        if let Some(authorization) = authorization {
            request = request.header("authorization", authorization);
        }
        request.send()
    };

    let status = trigger(None).await.expect("trigger sent").status();
    assert_eq!(status, 401, "trigger without a header");
    let status =
        trigger(Some(format!("Bearer {WRONG_TOKEN}"))).await.expect("trigger sent").status();
    assert_eq!(status, 401, "trigger with a wrong token");
    let status =
        trigger(Some(format!("Bearer {ALPHA_TOKEN}"))).await.expect("trigger sent").status();
    assert_eq!(status, 202, "trigger with the first token");
    let archived = support::wait_until(Duration::from_secs(30), || async {
        let response = client
            .get(format!("{}/api/jobs/{FRITZ_ID}", process.url))
            .header("authorization", format!("Bearer {BETA_TOKEN}"))
            .send()
            .await;
        match response {
            Ok(response) => response.text().await.unwrap_or_default().contains("\"archived\""),
            Err(_) => false,
        }
    })
    .await;
    assert!(archived, "job {FRITZ_ID} not archived within 30 s; log:\n{}", process.log());

    let exit = process.terminate(Duration::from_secs(30));
    assert_eq!(exit.code(), Some(0), "exit code after SIGTERM");
    let log = process.log();
    // The log must record the failures, or the checks below would pass on an empty log.
    let failures = log.matches("request not authenticated").count();
    assert_eq!(failures, 2, "warnings for rejected requests in the log:\n{log}");
    assert!(log.contains("/api/jobs/archive"), "the warning lacks the path:\n{log}");
    for token in [ALPHA_TOKEN, BETA_TOKEN, WRONG_TOKEN] {
        assert!(!log.contains(token), "the log contains the token {token}:\n{log}");
    }
}

/// An Ed25519 key pair made for one test, and the base64 public key the config takes.
struct SigningKey {
    pkcs8: Vec<u8>,
    public_base64: String,
}

impl SigningKey {
    fn generate() -> SigningKey {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).expect("generating an Ed25519 key");
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("reading the new key");
        let public_base64 =
            base64::engine::general_purpose::STANDARD.encode(pair.public_key().as_ref());
        SigningKey { pkcs8: pkcs8.as_ref().to_vec(), public_base64 }
    }

    /// Signs `claims` with EdDSA, as cc-backend's `ProvideJWT` (internal/auth/jwt.go) does.
    fn sign(&self, claims: &Value) -> String {
        let key = EncodingKey::from_ed_der(&self.pkcs8);
        jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), claims, &key).expect("signing")
    }
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

/// Returns the claims of cc-backend's `ProvideJWT` (`sub`, `roles`, `iat`, and `exp` when its
/// `max-age` is set) for an API user, expiring `exp_offset` seconds from now.
fn api_claims(exp_offset: i64) -> Value {
    json!({"sub": "archiver", "roles": ["api"], "iat": unix_now() - 60, "exp": unix_now() + exp_offset})
}

fn base64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[tokio::test]
async fn jwt_auth_accepts_and_rejects() {
    let dirs = TestDirs::new();
    let key = SigningKey::generate();
    let mut config = dirs.config();
    config.server.auth = AuthConfig::Jwt { public_key: key.public_base64.clone() };
    let server = start(config, &[]).await;
    let valid = key.sign(&api_claims(3600));

    // Accepted in either header, for a trigger and for a read.
    let job = example_job("fritz-398764");
    let (status, body) = server
        .send(Method::POST, "/api/jobs/archive", &[("x-auth-token", &valid)], Some(&job))
        .await;
    assert_eq!(status, 202, "trigger with X-Auth-Token: {body}");
    let bearer = format!("Bearer {valid}");
    let (status, body) =
        server.send(Method::GET, "/api/queue", &[("authorization", &bearer)], None).await;
    assert_eq!(status, 200, "queue with Authorization: Bearer: {body}");

    // The token expired a second ago, and the server grants no leeway.
    let expired = key.sign(&api_claims(-1));
    for (name, value) in
        [("x-auth-token", expired.clone()), ("authorization", format!("Bearer {expired}"))]
    {
        let reply = server.send(Method::GET, "/api/queue", &[(name, &value)], None).await;
        assert_unauthorized(&format!("expired token in {name}"), &reply, "expired token");
    }

    // cc-backend leaves out `exp` when its `max-age` is not set, and such tokens never expire.
    let without_exp = key.sign(&json!({"sub": "archiver", "roles": ["api"], "iat": unix_now()}));
    let (status, body) =
        server.send(Method::GET, "/api/queue", &[("x-auth-token", &without_exp)], None).await;
    assert_eq!(status, 200, "token without exp: {body}");

    // cc-backend's REST API needs the role "api" alone, or "api" with "admin".
    for roles in [json!(["user"]), json!(["api", "user"]), json!([]), json!("api")] {
        let token = key.sign(&json!({"sub": "someone", "roles": roles, "exp": unix_now() + 3600}));
        let (status, body) =
            server.send(Method::GET, "/api/queue", &[("x-auth-token", &token)], None).await;
        assert_eq!(status, 401, "token with roles {roles}: {body}");
        assert!(
            body.to_string().contains("roles"),
            "reply for roles {roles} names the roles: {body}"
        );
    }

    let other_key = SigningKey::generate();
    let hs256 = |secret: &[u8]| {
        let key = EncodingKey::from_secret(secret);
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &api_claims(3600), &key).unwrap()
    };
    let public_raw = base64::engine::general_purpose::STANDARD.decode(&key.public_base64).unwrap();
    let claims_part = base64url(api_claims(3600).to_string().as_bytes());
    let mut parts: Vec<String> = valid.split('.').map(str::to_owned).collect();
    let signature = parts.pop().expect("a JWT has a signature part");
    let mut flipped_signature = signature.into_bytes();
    flipped_signature[5] = if flipped_signature[5] == b'A' { b'B' } else { b'A' };
    let flipped_signature = String::from_utf8(flipped_signature).unwrap();
    let admin_claims = json!({"sub": "admin", "roles": ["admin", "api"], "exp": unix_now() + 3600});
    let rejected = [
        ("signed by another key", other_key.sign(&api_claims(3600))),
        ("HS256 with a shared secret", hs256(b"a shared secret")),
        // The classic confusion: HMAC keyed with the server's public key.
        ("HS256 keyed with the public key", hs256(&public_raw)),
        ("HS256 keyed with the base64 public key", hs256(key.public_base64.as_bytes())),
        ("alg none", format!("{}.{claims_part}.", base64url(br#"{"alg":"none","typ":"JWT"}"#))),
        (
            "alg none, upper case",
            format!("{}.{claims_part}.", base64url(br#"{"alg":"NONE","typ":"JWT"}"#)),
        ),
        ("EdDSA header without signature", format!("{}.{claims_part}.", parts[0])),
        ("tampered signature", format!("{}.{}.{flipped_signature}", parts[0], parts[1])),
        (
            "claims swapped under a valid signature",
            format!(
                "{}.{}.{}",
                parts[0],
                base64url(admin_claims.to_string().as_bytes()),
                valid.rsplit('.').next().unwrap()
            ),
        ),
        ("garbled", "not.a.jwt".to_owned()),
        ("two parts", format!("{}.{}", parts[0], parts[1])),
        ("random text", "garbage".to_owned()),
        ("static token", ALPHA_TOKEN.to_owned()),
    ];
    for (label, token) in &rejected {
        for (name, value) in
            [("x-auth-token", token.clone()), ("authorization", format!("Bearer {token}"))]
        {
            let reply = server.send(Method::GET, "/api/queue", &[(name, &value)], None).await;
            assert_unauthorized(&format!("{label} in {name}"), &reply, "invalid credentials");
        }
    }
    let reply = server.send(Method::GET, "/api/queue", &[], None).await;
    assert_unauthorized("no header", &reply, "missing credentials");

    let (_, metrics) = server.send(Method::GET, "/metrics", &[], None).await;
    let metrics = metrics.as_str().expect("/metrics is text").to_owned();
    let failures = "job_archiver_auth_failures_total";
    let expired_count = metric_value(&metrics, &format!("{failures}{{reason=\"expired\"}}"));
    assert_eq!(expired_count, 2.0, "auth failures with reason expired");
    let invalid_count = metric_value(&metrics, &format!("{failures}{{reason=\"invalid\"}}"));
    assert_eq!(invalid_count, 2.0 * rejected.len() as f64, "auth failures with reason invalid");
    let missing_count = metric_value(&metrics, &format!("{failures}{{reason=\"missing\"}}"));
    assert_eq!(missing_count, 1.0, "auth failures with reason missing");
    server.stop().await;
}

fn no_env(_: &str) -> Option<String> {
    None
}

/// A config override as (`section.key`, value).
type Flag<'a> = (&'static str, &'a str);

/// Loads the defaults with `flags`, as the command line sets them.
fn load_with_flags(flags: &[Flag]) -> Result<Config, ConfigError> {
    let flags: Vec<(&'static str, String)> =
        flags.iter().map(|(key, value)| (*key, (*value).to_owned())).collect();
    config::load(&config::Sources { file: None, env: &no_env, flags: &flags })
}

/// Returns the problem list of a config that must be invalid.
#[track_caller]
fn problems(label: &str, result: Result<Config, ConfigError>) -> String {
    match result {
        Ok(config) => panic!("{label}: accepted, as {:?}", config.server.auth),
        Err(ConfigError::Invalid(problems)) => problems.join("\n"),
        Err(err) => panic!("{label}: expected a list of problems, got {err}"),
    }
}

#[test]
fn auth_none_needs_loopback() {
    for listen in ["0.0.0.0:8080", "[::]:8080", "192.0.2.10:8080"] {
        let text = problems(listen, load_with_flags(&[("server.listen", listen)]));
        assert!(text.contains("server.auth"), "problem for {listen} lacks server.auth: {text}");
        assert!(
            text.contains("allow_unauthenticated"),
            "problem for {listen} lacks the fix: {text}"
        );

        let flags = [("server.listen", listen), ("server.allow_unauthenticated", "true")];
        let config = load_with_flags(&flags)
            .unwrap_or_else(|err| panic!("{listen} with allow_unauthenticated rejected: {err}"));
        assert_eq!(config.server.auth, AuthConfig::None, "auth of {listen} with the override");
    }
    for listen in ["127.0.0.1:8080", "127.0.0.2:8080", "[::1]:8080"] {
        let config = load_with_flags(&[("server.listen", listen)])
            .unwrap_or_else(|err| panic!("loopback {listen} without auth rejected: {err}"));
        assert_eq!(config.server.auth, AuthConfig::None, "auth of loopback {listen}");
    }
    let flags =
        [("server.listen", "0.0.0.0:8080"), ("server.auth", "token"), ("server.token_file", "t")];
    let config = load_with_flags(&flags).expect("token auth on 0.0.0.0 is valid");
    assert_eq!(config.server.auth, AuthConfig::Token { file: PathBuf::from("t") }, "token auth");
}

#[test]
fn auth_none_off_loopback_exits_2() {
    let dirs = TestDirs::new();
    let port = support::free_port();
    let config = dirs.root.path().join("open.toml");
    let text = format!(
        "[server]\nlisten = \"0.0.0.0:{port}\"\n\n[store]\npath = \"{}\"\n\n[archive]\npath = \"{}\"\n",
        dirs.store.display(),
        dirs.archive.display()
    );
    std::fs::write(&config, text).unwrap();
    let output = run_binary(
        &dirs,
        "open",
        &["--config".as_ref(), config.as_os_str(), "serve".as_ref()],
        &[],
    );
    assert_eq!(output.status.code(), Some(2), "exit code: {output:?}");
    assert!(output.stderr.contains("server.auth"), "stderr lacks server.auth: {output:?}");
    assert!(
        output.stderr.contains(&format!("0.0.0.0:{port}")),
        "stderr lacks the address: {output:?}"
    );
    assert!(!dirs.store.exists(), "the rejected config opened the store");
}

#[test]
fn jwt_and_token_settings_are_checked() {
    // (label, flags, key the problem names, words of the problem)
    let cases: Vec<(&str, Vec<Flag>, &str, &str)> = vec![
        (
            "jwt without key",
            vec![("server.auth", "jwt")],
            "server.jwt_public_key",
            "needs the Ed25519 public key",
        ),
        (
            "jwt key not base64",
            vec![("server.auth", "jwt"), ("server.jwt_public_key", "not base64!")],
            "server.jwt_public_key",
            "base64",
        ),
        (
            "jwt key of 3 bytes",
            vec![("server.auth", "jwt"), ("server.jwt_public_key", "AAAA")],
            "server.jwt_public_key",
            "32 bytes",
        ),
        (
            "token without file",
            vec![("server.auth", "token")],
            "server.token_file",
            "needs a token file",
        ),
        ("unknown auth", vec![("server.auth", "basic")], "server.auth", "\"basic\""),
    ];
    for (label, flags, key, message) in cases {
        let text = problems(label, load_with_flags(&flags));
        assert!(text.contains(key), "{label}: problems lack {key}: {text}");
        assert!(text.contains(message), "{label}: problems lack {message:?}: {text}");
    }
    // A key in SubjectPublicKeyInfo form, the body of a PEM file, is a likely mistake; the
    // config needs the raw 32-byte key in base64.
    let pem = SigningKey::generate().public_base64;
    let pem_like = format!("MCowBQYDK2VwAyEA{pem}");
    let flags = [("server.auth", "jwt"), ("server.jwt_public_key", pem_like.as_str())];
    let text = problems("jwt key as SubjectPublicKeyInfo", load_with_flags(&flags));
    assert!(
        text.contains("server.jwt_public_key"),
        "SubjectPublicKeyInfo key: problems lack the key name: {text}"
    );
    let key = SigningKey::generate().public_base64;
    let config = load_with_flags(&[("server.auth", "jwt"), ("server.jwt_public_key", &key)])
        .expect("a base64 raw Ed25519 key is valid");
    assert_eq!(config.server.auth, AuthConfig::Jwt { public_key: key }, "jwt auth");

    // The token file is read when the server starts; these fail there, naming the key.
    let dirs = TestDirs::new();
    let comments_only = dirs.root.path().join("comments-only");
    std::fs::write(&comments_only, "# no token yet\n\n").unwrap();
    let missing = dirs.root.path().join("no-such-file");
    for (label, file, message) in [
        ("comments only", &comments_only, "contains no token"),
        ("missing file", &missing, "cannot read"),
    ] {
        let err = match Authenticator::from_config(&AuthConfig::Token { file: file.clone() }) {
            Ok(_) => panic!("{label}: token file accepted"),
            Err(err) => err.to_string(),
        };
        assert!(err.contains("server.token_file"), "{label}: error lacks the key: {err}");
        assert!(err.contains(message), "{label}: error lacks {message:?}: {err}");
    }
}

#[tokio::test]
async fn cli_sends_client_token() {
    let dirs = TestDirs::new();
    let token_file = write_token_file(&dirs);
    let server_config = write_token_config(&dirs, "server.toml", &token_file, "");
    let mut process = ServerProcess::start(&server_config, dirs.root.path(), "cli-token");
    let client_token = dirs.root.path().join("client-token");
    std::fs::write(&client_token, format!("{BETA_TOKEN}\n")).unwrap();
    let wrong_token = dirs.root.path().join("wrong-token");
    std::fs::write(&wrong_token, format!("{WRONG_TOKEN}\n")).unwrap();
    let with_token = write_token_config(
        &dirs,
        "with-token.toml",
        &token_file,
        &format!("token_file = \"{}\"", client_token.display()),
    );
    let with_wrong_token = write_token_config(
        &dirs,
        "wrong-token.toml",
        &token_file,
        &format!("token_file = \"{}\"", wrong_token.display()),
    );
    let status = |config: &Path, name: &str| {
        let args = [
            "--config".as_ref(),
            config.as_os_str(),
            "--server".as_ref(),
            process.url.as_ref(),
            "status".as_ref(),
        ];
        run_binary(&dirs, name, &args, &[])
    };

    let output = status(&server_config, "status-without-token");
    assert_eq!(output.status.code(), Some(1), "exit code without client.token_file: {output:?}");
    assert!(output.stderr.contains("401"), "stderr without a token lacks 401: {output:?}");
    assert!(output.stderr.contains("missing credentials"), "stderr lacks the reason: {output:?}");

    let output = status(&with_wrong_token, "status-wrong-token");
    assert_eq!(output.status.code(), Some(1), "exit code with a wrong token: {output:?}");
    assert!(output.stderr.contains("401"), "stderr with a wrong token lacks 401: {output:?}");
    assert!(!output.stderr.contains(WRONG_TOKEN), "stderr shows the token: {output:?}");

    let output = status(&with_token, "status-with-token");
    assert_eq!(output.status.code(), Some(0), "exit code with client.token_file: {output:?}");
    for line in ["queued     0", "archiving  0", "archived   0", "failed     0"] {
        assert!(output.stdout.contains(line), "status output lacks {line:?}: {output:?}");
    }

    // The trigger command sends the token as well.
    let job_file = repo_path("examples/jobs/fritz-398764-meta.json");
    let args = [
        "--config".as_ref(),
        with_token.as_os_str(),
        "--server".as_ref(),
        process.url.as_ref(),
        "trigger".as_ref(),
        job_file.as_os_str(),
    ];
    let output = run_binary(&dirs, "trigger-with-token", &args, &[]);
    assert_eq!(output.status.code(), Some(0), "exit code of trigger with a token: {output:?}");
    assert!(output.stdout.contains(FRITZ_ID), "trigger output lacks the job id: {output:?}");

    let exit = process.terminate(Duration::from_secs(30));
    assert_eq!(exit.code(), Some(0), "server exit code after SIGTERM");
    let log = process.log();
    for token in [ALPHA_TOKEN, BETA_TOKEN, WRONG_TOKEN] {
        assert!(!log.contains(token), "the server log contains the token {token}:\n{log}");
    }
}

/// Exit status and output of one run of the binary.
#[derive(Debug)]
struct BinaryOutput {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs the binary in the test's folder without the test's own `JOB_ARCHIVER_*` variables,
/// and kills it after 30 s.
fn run_binary(
    dirs: &TestDirs,
    name: &str,
    args: &[&std::ffi::OsStr],
    env: &[(&str, &str)],
) -> BinaryOutput {
    let stdout_path = dirs.root.path().join(format!("{name}.stdout"));
    let stderr_path = dirs.root.path().join(format!("{name}.stderr"));
    let mut command = Command::new(support::binary());
    command.current_dir(dirs.root.path()).args(args).stdin(Stdio::null());
    for (variable, _) in std::env::vars_os() {
        if variable.to_string_lossy().starts_with("JOB_ARCHIVER_") {
            command.env_remove(variable);
        }
    }
    let mut child = command
        .envs(env.iter().copied())
        .stdout(std::fs::File::create(&stdout_path).unwrap())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .expect("starting the job-archiver binary");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("reading the exit status") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("job-archiver {args:?} did not exit within 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    BinaryOutput {
        status,
        stdout: std::fs::read_to_string(&stdout_path).unwrap_or_default(),
        stderr: std::fs::read_to_string(&stderr_path).unwrap_or_default(),
    }
}
