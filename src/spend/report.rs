//! Spend reports, read from the daily aggregates (never the ledger, so they stay fast at any ledger
//! size and outlive raw-row retention): grouped by any of tenant, feature, model, provider, day,
//! and the saved prompt and version the calls rendered.
//!
//! Grouped by prompt or version (and no call-level dimension: model, provider), a report also
//! counts the saved prompts jobs rendered and how many failed, from the finished jobs still kept
//! (see `retention.jobs_days`): a prompt's error rate.

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use sqlx::{PgPool, QueryBuilder};

use super::budget::usd;

/// A dimension a report can group by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Dimension {
    Tenant,
    Feature,
    Model,
    Provider,
    Day,
    /// The saved prompt the calls rendered ("" for plain prompts).
    Prompt,
    /// Its version (0 for plain prompts).
    Version,
}

impl Dimension {
    /// The column; a closed set, so it is safe to write into SQL.
    fn column(self) -> &'static str {
        match self {
            Self::Tenant => "tenant_id",
            Self::Feature => "feature",
            Self::Model => "model",
            Self::Provider => "provider",
            Self::Day => "day::text",
            Self::Prompt => "prompt",
            Self::Version => "prompt_version::text",
        }
    }

    /// Whether a job (not only a call) has this dimension: error counts can group by it.
    fn of_jobs(self) -> bool {
        !matches!(self, Self::Model | Self::Provider)
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Tenant => "tenant",
            Self::Feature => "feature",
            Self::Model => "model",
            Self::Provider => "provider",
            Self::Day => "day",
            Self::Prompt => "prompt",
            Self::Version => "version",
        }
    }

    /// Parses `tenant,feature,...`.
    pub fn parse_list(text: &str) -> Result<Vec<Self>, String> {
        text.split(',')
            .filter(|s| !s.trim().is_empty())
            .map(|s| {
                <Self as clap::ValueEnum>::from_str(s.trim(), true).map_err(|_| {
                    format!(
                        "cannot group by `{}`: use tenant, feature, model, provider, day, prompt or version",
                        s.trim()
                    )
                })
            })
            .collect()
    }
}

/// What to report on. `to` is inclusive.
#[derive(Debug, Clone, Default)]
pub struct ReportQuery {
    pub tenant: Option<String>,
    pub from: Option<NaiveDate>,
    pub to: Option<NaiveDate>,
    pub group_by: Vec<Dimension>,
}

/// One group. `keys` holds the grouped dimensions' values in `group_by` order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReportRow {
    pub keys: Vec<String>,
    pub calls: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cost_micros: i64,
    /// Micro-dollars per 1,000 tokens, rounded half up; 0 when there were no tokens.
    pub cost_per_1k_tokens_micros: i64,
    /// Calls answered from the response cache (not in `calls`), and what they saved.
    pub cache_hits: i64,
    pub saved_micros: i64,
    /// The provider calls' summed latency (their mean is this over `calls`).
    pub latency_ms: i64,
    /// Saved prompts rendered by finished jobs, and how many of them failed; none when the
    /// report groups by model or provider (a failed prompt has neither).
    pub prompt_runs: Option<PromptRuns>,
}

/// Saved prompts rendered by finished jobs of a group, and the failed ones among them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PromptRuns {
    pub rendered: i64,
    pub failed: i64,
}

impl ReportRow {
    /// The provider calls' mean latency in milliseconds (0 without calls).
    pub fn mean_latency_ms(&self) -> i64 {
        if self.calls <= 0 {
            return 0;
        }
        (self.latency_ms + self.calls / 2) / self.calls
    }

    /// The share of rendered saved prompts that failed (none without any).
    pub fn error_rate(&self) -> Option<f64> {
        let runs = self.prompt_runs.filter(|r| r.rendered > 0)?;
        Some((runs.failed as f64 / runs.rendered as f64 * 10_000.0).round() / 10_000.0)
    }

    /// The share of the group's calls the cache answered.
    pub fn cache_hit_rate(&self) -> f64 {
        let all = self.calls + self.cache_hits;
        if all <= 0 {
            return 0.0;
        }
        (self.cache_hits as f64 / all as f64 * 10_000.0).round() / 10_000.0
    }
}

