//! Configuration: every key declared once in [`KEYS`] with its type, default and help, merged
//! from defaults, `config.toml`, `JOB_ARCHIVER_*` environment variables and command-line flags
//! (later sources win), then validated as a whole into [`Config`].
//!
//! Validation reports every problem at once, so an operator fixes a config in one round. The
//! environment is read through a function argument, so tests never touch the process
//! environment.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::commit::Durability;

/// The type of a config value; environment variables and flags are parsed by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    String,
    Integer,
    Boolean,
    /// A humantime duration such as `30s` or `10min`.
    Duration,
}

/// One config key. `default` is written in TOML syntax.
#[derive(Debug)]
pub struct KeySpec {
    pub section: &'static str,
    pub key: &'static str,
    pub kind: Kind,
    pub default: &'static str,
    pub help: &'static str,
}

impl KeySpec {
    /// The environment variable that overrides this key, `JOB_ARCHIVER_<SECTION>_<KEY>`.
    pub fn env_var(&self) -> String {
        format!("JOB_ARCHIVER_{}_{}", self.section, self.key).to_ascii_uppercase()
    }
}

/// Every config key. config.toml shows each with its default, and a test checks that it does.
pub const KEYS: &[KeySpec] = &[
    KeySpec {
        section: "server",
        key: "listen",
        kind: Kind::String,
        default: "\"127.0.0.1:8080\"",
        help: "address and port the HTTP API listens on",
    },
    KeySpec {
        section: "server",
        key: "url",
        kind: Kind::String,
        default: "\"\"",
        help: "URL that CLI commands send requests to; empty means http:// plus server.listen",
    },
    KeySpec {
        section: "server",
        key: "max_body_bytes",
        kind: Kind::Integer,
        default: "16777216",
        help: "largest trigger body in bytes; larger ones get 413",
    },
    KeySpec {
        section: "server",
        key: "max_batch_jobs",
        kind: Kind::Integer,
        default: "10000",
        help: "maximum number of jobs in one trigger array; larger arrays get 413",
    },
    KeySpec {
        section: "server",
        key: "header_read_timeout",
        kind: Kind::Duration,
        default: "\"10s\"",
        help: "time a client has to send the request headers before the connection is closed",
    },
    KeySpec {
        section: "server",
        key: "request_timeout",
        kind: Kind::Duration,
        default: "\"60s\"",
        help: "time to read a request and reply before the server responds with 408",
    },
    KeySpec {
        section: "server",
        key: "auth",
        kind: Kind::String,
        default: "\"none\"",
        help: "\"none\" (loopback only unless allow_unauthenticated), \"token\" or \"jwt\"",
    },
    KeySpec {
        section: "server",
        key: "allow_unauthenticated",
        kind: Kind::Boolean,
        default: "false",
        help: "allow auth = \"none\" on an address other than loopback",
    },
    KeySpec {
        section: "server",
        key: "token_file",
        kind: Kind::String,
        default: "\"\"",
        help: "auth = \"token\": file with the accepted bearer tokens, one per line",
    },
    KeySpec {
        section: "server",
        key: "jwt_public_key",
        kind: Kind::String,
        default: "\"\"",
        help: "auth = \"jwt\": base64 Ed25519 public key, as cc-backend's JWT_PUBLIC_KEY",
    },
    KeySpec {
        section: "server",
        key: "public_probes",
        kind: Kind::Boolean,
        default: "true",
        help: "serve /metrics, /healthz and /readyz without authentication",
    },
    KeySpec {
        section: "store",
        key: "path",
        kind: Kind::String,
        default: "\"var/store\"",
        help: "folder of the durable queue (sled); relative paths start at the config file's folder",
    },
    KeySpec {
        section: "store",
        key: "cache_bytes",
        kind: Kind::Integer,
        default: "67108864",
        help: "size of the store's page cache in bytes",
    },
    KeySpec {
        section: "store",
        key: "durability",
        kind: Kind::String,
        default: "\"fsync\"",
        help: "\"fsync\": a 202 means the job is on disk; \"os\": skips the disk sync, for benchmarks only",
    },
    KeySpec {
        section: "store",
        key: "max_queued_jobs",
        kind: Kind::Integer,
        default: "1000000",
        help: "most queued jobs; triggers beyond it get 429 with Retry-After and store nothing",
    },
    KeySpec {
        section: "store",
        key: "min_free_bytes",
        kind: Kind::Integer,
        default: "1073741824",
        help: "free space the store's filesystem keeps; below it triggers get 507 with Retry-After",
    },
    KeySpec {
        section: "archive",
        key: "path",
        kind: Kind::String,
        default: "\"var/job-archive\"",
        help: "root of the job-archive that jobs are written to; contains {cluster}/cluster.json",
    },
    KeySpec {
        section: "archive",
        key: "compress_threshold_bytes",
        kind: Kind::Integer,
        default: "2000",
        help: "data.json larger than this many bytes is written as data.json.gz",
    },
    KeySpec {
        section: "worker",
        key: "core_scope_max_nodes",
        kind: Kind::Integer,
        default: "8",
        help: "jobs on at most this many nodes are also archived at core scope",
    },
    KeySpec {
        section: "worker",
        key: "resolution",
        kind: Kind::Integer,
        default: "0",
        help: "seconds between archived samples; 0 keeps the metric source's native resolution",
    },
    KeySpec {
        section: "worker",
        key: "shutdown_timeout",
        kind: Kind::Duration,
        default: "\"30s\"",
        help: "how long shutdown waits for the current job before it leaves the job queued",
    },
    KeySpec {
        section: "worker",
        key: "job_timeout",
        kind: Kind::Duration,
        default: "\"10min\"",
        help: "deadline of one attempt to archive a job; a job past it counts as a transient failure",
    },
    KeySpec {
        section: "retry",
        key: "max_attempts",
        kind: Kind::Integer,
        default: "5",
        help: "attempts per job before a transient failure marks it failed",
    },
    KeySpec {
        section: "retry",
        key: "initial_backoff",
        kind: Kind::Duration,
        default: "\"10s\"",
        help: "wait before the second attempt; it doubles per attempt, with jitter",
    },
    KeySpec {
        section: "retry",
        key: "max_backoff",
        kind: Kind::Duration,
        default: "\"10min\"",
        help: "maximum wait between attempts",
    },
    KeySpec {
        section: "metric_source",
        key: "kind",
        kind: Kind::String,
        default: "\"archive\"",
        help: "\"archive\" replays data.json from another job-archive; \"cc-metric-store\" queries a metric store",
    },
    KeySpec {
        section: "metric_source",
        key: "path",
        kind: Kind::String,
        default: "\"examples/archive\"",
        help: "kind = \"archive\": root of the job-archive to replay",
    },
    KeySpec {
        section: "metric_source",
        key: "url",
        kind: Kind::String,
        default: "\"http://127.0.0.1:8082\"",
        help: "kind = \"cc-metric-store\": base URL; requests go to {url}/api/query",
    },
    KeySpec {
        section: "metric_source",
        key: "token_file",
        kind: Kind::String,
        default: "\"\"",
        help: "kind = \"cc-metric-store\": file holding the bearer token (JWT); empty sends none",
    },
    KeySpec {
        section: "metric_source",
        key: "timeout",
        kind: Kind::Duration,
        default: "\"10s\"",
        help: "kind = \"cc-metric-store\": timeout of one query request",
    },
    KeySpec {
        section: "client",
        key: "token_file",
        kind: Kind::String,
        default: "\"\"",
        help: "file with the bearer token that CLI commands send to the server; empty sends none",
    },
    KeySpec {
        section: "log",
        key: "format",
        kind: Kind::String,
        default: "\"text\"",
        help: "log line format: \"text\" or \"json\"; the level comes from RUST_LOG (default info)",
    },
];

