//! Statistics of a job's metric data: per series min, avg and max over the non-missing samples,
//! and per metric the job-level entry of `meta.json`'s `statistics`, computed as ClusterCockpit
//! computes it.
