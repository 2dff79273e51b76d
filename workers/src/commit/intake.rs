//! Taking messages in: each becomes a `queued` job in one statement per batch, and its tenant's
//! queued count grows with it (see [`super::shares`]). The message is acknowledged once this
//! commits; from then on the job lives in Postgres until a dispatcher takes it.

use std::collections::HashSet;

use serde_json::Value;

use ragq::jobs::Priority;

use super::{IntakeRequest, Taken, Tx};

/// Takes in a batch; the answers come in the order of `requests`. The same id twice in one batch:
/// the first is taken in, the others are known.
pub(super) async fn take_in(
    tx: &mut Tx<'_>,
    requests: &[&IntakeRequest],
) -> Result<Vec<Taken>, sqlx::Error> {
    if requests.is_empty() {
        return Ok(Vec::new());
    }
    let mut seen = HashSet::new();
    let unique: Vec<&IntakeRequest> = (requests.iter().copied())
        .filter(|r| seen.insert((r.job.tenant.as_str(), r.job.id.as_str())))
        .collect();
    let text = |f: fn(&IntakeRequest) -> &str| unique.iter().map(|r| f(r)).collect::<Vec<_>>();
    let inputs: Vec<&Value> = unique.iter().map(|r| &r.job.input).collect();
    let tags: Vec<Value> = (unique.iter())
        .map(|r| serde_json::to_value(&r.job.tags).unwrap_or_default())
        .collect();
    let hooks: Vec<Option<&str>> = unique
        .iter()
        .map(|r| r.job.webhook_url.as_deref())
        .collect();
    let priorities: Vec<i16> = (unique.iter())
        .map(|r| r.job.priority.map_or(0, Priority::rank))
        .collect();
    let traceparents: Vec<Option<&str>> = unique.iter().map(|r| r.traceparent.as_deref()).collect();
    let redactions: Vec<Option<&Value>> = unique.iter().map(|r| r.redaction.as_ref()).collect();
    let caches: Vec<Option<Value>> = (unique.iter())
        .map(|r| r.job.cache.and_then(|c| serde_json::to_value(c).ok()))
        .collect();
    let rows = sqlx::query_file!(
        "sql/intake.sql",
        &text(|r| &r.job.tenant) as &[&str],
        &text(|r| &r.job.id) as &[&str],
        &text(|r| r.job.kind.as_str()) as &[&str],
        &text(|r| &r.job.policy) as &[&str],
        &inputs as &[&Value],
        &tags,
        &hooks as &[Option<&str>],
        &priorities,
        &traceparents as &[Option<&str>],
        &redactions as &[Option<&Value>],
        &caches as &[Option<Value>],
    )
    .fetch_all(&mut **tx)
    .await?;
    let taken: HashSet<(String, String)> = rows.into_iter().map(|r| (r.tenant_id, r.id)).collect();
    let mut answered = HashSet::new();
    Ok(requests
        .iter()
        .map(|r| {
            let key = (r.job.tenant.clone(), r.job.id.clone());
            if taken.contains(&key) && answered.insert(key) {
                Taken::New
            } else {
                Taken::Known
            }
        })
        .collect())
}
