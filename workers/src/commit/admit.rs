//! Admitting dispatched attempts: each must still hold its job (else it is fenced: its worker's
//! lease ended and the job went to another), then reserves its worst case against its budgets and
//! records the intents of its first calls, in the batch's transaction.

use std::collections::HashSet;
use std::time::Duration;

use ragq::spend::budget::{self, Admission};
use ragq::spend::intents::CallIntent;

use super::{Admit, AdmitRequest, Tx};

/// Admits a batch of attempts; the answers come in the order of `requests`.
pub(super) async fn admit(
    tx: &mut Tx<'_>,
    requests: &[&AdmitRequest],
    has_budget: &(dyn Fn(&str) -> bool + Sync),
    reservation_ttl: Duration,
) -> Result<Vec<Admit>, sqlx::Error> {
    if requests.is_empty() {
        return Ok(Vec::new());
    }
    let tenants: Vec<&str> = requests.iter().map(|r| r.job.tenant.as_str()).collect();
    let ids: Vec<&str> = requests.iter().map(|r| r.job.id.as_str()).collect();
    let attempts: Vec<i32> = requests.iter().map(|r| r.attempt).collect();
    let holding: HashSet<(String, String)> = sqlx::query_file!(
        "sql/admit.sql",
        &tenants as &[&str],
        &ids as &[&str],
        &attempts
    )
    .fetch_all(&mut **tx)
    .await?
    .into_iter()
    .map(|r| (r.tenant_id, r.id))
    .collect();
    let holds = |r: &AdmitRequest| holding.contains(&(r.job.tenant.clone(), r.job.id.clone()));
    let to_reserve: Vec<budget::ReserveRequest<'_>> = (requests.iter())
        .filter(|r| holds(r) && has_budget(&r.job.tenant))
        .map(|r| budget::ReserveRequest {
            tenant: &r.job.tenant,
            job_id: &r.job.id,
            attempt: r.attempt,
            feature: r.job.feature(),
            estimate: r.estimate,
        })
        .collect();
    let mut admissions = budget::reserve(tx, &to_reserve, reservation_ttl)
        .await?
        .into_iter();
    Ok(requests
        .iter()
        .map(|r| match holds(r) {
            false => Admit::Fenced,
            // Admissions come in the order of the budgeted requests.
            true => Admit::Run(
                has_budget(&r.job.tenant)
                    .then(|| admissions.next())
                    .flatten()
                    .unwrap_or(Admission::Admitted {
                        cost_cap_micros: None,
                    }),
            ),
        })
        .collect())
}

/// The intents of the first calls of each admitted attempt.
pub(super) fn admitted_intents(requests: &[&AdmitRequest], answers: &[Admit]) -> Vec<CallIntent> {
    requests
        .iter()
        .zip(answers)
        .filter(|(_, a)| matches!(a, Admit::Run(Admission::Admitted { .. })))
        .flat_map(|(r, _)| r.intents.iter().cloned())
        .collect()
}
