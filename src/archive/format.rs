//! Encoding and decoding of the job-archive files `meta.json` and `data.json`, byte-compatible
//! with the way ClusterCockpit writes them.
