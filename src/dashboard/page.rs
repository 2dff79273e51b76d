//! The dashboard page: reads one window for one scope and turns it into charts.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write;

use chrono::{DateTime, TimeDelta, Utc};
use sqlx::PgPool;

use super::data::{self, Frame, Window};
use super::svg::{self, escape, Rule, Series, Unit};
use super::Scope;
use crate::telemetry::stats::{add, quantile_ms, BUCKETS};

/// Builds the whole page for `scope` over `window`, as of `now`.
pub async fn render(
    pool: &PgPool,
    scope: &Scope,
    window: Window,
    now: DateTime<Utc>,
) -> Result<String, sqlx::Error> {
    let frame = Frame::new(window, now);
    let spend_frame = match window {
        Window::Month => Frame::by_day(now),
        _ => frame.clone(),
    };
    let tenant = scope.tenant();
    // One snapshot for every chart. JIT compilation is off: these aggregates run in tens to
    // hundreds of milliseconds, and compiling them took longer than it saved.
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    sqlx::query("SET LOCAL jit = off").execute(&mut *tx).await?;
    let jobs = data::jobs(&mut tx, &frame, tenant).await?;
    let providers = data::provider_outcomes(&mut tx, frame.from).await?;
    let recent = data::provider_outcomes(&mut tx, now - TimeDelta::minutes(5)).await?;
    let breakers = data::breakers(&mut tx).await?;
    let spend = data::spend_over_time(&mut tx, &spend_frame, tenant).await?;
    let models = data::spend_by_model(&mut tx, &spend_frame, tenant).await?;
    let prompts = data::prompt_versions(&mut tx, &spend_frame, tenant).await?;
    let budgets = data::budgets(&mut tx, tenant).await?;
    let hooks = data::deliveries(&mut tx, &frame, tenant).await?;
    let letters = data::dead_letters(&mut tx, &frame, tenant).await?;
    tx.commit().await?;
    let mut body = String::new();
    header(&mut body, scope, window);
    body.push_str("<main>");
    section(&mut body, "Jobs", &job_charts(&frame, &jobs));
    section(
        &mut body,
        "Providers",
        &provider_charts(&providers, &recent, &breakers),
    );
    let finished: i64 = (jobs.iter())
        .filter(|j| j.outcome != "retried")
        .map(|j| j.jobs)
        .sum();
    section(
        &mut body,
        "Spend",
        &spend_charts(&spend_frame, &spend, &models, finished, scope),
    );
    if !prompts.is_empty() {
        section(&mut body, "Prompts", &prompt_table(&prompts, scope));
    }
    section(&mut body, "Budgets", &budget_charts(&budgets, scope));
    section(
        &mut body,
        "Webhooks and dead letters",
        &delivery_charts(&frame, &hooks, &letters),
    );
    body.push_str("</main>");
    Ok(document("ragq dashboard", &body))
}

/// A complete HTML document; styles come from the page's own origin (the CSP allows no other).
pub fn document(title: &str, body: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{}</title><link rel=\"stylesheet\" href=\"/dashboard/style.css\"></head>\
         <body>{body}</body></html>",
        escape(title)
    )
}

fn header(out: &mut String, scope: &Scope, window: Window) {
    let who = match scope {
        Scope::Operator => "All tenants (operator)".to_string(),
        Scope::Tenant { id, name } => format!("Tenant {} ({})", escape(name), escape(id)),
    };
    let _ = write!(
        out,
        "<header><h1>ragq</h1><span id=\"scope\">{who}</span><nav>"
    );
    for w in Window::ALL {
        let current = if w == window {
            " aria-current=\"page\""
        } else {
            ""
        };
        let _ = write!(
            out,
            "<a href=\"/dashboard?window={}\"{current}>{}</a>",
            w.as_str(),
            w.title()
        );
    }
    out.push_str(
        "</nav><form method=\"post\" action=\"/dashboard/logout\"><button>Sign out</button></form></header>",
    );
}

fn section(out: &mut String, title: &str, content: &str) {
    let _ = write!(
        out,
        "<section><h2>{}</h2><div class=\"charts\">{content}</div></section>",
        escape(title)
    );
}

fn figure(id: &str, title: &str, chart: &str) -> String {
    format!(
        "<figure class=\"chart\" id=\"chart-{id}\"><figcaption>{}</figcaption>{chart}</figure>",
        escape(title)
    )
}

