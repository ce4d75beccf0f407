//! The filesystem job-archive: `{root}/{cluster}/{jobId/1000}/{jobId%1000:03}/{startTime}/`,
//! written atomically.