/// The validated configuration. Paths are absolute or relative to the working folder.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub server: ServerConfig,
    pub store: StoreConfig,
    pub archive: ArchiveConfig,
    pub worker: WorkerConfig,
    pub retry: RetryConfig,
    pub metric_source: MetricSourceConfig,
    pub client: ClientConfig,
    pub log: LogConfig,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// Base URL for CLI requests, without a trailing slash.
    pub url: String,
    pub max_body_bytes: usize,
    pub max_batch_jobs: usize,
    pub header_read_timeout: Duration,
    pub request_timeout: Duration,
    pub auth: AuthConfig,
    /// Serve `/metrics`, `/healthz` and `/readyz` without authentication.
    pub public_probes: bool,
}

/// How the API authenticates requests.
#[derive(Debug, Clone, PartialEq)]
pub enum AuthConfig {
    /// No authentication. Validation allows it only on a loopback address, unless
    /// `allow_unauthenticated` is set.
    None,
    /// Bearer tokens, one per line of this file.
    Token { file: PathBuf },
    /// Ed25519-signed JWTs checked with this base64 public key.
    Jwt { public_key: String },
}

#[derive(Debug, Clone, PartialEq)]
pub struct StoreConfig {
    pub path: PathBuf,
    pub cache_bytes: u64,
    pub durability: Durability,
    pub max_queued_jobs: u64,
    pub min_free_bytes: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ArchiveConfig {
    pub path: PathBuf,
    pub compress_threshold_bytes: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct WorkerConfig {
    pub core_scope_max_nodes: u32,
    pub resolution: u32,
    pub shutdown_timeout: Duration,
    pub job_timeout: Duration,
}

/// Retries of transient failures, with exponential backoff and jitter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryConfig {
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ClientConfig {
    /// File with the bearer token the CLI sends, if any.
    pub token_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum MetricSourceConfig {
    Archive { path: PathBuf },
    CcMetricStore { url: String, token_file: Option<PathBuf>, timeout: Duration },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LogConfig {
    pub format: LogFormat,
}

/// A configuration that cannot be used. Lists every problem found.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("invalid configuration:\n  {}", .0.join("\n  "))]
    Invalid(Vec<String>),
}

/// Where config values come from, besides the defaults.
pub struct Sources<'a> {
    /// The config file, if any. A missing file named here is an error.
    pub file: Option<&'a Path>,
    /// Reads an environment variable.
    pub env: &'a dyn Fn(&str) -> Option<String>,
    /// Command-line overrides as (`section.key`, value) pairs, parsed like environment values.
    pub flags: &'a [(&'static str, String)],
}