fn job_charts(frame: &Frame, jobs: &[data::JobPoint]) -> String {
    let labels = frame.labels();
    let mut per_minute: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut total_by_kind: BTreeMap<&str, [i64; BUCKETS]> = BTreeMap::new();
    let mut work_by_kind: BTreeMap<&str, [i64; BUCKETS]> = BTreeMap::new();
    let mut p95_points: BTreeMap<&str, Vec<[i64; BUCKETS]>> = BTreeMap::new();
    for j in jobs {
        let Some(i) = frame.index(j.t) else { continue };
        let series = per_minute
            .entry(format!("{} {}", j.kind, j.outcome))
            .or_insert_with(|| vec![0.0; frame.points]);
        series[i] += j.jobs as f64 / frame.step_minutes();
        add(work_by_kind.entry(&j.kind).or_default(), &j.work_ms);
        // End to end counts jobs that ended; a retried attempt's job is still under way.
        if j.outcome != "retried" {
            add(total_by_kind.entry(&j.kind).or_default(), &j.total_ms);
            let points = p95_points
                .entry(&j.kind)
                .or_insert_with(|| vec![[0; BUCKETS]; frame.points]);
            add(&mut points[i], &j.total_ms);
        }
    }
    let series: Vec<Series> = per_minute
        .into_iter()
        .map(|(name, values)| Series { name, values })
        .collect();
    let p95: Vec<Series> = p95_points
        .into_iter()
        .map(|(kind, points)| Series {
            name: kind.to_string(),
            values: points
                .iter()
                .map(|h| quantile_ms(h, 0.95).unwrap_or(0.0))
                .collect(),
        })
        .collect();
    [
        figure(
            "jobs",
            "Jobs per minute, by kind and outcome",
            &svg::stacked_bars("jobs per minute", Unit::PerMinute, &labels, &series),
        ),
        latency_figure(
            "latency-total",
            "End-to-end latency by kind (accepted to outcome)",
            &total_by_kind,
        ),
        latency_figure(
            "latency-work",
            "In-worker latency by kind (one attempt)",
            &work_by_kind,
        ),
        figure(
            "latency-p95",
            "End-to-end p95 over time, by kind",
            &svg::lines("p95 latency", Unit::Millis, &labels, &p95, &[]),
        ),
    ]
    .concat()
}

fn latency_figure(id: &str, title: &str, by_kind: &BTreeMap<&str, [i64; BUCKETS]>) -> String {
    let kinds: Vec<String> = by_kind.keys().map(|k| k.to_string()).collect();
    let series: Vec<Series> = [("p50", 0.5), ("p95", 0.95), ("p99", 0.99)]
        .iter()
        .map(|(name, q)| Series {
            name: name.to_string(),
            values: by_kind
                .values()
                .map(|h| quantile_ms(h, *q).unwrap_or(0.0))
                .collect(),
        })
        .collect();
    figure(id, title, &svg::bars(title, Unit::Millis, &kinds, &series))
}

/// Outcome classes of provider calls, in the order the chart stacks them.
const OUTCOME_CLASSES: [&str; 5] = ["ok", "error", "rate_limited", "paced", "circuit_open"];

fn outcome_class(outcome: &str) -> &'static str {
    match outcome {
        "ok" => "ok",
        "rate_limited" => "rate_limited",
        "paced" => "paced",
        "circuit_open" => "circuit_open",
        _ => "error",
    }
}

fn provider_charts(
    window: &[data::ProviderTally],
    recent: &[data::ProviderTally],
    breakers: &[data::BreakerCount],
) -> String {
    // Rates, not volumes: the call counts are the platform's, shared by every tenant.
    let mut per_model: BTreeMap<String, HashMap<&str, i64>> = BTreeMap::new();
    for t in window {
        *per_model
            .entry(format!("{}/{}", t.provider, t.model))
            .or_default()
            .entry(outcome_class(&t.outcome))
            .or_default() += t.calls;
    }
    let models: Vec<String> = per_model.keys().cloned().collect();
    let rates: Vec<Series> = OUTCOME_CLASSES
        .iter()
        .map(|class| Series {
            name: class.to_string(),
            values: per_model
                .values()
                .map(|m| percent(*m.get(class).unwrap_or(&0), m.values().sum()))
                .collect(),
        })
        .collect();
    let mut out = figure(
        "provider-outcomes",
        "Call outcomes by provider and model (% of calls; throttling: rate_limited = 429, paced, circuit_open)",
        &svg::bars("provider outcomes", Unit::Percent, &models, &rates),
    );
    out.push_str(&health_now(recent, breakers));
    out
}

