//! A metric source that queries ClusterCockpit's cc-metric-store over HTTP (`{url}/api/query`).
