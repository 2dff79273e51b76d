//! Reconciliation: compare the ledger with a provider's usage export and list the differences.
//!
//! The export is CSV with a header naming at least `date`, `model`, `tokens` and `cost` (dollars,
//! up to 6 decimals); `model` is the vendor's model id, mapped to catalog models through the catalog.

use std::collections::BTreeMap;

use chrono::NaiveDate;
use serde::Serialize;

use super::budget::parse_usd;

/// Usage of one model on one day.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DayUsage {
    pub tokens: i64,
    pub cost_micros: i64,
}

pub type UsageByDayModel = BTreeMap<(NaiveDate, String), DayUsage>;

/// A (day, model) where the two sides disagree; a side with no row reads as zero.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Difference {
    pub day: NaiveDate,
    pub model: String,
    pub ours: DayUsage,
    pub theirs: DayUsage,
    /// The part of `ours` booked as estimates (calls cut by a dead worker, at their worst case):
    /// the usual reason the ledger is above the export.
    pub ours_estimated: DayUsage,
}

/// Parses a provider's export; errors name the line and the problem.
pub fn parse_export(csv: &str) -> Result<UsageByDayModel, String> {
    let mut lines = csv
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let (_, head) = lines.next().ok_or("the export is empty")?;
    let cols: Vec<String> = head
        .split(',')
        .map(|c| c.trim().to_ascii_lowercase())
        .collect();
    let find = |name: &str| {
        cols.iter()
            .position(|c| c == name)
            .ok_or_else(|| format!("the header has no `{name}` column (it has: {head})"))
    };
    let (d, m, t, c) = (
        find("date")?,
        find("model")?,
        find("tokens")?,
        find("cost")?,
    );
    let mut out = UsageByDayModel::new();
    for (n, line) in lines {
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        let field = |i: usize| {
            fields
                .get(i)
                .copied()
                .ok_or_else(|| format!("line {}: too few columns", n + 1))
        };
        let day = NaiveDate::parse_from_str(field(d)?, "%Y-%m-%d").map_err(|e| {
            format!(
                "line {}: date `{}`: {e}",
                n + 1,
                field(d).unwrap_or_default()
            )
        })?;
        let tokens: i64 = field(t)?.parse().map_err(|_| {
            format!(
                "line {}: tokens `{}` is not a whole number",
                n + 1,
                field(t).unwrap_or_default()
            )
        })?;
        let cost = parse_usd(field(c)?).map_err(|e| format!("line {}: cost {e}", n + 1))?;
        let entry = out.entry((day, field(m)?.to_string())).or_default();
        entry.tokens += tokens;
        entry.cost_micros += cost;
    }
    Ok(out)
}

/// Every (day, model) present on either side whose tokens or cost differ.
pub fn compare(ours: &UsageByDayModel, theirs: &UsageByDayModel) -> Vec<Difference> {
    let mut keys: Vec<&(NaiveDate, String)> = ours.keys().chain(theirs.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter_map(|k| {
            let (a, b) = (
                ours.get(k).copied().unwrap_or_default(),
                theirs.get(k).copied().unwrap_or_default(),
            );
            (a != b).then(|| Difference {
                day: k.0,
                model: k.1.clone(),
                ours: a,
                theirs: b,
                ours_estimated: DayUsage::default(),
            })
        })
        .collect()
}

/// Fills in each difference's estimated part from `estimates` ([`LedgerPart::Estimated`]).
pub fn mark_estimates(diffs: &mut [Difference], estimates: &UsageByDayModel) {
    for d in diffs {
        if let Some(e) = estimates.get(&(d.day, d.model.clone())) {
            d.ours_estimated = *e;
        }
    }
}

/// Which of the ledger's calls to sum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LedgerPart {
    /// Every call, from the daily aggregates.
    All,
    /// Only estimates (calls cut by a dead worker), from the ledger rows; a partial index keeps
    /// this cheap, as estimates are rare.
    Estimated,
}