fn percent(part: i64, whole: i64) -> f64 {
    if whole <= 0 {
        0.0
    } else {
        100.0 * part as f64 / whole as f64
    }
}

/// Provider health over the last five minutes: error rate and p95 of the calls sent, and each
/// model's breakers on the live workers.
fn health_now(recent: &[data::ProviderTally], breakers: &[data::BreakerCount]) -> String {
    struct Health {
        sent: i64,
        failed: i64,
        latency: [i64; BUCKETS],
    }
    let mut by_model: BTreeMap<(String, String), Health> = BTreeMap::new();
    for t in recent {
        let class = outcome_class(&t.outcome);
        if class == "paced" || class == "circuit_open" {
            continue;
        }
        let h = by_model
            .entry((t.provider.clone(), t.model.clone()))
            .or_insert(Health {
                sent: 0,
                failed: 0,
                latency: [0; BUCKETS],
            });
        h.sent += t.calls;
        if class != "ok" {
            h.failed += t.calls;
        }
        add(&mut h.latency, &t.latency_ms);
    }
    let models: Vec<String> = by_model.keys().map(|(p, m)| format!("{p}/{m}")).collect();
    let errors = Series {
        name: "error rate".into(),
        values: by_model
            .values()
            .map(|h| percent(h.failed, h.sent))
            .collect(),
    };
    let p95 = Series {
        name: "p95".into(),
        values: (by_model.values())
            .map(|h| quantile_ms(&h.latency, 0.95).unwrap_or(0.0))
            .collect(),
    };
    let mut out = figure(
        "provider-errors",
        "Provider error rate now (last 5 minutes)",
        &svg::bars("error rate", Unit::Percent, &models, &[errors]),
    );
    out.push_str(&figure(
        "provider-p95",
        "Provider p95 latency now (last 5 minutes)",
        &svg::bars("p95 latency", Unit::Millis, &models, &[p95]),
    ));
    let mut list = String::from("<ul class=\"breakers\">");
    for b in breakers {
        let state = if b.open > 0 {
            "open"
        } else if b.half_open > 0 {
            "half_open"
        } else {
            "closed"
        };
        let _ = write!(
            list,
            "<li class=\"breaker {state}\" data-model=\"{m}\" data-state=\"{state}\"><b>{m}</b> {state} \
             (open on {} of {} workers)</li>",
            b.open,
            b.workers,
            m = escape(&b.model),
        );
    }
    if breakers.is_empty() {
        list.push_str("<li>no live worker has reported its breakers</li>");
    }
    list.push_str("</ul>");
    out.push_str(&figure("breakers", "Circuit breakers now", &list));
    out
}

