//! Which scopes to archive for a job, and the cc-metric-store queries that follow from them.
