//! The filesystem job-archive: `{root}/{cluster}/{jobId/1000}/{jobId%1000:03}/{startTime}/`,
//! written atomically.
//!
//! The layout and `version.txt` are ClusterCockpit's (job-archive version 3), so cc-backend can
//! read what this service writes. Unlike cc-backend, a job folder is built under a temporary name
//! and renamed into place, so no reader ever sees half of a job.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Component, Path, PathBuf};

use crate::archive::{ArchiveError, ArchiveWriter, JobFiles, WrittenJob};
use crate::job::{check_cluster_name, JobId};

/// The job-archive format version this service reads and writes.
pub const ARCHIVE_VERSION: &str = "3";

/// A job-archive in a local folder.
#[derive(Debug, Clone)]
pub struct FsArchive {
    root: PathBuf,
    /// Set once the root has been checked (or made) by [`FsArchive::ensure_root`].
    root_checked: std::sync::OnceLock<()>,
}

impl FsArchive {
    /// Opens the archive at `root`, creating the folder when it is missing.
    ///
    /// A root that is empty, or contains only names starting with `.`, becomes a new archive:
    /// `version.txt` with `3` is written atomically and durably. Otherwise `version.txt` must
    /// exist and contain `3` (a trailing newline is allowed).
    ///
    /// Errors: [`ArchiveError::UnsupportedVersion`] for another version, and
    /// [`ArchiveError::Io`] when the folder cannot be created or read, or when it is a
    /// non-empty folder without `version.txt`, which is not a job-archive.
    pub fn open(root: &Path) -> Result<FsArchive, ArchiveError> {
        let archive = FsArchive::new(root);
        archive.ensure_root()?;
        Ok(archive)
    }

    /// An archive at `root` that is checked at the first write instead of now, for a root
    /// that is not usable yet (an unmounted network filesystem, say): the service starts, and
    /// each write tries again until the root works.
    pub fn new(root: &Path) -> FsArchive {
        FsArchive { root: root.to_path_buf(), root_checked: std::sync::OnceLock::new() }
    }

    /// Checks the root as [`FsArchive::open`] describes, once it has succeeded.
    pub fn ensure_root(&self) -> Result<(), ArchiveError> {
        if self.root_checked.get().is_some() {
            return Ok(());
        }
        let root = self.root.as_path();
        fs::create_dir_all(root).map_err(io_error(root))?;
        let version_path = root.join("version.txt");
        match fs::read(&version_path) {
            Ok(bytes) => {
                let text = String::from_utf8_lossy(&bytes);
                let found = text.strip_suffix('\n').unwrap_or(&text);
                if found != ARCHIVE_VERSION {
                    return Err(ArchiveError::UnsupportedVersion {
                        path: version_path,
                        found: found.to_owned(),
                    });
                }
            }
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                if !holds_only_dot_entries(root)? {
                    let problem = "missing, and the folder is not empty, so it is not a \
                                   job-archive: use an empty folder or an existing job-archive \
                                   as the archive root";
                    return Err(ArchiveError::Io {
                        path: version_path,
                        source: io::Error::new(io::ErrorKind::NotFound, problem),
                    });
                }
                let content = format!("{ARCHIVE_VERSION}\n");
                write_file_durably(root, "version.txt", content.as_bytes())?;
            }
            Err(err) => return Err(ArchiveError::Io { path: version_path, source: err }),
        }
        let _ = self.root_checked.set(());
        Ok(())
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Returns the folder of a job: `{root}/{cluster}/{jobId/1000}/{jobId%1000:03}/{startTime}`.
    pub fn job_dir(&self, id: &JobId) -> PathBuf {
        job_dir_under(&self.root, id)
    }

    /// Returns the job folder after checking that it is a plain path below the root. The
    /// invariant of [`JobId`] already guarantees that, so the check guards against a future
    /// change of that invariant.
    fn checked_job_dir(&self, id: &JobId) -> Result<PathBuf, ArchiveError> {
        let path = self.job_dir(id);
        let plain = match path.strip_prefix(&self.root) {
            Ok(relative) => relative.components().all(|part| matches!(part, Component::Normal(_))),
            Err(_) => false,
        };
        debug_assert!(plain, "job folder {} escapes the archive root", path.display());
        if !plain {
            let problem = format!("job {id} does not map to a folder below the archive root");
            return Err(ArchiveError::Io {
                path,
                source: io::Error::new(io::ErrorKind::InvalidInput, problem),
            });
        }
        Ok(path)
    }
}

