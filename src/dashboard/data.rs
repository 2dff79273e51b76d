//! What the dashboard reads from Postgres for one window and one scope. Every statement filters by
//! the scope's tenant (`$tenant IS NULL` only for the operator), so a tenant's page is built from
//! its own rows alone.
//!
//! The page reads them in one read-only transaction, so every chart shows the same moment.
//!
//! Sources: `job_stats` (committed with each outcome), `provider_stats` and `provider_breakers`
//! (written by each worker every few seconds), the ledger (hour and day windows) or its daily
//! aggregates (30 days), `budgets`/`budget_usage`, `webhook_deliveries` and `dead_letters`.

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use sqlx::PgConnection;

/// The time span a page shows, and the width of its points.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    Hour,
    Day,
    Month,
}

impl Window {
    pub const ALL: [Window; 3] = [Window::Hour, Window::Day, Window::Month];

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "hour" | "1h" => Some(Self::Hour),
            "day" | "24h" => Some(Self::Day),
            "30d" | "month" => Some(Self::Month),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hour => "hour",
            Self::Day => "day",
            Self::Month => "30d",
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Self::Hour => "last hour",
            Self::Day => "last 24 hours",
            Self::Month => "last 30 days",
        }
    }

    fn step(self) -> TimeDelta {
        match self {
            Self::Hour => TimeDelta::minutes(1),
            Self::Day => TimeDelta::minutes(15),
            Self::Month => TimeDelta::hours(6),
        }
    }

    fn points(self) -> i32 {
        match self {
            Self::Hour => 60,
            Self::Day => 96,
            Self::Month => 120,
        }
    }
}

/// The x positions of a window: `points` steps ending with the one that holds `now`.
#[derive(Debug, Clone)]
pub struct Frame {
    pub window: Window,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub step: TimeDelta,
    pub points: usize,
}

impl Frame {
    pub fn new(window: Window, now: DateTime<Utc>) -> Self {
        let step = window.step();
        let to = now.duration_trunc(step).unwrap_or(now) + step;
        let from = to - step * window.points();
        Self {
            window,
            from,
            to,
            step,
            points: usize::try_from(window.points()).unwrap_or(0),
        }
    }

    /// Thirty days by day: how spend reads over 30 days, from the daily aggregates.
    pub fn by_day(now: DateTime<Utc>) -> Self {
        let step = TimeDelta::days(1);
        let to = now.duration_trunc(step).unwrap_or(now) + step;
        Self {
            window: Window::Month,
            from: to - step * 30,
            to,
            step,
            points: 30,
        }
    }

    /// The position of a point's start time, if it is inside the frame.
    pub fn index(&self, t: DateTime<Utc>) -> Option<usize> {
        if t < self.from || t >= self.to {
            return None;
        }
        let offset = (t - self.from).num_seconds() / self.step.num_seconds().max(1);
        usize::try_from(offset).ok()
    }

    pub fn labels(&self) -> Vec<String> {
        let format = match (self.window, self.step.num_days()) {
            (Window::Month, 1) => "%m-%d",
            (Window::Month, _) => "%m-%d %H:00",
            _ => "%H:%M",
        };
        (0..self.points)
            .map(|i| {
                let t = self.from + self.step * i32::try_from(i).unwrap_or(0);
                t.format(format).to_string()
            })
            .collect()
    }

    fn step_secs(&self) -> f64 {
        self.step.num_seconds() as f64
    }

    pub fn step_minutes(&self) -> f64 {
        self.step_secs() / 60.0
    }
}

/// Finished attempts of one point, kind and outcome, with their latency histograms.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct JobPoint {
    pub t: DateTime<Utc>,
    pub kind: String,
    pub outcome: String,
    pub jobs: i64,
    pub total_ms: Vec<i64>,
    pub work_ms: Vec<i64>,
}

pub async fn jobs(
    conn: &mut PgConnection,
    frame: &Frame,
    tenant: Option<&str>,
) -> Result<Vec<JobPoint>, sqlx::Error> {
    sqlx::query_as(
        "SELECT date_bin(make_interval(secs => $1), bucket, $2) AS t, kind, outcome, \
                sum(jobs)::int8 AS jobs, ragq_hist_sum(total_ms) AS total_ms, \
                ragq_hist_sum(work_ms) AS work_ms \
         FROM job_stats WHERE bucket >= $2 AND bucket < $3 AND tenant_id = $4 \
         GROUP BY 1, 2, 3",
    )
    .bind(frame.step_secs())
    .bind(frame.from)
    .bind(frame.to)
    .bind(tenant.unwrap_or(crate::telemetry::stats::ALL_TENANTS))
    .fetch_all(&mut *conn)
    .await
}