/// Group keys, then the sums of calls, input tokens, output tokens, cost, cache hits, savings and
/// latency (NULL over no rows).
type RawRow = (
    Vec<String>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
);

pub async fn query(pool: &PgPool, q: &ReportQuery) -> Result<Vec<ReportRow>, sqlx::Error> {
    let mut sql = QueryBuilder::new("SELECT ");
    keys_of(&mut sql, q);
    sql.push(", sum(calls)::int8, sum(input_tokens)::int8, sum(output_tokens)::int8, sum(cost_micros)::int8, \
              sum(cache_hits)::int8, sum(saved_micros)::int8, sum(latency_ms)::int8 FROM spend_daily WHERE true");
    filter_and_group(&mut sql, q);
    let rows: Vec<RawRow> = sql.build_query_as().fetch_all(pool).await?;
    let mut rows: Vec<ReportRow> = rows
        .into_iter()
        .filter(|r| r.1.is_some())
        .map(|(keys, calls, input, output, cost, hits, saved, latency)| {
            let (input, output, cost) =
                (input.unwrap_or(0), output.unwrap_or(0), cost.unwrap_or(0));
            ReportRow {
                keys,
                calls: calls.unwrap_or(0),
                input_tokens: input,
                output_tokens: output,
                cost_micros: cost,
                cost_per_1k_tokens_micros: per_1k(cost, input + output),
                cache_hits: hits.unwrap_or(0),
                saved_micros: saved.unwrap_or(0),
                latency_ms: latency.unwrap_or(0),
                prompt_runs: None,
            }
        })
        .collect();
    // Counting rendered prompts reads finished jobs: done when the report is about prompts.
    let about_prompts =
        (q.group_by.iter()).any(|d| matches!(d, Dimension::Prompt | Dimension::Version));
    if about_prompts && q.group_by.iter().all(|d| d.of_jobs()) {
        add_prompt_runs(pool, q, &mut rows).await?;
    }
    Ok(rows)
}

/// `ARRAY[<the grouped columns>]::text[]`.
fn keys_of(sql: &mut QueryBuilder<'_, sqlx::Postgres>, q: &ReportQuery) {
    sql.push("ARRAY[");
    let mut keys = sql.separated(", ");
    for d in &q.group_by {
        keys.push(d.column());
    }
    sql.push("]::text[]");
}

/// The tenant and day conditions, then the grouping.
fn filter_and_group<'a>(sql: &mut QueryBuilder<'a, sqlx::Postgres>, q: &'a ReportQuery) {
    if let Some(t) = &q.tenant {
        sql.push(" AND tenant_id = ").push_bind(t);
    }
    if let Some(from) = q.from {
        sql.push(" AND day >= ").push_bind(from);
    }
    if let Some(to) = q.to {
        sql.push(" AND day <= ").push_bind(to);
    }
    if !q.group_by.is_empty() {
        sql.push(" GROUP BY ");
        let mut cols = sql.separated(", ");
        for d in &q.group_by {
            cols.push(d.column());
        }
        sql.push(" ORDER BY 1");
    }
}

/// Counts the saved prompts finished jobs rendered, and the failed ones (the job failed, or its
/// completion of that prompt holds an error), by the report's groups; a group with runs but no
/// spend gets a row of its own.
async fn add_prompt_runs(
    pool: &PgPool,
    q: &ReportQuery,
    rows: &mut Vec<ReportRow>,
) -> Result<(), sqlx::Error> {
    let mut sql = QueryBuilder::new("SELECT ");
    keys_of(&mut sql, q);
    sql.push(", count(*)::int8, (count(*) FILTER (WHERE failed))::int8 FROM (");
    sql.push(include_str!("sql/prompt_runs.sql"));
    sql.push(") runs WHERE true");
    // The days as creation times, so the jobs' index on (tenant, created_at) serves.
    if let Some(from) = q.from {
        sql.push(" AND created_at >= (")
            .push_bind(from)
            .push("::timestamp AT TIME ZONE 'UTC')");
    }
    if let Some(to) = q.to.and_then(|d| d.succ_opt()) {
        sql.push(" AND created_at < (")
            .push_bind(to)
            .push("::timestamp AT TIME ZONE 'UTC')");
    }
    let unbounded = ReportQuery {
        from: None,
        to: None,
        ..q.clone()
    };
    filter_and_group(&mut sql, &unbounded);
    let runs: Vec<(Vec<String>, i64, i64)> = sql.build_query_as().fetch_all(pool).await?;
    let only_plain = |keys: &[String]| {
        // Plain prompts are not counted: their group (prompt "" / version 0) gets no runs.
        (q.group_by.iter().zip(keys)).any(|(d, k)| {
            matches!(
                (d, k.as_str()),
                (Dimension::Prompt, "") | (Dimension::Version, "0")
            )
        })
    };
    for row in rows.iter_mut().filter(|r| !only_plain(&r.keys)) {
        row.prompt_runs = Some(PromptRuns::default());
    }
    for (keys, rendered, failed) in runs {
        let counted = PromptRuns { rendered, failed };
        match rows.iter_mut().find(|r| r.keys == keys) {
            Some(row) => row.prompt_runs = Some(counted),
            None => rows.push(ReportRow {
                keys,
                prompt_runs: Some(counted),
                ..ReportRow::default()
            }),
        }
    }
    rows.sort_by(|a, b| a.keys.cmp(&b.keys));
    Ok(())
}

