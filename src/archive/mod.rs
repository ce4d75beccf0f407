//! Where archived jobs go. The worker sees only the [`ArchiveWriter`] trait; the filesystem
//! job-archive is the one implementation today, in [`fs`]. [`format`] encodes `meta.json` and
//! `data.json` the way ClusterCockpit writes them.

pub mod format;
pub mod fs;

use std::path::PathBuf;

use crate::job::JobId;

/// The encoded files of one job, ready to write.
#[derive(Debug, Clone)]
pub struct JobFiles {
    pub meta_json: Vec<u8>,
    /// `data.json`, or its gzip when `data_gzipped` is true.
    pub data: Vec<u8>,
    pub data_gzipped: bool,
}

/// Where a job was written and how many bytes it took.
#[derive(Debug, Clone, PartialEq)]
pub struct WrittenJob {
    /// The job's folder, `{root}/{cluster}/{jobId/1000}/{jobId%1000:03}/{startTime}`.
    pub path: PathBuf,
    /// Bytes of `meta.json` plus the data file.
    pub bytes: u64,
}

/// An archive operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The archive has no `{cluster}/cluster.json` for the job's cluster.
    #[error("unknown cluster {cluster:?}: {path} does not exist")]
    UnknownCluster { cluster: String, path: PathBuf },
    /// A file or folder of the archive could not be read or written.
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// The archive root holds a `version.txt` other than 3.
    #[error("{path}: unsupported job-archive version {found:?}, need 3")]
    UnsupportedVersion { path: PathBuf, found: String },
}

impl ArchiveError {
    /// Returns true if and only if retrying the same write may succeed: an I/O error such as a
    /// full or read-only disk, not an unknown cluster.
    pub fn is_transient(&self) -> bool {
        matches!(self, ArchiveError::Io { .. })
    }
}

/// A job-archive that jobs are written to.
///
/// Implementations are called from a blocking thread, never from the async runtime.
pub trait ArchiveWriter: Send + Sync {
    /// Reads the raw `{cluster}/cluster.json` of the archive.
    fn read_cluster_config(&self, cluster: &str) -> Result<Vec<u8>, ArchiveError>;

    /// Writes one job so that a reader, or a crash, sees either the complete previous state or
    /// the complete new job, never a mix. Output of an earlier attempt is replaced. When this
    /// returns, the files and the folder entry are on disk.
    fn write_job(&self, id: &JobId, files: &JobFiles) -> Result<WrittenJob, ArchiveError>;
}