/// Calls to one model with one outcome over a span, with their latency histogram.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ProviderTally {
    pub provider: String,
    pub model: String,
    pub outcome: String,
    pub calls: i64,
    pub latency_ms: Vec<i64>,
}

/// Provider call outcomes since `from`, over every worker (providers are shared by all tenants;
/// the page shows tenants their rates, not the platform's volumes).
pub async fn provider_outcomes(
    conn: &mut PgConnection,
    from: DateTime<Utc>,
) -> Result<Vec<ProviderTally>, sqlx::Error> {
    sqlx::query_as(
        "SELECT provider, model, outcome, sum(calls)::int8 AS calls, \
                ragq_hist_sum(latency_ms) AS latency_ms \
         FROM provider_stats WHERE bucket >= $1 GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
    )
    .bind(from.duration_trunc(TimeDelta::minutes(1)).unwrap_or(from))
    .fetch_all(&mut *conn)
    .await
}

/// Each model's breakers as the live workers last reported them.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct BreakerCount {
    pub model: String,
    pub open: i64,
    pub half_open: i64,
    pub workers: i64,
}

pub async fn breakers(conn: &mut PgConnection) -> Result<Vec<BreakerCount>, sqlx::Error> {
    sqlx::query_as(
        "SELECT model, count(*) FILTER (WHERE b.state = 'open') AS open, \
                count(*) FILTER (WHERE b.state = 'half_open') AS half_open, count(*) AS workers \
         FROM provider_breakers b JOIN worker_leases w USING (worker_id) \
         WHERE w.expires_at > now() GROUP BY 1 ORDER BY 1",
    )
    .fetch_all(&mut *conn)
    .await
}

/// Spend of one point, tenant, feature and model.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SpendPoint {
    pub t: DateTime<Utc>,
    pub tenant_id: String,
    pub feature: String,
    pub model: String,
    pub cost_micros: i64,
}

/// Spend over the window: from the ledger at the window's step, or from the daily aggregates by
/// day for 30 days (then the frame is [`Frame::by_day`]).
pub async fn spend_over_time(
    conn: &mut PgConnection,
    frame: &Frame,
    tenant: Option<&str>,
) -> Result<Vec<SpendPoint>, sqlx::Error> {
    let sql = if frame.step.num_days() >= 1 {
        "SELECT (day::timestamp AT TIME ZONE 'UTC') AS t, tenant_id, feature, model, \
                sum(cost_micros)::int8 AS cost_micros \
         FROM spend_daily \
         WHERE day >= ($2 AT TIME ZONE 'UTC')::date AND day < ($3 AT TIME ZONE 'UTC')::date \
           AND ($4::text IS NULL OR tenant_id = $4) AND $1::float8 > 0 \
         GROUP BY 1, 2, 3, 4"
    } else {
        "SELECT date_bin(make_interval(secs => $1), occurred_at, $2) AS t, tenant_id, feature, \
                model, sum(cost_micros)::int8 AS cost_micros \
         FROM provider_calls \
         WHERE occurred_at >= $2 AND occurred_at < $3 AND ($4::text IS NULL OR tenant_id = $4) \
         GROUP BY 1, 2, 3, 4"
    };
    sqlx::query_as(sql)
        .bind(frame.step_secs())
        .bind(frame.from)
        .bind(frame.to)
        .bind(tenant)
        .fetch_all(&mut *conn)
        .await
}

/// Spend, tokens and calls per model over the window, and the calls the response cache answered
/// (not in `calls`) with what they saved.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ModelSpend {
    pub model: String,
    pub calls: i64,
    pub tokens: i64,
    pub cost_micros: i64,
    pub cache_hits: i64,
    pub saved_micros: i64,
}