/// Merges defaults, file, environment and flags, then validates the result.
pub fn load(sources: &Sources<'_>) -> Result<Config, ConfigError> {
    let mut problems = Vec::new();
    let mut values: Values = BTreeMap::new();
    for spec in KEYS {
        let default = parse_toml_value(spec.default).expect("every default in KEYS is valid TOML");
        values.insert((spec.section, spec.key), (default, "default".to_owned()));
    }

    let base_dir = match sources.file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
            merge_file(&text, path, &mut values, &mut problems);
            path.parent().map(Path::to_path_buf).unwrap_or_default()
        }
        None => PathBuf::new(),
    };

    for spec in KEYS {
        let var = spec.env_var();
        if let Some(raw) = (sources.env)(&var) {
            match parse_override(spec, &raw) {
                Ok(value) => {
                    values.insert((spec.section, spec.key), (value, var));
                }
                Err(problem) => problems.push(format!("{var}={raw:?}: {problem}")),
            }
        }
    }
    for (name, raw) in sources.flags {
        let Some(spec) = KEYS.iter().find(|spec| format!("{}.{}", spec.section, spec.key) == *name)
        else {
            problems.push(format!("flag for unknown key {name}"));
            continue;
        };
        match parse_override(spec, raw) {
            Ok(value) => {
                values.insert((spec.section, spec.key), (value, format!("flag {name}")));
            }
            Err(problem) => problems.push(format!("flag {name}={raw:?}: {problem}")),
        }
    }

    let config = validate(&values, &base_dir, &mut problems);
    if problems.is_empty() {
        Ok(config.expect("validation returns a config when it found no problem"))
    } else {
        Err(ConfigError::Invalid(problems))
    }
}