/// Cost per 1,000 tokens in micro-dollars, rounded half up, in integers.
pub fn per_1k(cost_micros: i64, tokens: i64) -> i64 {
    if tokens <= 0 {
        return 0;
    }
    let scaled = i128::from(cost_micros) * 1000;
    i64::try_from((scaled * 2 + i128::from(tokens)) / (2 * i128::from(tokens))).unwrap_or(i64::MAX)
}

fn header(dims: &[Dimension]) -> Vec<&'static str> {
    let mut h: Vec<&'static str> = dims.iter().map(|d| d.name()).collect();
    h.extend([
        "calls",
        "input_tokens",
        "output_tokens",
        "cost_usd",
        "cost_per_1k_tokens_usd",
        "cache_hits",
        "saved_usd",
        "cache_hit_rate",
        "mean_latency_ms",
        "prompts_rendered",
        "prompt_error_rate",
    ]);
    h
}

fn cells(row: &ReportRow) -> Vec<String> {
    let mut c = row.keys.clone();
    c.extend([
        row.calls.to_string(),
        row.input_tokens.to_string(),
        row.output_tokens.to_string(),
        usd(row.cost_micros).trim_start_matches('$').to_string(),
        usd(row.cost_per_1k_tokens_micros)
            .trim_start_matches('$')
            .to_string(),
        row.cache_hits.to_string(),
        usd(row.saved_micros).trim_start_matches('$').to_string(),
        format!("{:.4}", row.cache_hit_rate()),
        row.mean_latency_ms().to_string(),
        row.prompt_runs
            .map_or(String::new(), |r| r.rendered.to_string()),
        row.error_rate()
            .map_or(String::new(), |r| format!("{r:.4}")),
    ]);
    c
}

/// RFC 4180 CSV with a header row.
pub fn to_csv(dims: &[Dimension], rows: &[ReportRow]) -> String {
    let quote = |s: &str| {
        if s.contains([',', '"', '\n', '\r']) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s.to_string()
        }
    };
    let mut out = header(dims).join(",");
    out.push('\n');
    for r in rows {
        out.push_str(
            &cells(r)
                .iter()
                .map(|c| quote(c))
                .collect::<Vec<_>>()
                .join(","),
        );
        out.push('\n');
    }
    out
}

/// One report row as JSON: the group's keys (only those grouped by), then the sums.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct SpendRow {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub feature: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// `YYYY-MM-DD` (UTC).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub day: Option<String>,
    /// The saved prompt the calls rendered ("" for plain prompts).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// Its version ("0" for plain prompts).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    pub calls: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    /// Cost in micro-dollars (1,000,000 = $1).
    pub cost_micros: i64,
    /// Micro-dollars per 1,000 tokens, rounded half up; 0 without tokens.
    pub cost_per_1k_tokens_micros: i64,
    /// Calls answered from the response cache (at cost 0, not counted in `calls`).
    pub cache_hits: i64,
    /// What those calls would have cost, in micro-dollars.
    pub saved_micros: i64,
    /// cache_hits / (calls + cache_hits).
    pub cache_hit_rate: f64,
    /// The provider calls' mean latency.
    pub mean_latency_ms: i64,
    /// Saved prompts rendered by the group's finished jobs still kept (absent when grouped by
    /// model or provider).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompts_rendered: Option<i64>,
    /// The share of those that failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_error_rate: Option<f64>,
}