pub async fn spend_by_model(
    conn: &mut PgConnection,
    frame: &Frame,
    tenant: Option<&str>,
) -> Result<Vec<ModelSpend>, sqlx::Error> {
    let sql = if frame.step.num_days() >= 1 {
        "SELECT model, sum(calls)::int8 AS calls, sum(input_tokens + output_tokens)::int8 AS tokens, \
                sum(cost_micros)::int8 AS cost_micros, sum(cache_hits)::int8 AS cache_hits, \
                sum(saved_micros)::int8 AS saved_micros \
         FROM spend_daily \
         WHERE day >= ($1 AT TIME ZONE 'UTC')::date AND ($2::text IS NULL OR tenant_id = $2) \
         GROUP BY 1 ORDER BY 4 DESC"
    } else {
        "SELECT model, count(*) FILTER (WHERE cache_hit IS NULL) AS calls, \
                sum(input_tokens + output_tokens)::int8 AS tokens, sum(cost_micros)::int8 AS cost_micros, \
                count(*) FILTER (WHERE cache_hit IS NOT NULL) AS cache_hits, \
                sum(saved_micros)::int8 AS saved_micros \
         FROM provider_calls WHERE occurred_at >= $1 AND ($2::text IS NULL OR tenant_id = $2) \
         GROUP BY 1 ORDER BY 4 DESC"
    };
    sqlx::query_as(sql)
        .bind(frame.from)
        .bind(tenant)
        .fetch_all(&mut *conn)
        .await
}

/// One saved prompt version over the window: its calls' spend and mean latency, and the prompts
/// finished jobs rendered from it and how many failed.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PromptVersionStats {
    pub tenant_id: String,
    pub prompt: String,
    pub version: i32,
    pub calls: i64,
    pub cost_micros: i64,
    pub latency_ms: i64,
    pub rendered: i64,
    pub failed: i64,
}

pub async fn prompt_versions(
    conn: &mut PgConnection,
    frame: &Frame,
    tenant: Option<&str>,
) -> Result<Vec<PromptVersionStats>, sqlx::Error> {
    let sql = [
        "WITH spend AS (SELECT tenant_id, prompt, prompt_version, sum(calls)::int8 AS calls, \
                sum(cost_micros)::int8 AS cost_micros, sum(latency_ms)::int8 AS latency_ms \
              FROM spend_daily WHERE prompt <> '' AND day >= ($1 AT TIME ZONE 'UTC')::date \
                AND ($2::text IS NULL OR tenant_id = $2) GROUP BY 1, 2, 3), \
         runs AS (SELECT tenant_id, prompt, prompt_version, count(*) AS rendered, \
                count(*) FILTER (WHERE failed) AS failed FROM (",
        include_str!("../spend/sql/prompt_runs.sql"),
        ") r WHERE created_at >= $1 AND ($2::text IS NULL OR tenant_id = $2) \
                AND EXISTS (SELECT 1 FROM spend) \
              GROUP BY 1, 2, 3) \
         SELECT tenant_id, prompt, prompt_version AS version, coalesce(calls, 0) AS calls, \
                coalesce(cost_micros, 0) AS cost_micros, coalesce(latency_ms, 0) AS latency_ms, \
                coalesce(rendered, 0) AS rendered, coalesce(failed, 0) AS failed \
         FROM spend FULL JOIN runs USING (tenant_id, prompt, prompt_version) ORDER BY 1, 2, 3",
    ]
    .concat();
    sqlx::query_as(&sql)
        .bind(frame.from)
        .bind(tenant)
        .fetch_all(&mut *conn)
        .await
}

/// A budget in its current period: its limits, what is booked and reserved, and the cumulative
/// spend at each step of the period so far (by day for monthly budgets, by hour for daily ones).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct BudgetBurn {
    pub tenant_id: String,
    pub feature: String,
    pub period: String,
    pub soft_limit_micros: Option<i64>,
    pub hard_limit_micros: Option<i64>,
    pub booked_micros: i64,
    pub reserved_micros: i64,
    pub period_start: DateTime<Utc>,
    /// Spend per step since the period started (hours or days), step 0 first.
    pub steps: Vec<i64>,
}