type Values = BTreeMap<(&'static str, &'static str), (toml::Value, String)>;

fn merge_file(text: &str, path: &Path, values: &mut Values, problems: &mut Vec<String>) {
    let table: toml::Table = match text.parse() {
        Ok(table) => table,
        Err(err) => {
            problems.push(format!("{}: invalid TOML: {}", path.display(), err.message()));
            return;
        }
    };
    for (section, body) in table {
        let Some(body) = body.as_table() else {
            problems.push(format!("{}: [{section}] must be a table", path.display()));
            continue;
        };
        for (key, value) in body {
            let Some(spec) = KEYS.iter().find(|spec| spec.section == section && spec.key == key)
            else {
                problems.push(format!("{}: unknown key {section}.{key}", path.display()));
                continue;
            };
            if let Err(problem) = check_kind(spec, value) {
                problems.push(format!("{}: {section}.{key}: {problem}", path.display()));
                continue;
            }
            values.insert((spec.section, spec.key), (value.clone(), path.display().to_string()));
        }
    }
}

fn parse_toml_value(text: &str) -> Result<toml::Value, String> {
    let table: toml::Table =
        format!("v = {text}").parse().map_err(|err: toml::de::Error| err.message().to_owned())?;
    table.get("v").cloned().ok_or_else(|| "no value".to_owned())
}

/// Parses an environment or flag value by the key's kind.
fn parse_override(spec: &KeySpec, raw: &str) -> Result<toml::Value, String> {
    match spec.kind {
        Kind::String | Kind::Duration => Ok(toml::Value::String(raw.to_owned())),
        Kind::Integer => raw
            .trim()
            .parse::<i64>()
            .map(toml::Value::Integer)
            .map_err(|_| "expected an integer".to_owned()),
        Kind::Boolean => match raw.trim() {
            "true" | "1" => Ok(toml::Value::Boolean(true)),
            "false" | "0" => Ok(toml::Value::Boolean(false)),
            _ => Err("expected true or false".to_owned()),
        },
    }
}

fn check_kind(spec: &KeySpec, value: &toml::Value) -> Result<(), String> {
    let ok = match spec.kind {
        Kind::String | Kind::Duration => value.is_str(),
        Kind::Integer => value.is_integer(),
        Kind::Boolean => value.is_bool(),
    };
    if ok {
        return Ok(());
    }
    let expected = match spec.kind {
        Kind::String => "a string",
        Kind::Duration => "a duration string such as \"30s\"",
        Kind::Integer => "an integer",
        Kind::Boolean => "true or false",
    };
    Err(format!("expected {expected}, got {}", value.type_str()))
}

/// Typed reads of merged values. Each failed read records a problem that names the key and
/// where its value came from.
struct Reader<'a> {
    values: &'a Values,
    problems: &'a mut Vec<String>,
}