/// The rows as [`SpendRow`]s.
pub fn to_rows(dims: &[Dimension], rows: &[ReportRow]) -> Vec<SpendRow> {
    rows.iter()
        .map(|r| {
            let mut row = SpendRow {
                calls: r.calls,
                input_tokens: r.input_tokens,
                output_tokens: r.output_tokens,
                cost_micros: r.cost_micros,
                cost_per_1k_tokens_micros: r.cost_per_1k_tokens_micros,
                cache_hits: r.cache_hits,
                saved_micros: r.saved_micros,
                cache_hit_rate: r.cache_hit_rate(),
                mean_latency_ms: r.mean_latency_ms(),
                prompts_rendered: r.prompt_runs.map(|p| p.rendered),
                prompt_error_rate: r.error_rate(),
                ..SpendRow::default()
            };
            for (d, k) in dims.iter().zip(&r.keys) {
                let slot = match d {
                    Dimension::Tenant => &mut row.tenant,
                    Dimension::Feature => &mut row.feature,
                    Dimension::Model => &mut row.model,
                    Dimension::Provider => &mut row.provider,
                    Dimension::Day => &mut row.day,
                    Dimension::Prompt => &mut row.prompt,
                    Dimension::Version => &mut row.version,
                };
                *slot = Some(k.clone());
            }
            row
        })
        .collect()
}

/// JSON objects keyed by column name.
pub fn to_json(dims: &[Dimension], rows: &[ReportRow]) -> serde_json::Value {
    serde_json::to_value(to_rows(dims, rows)).unwrap_or_default()
}

/// An aligned text table.
pub fn to_table(dims: &[Dimension], rows: &[ReportRow]) -> String {
    let head: Vec<String> = header(dims).into_iter().map(str::to_string).collect();
    let body: Vec<Vec<String>> = rows.iter().map(cells).collect();
    let widths: Vec<usize> = (0..head.len())
        .map(|i| {
            body.iter()
                .map(|r| r[i].len())
                .chain([head[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: &[String]| {
        cells
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (c, w))| {
                if i < dims.len() {
                    format!("{c:<w$}")
                } else {
                    format!("{c:>w$}")
                }
            })
            .collect::<Vec<_>>()
            .join("  ")
    };
    let mut out = line(&head);
    for r in &body {
        out.push('\n');
        out.push_str(&line(r));
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(keys: &[&str], cost: i64, input: i64, output: i64) -> ReportRow {
        ReportRow {
            keys: keys.iter().map(|s| s.to_string()).collect(),
            calls: 1,
            input_tokens: input,
            output_tokens: output,
            cost_micros: cost,
            cost_per_1k_tokens_micros: per_1k(cost, input + output),
            cache_hits: 0,
            saved_micros: 0,
            ..ReportRow::default()
        }
    }

    #[test]
    fn cost_per_thousand_tokens_is_exact_and_rounded_half_up() {
        assert_eq!(per_1k(450, 1_500), 300);
        assert_eq!(per_1k(1, 2_000), 1, "0.5 rounds up");
        assert_eq!(per_1k(1, 2_001), 0);
        assert_eq!(per_1k(5, 0), 0);
    }

    #[test]
    fn csv_quotes_and_has_a_header() {
        let csv = to_csv(&[Dimension::Feature], &[row(&["a,b"], 1_500_000, 1000, 0)]);
        assert_eq!(
            csv,
            "feature,calls,input_tokens,output_tokens,cost_usd,cost_per_1k_tokens_usd,cache_hits,saved_usd,cache_hit_rate,mean_latency_ms,prompts_rendered,prompt_error_rate\n\"a,b\",1,1000,0,1.500000,1.500000,0,0.000000,0.0000,0,,\n"
        );
    }

    #[test]
    fn group_by_list_names_the_bad_dimension() {
        assert_eq!(
            Dimension::parse_list("tenant, day"),
            Ok(vec![Dimension::Tenant, Dimension::Day])
        );
        assert!(Dimension::parse_list("tenant,colour").is_err_and(|e| e.contains("colour")));
    }
}