pub async fn budgets(
    conn: &mut PgConnection,
    tenant: Option<&str>,
) -> Result<Vec<BudgetBurn>, sqlx::Error> {
    sqlx::query_as(
        "WITH b AS ( \
           SELECT b.*, date_trunc(b.period, now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS period_start \
           FROM budgets b WHERE ($1::text IS NULL OR b.tenant_id = $1) \
             AND (b.soft_limit_micros IS NOT NULL OR b.hard_limit_micros IS NOT NULL) \
           ORDER BY b.tenant_id, b.feature, b.period LIMIT 12) \
         SELECT b.tenant_id, b.feature, b.period, b.soft_limit_micros, b.hard_limit_micros, \
                coalesce(u.cost_micros, 0) AS booked_micros, \
                coalesce(u.reserved_micros, 0) AS reserved_micros, b.period_start, \
                CASE WHEN b.period = 'month' THEN ARRAY( \
                    SELECT coalesce(sum(d.cost_micros), 0)::int8 \
                    FROM generate_series(0, extract(day FROM now() AT TIME ZONE 'UTC')::int - 1) AS s \
                    LEFT JOIN spend_daily d ON d.tenant_id = b.tenant_id \
                      AND (b.feature = '' OR d.feature = b.feature) \
                      AND d.day = (b.period_start AT TIME ZONE 'UTC')::date + s \
                    GROUP BY s ORDER BY s) \
                ELSE ARRAY( \
                    SELECT coalesce(sum(c.cost_micros), 0)::int8 \
                    FROM generate_series(0, extract(hour FROM now() AT TIME ZONE 'UTC')::int) AS s \
                    LEFT JOIN provider_calls c ON c.tenant_id = b.tenant_id \
                      AND (b.feature = '' OR c.feature = b.feature) \
                      AND c.occurred_at >= b.period_start + make_interval(hours => s) \
                      AND c.occurred_at < b.period_start + make_interval(hours => s + 1) \
                    GROUP BY s ORDER BY s) END AS steps \
         FROM b LEFT JOIN budget_usage u \
           ON u.budget_id = b.id AND u.period_start = (b.period_start AT TIME ZONE 'UTC')::date",
    )
    .bind(tenant)
    .fetch_all(&mut *conn)
    .await
}

/// Webhook deliveries created in one point, by their state now.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DeliveryPoint {
    pub t: DateTime<Utc>,
    pub state: String,
    pub deliveries: i64,
}

pub async fn deliveries(
    conn: &mut PgConnection,
    frame: &Frame,
    tenant: Option<&str>,
) -> Result<Vec<DeliveryPoint>, sqlx::Error> {
    sqlx::query_as(
        "SELECT date_bin(make_interval(secs => $1), created_at, $2) AS t, state, count(*) AS deliveries \
         FROM webhook_deliveries \
         WHERE created_at >= $2 AND created_at < $3 AND ($4::text IS NULL OR tenant_id = $4) \
         GROUP BY 1, 2",
    )
    .bind(frame.step_secs())
    .bind(frame.from)
    .bind(frame.to)
    .bind(tenant)
    .fetch_all(&mut *conn)
    .await
}

/// Dead letters in the window by reason (the operator also sees those of no known tenant).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DeadLetterCount {
    pub reason_code: String,
    pub letters: i64,
}

pub async fn dead_letters(
    conn: &mut PgConnection,
    frame: &Frame,
    tenant: Option<&str>,
) -> Result<Vec<DeadLetterCount>, sqlx::Error> {
    sqlx::query_as(
        "SELECT reason_code, count(*) AS letters FROM dead_letters \
         WHERE at >= $1 AND ($2::text IS NULL OR tenant_id = $2) GROUP BY 1 ORDER BY 2 DESC LIMIT 12",
    )
    .bind(frame.from)
    .bind(tenant)
    .fetch_all(&mut *conn)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn a_frame_ends_with_the_step_holding_now() {
        let now = Utc.with_ymd_and_hms(2026, 11, 30, 21, 7, 30).unwrap();
        let f = Frame::new(Window::Day, now);
        assert_eq!(f.to, Utc.with_ymd_and_hms(2026, 11, 30, 21, 15, 0).unwrap());
        assert_eq!(f.from, f.to - TimeDelta::hours(24));
        assert_eq!(f.index(now), Some(95));
        assert_eq!(f.index(f.from), Some(0));
        assert_eq!(f.index(f.to), None);
        assert_eq!(f.labels().len(), 96);
        assert_eq!(Window::parse("30d"), Some(Window::Month));
        assert_eq!(Window::parse("week"), None);
    }
}