impl Reader<'_> {
    fn raw(&self, section: &'static str, key: &'static str) -> &(toml::Value, String) {
        self.values.get(&(section, key)).expect("every key in KEYS has a default")
    }

    fn problem(&mut self, section: &'static str, key: &'static str, message: String) {
        let origin = &self.raw(section, key).1;
        self.problems.push(format!("{section}.{key} (from {origin}): {message}"));
    }

    fn string(&mut self, section: &'static str, key: &'static str) -> String {
        match &self.raw(section, key).0 {
            toml::Value::String(s) => s.clone(),
            other => {
                let message = format!("expected a string, got {}", other.type_str());
                self.problem(section, key, message);
                String::new()
            }
        }
    }

    fn integer(&mut self, section: &'static str, key: &'static str, min: i64, max: i64) -> i64 {
        match &self.raw(section, key).0 {
            toml::Value::Integer(n) if (min..=max).contains(n) => *n,
            toml::Value::Integer(n) => {
                self.problem(section, key, format!("{n} is out of range {min}..={max}"));
                min
            }
            other => {
                let message = format!("expected an integer, got {}", other.type_str());
                self.problem(section, key, message);
                min
            }
        }
    }

    fn boolean(&mut self, section: &'static str, key: &'static str) -> bool {
        match &self.raw(section, key).0 {
            toml::Value::Boolean(value) => *value,
            other => {
                let message = format!("expected true or false, got {}", other.type_str());
                self.problem(section, key, message);
                false
            }
        }
    }

    fn optional_path(
        &mut self,
        section: &'static str,
        key: &'static str,
        base_dir: &Path,
    ) -> Option<PathBuf> {
        let text = self.string(section, key);
        (!text.is_empty()).then(|| resolve(base_dir, &text))
    }

    fn duration(&mut self, section: &'static str, key: &'static str) -> Duration {
        let text = self.string(section, key);
        match humantime::parse_duration(&text) {
            Ok(duration) if !duration.is_zero() => duration,
            Ok(_) => {
                self.problem(section, key, "must be longer than zero".to_owned());
                Duration::from_secs(1)
            }
            Err(err) => {
                let message =
                    format!("{text:?} is not a duration ({err}); write for example \"30s\"");
                self.problem(section, key, message);
                Duration::from_secs(1)
            }
        }
    }

    fn path(&mut self, section: &'static str, key: &'static str, base_dir: &Path) -> PathBuf {
        let text = self.string(section, key);
        if text.is_empty() {
            self.problem(section, key, "must not be empty".to_owned());
        }
        resolve(base_dir, &text)
    }
}

fn resolve(base_dir: &Path, text: &str) -> PathBuf {
    let path = PathBuf::from(text);
    if path.is_absolute() || base_dir.as_os_str().is_empty() {
        path
    } else {
        base_dir.join(path)
    }
}