/// Returns the folder of a job in the archive at `root`:
/// `{root}/{cluster}/{jobId/1000}/{jobId%1000:03}/{startTime}`, for example
/// `emmy/1403/244/1608923076` for job 1403244 and `0/005/...` for job 5.
pub fn job_dir_under(root: &Path, id: &JobId) -> PathBuf {
    let job_id = id.job_id();
    root.join(id.cluster())
        .join((job_id / 1000).to_string())
        .join(format!("{:03}", job_id % 1000))
        .join(id.start_time().to_string())
}

impl ArchiveWriter for FsArchive {
    /// Reads `{root}/{cluster}/cluster.json`.
    ///
    /// Errors: [`ArchiveError::UnknownCluster`] when the file does not exist, and
    /// [`ArchiveError::Io`] when it cannot be read or the name is not a plain folder name.
    fn read_cluster_config(&self, cluster: &str) -> Result<Vec<u8>, ArchiveError> {
        let path = self.root.join(cluster).join("cluster.json");
        if let Err(err) = check_cluster_name(cluster) {
            let source = io::Error::new(io::ErrorKind::InvalidInput, err.to_string());
            return Err(ArchiveError::Io { path, source });
        }
        match fs::read(&path) {
            Ok(bytes) => Ok(bytes),
            Err(err)
                if matches!(err.kind(), io::ErrorKind::NotFound | io::ErrorKind::NotADirectory) =>
            {
                // A missing root (an unmounted filesystem, say) is an archive fault worth a
                // retry, not an unknown cluster.
                if let Err(root_err) = fs::metadata(&self.root) {
                    return Err(ArchiveError::Io { path: self.root.clone(), source: root_err });
                }
                // A root without any cluster.json is an empty mount point or a wrong path,
                // not a root that lacks this one cluster; that is worth a retry too.
                if !holds_any_cluster(&self.root) {
                    let problem = "the archive root holds no {cluster}/cluster.json at all; \
                                   check that it is mounted and that archive.path is right";
                    let source = io::Error::new(io::ErrorKind::NotFound, problem);
                    return Err(ArchiveError::Io { path: self.root.clone(), source });
                }
                Err(ArchiveError::UnknownCluster { cluster: cluster.to_owned(), path })
            }
            Err(err) => Err(ArchiveError::Io { path, source: err }),
        }
    }

    /// Writes a job folder atomically and durably, replacing any earlier output of the job.
    ///
    /// Steps, in the job's parent folder `{root}/{cluster}/{jobId/1000}/{jobId%1000:03}`:
    /// 1. Create the missing parent folders, syncing the folder above each new one.
    /// 2. Clean up after a crashed attempt: if `.{startTime}.old` exists but `{startTime}` does
    ///    not, rename it back; then remove `.{startTime}.tmp` and `.{startTime}.old`.
    /// 3. Write `meta.json` and `data.json` or `data.json.gz` into a new `.{startTime}.tmp`,
    ///    and sync both files and that folder.
    /// 4. Rename an existing `{startTime}` to `.{startTime}.old`, rename `.{startTime}.tmp` to
    ///    `{startTime}`, and sync the parent folder. From here on the new job is durable.
    /// 5. Remove `.{startTime}.old`. A failure here is only logged, because the job is written.
    ///
    /// A crash leaves one of these states, and each is harmless because the queue keeps the job
    /// in `archiving` until this function returns, so the job is written again after a restart
    /// and step 2 cleans up:
    /// - during steps 1 to 3: a partial `.{startTime}.tmp` beside the untouched earlier folder,
    ///   if any (a write that fails without a crash removes it at once);
    /// - between the two renames of step 4: no `{startTime}`, with the earlier job in
    ///   `.{startTime}.old` and the complete new one in `.{startTime}.tmp`;
    /// - before the parent is synced: after a power loss either the earlier or the new folder
    ///   under `{startTime}`, each complete;
    /// - during step 5: a leftover `.{startTime}.old`.
    ///
    /// A reader that lists every folder sees these leftovers unless it skips names starting with
    /// `.`. Two concurrent writes of the same job are not supported, because the temporary names
    /// are per job; the worker writes one job at a time.
    fn write_job(&self, id: &JobId, files: &JobFiles) -> Result<WrittenJob, ArchiveError> {
        self.ensure_root()?;
        let final_dir = self.checked_job_dir(id)?;
        let Some(parent) = final_dir.parent() else {
            let problem = format!("job {id} has no parent folder");
            let source = io::Error::new(io::ErrorKind::InvalidInput, problem);
            return Err(ArchiveError::Io { path: final_dir, source });
        };
        let start_time = id.start_time();
        let tmp_dir = parent.join(format!(".{start_time}.tmp"));
        let old_dir = parent.join(format!(".{start_time}.old"));

        // Step 1: the parent folders.
        create_dirs_durably(&self.root, parent)?;

        // Step 2: leftovers of a crashed attempt.
        let final_exists = path_exists(&final_dir)?;
        if !final_exists && path_exists(&old_dir)? {
            fs::rename(&old_dir, &final_dir).map_err(io_error(&old_dir))?;
        }
        remove_if_present(&tmp_dir)?;
        remove_if_present(&old_dir)?;

        // Step 3: the new folder under its temporary name. A failed write removes what it
        // wrote, so a full disk is not kept full by a partial job until the next attempt.
        fs::create_dir(&tmp_dir).map_err(io_error(&tmp_dir))?;
        let data_name = if files.data_gzipped { "data.json.gz" } else { "data.json" };
        let written = write_new_file(&tmp_dir.join("meta.json"), &files.meta_json)
            .and_then(|()| write_new_file(&tmp_dir.join(data_name), &files.data))
            .and_then(|()| sync_dir(&tmp_dir));
        if let Err(err) = written {
            if let Err(cleanup) = remove_if_present(&tmp_dir) {
                tracing::warn!(job = %id, error = %cleanup, "failed to remove the partial job folder");
            }
            return Err(err);
        }

        // Step 4: the swap.
        if path_exists(&final_dir)? {
            fs::rename(&final_dir, &old_dir).map_err(io_error(&final_dir))?;
        }
        fs::rename(&tmp_dir, &final_dir).map_err(io_error(&final_dir))?;
        sync_dir(parent)?;

        // Step 5: the earlier output.
        if let Err(err) = remove_if_present(&old_dir) {
            tracing::warn!(job = %id, error = %err, "failed to remove the earlier job folder");
        }

        let bytes = (files.meta_json.len() + files.data.len()) as u64;
        Ok(WrittenJob { path: final_dir, bytes })
    }
}

