//! Encoding and decoding of the job-archive files `meta.json` and `data.json`, byte-compatible
//! with the way ClusterCockpit writes them except for string escaping: strings are escaped as
//! standard JSON, where Go also escapes `<`, `>` and `&` and ClusterCockpit writes hostnames
//! unescaped.
//!
//! `data.json` is written by a hand-written encoder because it is the bulk of the work: the
//! 32-node, day-long emmy example job encodes to about 2.6 MB of compact JSON. It is read through
//! private serde types, which keeps the domain types in `job_data` free of serde.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{Read, Write};

use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;
use serde::de::{Deserializer, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Number, Value};

use crate::archive::JobFiles;
use crate::job::JobMeta;
use crate::job_data::{
    JobData, JobMetric, MetricScope, Series, SeriesStats, StatisticsSeries, Unit,
};
use crate::stats::{self, JobStatistic};

/// Size above which ClusterCockpit stores `data.json` gzipped as `data.json.gz`.
pub const CC_COMPRESS_THRESHOLD_BYTES: usize = 2000;

/// A `data.json` document that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid data.json: {0}")]
pub struct InvalidData(pub String);

/// Encodes a job's metric data as ClusterCockpit writes `data.json`.
///
/// The output is compact JSON with a trailing newline. Metric and scope names are sorted by
/// name, as Go sorts map keys. Each metric object has the keys `statisticsSeries` (only when
/// present), `unit`, `series` and `timestep`; each series has `hostname`, `id` (only when
/// present), `statistics` and `data`. Series statistics are printed with 2 decimals. A series
/// without statistics gets those of its data, and non-finite statistics are written as 0, as
/// ClusterCockpit's `SanitizeStats` does. Samples are rounded to `f32` and printed with 2
/// decimals; NaN and infinite samples are written as `null`. The `mean` of a
/// `statisticsSeries` is always `null`, because ClusterCockpit never computes it.
pub fn encode_data_json(data: &JobData) -> Vec<u8> {
    let n_values: usize = data
        .values()
        .flat_map(|scopes| scopes.values())
        .flat_map(|metric| metric.series.iter())
        .map(|series| series.data.len())
        .sum();
    // An estimate: most samples print as 4 to 7 characters plus a comma.
    let mut out = Vec::with_capacity(n_values * 8 + 4096);

    out.push(b'{');
    for (metric_idx, (name, scopes)) in data.iter().enumerate() {
        if metric_idx > 0 {
            out.push(b',');
        }
        write_json_str(&mut out, name);
        out.extend_from_slice(b":{");

        let mut sorted_scopes: Vec<(&MetricScope, &JobMetric)> = scopes.iter().collect();
        sorted_scopes.sort_by_key(|(scope, _)| scope.as_str());
        for (scope_idx, (scope, metric)) in sorted_scopes.into_iter().enumerate() {
            if scope_idx > 0 {
                out.push(b',');
            }
            write_json_str(&mut out, scope.as_str());
            out.push(b':');
            write_job_metric(&mut out, metric);
        }
        out.push(b'}');
    }
    out.extend_from_slice(b"}\n");
    out
}

/// Parses a `data.json` document.
///
/// Keys may come in any order, `null` samples become NaN, and `statistics` and
/// `statisticsSeries` may be missing. A scope name that is not a ClusterCockpit scope is an
/// error naming the metric and the scope.
pub fn parse_data_json(bytes: &[u8]) -> Result<JobData, InvalidData> {
    let document: BTreeMap<String, BTreeMap<String, JobMetricDto>> =
        serde_json::from_slice(bytes).map_err(|err| InvalidData(err.to_string()))?;

    let mut res = JobData::new();
    for (name, scopes) in document {
        let mut parsed_scopes = BTreeMap::new();
        for (scope_name, metric) in scopes {
            let scope = match scope_name.parse::<MetricScope>() {
                Ok(scope) => scope,
                Err(problem) => {
                    return Err(InvalidData(format!("metric {name:?}: {problem}")));
                }
            };
            parsed_scopes.insert(scope, metric.into_job_metric());
        }
        res.insert(name, parsed_scopes);
    }
    Ok(res)
}