fn validate(values: &Values, base_dir: &Path, problems: &mut Vec<String>) -> Option<Config> {
    let mut read = Reader { values, problems };

    let listen_text = read.string("server", "listen");
    let listen = match listen_text.parse::<SocketAddr>() {
        Ok(addr) => addr,
        Err(_) => {
            let message =
                format!("{listen_text:?} is not an address; write for example \"127.0.0.1:8080\"");
            read.problem("server", "listen", message);
            SocketAddr::from(([127, 0, 0, 1], 8080))
        }
    };
    let mut url = read.string("server", "url");
    if url.is_empty() {
        url = format!("http://{listen}");
    } else if reqwest::Url::parse(&url).is_err() {
        read.problem("server", "url", format!("{url:?} is not a URL"));
    }
    let url = url.trim_end_matches('/').to_owned();
    let max_body_bytes = read.integer("server", "max_body_bytes", 1024, 1 << 32) as usize;
    let max_batch_jobs = read.integer("server", "max_batch_jobs", 1, 1 << 24) as usize;
    let header_read_timeout = read.duration("server", "header_read_timeout");
    let request_timeout = read.duration("server", "request_timeout");
    let allow_unauthenticated = read.boolean("server", "allow_unauthenticated");
    let public_probes = read.boolean("server", "public_probes");
    let auth = match read.string("server", "auth").as_str() {
        "none" => {
            if !listen.ip().is_loopback() && !allow_unauthenticated {
                let message = format!(
                    "\"none\" is allowed only on a loopback address, but server.listen is {listen}; \
                     set auth = \"token\" or \"jwt\", or allow_unauthenticated = true"
                );
                read.problem("server", "auth", message);
            }
            AuthConfig::None
        }
        "token" => match read.optional_path("server", "token_file", base_dir) {
            Some(file) => AuthConfig::Token { file },
            None => {
                read.problem(
                    "server",
                    "token_file",
                    "auth = \"token\" needs a token file".to_owned(),
                );
                AuthConfig::None
            }
        },
        "jwt" => {
            let public_key = read.string("server", "jwt_public_key");
            if public_key.is_empty() {
                read.problem(
                    "server",
                    "jwt_public_key",
                    "auth = \"jwt\" needs the Ed25519 public key".to_owned(),
                );
            } else if let Err(err) = crate::auth::decode_public_key(&public_key) {
                read.problem("server", "jwt_public_key", err);
            }
            AuthConfig::Jwt { public_key }
        }
        other => {
            read.problem(
                "server",
                "auth",
                format!("{other:?} is not \"none\", \"token\" or \"jwt\""),
            );
            AuthConfig::None
        }
    };

    let store_path = read.path("store", "path", base_dir);
    let cache_bytes = read.integer("store", "cache_bytes", 1 << 20, 1 << 40) as u64;
    let durability = match read.string("store", "durability").as_str() {
        "fsync" => Durability::Fsync,
        "os" => Durability::OsBuffers,
        other => {
            read.problem("store", "durability", format!("{other:?} is not \"fsync\" or \"os\""));
            Durability::Fsync
        }
    };

    let max_queued_jobs = read.integer("store", "max_queued_jobs", 1, i64::MAX) as u64;
    let min_free_bytes = read.integer("store", "min_free_bytes", 0, i64::MAX) as u64;

    let archive_path = read.path("archive", "path", base_dir);
    let compress_threshold_bytes =
        read.integer("archive", "compress_threshold_bytes", 0, 1 << 40) as usize;

    let core_scope_max_nodes = read.integer("worker", "core_scope_max_nodes", 0, 1 << 20) as u32;
    let resolution = read.integer("worker", "resolution", 0, 86_400) as u32;
    let shutdown_timeout = read.duration("worker", "shutdown_timeout");
    let job_timeout = read.duration("worker", "job_timeout");
    let max_attempts = read.integer("retry", "max_attempts", 1, 1000) as u32;
    let initial_backoff = read.duration("retry", "initial_backoff");
    let max_backoff = read.duration("retry", "max_backoff");
    if max_backoff < initial_backoff {
        read.problem(
            "retry",
            "max_backoff",
            "must not be shorter than retry.initial_backoff".to_owned(),
        );
    }

    let metric_source = match read.string("metric_source", "kind").as_str() {
        "archive" => {
            MetricSourceConfig::Archive { path: read.path("metric_source", "path", base_dir) }
        }
        "cc-metric-store" => {
            let url = read.string("metric_source", "url");
            match reqwest::Url::parse(&url) {
                Ok(parsed) if matches!(parsed.scheme(), "http" | "https") => (),
                _ => read.problem("metric_source", "url", format!("{url:?} is not an http(s) URL")),
            }
            let token_file = read.optional_path("metric_source", "token_file", base_dir);
            let timeout = read.duration("metric_source", "timeout");
            MetricSourceConfig::CcMetricStore {
                url: url.trim_end_matches('/').to_owned(),
                token_file,
                timeout,
            }
        }
        other => {
            let message = format!("{other:?} is not \"archive\" or \"cc-metric-store\"");
            read.problem("metric_source", "kind", message);
            MetricSourceConfig::Archive { path: PathBuf::new() }
        }
    };

    let format = match read.string("log", "format").as_str() {
        "text" => LogFormat::Text,
        "json" => LogFormat::Json,
        other => {
            read.problem("log", "format", format!("{other:?} is not \"text\" or \"json\""));
            LogFormat::Text
        }
    };

    let client = ClientConfig { token_file: read.optional_path("client", "token_file", base_dir) };

    Some(Config {
        server: ServerConfig {
            listen,
            url,
            max_body_bytes,
            max_batch_jobs,
            header_read_timeout,
            request_timeout,
            auth,
            public_probes,
        },
        store: StoreConfig {
            path: store_path,
            cache_bytes,
            durability,
            max_queued_jobs,
            min_free_bytes,
        },
        archive: ArchiveConfig { path: archive_path, compress_threshold_bytes },
        worker: WorkerConfig { core_scope_max_nodes, resolution, shutdown_timeout, job_timeout },
        retry: RetryConfig { max_attempts, initial_backoff, max_backoff },
        metric_source,
        client,
        log: LogConfig { format },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn defaults_are_valid() {
        let config = load(&Sources { file: None, env: &no_env, flags: &[] }).unwrap();
        assert_eq!(config.server.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(config.server.url, "http://127.0.0.1:8080");
        assert_eq!(config.archive.compress_threshold_bytes, 2000);
        assert_eq!(config.worker.shutdown_timeout, Duration::from_secs(30));
    }

    #[test]
    fn flag_beats_env_beats_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.toml");
        std::fs::write(
            &file,
            "[worker]\ncore_scope_max_nodes = 2\nresolution = 60\n[store]\npath = \"s\"\n",
        )
        .unwrap();
        let env = |name: &str| match name {
            "JOB_ARCHIVER_WORKER_CORE_SCOPE_MAX_NODES" => Some("3".to_owned()),
            "JOB_ARCHIVER_WORKER_RESOLUTION" => Some("120".to_owned()),
            _ => None,
        };
        let flags = [("worker.resolution", "30".to_owned())];
        let config = load(&Sources { file: Some(&file), env: &env, flags: &flags }).unwrap();
        assert_eq!(config.worker.core_scope_max_nodes, 3, "env beats file");
        assert_eq!(config.worker.resolution, 30, "flag beats env");
        assert_eq!(config.store.path, dir.path().join("s"), "relative to the config file");
    }

    #[test]
    fn every_problem_is_listed() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.toml");
        std::fs::write(
            &file,
            "[server]\nlisten = \"nowhere\"\nbogus = 1\n[worker]\nshutdown_timeout = \"soon\"\n\
             [metric_source]\nkind = \"magic\"\n",
        )
        .unwrap();
        let env =
            |name: &str| (name == "JOB_ARCHIVER_STORE_CACHE_BYTES").then(|| "lots".to_owned());
        let err = load(&Sources { file: Some(&file), env: &env, flags: &[] }).unwrap_err();
        let ConfigError::Invalid(problems) = err else { panic!("expected Invalid, got {err}") };
        let text = problems.join("\n");
        for needle in [
            "server.bogus",
            "server.listen",
            "shutdown_timeout",
            "metric_source.kind",
            "JOB_ARCHIVER_STORE_CACHE_BYTES",
        ] {
            assert!(text.contains(needle), "problem list lacks {needle}:\n{text}");
        }
    }

    #[test]
    fn shipped_config_shows_every_key_with_its_default() {
        let text = include_str!("../config.toml");
        let table: toml::Table = text.parse().expect("config.toml is valid TOML");
        for spec in KEYS {
            let value = table
                .get(spec.section)
                .and_then(|section| section.get(spec.key))
                .unwrap_or_else(|| panic!("config.toml lacks {}.{}", spec.section, spec.key));
            let default = parse_toml_value(spec.default).unwrap();
            assert_eq!(value, &default, "config.toml value of {}.{}", spec.section, spec.key);
        }
        let keys: usize =
            table.values().filter_map(|section| section.as_table()).map(|t| t.len()).sum();
        assert_eq!(keys, KEYS.len(), "config.toml has keys that KEYS does not declare");
    }
}
