//! Measurements of the machine and of a process: the disk's raw fsync latency, memory and CPU
//! time from `/proc`, folder sizes, and percentiles of latency samples.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::OnceLock;

use serde::Serialize;
use tokio::time::Instant;

/// Size of one raw fsync probe write, a typical small log append.
const PROBE_BYTES: usize = 4096;

/// Latency of 4 KiB writes each followed by fdatasync, in microseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct FsyncLatency {
    pub samples: usize,
    /// Appends at the end of the file, so each fdatasync also persists the new file size.
    pub append_p50_us: u64,
    pub append_p99_us: u64,
    /// Overwrites of the first 4 KiB, so the file size never changes.
    pub overwrite_p50_us: u64,
}

/// Measures `samples` appends and `samples` overwrites of 4 KiB with fdatasync, in a probe file
/// in `dir` that is removed afterwards. Blocks the calling thread.
pub fn measure_fsync(dir: &Path, samples: usize) -> std::io::Result<FsyncLatency> {
    let path = dir.join("fsync-probe");
    let result = fsync_samples(&path, samples);
    let _ = std::fs::remove_file(&path);
    let (mut append, mut overwrite) = result?;
    append.sort_unstable();
    overwrite.sort_unstable();
    Ok(FsyncLatency {
        samples,
        append_p50_us: percentile(&append, 50.0),
        append_p99_us: percentile(&append, 99.0),
        overwrite_p50_us: percentile(&overwrite, 50.0),
    })
}

/// Measures `samples` appends of 4 KiB with fdatasync in a probe file in `dir`, removed
/// afterwards, and returns the sorted latencies in microseconds. Blocks the calling thread.
pub fn fsync_append_samples(dir: &Path, samples: usize) -> std::io::Result<Vec<u64>> {
    let path = dir.join("fsync-probe");
    let result = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)
        .and_then(|mut file| append_latencies(&mut file, samples));
    let _ = std::fs::remove_file(&path);
    let mut latencies = result?;
    latencies.sort_unstable();
    Ok(latencies)
}

/// Appends `samples` blocks of 4 KiB to `file`, each followed by fdatasync, and returns each
/// latency in microseconds.
fn append_latencies(file: &mut File, samples: usize) -> std::io::Result<Vec<u64>> {
    let block = vec![0x5au8; PROBE_BYTES];
    let mut latencies = Vec::with_capacity(samples);
    for _ in 0..samples {
        let started = Instant::now();
        file.write_all(&block)?;
        file.sync_data()?;
        latencies.push(started.elapsed().as_micros() as u64);
    }
    Ok(latencies)
}

fn fsync_samples(path: &Path, samples: usize) -> std::io::Result<(Vec<u64>, Vec<u64>)> {
    let block = vec![0x5au8; PROBE_BYTES];
    let mut file = OpenOptions::new().create(true).truncate(true).write(true).open(path)?;
    let append = append_latencies(&mut file, samples)?;
    let mut overwrite = Vec::with_capacity(samples);
    for _ in 0..samples {
        let started = Instant::now();
        file.seek(SeekFrom::Start(0))?;
        file.write_all(&block)?;
        file.sync_data()?;
        overwrite.push(started.elapsed().as_micros() as u64);
    }
    Ok((append, overwrite))
}

/// Returns the value at percentile `p` (0 to 100) of sorted samples by the nearest-rank method,
/// or 0 for no samples.
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Reads a field of `/proc/<pid>/status` given in kB, such as `VmRSS` or `VmHWM`, in KiB.
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status
        .lines()
        .find(|line| line.starts_with(field) && line[field.len()..].starts_with(':'))?;
    line[field.len() + 1..].trim().trim_end_matches("kB").trim().parse().ok()
}

/// User plus system CPU time of a process so far, in seconds, from `/proc/<pid>/stat`.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name in field 2 may contain spaces, so count fields after its closing bracket.
    let after_name = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / clock_ticks_per_second())
}

/// Returns the kernel's clock tick rate for `/proc` times from `getconf CLK_TCK`, or 100 when
/// it cannot be read.
fn clock_ticks_per_second() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|output| String::from_utf8(output.stdout).ok())
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// Bytes of all files under `dir`: the sum of their lengths and the space allocated on disk.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct FolderSize {
    pub apparent_bytes: u64,
    pub allocated_bytes: u64,
}

pub fn folder_size(dir: &Path) -> FolderSize {
    let mut size = FolderSize::default();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return size;
    };
    for entry in entries.flatten() {
        let Ok(metadata) = entry.metadata() else { continue };
        if metadata.is_dir() {
            let inner = folder_size(&entry.path());
            size.apparent_bytes += inner.apparent_bytes;
            size.allocated_bytes += inner.allocated_bytes;
        } else {
            size.apparent_bytes += metadata.len();
            size.allocated_bytes += metadata.blocks() * 512;
        }
    }
    size
}

/// Opens `path` for reading to check that it exists; used for clear errors on missing inputs.
pub fn require_file(path: &Path) -> anyhow::Result<()> {
    File::open(path).map(drop).map_err(|err| anyhow::format_err!("{}: {err}", path.display()))
}

pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}