/// Parses the content of a `data.json` file, or of a `data.json.gz` file when `gzipped`.
pub fn decode_data_file(bytes: &[u8], gzipped: bool) -> Result<JobData, InvalidData> {
    if !gzipped {
        return parse_data_json(bytes);
    }
    let mut json = Vec::with_capacity(bytes.len() * 8);
    if let Err(err) = GzDecoder::new(bytes).read_to_end(&mut json) {
        return Err(InvalidData(format!("gzip stream is corrupt: {err}")));
    }
    parse_data_json(&json)
}

/// Encodes a job's `meta.json`: the job object as the caller sent it, keys in their order, with
/// `statistics` replaced by the computed `statistics` (appended when the caller sent none).
///
/// `monitoringStatus` and every other field are written as given. Statistics that are not finite
/// are written as 0, so the output is always valid JSON. The output is compact with a trailing
/// newline.
pub fn encode_meta_json(job: &JobMeta, statistics: &BTreeMap<String, JobStatistic>) -> Vec<u8> {
    let mut statistics_json = Map::new();
    for (name, statistic) in statistics {
        let mut entry = Map::new();
        entry.insert("unit".to_owned(), unit_json(&statistic.unit));
        entry.insert("avg".to_owned(), Value::Number(number_json(statistic.avg)));
        entry.insert("min".to_owned(), Value::Number(number_json(statistic.min)));
        entry.insert("max".to_owned(), Value::Number(number_json(statistic.max)));
        statistics_json.insert(name.clone(), Value::Object(entry));
    }

    // The map keeps insertion order, and replacing an existing key keeps its position.
    let mut meta = job.raw.clone();
    meta.insert("statistics".to_owned(), Value::Object(statistics_json));
    let mut out = serde_json::to_vec(&meta)
        .expect("a JSON map with string keys and finite numbers always serializes");
    out.push(b'\n');
    out
}

/// Encodes both files of a job. `data.json` is gzipped when it is larger than
/// `compress_threshold_bytes`; ClusterCockpit uses [`CC_COMPRESS_THRESHOLD_BYTES`].
pub fn encode_job_files(
    job: &JobMeta,
    data: &JobData,
    statistics: &BTreeMap<String, JobStatistic>,
    compress_threshold_bytes: usize,
) -> JobFiles {
    let meta_json = encode_meta_json(job, statistics);
    let data_json = encode_data_json(data);
    if data_json.len() > compress_threshold_bytes {
        return JobFiles { meta_json, data: gzip(&data_json), data_gzipped: true };
    }
    JobFiles { meta_json, data: data_json, data_gzipped: false }
}

/// Compresses `bytes` with gzip at the default level (6), as Go's `gzip.NewWriter` does.
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::with_capacity(bytes.len() / 8), Compression::default());
    encoder.write_all(bytes).expect("writing to a Vec cannot fail");
    encoder.finish().expect("writing to a Vec cannot fail")
}

fn write_job_metric(out: &mut Vec<u8>, metric: &JobMetric) {
    out.push(b'{');
    if let Some(statistics_series) = &metric.statistics_series {
        out.extend_from_slice(b"\"statisticsSeries\":");
        write_statistics_series(out, statistics_series);
        out.push(b',');
    }
    out.extend_from_slice(b"\"unit\":");
    write_unit(out, &metric.unit);

    out.extend_from_slice(b",\"series\":[");
    for (series_idx, series) in metric.series.iter().enumerate() {
        if series_idx > 0 {
            out.push(b',');
        }
        write_series(out, series);
    }
    out.extend_from_slice(b"],\"timestep\":");
    out.extend_from_slice(metric.timestep.to_string().as_bytes());
    out.push(b'}');
}

