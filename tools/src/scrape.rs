//! Reading a `/metrics` page as Prometheus would, for the demo's summary and the tests: sample
//! lines as (family, labels, value), sums over label filters, and the families present.

use std::collections::{BTreeMap, BTreeSet};

use ragq::telemetry::metrics::names;

/// One sample line of the text exposition format.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// The samples of an exposition text (comments and malformed lines skipped). Label values are
/// read up to their closing quote; ragq's label values hold no escaped quotes.
pub fn samples(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(sample)
        .collect()
}

fn sample(line: &str) -> Option<Sample> {
    let (series, value) = line.rsplit_once(' ')?;
    let (name, labels) = match series.split_once('{') {
        Some((name, rest)) => (name, rest.strip_suffix('}')?),
        None => (series, ""),
    };
    let labels = labels
        .split("\",")
        .filter(|p| !p.is_empty())
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            Some((k.to_string(), v.trim_matches('"').to_string()))
        })
        .collect();
    Some(Sample {
        name: name.to_string(),
        labels,
        value: value.parse().ok()?,
    })
}

/// The sum of `name`'s samples whose labels include every pair of `with`.
pub fn sum(samples: &[Sample], name: &str, with: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            with.iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

/// The families present (a histogram's `_bucket`, `_sum` and `_count` folded into its name).
pub fn families(samples: &[Sample]) -> BTreeSet<String> {
    samples
        .iter()
        .map(|s| {
            let n = s.name.as_str();
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| n.strip_suffix(suffix).filter(|b| names::ALL.contains(b)));
            base.unwrap_or(n).to_string()
        })
        .collect()
}

/// Fetches and reads a `/metrics` page.
pub async fn scrape(url: &str) -> anyhow::Result<Vec<Sample>> {
    let text = reqwest::get(url).await?.error_for_status()?.text().await?;
    Ok(samples(&text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_read_and_summed_by_label() {
        let text = "# TYPE ragq_jobs_total counter\n\
            ragq_jobs_total{kind=\"ingest\",outcome=\"succeeded\"} 3\n\
            ragq_jobs_total{kind=\"rag.answer\",outcome=\"succeeded\"} 4\n\
            ragq_jobs_total{kind=\"ingest\",outcome=\"failed\"} 1\n\
            ragq_job_duration_seconds_bucket{kind=\"ingest\",le=\"+Inf\"} 4\n\
            ragq_scheduler_leader 1\n";
        let s = samples(text);
        assert_eq!(sum(&s, "ragq_jobs_total", &[("outcome", "succeeded")]), 7.0);
        assert_eq!(sum(&s, "ragq_jobs_total", &[]), 8.0);
        assert_eq!(sum(&s, "ragq_scheduler_leader", &[]), 1.0);
        let f = families(&s);
        assert!(
            f.contains("ragq_job_duration_seconds") && f.len() == 3,
            "{f:?}"
        );
    }
}