/// Returns true if and only if some folder of `root` holds a `cluster.json`.
fn holds_any_cluster(root: &Path) -> bool {
    let Ok(entries) = fs::read_dir(root) else {
        return false;
    };
    entries.flatten().any(|entry| entry.path().join("cluster.json").is_file())
}

/// Returns true if and only if every entry of `dir` has a name starting with `.`.
fn holds_only_dot_entries(dir: &Path) -> Result<bool, ArchiveError> {
    for entry in fs::read_dir(dir).map_err(io_error(dir))? {
        let entry = entry.map_err(io_error(dir))?;
        if !entry.file_name().as_encoded_bytes().starts_with(b".") {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Creates the folders from `root` down to `target`, syncing the folder above each folder it
/// creates so the new entry survives a crash. `target` must be below `root`, which exists.
fn create_dirs_durably(root: &Path, target: &Path) -> Result<(), ArchiveError> {
    let relative = target.strip_prefix(root).map_err(|_| ArchiveError::Io {
        path: target.to_path_buf(),
        source: io::Error::new(io::ErrorKind::InvalidInput, "not below the archive root"),
    })?;
    let mut current = root.to_path_buf();
    for part in relative.components() {
        let above = current.clone();
        current.push(part);
        match fs::create_dir(&current) {
            Ok(()) => sync_dir(&above)?,
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => (),
            Err(err) => return Err(ArchiveError::Io { path: current, source: err }),
        }
    }
    Ok(())
}

/// Writes `name` in `dir` through a temporary file, a sync, a rename and a sync of `dir`.
fn write_file_durably(dir: &Path, name: &str, content: &[u8]) -> Result<(), ArchiveError> {
    let tmp_path = dir.join(format!(".{name}.tmp"));
    let final_path = dir.join(name);
    remove_if_present(&tmp_path)?;
    write_new_file(&tmp_path, content)?;
    fs::rename(&tmp_path, &final_path).map_err(io_error(&final_path))?;
    sync_dir(dir)
}

/// Creates a file that must not exist yet, writes `content` and syncs it.
fn write_new_file(path: &Path, content: &[u8]) -> Result<(), ArchiveError> {
    let mut file =
        OpenOptions::new().write(true).create_new(true).open(path).map_err(io_error(path))?;
    file.write_all(content).map_err(io_error(path))?;
    file.sync_all().map_err(io_error(path))
}

/// Syncs a folder, so that entries created or renamed in it are on disk.
fn sync_dir(path: &Path) -> Result<(), ArchiveError> {
    File::open(path).and_then(|dir| dir.sync_all()).map_err(io_error(path))
}

fn path_exists(path: &Path) -> Result<bool, ArchiveError> {
    match fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(err) => Err(ArchiveError::Io { path: path.to_path_buf(), source: err }),
    }
}

/// Removes a file or a folder with its content; a missing path is not an error.
fn remove_if_present(path: &Path) -> Result<(), ArchiveError> {
    let metadata = match fs::symlink_metadata(path) {
        Ok(metadata) => metadata,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(ArchiveError::Io { path: path.to_path_buf(), source: err }),
    };
    let res = if metadata.is_dir() { fs::remove_dir_all(path) } else { fs::remove_file(path) };
    res.map_err(io_error(path))
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> ArchiveError + '_ {
    move |source| ArchiveError::Io { path: path.to_path_buf(), source }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(data: &[u8], gzipped: bool) -> JobFiles {
        JobFiles {
            meta_json: b"{\"jobId\":5}\n".to_vec(),
            data: data.to_vec(),
            data_gzipped: gzipped,
        }
    }

    fn names_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .expect("folder exists")
            .map(|entry| entry.expect("readable").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn fresh_root_gets_version_file() {
        let temp = tempfile::tempdir().expect("temp dir");
        let root = temp.path().join("new/archive");

        FsArchive::open(&root).expect("opens");

        assert_eq!(fs::read_to_string(root.join("version.txt")).expect("written"), "3\n");
        assert_eq!(names_in(&root), ["version.txt"]);
    }

    #[test]
    fn root_with_only_dot_entries_gets_version_file() {
        let temp = tempfile::tempdir().expect("temp dir");
        fs::write(temp.path().join(".keep"), b"").expect("writable");

        FsArchive::open(temp.path()).expect("opens");

        assert_eq!(fs::read_to_string(temp.path().join("version.txt")).expect("written"), "3\n");
    }

    #[test]
    fn existing_archive_opens() {
        let temp = tempfile::tempdir().expect("temp dir");
        fs::write(temp.path().join("version.txt"), b"3").expect("writable");
        fs::create_dir(temp.path().join("fritz")).expect("writable");

        let archive = FsArchive::open(temp.path()).expect("opens");

        assert_eq!(archive.root(), temp.path());
        assert_eq!(fs::read_to_string(temp.path().join("version.txt")).expect("kept"), "3");
    }

    #[test]
    fn wrong_version_is_rejected() {
        let temp = tempfile::tempdir().expect("temp dir");
        fs::write(temp.path().join("version.txt"), b"2\n").expect("writable");

        let err = FsArchive::open(temp.path()).expect_err("version 2");

        match &err {
            ArchiveError::UnsupportedVersion { found, .. } => assert_eq!(found, "2"),
            other => panic!("expected UnsupportedVersion, got {other:?}"),
        }
        assert!(err.to_string().contains("need 3"), "{err}");
    }

    #[test]
    fn non_empty_root_without_version_is_rejected() {
        let temp = tempfile::tempdir().expect("temp dir");
        fs::write(temp.path().join("notes.txt"), b"").expect("writable");

        let err = FsArchive::open(temp.path()).expect_err("not an archive");

        assert!(matches!(err, ArchiveError::Io { .. }), "{err:?}");
        assert!(err.to_string().contains("version.txt"), "{err}");
        assert!(!temp.path().join("version.txt").exists());
    }

    #[test]
    fn job_dir_layout() {
        let archive = FsArchive::new(Path::new("/archive"));
        let emmy = JobId::new("emmy", 1403244, 1608923076).expect("valid");
        let small = JobId::new("fritz", 5, 7).expect("valid");

        assert_eq!(archive.job_dir(&emmy), Path::new("/archive/emmy/1403/244/1608923076"));
        assert_eq!(archive.job_dir(&small), Path::new("/archive/fritz/0/005/7"));
    }

    #[test]
    fn write_creates_job_folder() {
        let temp = tempfile::tempdir().expect("temp dir");
        let archive = FsArchive::open(temp.path()).expect("opens");
        let id = JobId::new("fritz", 398764, 1675954353).expect("valid");

        let written = archive.write_job(&id, &files(b"{}\n", false)).expect("written");

        let dir = temp.path().join("fritz/398/764/1675954353");
        assert_eq!(written.path, dir);
        assert_eq!(written.bytes, 12 + 3);
        assert_eq!(names_in(&dir), ["data.json", "meta.json"]);
        assert_eq!(fs::read(dir.join("data.json")).expect("written"), b"{}\n");
        assert_eq!(names_in(dir.parent().expect("has parent")), ["1675954353"]);
    }

    #[test]
    fn rewrite_replaces_gz_with_plain() {
        let temp = tempfile::tempdir().expect("temp dir");
        let archive = FsArchive::open(temp.path()).expect("opens");
        let id = JobId::new("emmy", 1403244, 1608923076).expect("valid");
        archive.write_job(&id, &files(b"gzip bytes", true)).expect("first write");

        archive.write_job(&id, &files(b"{}\n", false)).expect("second write");

        let dir = archive.job_dir(&id);
        assert_eq!(names_in(&dir), ["data.json", "meta.json"]);
        assert_eq!(names_in(dir.parent().expect("has parent")), ["1608923076"]);
    }

    #[test]
    fn leftovers_of_crashed_attempt_are_cleaned() {
        let temp = tempfile::tempdir().expect("temp dir");
        let archive = FsArchive::open(temp.path()).expect("opens");
        let id = JobId::new("emmy", 1403244, 1608923076).expect("valid");
        let parent = archive.job_dir(&id).parent().expect("has parent").to_path_buf();
        fs::create_dir_all(parent.join(".1608923076.tmp")).expect("writable");
        fs::write(parent.join(".1608923076.tmp/meta.json"), b"{\"partial").expect("writable");
        fs::create_dir_all(parent.join(".1608923076.old")).expect("writable");
        fs::write(parent.join(".1608923076.old/data.json"), b"stale").expect("writable");

        archive.write_job(&id, &files(b"new", true)).expect("written");

        assert_eq!(names_in(&parent), ["1608923076"]);
        assert_eq!(names_in(&archive.job_dir(&id)), ["data.json.gz", "meta.json"]);
        assert_eq!(fs::read(archive.job_dir(&id).join("data.json.gz")).expect("written"), b"new");
    }

    #[test]
    fn crash_between_renames_is_recovered() {
        let temp = tempfile::tempdir().expect("temp dir");
        let archive = FsArchive::open(temp.path()).expect("opens");
        let id = JobId::new("emmy", 1403244, 1608923076).expect("valid");
        archive.write_job(&id, &files(b"first", true)).expect("first write");
        let final_dir = archive.job_dir(&id);
        let parent = final_dir.parent().expect("has parent").to_path_buf();
        fs::rename(&final_dir, parent.join(".1608923076.old")).expect("renamable");
        fs::create_dir(parent.join(".1608923076.tmp")).expect("writable");

        archive.write_job(&id, &files(b"{}\n", false)).expect("second write");

        assert_eq!(names_in(&parent), ["1608923076"]);
        assert_eq!(names_in(&final_dir), ["data.json", "meta.json"]);
    }

    #[test]
    fn unknown_cluster_is_reported() {
        let temp = tempfile::tempdir().expect("temp dir");
        let archive = FsArchive::open(temp.path()).expect("opens");
        fs::create_dir(temp.path().join("known")).unwrap();
        fs::write(temp.path().join("known/cluster.json"), b"{}").unwrap();

        let err = archive.read_cluster_config("nowhere").expect_err("no such cluster");

        match &err {
            ArchiveError::UnknownCluster { cluster, path } => {
                assert_eq!(cluster, "nowhere");
                assert_eq!(path, &temp.path().join("nowhere/cluster.json"));
            }
            other => panic!("expected UnknownCluster, got {other:?}"),
        }
        assert!(!err.is_transient());

        // A root without any cluster is an unmounted or wrong folder: a transient fault.
        fs::remove_dir_all(temp.path().join("known")).unwrap();
        let err = archive.read_cluster_config("nowhere").expect_err("no cluster at all");
        assert!(err.is_transient(), "an archive root without clusters: {err}");
    }

    #[test]
    fn cluster_config_is_read() {
        let temp = tempfile::tempdir().expect("temp dir");
        let archive = FsArchive::open(temp.path()).expect("opens");
        fs::create_dir(temp.path().join("fritz")).expect("writable");
        fs::write(temp.path().join("fritz/cluster.json"), b"{\"name\":\"fritz\"}").expect("ok");

        let bytes = archive.read_cluster_config("fritz").expect("readable");

        assert_eq!(bytes, b"{\"name\":\"fritz\"}");
        let err = archive.read_cluster_config("../fritz").expect_err("not a plain name");
        assert!(matches!(err, ArchiveError::Io { .. }), "{err:?}");
    }
}