fn write_statistics_series(out: &mut Vec<u8>, statistics_series: &StatisticsSeries) {
    out.push(b'{');
    if !statistics_series.percentiles.is_empty() {
        out.extend_from_slice(b"\"percentiles\":{");
        for (idx, (percentile, values)) in statistics_series.percentiles.iter().enumerate() {
            if idx > 0 {
                out.push(b',');
            }
            write_json_str(out, percentile);
            out.push(b':');
            write_values(out, values, false);
        }
        out.extend_from_slice(b"},");
    }
    out.extend_from_slice(b"\"mean\":null,\"median\":");
    write_values(out, &statistics_series.median, false);
    out.extend_from_slice(b",\"min\":");
    write_values(out, &statistics_series.min, false);
    out.extend_from_slice(b",\"max\":");
    write_values(out, &statistics_series.max, false);
    out.push(b'}');
}

fn write_unit(out: &mut Vec<u8>, unit: &Unit) {
    out.extend_from_slice(b"{\"base\":");
    write_json_str(out, &unit.base);
    match &unit.prefix {
        Some(prefix) if !prefix.is_empty() => {
            out.extend_from_slice(b",\"prefix\":");
            write_json_str(out, prefix);
        }
        _ => (),
    }
    out.push(b'}');
}

fn write_series(out: &mut Vec<u8>, series: &Series) {
    out.extend_from_slice(b"{\"hostname\":");
    write_json_str(out, &series.hostname);
    if let Some(id) = &series.id {
        out.extend_from_slice(b",\"id\":");
        write_json_str(out, id);
    }

    let statistics = match series.statistics {
        Some(reported) => reported,
        None => stats::series_stats(&series.data),
    };
    let all_finite =
        statistics.min.is_finite() && statistics.avg.is_finite() && statistics.max.is_finite();
    let statistics =
        if all_finite { statistics } else { SeriesStats { min: 0.0, avg: 0.0, max: 0.0 } };
    out.extend_from_slice(b",\"statistics\":{\"min\":");
    write_fixed2(out, statistics.min);
    out.extend_from_slice(b",\"avg\":");
    write_fixed2(out, statistics.avg);
    out.extend_from_slice(b",\"max\":");
    write_fixed2(out, statistics.max);

    out.extend_from_slice(b"},\"data\":");
    write_values(out, &series.data, true);
    out.push(b'}');
}

/// Writes a JSON array of samples with 2 decimals, `null` for NaN and infinite values. With
/// `as_f32`, each value is first rounded to `f32`, as ClusterCockpit's series encoder does.
fn write_values(out: &mut Vec<u8>, values: &[f64], as_f32: bool) {
    out.push(b'[');
    for (idx, &value) in values.iter().enumerate() {
        if idx > 0 {
            out.push(b',');
        }
        let value = if as_f32 { f64::from(value as f32) } else { value };
        if value.is_finite() {
            write_fixed2(out, value);
        } else {
            out.extend_from_slice(b"null");
        }
    }
    out.push(b']');
}

