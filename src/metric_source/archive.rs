//! A metric source that replays a job's `data.json[.gz]` from another job-archive folder.