/// The ledger's side: one provider's calls by day, keyed by the vendor model id.
pub async fn ledger_usage(
    pool: &sqlx::PgPool,
    part: LedgerPart,
    provider: &str,
    model_ids: &BTreeMap<String, String>,
    days: (NaiveDate, NaiveDate),
) -> Result<UsageByDayModel, sqlx::Error> {
    let sql = match part {
        LedgerPart::All => {
            "SELECT day, model, sum(input_tokens + output_tokens)::int8, sum(cost_micros)::int8 \
             FROM spend_daily WHERE provider = $1 AND day BETWEEN $2 AND $3 GROUP BY 1, 2"
        }
        LedgerPart::Estimated => {
            "SELECT (occurred_at AT TIME ZONE 'UTC')::date, model, \
               sum(input_tokens + output_tokens)::int8, sum(cost_micros)::int8 \
             FROM provider_calls WHERE estimated AND provider = $1 \
               AND occurred_at >= ($2::date)::timestamp AT TIME ZONE 'UTC' \
               AND occurred_at < ($3::date + 1)::timestamp AT TIME ZONE 'UTC' \
             GROUP BY 1, 2"
        }
    };
    by_day_model(pool, sql, provider, model_ids, days).await
}

/// Runs `sql` (day, catalog model, tokens, cost for $1 provider, $2..$3 days) and keys its rows by
/// the vendor model id.
async fn by_day_model(
    pool: &sqlx::PgPool,
    sql: &'static str,
    provider: &str,
    model_ids: &BTreeMap<String, String>,
    (from, to): (NaiveDate, NaiveDate),
) -> Result<UsageByDayModel, sqlx::Error> {
    let rows: Vec<(NaiveDate, String, i64, i64)> = sqlx::query_as(sql)
        .bind(provider)
        .bind(from)
        .bind(to)
        .fetch_all(pool)
        .await?;
    let mut out = UsageByDayModel::new();
    for (day, model, tokens, cost) in rows {
        let vendor = model_ids.get(&model).cloned().unwrap_or(model);
        let e = out.entry((day, vendor)).or_default();
        e.tokens += tokens;
        e.cost_micros += cost;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 11, d).unwrap_or_default()
    }

    #[test]
    fn export_is_parsed_exactly_and_bad_lines_are_named() {
        let csv = "date,model,tokens,cost\n2026-11-01,gpt-x,1000,0.150000\n2026-11-01,gpt-x,10,0.000001\n";
        let parsed = parse_export(csv).unwrap_or_default();
        assert_eq!(
            parsed[&(day(1), "gpt-x".to_string())],
            DayUsage {
                tokens: 1010,
                cost_micros: 150_001
            }
        );
        assert!(parse_export("date,model,tokens\n").is_err_and(|e| e.contains("cost")));
        assert!(parse_export("date,model,tokens,cost\n2026-11-01,m,ten,1\n")
            .is_err_and(|e| e.contains("line 2")));
    }

    #[test]
    fn differences_include_rows_missing_on_either_side() {
        let mut ours = UsageByDayModel::new();
        let mut theirs = UsageByDayModel::new();
        ours.insert(
            (day(1), "a".into()),
            DayUsage {
                tokens: 10,
                cost_micros: 5,
            },
        );
        theirs.insert(
            (day(1), "a".into()),
            DayUsage {
                tokens: 10,
                cost_micros: 5,
            },
        );
        ours.insert(
            (day(2), "a".into()),
            DayUsage {
                tokens: 10,
                cost_micros: 5,
            },
        );
        theirs.insert(
            (day(2), "a".into()),
            DayUsage {
                tokens: 12,
                cost_micros: 5,
            },
        );
        theirs.insert(
            (day(3), "b".into()),
            DayUsage {
                tokens: 1,
                cost_micros: 1,
            },
        );
        let diff = compare(&ours, &theirs);
        assert_eq!(diff.len(), 2);
        assert_eq!((diff[0].day, diff[0].theirs.tokens), (day(2), 12));
        assert_eq!(
            (diff[1].model.as_str(), diff[1].ours),
            ("b", DayUsage::default())
        );
    }
}