/// Writes a finite `value` exactly as `format!("{value:.2}")` and Go's `%.2f` do: the exact
/// binary value rounded to 2 decimals, ties to even, with a `-` for negative values and -0.
fn write_fixed2(out: &mut Vec<u8>, value: f64) {
    debug_assert!(value.is_finite(), "callers write non-finite values as null or 0");
    let magnitude = value.abs();
    let scaled = magnitude * 100.0;

    // `scaled` is off from the exact product by at most half an ulp, which is below
    // `scaled * 2^-53`. When it is further than twice that from a rounding boundary (x.5),
    // rounding it gives the same digits as rounding the exact value. Values near a boundary,
    // exact ties and large values take the slower standard formatting.
    let fraction = scaled - scaled.floor();
    let clear_of_tie = (fraction - 0.5).abs() > scaled * 2.3e-16;
    if scaled >= 1e15 || !clear_of_tie {
        out.extend_from_slice(format!("{value:.2}").as_bytes());
        return;
    }

    if value.is_sign_negative() {
        out.push(b'-');
    }
    let hundredths = scaled.round() as u64;
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    let mut rest = hundredths;
    // Write at least 3 digits so that values below 1 print as `0.xx`.
    while rest > 0 || digits.len() - start < 3 {
        start -= 1;
        digits[start] = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    let point = digits.len() - 2;
    out.extend_from_slice(&digits[start..point]);
    out.push(b'.');
    out.extend_from_slice(&digits[point..]);
}

/// Writes `text` as a JSON string with standard escaping.
fn write_json_str(out: &mut Vec<u8>, text: &str) {
    serde_json::to_writer(out, text).expect("writing a string to a Vec cannot fail");
}

fn unit_json(unit: &Unit) -> Value {
    let mut res = Map::new();
    res.insert("base".to_owned(), Value::String(unit.base.clone()));
    match &unit.prefix {
        Some(prefix) if !prefix.is_empty() => {
            res.insert("prefix".to_owned(), Value::String(prefix.clone()));
        }
        _ => (),
    }
    Value::Object(res)
}

/// Converts a statistic to a JSON number the way Go prints a `float64`: integral values without
/// a fraction (`6430`, `0`), others in their shortest form. Non-finite values become 0.
fn number_json(value: f64) -> Number {
    const MAX_EXACT_INTEGER: f64 = 9_007_199_254_740_992.0;
    if !value.is_finite() {
        return Number::from(0);
    }
    if value.fract() == 0.0 && value.abs() < MAX_EXACT_INTEGER {
        return Number::from(value as i64);
    }
    Number::from_f64(value).unwrap_or_else(|| Number::from(0))
}

/// A `data.json` metric at one scope, as read.
#[derive(Deserialize)]
struct JobMetricDto {
    unit: UnitDto,
    timestep: u32,
    series: Vec<SeriesDto>,
    #[serde(rename = "statisticsSeries", default)]
    statistics_series: Option<StatisticsSeriesDto>,
}

#[derive(Deserialize)]
struct UnitDto {
    #[serde(default)]
    base: String,
    #[serde(default)]
    prefix: Option<String>,
}

#[derive(Deserialize)]
struct SeriesDto {
    hostname: String,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    statistics: Option<SeriesStatsDto>,
    data: Samples,
}

#[derive(Deserialize)]
struct SeriesStatsDto {
    min: Option<f64>,
    avg: Option<f64>,
    max: Option<f64>,
}

/// `mean` is not read: ClusterCockpit writes it as `null`, and the archiver never writes it.
#[derive(Deserialize)]
struct StatisticsSeriesDto {
    #[serde(default)]
    min: Samples,
    #[serde(default)]
    median: Samples,
    #[serde(default)]
    max: Samples,
    #[serde(default)]
    percentiles: BTreeMap<String, Samples>,
}

/// A JSON array of numbers where `null` stands for a missing sample, read as NaN.
#[derive(Default)]
struct Samples(Vec<f64>);

impl<'de> Deserialize<'de> for Samples {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Samples, D::Error> {
        deserializer.deserialize_seq(SamplesVisitor)
    }
}

struct SamplesVisitor;

impl<'de> Visitor<'de> for SamplesVisitor {
    type Value = Samples;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of numbers or nulls")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Samples, A::Error> {
        let mut values = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(value) = seq.next_element::<Option<f64>>()? {
            values.push(value.unwrap_or(f64::NAN));
        }
        Ok(Samples(values))
    }
}

impl JobMetricDto {
    fn into_job_metric(self) -> JobMetric {
        let prefix = self.unit.prefix.filter(|prefix| !prefix.is_empty());
        JobMetric {
            unit: Unit { base: self.unit.base, prefix },
            timestep: self.timestep,
            series: self.series.into_iter().map(SeriesDto::into_series).collect(),
            statistics_series: self.statistics_series.map(|dto| StatisticsSeries {
                min: dto.min.0,
                median: dto.median.0,
                max: dto.max.0,
                percentiles: dto
                    .percentiles
                    .into_iter()
                    .map(|(percentile, values)| (percentile, values.0))
                    .collect(),
            }),
        }
    }
}