fn spend_charts(
    frame: &Frame,
    spend: &[data::SpendPoint],
    models: &[data::ModelSpend],
    finished_jobs: i64,
    scope: &Scope,
) -> String {
    let labels = frame.labels();
    let mut dimensions: Vec<(&str, SpendKey)> = Vec::new();
    if *scope == Scope::Operator {
        dimensions.push(("tenant", |p| p.tenant_id.clone()));
    }
    dimensions.push(("feature", |p| group_label(&p.feature)));
    dimensions.push(("model", |p| p.model.clone()));
    let total_micros: i64 = models.iter().map(|m| m.cost_micros).sum();
    let total_tokens: i64 = models.iter().map(|m| m.tokens).sum();
    let hits: i64 = models.iter().map(|m| m.cache_hits).sum();
    let saved_micros: i64 = models.iter().map(|m| m.saved_micros).sum();
    let calls: i64 = models.iter().map(|m| m.calls).sum();
    let names: Vec<String> = models.iter().map(|m| m.model.clone()).collect();
    let dollars = Series {
        name: "spend".into(),
        values: models.iter().map(|m| m.cost_micros as f64 / 1e6).collect(),
    };
    let per_1k = Series {
        name: "$ per 1K tokens".into(),
        values: models
            .iter()
            .map(|m| per_thousand(m.cost_micros, m.tokens))
            .collect(),
    };
    let mut out = format!(
        "<dl class=\"figures\"><dt>Spend</dt><dd id=\"spend-total\" data-micros=\"{total_micros}\">{}</dd>\
         <dt>Cost per finished job</dt><dd id=\"cost-per-job\">{}</dd>\
         <dt>$ per 1K tokens</dt><dd id=\"cost-per-1k\">{}</dd>\
         <dt>Cache hit rate</dt><dd id=\"cache-hit-rate\" data-hits=\"{hits}\">{}</dd>\
         <dt>Saved by the cache</dt><dd id=\"cache-saved\" data-micros=\"{saved_micros}\">{}</dd></dl>",
        Unit::Dollars.format(total_micros as f64 / 1e6),
        if finished_jobs > 0 {
            Unit::Dollars.format(total_micros as f64 / 1e6 / finished_jobs as f64)
        } else {
            "–".into()
        },
        Unit::Dollars.format(per_thousand(total_micros, total_tokens)),
        if calls + hits > 0 {
            Unit::Percent.format(100.0 * hits as f64 / (calls + hits) as f64)
        } else {
            "–".into()
        },
        Unit::Dollars.format(saved_micros as f64 / 1e6),
    );
    for (by, key) in dimensions {
        let series = spend_series(frame, spend, key);
        out.push_str(&figure(
            &format!("spend-{by}"),
            &format!("Spend over time, by {by}"),
            &svg::stacked_bars("spend", Unit::Dollars, &labels, &series),
        ));
    }
    out.push_str(&figure(
        "spend-model",
        "Spend by model",
        &svg::bars("spend by model", Unit::Dollars, &names, &[dollars]),
    ));
    let saved = Series {
        name: "saved".into(),
        values: models.iter().map(|m| m.saved_micros as f64 / 1e6).collect(),
    };
    out.push_str(&figure(
        "cache-saved-model",
        "Saved by the response cache, by model",
        &svg::bars("saved by model", Unit::Dollars, &names, &[saved]),
    ));
    out.push_str(&figure(
        "unit-cost",
        "$ per 1K tokens, by model",
        &svg::bars("$ per 1K tokens", Unit::Dollars, &names, &[per_1k]),
    ));
    out
}

/// Saved prompt versions side by side: spend, mean latency and error rate (an A/B split's arms
/// read as one row each).
fn prompt_table(rows: &[data::PromptVersionStats], scope: &Scope) -> String {
    let operator = *scope == Scope::Operator;
    let mut out = String::from(
        "<figure class=\"chart\" id=\"chart-prompts\"><figcaption>Saved prompts, by version</figcaption>\
         <table id=\"prompt-versions\"><thead><tr>",
    );
    if operator {
        out.push_str("<th>tenant</th>");
    }
    out.push_str(
        "<th>prompt</th><th>version</th><th>calls</th><th>spend</th><th>mean latency</th>\
         <th>rendered</th><th>error rate</th></tr></thead><tbody>",
    );
    for r in rows {
        out.push_str("<tr>");
        if operator {
            let _ = write!(out, "<td>{}</td>", escape(&r.tenant_id));
        }
        let latency = if r.calls > 0 {
            Unit::Millis.format(r.latency_ms as f64 / r.calls as f64)
        } else {
            "–".into()
        };
        let errors = if r.rendered > 0 {
            Unit::Percent.format(100.0 * r.failed as f64 / r.rendered as f64)
        } else {
            "–".into()
        };
        let _ = write!(
            out,
            "<td>{}</td><td>{}</td><td>{}</td><td data-micros=\"{}\">{}</td><td>{latency}</td>\
             <td>{}</td><td>{errors}</td></tr>",
            escape(&r.prompt),
            r.version,
            r.calls,
            r.cost_micros,
            Unit::Dollars.format(r.cost_micros as f64 / 1e6),
            r.rendered,
        );
    }
    out.push_str("</tbody></table></figure>");
    out
}

/// What spend is grouped by in one chart.
type SpendKey = fn(&data::SpendPoint) -> String;

/// Spend per point in series by `key`: the seven largest groups, the rest as "other", so that the
/// chart stays readable.
fn spend_series(frame: &Frame, spend: &[data::SpendPoint], key: SpendKey) -> Vec<Series> {
    let mut totals: HashMap<String, i64> = HashMap::new();
    for p in spend {
        *totals.entry(key(p)).or_default() += p.cost_micros;
    }
    let mut ranked: Vec<(String, i64)> = totals.into_iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let shown: BTreeSet<String> = ranked.into_iter().take(7).map(|r| r.0).collect();
    let mut series: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for p in spend {
        let Some(i) = frame.index(p.t) else { continue };
        let name = Some(key(p))
            .filter(|k| shown.contains(k))
            .unwrap_or_else(|| "other".to_string());
        series
            .entry(name)
            .or_insert_with(|| vec![0.0; frame.points])[i] += p.cost_micros as f64 / 1e6;
    }
    series
        .into_iter()
        .map(|(name, values)| Series { name, values })
        .collect()
}