impl SeriesDto {
    fn into_series(self) -> Series {
        let nan_if_null = |value: Option<f64>| value.unwrap_or(f64::NAN);
        Series {
            hostname: self.hostname,
            id: self.id,
            statistics: self.statistics.map(|dto| SeriesStats {
                min: nan_if_null(dto.min),
                avg: nan_if_null(dto.avg),
                max: nan_if_null(dto.max),
            }),
            data: self.data.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const FRITZ_DATA: &str =
        concat!(env!("CARGO_MANIFEST_DIR"), "/examples/archive/fritz/398/764/1675954353/data.json");
    const FRITZ_META: &str =
        concat!(env!("CARGO_MANIFEST_DIR"), "/examples/jobs/fritz-398764-meta.json");

    fn fritz_data() -> JobData {
        let bytes = std::fs::read(FRITZ_DATA).expect("the fritz example is in the repository");
        parse_data_json(&bytes).expect("the fritz example parses")
    }

    fn fritz_job() -> JobMeta {
        let bytes = std::fs::read(FRITZ_META).expect("the fritz example is in the repository");
        JobMeta::from_json(serde_json::from_slice(&bytes).expect("valid JSON")).expect("valid job")
    }

    fn one_series(hostname: &str, data: Vec<f64>) -> JobData {
        let metric = JobMetric {
            unit: Unit { base: "W".to_owned(), prefix: None },
            timestep: 60,
            series: vec![Series {
                hostname: hostname.to_owned(),
                id: None,
                statistics: None,
                data,
            }],
            statistics_series: None,
        };
        let mut data = JobData::new();
        data.entry("power".to_owned()).or_default().insert(MetricScope::Node, metric);
        data
    }

    fn fixed2(value: f64) -> String {
        let mut out = Vec::new();
        write_fixed2(&mut out, value);
        String::from_utf8(out).expect("ASCII")
    }

    fn assert_close(left: f64, right: f64, what: &str) {
        let both_missing = left.is_nan() && right.is_nan();
        assert!(both_missing || (left - right).abs() <= 0.01, "{what}: {left} != {right}");
    }

    #[test]
    fn fritz_round_trip_within_rounding() {
        let original = fritz_data();
        let reparsed = parse_data_json(&encode_data_json(&original)).expect("own output parses");

        assert_eq!(original.len(), reparsed.len());
        for (name, scopes) in &original {
            for (scope, metric) in scopes {
                let again = &reparsed[name][scope];
                assert_eq!(metric.unit, again.unit, "{name} {scope}");
                assert_eq!(metric.timestep, again.timestep, "{name} {scope}");
                assert_eq!(metric.series.len(), again.series.len(), "{name} {scope}");
                for (series, series_again) in metric.series.iter().zip(&again.series) {
                    let what = format!("{name} {scope} {}/{:?}", series.hostname, series.id);
                    assert_eq!(series.hostname, series_again.hostname, "{what}");
                    assert_eq!(series.id, series_again.id, "{what}");
                    assert_eq!(series.data.len(), series_again.data.len(), "{what}");
                    for (value, value_again) in series.data.iter().zip(&series_again.data) {
                        assert_close(*value, *value_again, &what);
                    }
                    let stats = series.statistics.expect("the fritz series have statistics");
                    let stats_again = series_again.statistics.expect("statistics are written");
                    assert_close(stats.min, stats_again.min, &what);
                    assert_close(stats.avg, stats_again.avg, &what);
                    assert_close(stats.max, stats_again.max, &what);
                }
            }
        }
    }

    #[test]
    fn fritz_encoding_matches_file_values() {
        // ClusterCockpit wrote the fritz file with an older key order (`unit, timestep, series`),
        // so the documents are compared as JSON values rather than as bytes.
        let original = std::fs::read_to_string(FRITZ_DATA).expect("example is present");
        let encoded = String::from_utf8(encode_data_json(&fritz_data())).expect("UTF-8");
        let original_values: Value = serde_json::from_str(&original).expect("valid JSON");
        let encoded_values: Value = serde_json::from_str(&encoded).expect("valid JSON");
        assert_eq!(original_values, encoded_values);
    }

    #[test]
    fn data_json_shape() {
        let mut data = one_series("h1", vec![1.0, f64::NAN, 2.345]);
        let core_series = (0..2)
            .map(|core| Series {
                hostname: "h1".to_owned(),
                id: Some(core.to_string()),
                statistics: Some(SeriesStats { min: 1.0, avg: 1.5, max: 2.0 }),
                data: vec![1.0, 2.0],
            })
            .collect();
        let core = JobMetric {
            unit: Unit { base: "F/s".to_owned(), prefix: Some("G".to_owned()) },
            timestep: 30,
            series: core_series,
            statistics_series: Some(StatisticsSeries {
                min: vec![1.0, f64::NAN],
                median: vec![1.5, f64::NAN],
                max: vec![2.0, f64::NAN],
                percentiles: BTreeMap::new(),
            }),
        };
        data.entry("flops".to_owned()).or_default().insert(MetricScope::Core, core);

        let text = String::from_utf8(encode_data_json(&data)).expect("UTF-8");
        let expected = concat!(
            r#"{"flops":{"core":{"statisticsSeries":{"mean":null,"median":[1.50,null],"#,
            r#""min":[1.00,null],"max":[2.00,null]},"unit":{"base":"F/s","prefix":"G"},"#,
            r#""series":[{"hostname":"h1","id":"0","statistics":{"min":1.00,"avg":1.50,"#,
            r#""max":2.00},"data":[1.00,2.00]},{"hostname":"h1","id":"1","statistics":"#,
            r#"{"min":1.00,"avg":1.50,"max":2.00},"data":[1.00,2.00]}],"timestep":30}},"#,
            r#""power":{"node":{"unit":{"base":"W"},"series":[{"hostname":"h1","statistics":"#,
            r#"{"min":1.00,"avg":1.67,"max":2.35},"data":[1.00,null,2.35]}],"timestep":60}}}"#,
            "\n"
        );
        assert_eq!(text, expected);
    }

    #[test]
    fn scopes_are_sorted_by_name() {
        let mut data = one_series("h1", vec![1.0]);
        let node = data["power"][&MetricScope::Node].clone();
        let scopes = data.get_mut("power").expect("inserted above");
        scopes.insert(MetricScope::Socket, node.clone());
        scopes.insert(MetricScope::Core, node.clone());
        scopes.insert(MetricScope::Accelerator, node);

        let text = String::from_utf8(encode_data_json(&data)).expect("UTF-8");
        let positions: Vec<usize> = ["\"accelerator\"", "\"core\"", "\"node\"", "\"socket\""]
            .iter()
            .map(|key| text.find(key).expect("scope is written"))
            .collect();
        assert!(positions.windows(2).all(|pair| pair[0] < pair[1]), "{text}");
    }

    #[test]
    fn null_samples_are_preserved() {
        let bytes = br#"{"m":{"node":{"unit":{"base":""},"timestep":60,
            "series":[{"hostname":"h","data":[null,1.5,null]}]}}}"#;
        let data = parse_data_json(bytes).expect("valid");
        let series = &data["m"][&MetricScope::Node].series[0];
        assert!(series.statistics.is_none());
        assert!(series.data[0].is_nan());
        assert_eq!(series.data[1], 1.5);