fn group_label(name: &str) -> String {
    if name.is_empty() {
        "(no feature)".into()
    } else {
        name.to_string()
    }
}

fn per_thousand(micros: i64, tokens: i64) -> f64 {
    if tokens <= 0 {
        0.0
    } else {
        micros as f64 / 1e6 / tokens as f64 * 1000.0
    }
}

fn budget_charts(budgets: &[data::BudgetBurn], scope: &Scope) -> String {
    if budgets.is_empty() {
        return "<p class=\"empty\">No budget with a spending limit.</p>".into();
    }
    let mut out = String::new();
    for (n, b) in budgets.iter().enumerate() {
        // Cumulative spend at each step so far; the steps of the period still to come are left
        // out rather than drawn flat.
        let mut sum = 0i64;
        let cumulative: Vec<f64> = b
            .steps
            .iter()
            .map(|s| {
                sum += s;
                sum as f64 / 1e6
            })
            .collect();
        let labels: Vec<String> = (0..cumulative.len())
            .map(|i| {
                let step = if b.period == "month" {
                    TimeDelta::days(i as i64)
                } else {
                    TimeDelta::hours(i as i64)
                };
                let t = b.period_start + step;
                if b.period == "month" {
                    t.format("%m-%d").to_string()
                } else {
                    t.format("%H:00").to_string()
                }
            })
            .collect();
        let rules: Vec<Rule> = [
            ("soft limit", b.soft_limit_micros),
            ("hard limit", b.hard_limit_micros),
        ]
        .iter()
        .filter_map(|(label, v)| {
            v.map(|v| Rule {
                label: label.to_string(),
                value: v as f64 / 1e6,
            })
        })
        .collect();
        let feature = if b.feature.is_empty() {
            "all features".to_string()
        } else {
            format!("feature {}", b.feature)
        };
        let whose = match scope {
            Scope::Operator => format!("{}, ", b.tenant_id),
            Scope::Tenant { .. } => String::new(),
        };
        let title = format!(
            "{whose}{feature}, this {}: {} booked, {} reserved",
            b.period,
            Unit::Dollars.format(b.booked_micros as f64 / 1e6),
            Unit::Dollars.format(b.reserved_micros as f64 / 1e6),
        );
        let series = [Series {
            name: "spent".into(),
            values: cumulative,
        }];
        out.push_str(&figure(
            &format!("budget-{n}"),
            &title,
            &svg::lines(&title, Unit::Dollars, &labels, &series, &rules),
        ));
    }
    out
}

fn delivery_charts(
    frame: &Frame,
    hooks: &[data::DeliveryPoint],
    letters: &[data::DeadLetterCount],
) -> String {
    let labels = frame.labels();
    let mut by_state: BTreeMap<&str, Vec<f64>> = ["delivered", "pending", "failed"]
        .into_iter()
        .map(|s| (s, vec![0.0; frame.points]))
        .collect();
    for h in hooks {
        let (Some(i), Some(series)) = (frame.index(h.t), by_state.get_mut(h.state.as_str())) else {
            continue;
        };
        series[i] += h.deliveries as f64;
    }
    let series: Vec<Series> = ["delivered", "pending", "failed"]
        .iter()
        .map(|s| Series {
            name: s.to_string(),
            values: by_state.remove(s).unwrap_or_default(),
        })
        .collect();
    let reasons: Vec<String> = letters.iter().map(|l| l.reason_code.clone()).collect();
    let counts = Series {
        name: "dead letters".into(),
        values: letters.iter().map(|l| l.letters as f64).collect(),
    };
    let mut out = figure(
        "webhooks",
        "Webhook deliveries by state now, by when they were created",
        &svg::stacked_bars("webhook deliveries", Unit::Count, &labels, &series),
    );
    out.push_str(&figure(
        "dead-letters",
        "Dead letters by reason",
        &svg::bars("dead letters", Unit::Count, &reasons, &[counts]),
    ));
    out
}