        let text = String::from_utf8(encode_data_json(&data)).expect("UTF-8");
        assert!(text.contains(r#""data":[null,1.50,null]"#), "{text}");
        assert!(text.contains(r#""statistics":{"min":1.50,"avg":1.50,"max":1.50}"#), "{text}");
    }

    #[test]
    fn infinite_values_are_written_as_null() {
        let data = one_series("h", vec![f64::INFINITY, 1e300, f64::NEG_INFINITY, 1.0]);
        let text = String::from_utf8(encode_data_json(&data)).expect("UTF-8");
        assert!(text.contains(r#""data":[null,null,null,1.00]"#), "1e300 overflows f32: {text}");
        assert!(serde_json::from_str::<Value>(&text).is_ok(), "{text}");

        let mut data = one_series("h", vec![1.0]);
        let series = &mut data.get_mut("power").expect("present").get_mut(&MetricScope::Node);
        series.as_mut().expect("present").series[0].statistics =
            Some(SeriesStats { min: f64::NAN, avg: 1.0, max: f64::INFINITY });
        let text = String::from_utf8(encode_data_json(&data)).expect("UTF-8");
        assert!(text.contains(r#""statistics":{"min":0.00,"avg":0.00,"max":0.00}"#), "{text}");
    }

    #[test]
    fn strings_are_escaped() {
        let data = one_series("h\"1\n\\x", vec![1.0]);
        let text = String::from_utf8(encode_data_json(&data)).expect("UTF-8");
        assert!(text.contains(r#""hostname":"h\"1\n\\x""#), "{text}");
        let again = parse_data_json(text.as_bytes()).expect("valid JSON");
        assert_eq!(again["power"][&MetricScope::Node].series[0].hostname, "h\"1\n\\x");
    }

    #[test]
    fn unknown_scope_names_metric_and_scope() {
        let bytes = br#"{"clock":{"die":{"unit":{"base":"Hz"},"timestep":60,"series":[]}}}"#;
        let err = parse_data_json(bytes).expect_err("die is not a scope");
        assert!(err.0.contains("\"clock\""), "{err}");
        assert!(err.0.contains("\"die\""), "{err}");
    }

    #[test]
    fn keys_in_any_order_parse() {
        let bytes = br#"{"m":{"socket":{"series":[{"data":[2],"statistics":{"max":2,"avg":2,
            "min":2},"id":"1","hostname":"h"}],"timestep":10,"unit":{"prefix":"K","base":"B"}}}}"#;
        let data = parse_data_json(bytes).expect("valid");
        let metric = &data["m"][&MetricScope::Socket];
        assert_eq!(metric.unit, Unit { base: "B".to_owned(), prefix: Some("K".to_owned()) });
        assert_eq!(metric.timestep, 10);
        assert_eq!(metric.series[0].id.as_deref(), Some("1"));
        assert_eq!(metric.series[0].statistics, Some(SeriesStats { min: 2.0, avg: 2.0, max: 2.0 }));
    }

    #[test]
    fn malformed_data_json_is_rejected() {
        for bytes in [&b"[]"[..], b"{\"m\":{\"node\":{}}}", b"{\"m\":", b"{\"m\":{\"node\":{\"unit\":{},\"timestep\":1,\"series\":[{\"hostname\":\"h\",\"data\":[NaN]}]}}}"] {
            assert!(parse_data_json(bytes).is_err(), "{}", String::from_utf8_lossy(bytes));
        }
    }

    #[test]
    fn gzipped_data_file_decodes() {
        let data = one_series("h", vec![1.0, f64::NAN]);
        let compressed = gzip(&encode_data_json(&data));
        let again = decode_data_file(&compressed, true).expect("valid gzip");
        assert_eq!(again["power"][&MetricScope::Node].series[0].data[0], 1.0);

        let err = decode_data_file(b"not gzip", true).expect_err("not gzip");
        assert!(err.0.contains("gzip"), "{err}");
    }

    #[test]
    fn meta_json_replaces_statistics_in_place() {
        let job = fritz_job();
        let mut statistics = BTreeMap::new();
        statistics.insert(
            "cpu_load".to_owned(),
            JobStatistic { unit: Unit::default(), avg: 31.64, min: 0.0, max: f64::NAN },
        );
        statistics.insert(
            "mem_used".to_owned(),
            JobStatistic {
                unit: Unit { base: "B".to_owned(), prefix: Some("G".to_owned()) },
                avg: 6430.0,
                min: 0.5,
                max: f64::INFINITY,
            },
        );

        let text = String::from_utf8(encode_meta_json(&job, &statistics)).expect("UTF-8");

        assert!(text.ends_with("}\n"));
        assert!(
            text.starts_with(r#"{"jobId":398764,"user":"k106eb10","project":"k106eb","#),
            "{text}"
        );
        let expected_statistics = concat!(
            r#""statistics":{"cpu_load":{"unit":{"base":""},"avg":31.64,"min":0,"max":0},"#,
            r#""mem_used":{"unit":{"base":"B","prefix":"G"},"avg":6430,"min":0.5,"max":0}}"#
        );
        assert!(text.contains(expected_statistics), "{text}");
        let keys: Vec<String> = match serde_json::from_str::<Value>(&text).expect("valid") {
            Value::Object(map) => map.keys().cloned().collect(),
            other => panic!("expected an object, got {other}"),
        };
        let original_keys: Vec<String> = job.raw.keys().cloned().collect();
        assert_eq!(keys, original_keys);
    }

    #[test]
    fn meta_json_keeps_monitoring_status_and_appends_statistics() {
        let value = serde_json::json!({"jobId": 5, "cluster": "fritz", "startTime": 100,
            "numNodes": 1, "duration": 60, "monitoringStatus": 1, "resources": [{"hostname": "h"}]});
        let job = JobMeta::from_json(value).expect("valid job");

        let text = String::from_utf8(encode_meta_json(&job, &BTreeMap::new())).expect("UTF-8");

        assert!(text.contains(r#""monitoringStatus":1,"#), "{text}");
        assert!(text.ends_with(",\"statistics\":{}}\n"), "{text}");
    }

    #[test]
    fn job_files_gzip_above_threshold() {
        let job = fritz_job();
        let data = one_series("h", vec![1.0]);
        let plain_len = encode_data_json(&data).len();

        let at_threshold = encode_job_files(&job, &data, &BTreeMap::new(), plain_len);
        assert!(!at_threshold.data_gzipped);
        assert_eq!(at_threshold.data, encode_data_json(&data));

        let below = encode_job_files(&job, &data, &BTreeMap::new(), plain_len - 1);
        assert!(below.data_gzipped);
        let mut decompressed = Vec::new();
        GzDecoder::new(below.data.as_slice()).read_to_end(&mut decompressed).expect("valid gzip");
        assert_eq!(decompressed, encode_data_json(&data));
    }

    #[test]
    fn fixed2_matches_standard_formatting_on_edges() {
        let cases = [
            (0.0, "0.00"),
            (-0.0, "-0.00"),
            (-0.001, "-0.00"),
            (0.125, "0.12"),
            (0.375, "0.38"),
            (0.005, "0.01"),
            (1.005, "1.00"),
            (2.675, "2.67"),
            (1404.2, "1404.20"),
            (-12.3456, "-12.35"),
            (1e20, "100000000000000000000.00"),
        ];
        for (value, expected) in cases {
            assert_eq!(fixed2(value), expected, "{value}");
        }
    }

    proptest! {
        #[test]
        fn fixed2_matches_standard_formatting(value in proptest::num::f64::NORMAL | proptest::num::f64::SUBNORMAL | proptest::num::f64::ZERO) {
            prop_assert_eq!(fixed2(value), format!("{value:.2}"));
        }

        #[test]
        fn fixed2_matches_standard_formatting_for_samples(value in -1e7f32..1e7f32) {
            let value = f64::from(value);
            prop_assert_eq!(fixed2(value), format!("{value:.2}"));
        }

        #[test]
        fn fixed2_matches_standard_formatting_for_hundredths(hundredths in 0i64..10_000_000, offset in -2i64..=2) {
            let value = (hundredths as f64 + offset as f64 * 0.25) / 100.0;
            prop_assert_eq!(fixed2(value), format!("{value:.2}"));
        }
    }
}
