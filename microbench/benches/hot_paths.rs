//! Criterion micro-benchmarks of the pure functions on every job's path:
//! `cargo bench -p ragq-microbench` (figures in BENCHMARKS.md).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;

use chrono::{TimeZone, Utc};
use criterion::{criterion_group, criterion_main, Criterion};
use ragq::jobs::JobMessage;
use ragq::providers::{ChatMessage, ChatRequest};
use ragq::scheduler::cron::CronSchedule;
use ragq::spend::budget::{admit, AdmissionRequest, BudgetState, Estimate, OnLimit};
use ragq::spend::Price;
use serde_json::json;

fn job(prompts: usize) -> Vec<u8> {
    let prompts: Vec<_> = (0..prompts)
        .map(|i| json!({"prompt": format!("Summarise support ticket {i}: the customer cannot export last month's invoices as CSV")}))
        .collect();
    json!({"id": "bench-1", "tenant": "tenant-0001", "kind": "batch.complete", "webhook_url": "http://127.0.0.1:9/hook",
           "input": {"prompts": prompts, "max_tokens": 32}, "tags": {"feature": "bench", "plan": "pro"}})
    .to_string()
    .into_bytes()
}

fn parsing(c: &mut Criterion) {
    let small = job(1);
    let large = job(100);
    c.bench_function("parse job message, 1 prompt (333 B)", |b| {
        b.iter(|| JobMessage::parse(black_box(&small), 1 << 20).unwrap())
    });
    c.bench_function("parse job message, 100 prompts (11 KiB)", |b| {
        b.iter(|| JobMessage::parse(black_box(&large), 1 << 20).unwrap())
    });
}

fn signing(c: &mut Criterion) {
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let payload = vec![b'x'; 1024];
    c.bench_function("sign webhook, 1 KiB payload", |b| {
        b.iter(|| {
            ragq::webhooks::signature::sign(secret, "msg_1", 1_764_000_000, black_box(&payload))
                .unwrap()
        })
    });
}

fn routing(c: &mut Criterion) {
    let request = ChatRequest {
        messages: vec![ChatMessage {
            role: "user".into(),
            content: "Summarise support ticket 42 in one line".into(),
        }],
        max_tokens: Some(256),
        temperature: None,
        call_id: None,
        counted_input_tokens: None,
        credential: None,
    };
    let prices: Vec<Price> = (0..50u64)
        .map(|i| Price {
            input_micros_per_mtok: 100_000 * (i + 1),
            output_micros_per_mtok: 400_000 * (i + 1),
        })
        .collect();
    c.bench_function("budget cap filter over a 50-model policy", |b| {
        b.iter(|| {
            let cap = black_box(2_000);
            prices
                .iter()
                .filter(|p| request.worst_case_micros(p) <= cap)
                .count()
        })
    });
    let input = JobMessage::parse(&job(10), 1 << 20)
        .unwrap()
        .batch_input()
        .unwrap();
    c.bench_function("estimate a 10-prompt job over 50 models", |b| {
        b.iter(|| ragq_workers::batch_complete::estimate(black_box(&input), &prices, 1024))
    });
}

fn admission(c: &mut Criterion) {
    let budget = |id: i64, feature: &str| BudgetState {
        id,
        tenant_id: "acme".into(),
        feature: feature.into(),
        period: "month".into(),
        period_start: chrono::NaiveDate::from_ymd_opt(2026, 11, 1).unwrap(),
        hard_limit_micros: Some(i64::MAX / 4),
        job_quota: Some(1 << 40),
        token_quota: None,
        on_limit: OnLimit::Fail,
        cost_micros: 0,
        tokens: 0,
        jobs: 0,
        reserved_micros: 0,
        reserved_tokens: 0,
        reserved_jobs: 0,
    };
    let asks: Vec<AdmissionRequest<'_>> = (0..256)
        .map(|_| AdmissionRequest {
            tenant: "acme",
            feature: "faq",
            estimate: Estimate {
                max_micros: 1_000,
                min_micros: 100,
                tokens: 2_000,
                calls: 2,
            },
        })
        .collect();
    c.bench_function("admit a 256-job claim batch against 2 budgets", |b| {
        b.iter(|| {
            let mut states = vec![budget(1, ""), budget(2, "faq")];
            admit(&mut states, black_box(&asks))
        })
    });
}

fn scheduling(c: &mut Criterion) {
    let nightly = CronSchedule::parse("30 2 * * *", "Europe/Berlin").unwrap();
    let at = Utc.with_ymd_and_hms(2026, 11, 25, 12, 0, 0).unwrap();
    c.bench_function("next slot of a nightly schedule in Europe/Berlin", |b| {
        b.iter(|| nightly.next_after(black_box(at)))
    });
    let dst = Utc.with_ymd_and_hms(2026, 3, 29, 0, 30, 0).unwrap();
    c.bench_function("next slot across a daylight-saving change", |b| {
        b.iter(|| nightly.next_after(black_box(dst)))
    });
}

fn retrieval(c: &mut Criterion) {
    use ragq::retrieval::{chunk, Hit, PromptTemplate};
    use ragq_workers::rag_answer::{assemble, PromptBudget, Template};
    let template = PromptTemplate {
        system: "Answer using only the numbered context passages. Cite passages as [n].".into(),
        user: "Context:\n{context}\n\nQuestion: {question}".into(),
    };
    let hits: Vec<Hit> = (0..5)
        .map(|i| Hit {
            document_id: format!("doc-{i}"),
            chunk_index: 0,
            score: 0.8,
            text: format!("Passage {i}: refunds are paid to the original card within 14 days of the return arriving. ").repeat(10),
            metadata: Default::default(),
        })
        .collect();
    let budget = PromptBudget {
        tokens: 15_000,
        bytes: u64::MAX,
    };
    c.bench_function(
        "assemble a rag.answer prompt from 5 chunks (counted tokens)",
        |b| {
            b.iter(|| {
                assemble(
                    &Template::Configured(&template),
                    black_box("How long do refunds take?"),
                    &hits,
                    budget,
                )
            })
        },
    );
    let document = "Refunds are paid to the original card within 14 days. ".repeat(400);
    let spec = chunk::ChunkSpec {
        tokens: 256,
        overlap: 32,
    };
    c.bench_function(
        "chunk a 22 KB document (256-token chunks, 32 overlap)",
        |b| b.iter(|| chunk::split(black_box(&document), spec)),
    );
}

/// The outbound URL policy as a worker runs it on every job with a webhook (and the sender's
/// resolver on every delivery): the form alone, an address literal, and a name resolved through
/// the system resolver (`localhost`, from /etc/hosts: nothing leaves the machine).
fn url_policy(c: &mut Criterion) {
    use ragq::webhooks::url_policy::UrlPolicy;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let policy = UrlPolicy::new(
        UrlPolicy::parse_ranges(&["127.0.0.0/8".into()]).unwrap(),
        false,
    );
    c.bench_function("url policy: form of a named https URL (no DNS)", |b| {
        b.iter(|| {
            policy
                .check_form(black_box("https://hooks.acme.example/ragq/v1?tenant=acme"))
                .unwrap()
        })
    });
    c.bench_function("url policy: full check, address literal", |b| {
        b.iter(|| {
            rt.block_on(policy.check(black_box("http://127.0.0.1:9/hook")))
                .unwrap()
        })
    });
    c.bench_function(
        "url policy: full check, name via the system resolver",
        |b| {
            b.iter(|| {
                rt.block_on(policy.check(black_box("http://localhost:9/hook")))
                    .unwrap()
            })
        },
    );
}

/// Redaction over 1 KB of prompt text: the cost per KB a `mask` policy (every built-in detector)
/// adds to a job, without personal data and with six values in it.
fn redaction(c: &mut Criterion) {
    use ragq::redaction::{Applied, RawPolicy, RawRedaction, RedactionConfig};
    let mut raw = RawRedaction::default();
    let mask = RawPolicy {
        mode: "mask".into(),
        kinds: None,
        restore: false,
    };
    raw.policies.insert("mask".into(), mask);
    raw.tenants.insert("acme".into(), "mask".into());
    let mut problems = Vec::new();
    let cfg = RedactionConfig::from_raw(&raw, &mut problems);
    assert!(problems.is_empty(), "{problems:?}");
    let Some(policy) = cfg.policy_for("acme", None) else {
        return;
    };
    let prose = "The customer says the nightly export stalls at 80 percent since version 4.2 \
                 and asks whether the retry at 03:00 can run on the 2nd of each month. ";
    let clean: String = prose.repeat(8).chars().take(1024).collect();
    let values = " Reach jane.doe@example.com or +44 20 7946 0958, card 4111 1111 1111 1111, \
                  IBAN GB82 WEST 1234 5698 7654 32, from 192.168.1.20, SSN 078-05-1120.";
    let with_pii: String = (prose.repeat(5) + values).chars().take(1024).collect();
    c.bench_function("redaction: mask 1 KB without personal data", |b| {
        b.iter(|| policy.redact_text(black_box(&clean), &mut Applied::default()))
    });
    c.bench_function("redaction: mask 1 KB holding six values", |b| {
        b.iter(|| policy.redact_text(black_box(&with_pii), &mut Applied::default()))
    });
}

fn prompt_templates(c: &mut Criterion) {
    use ragq::prompts::render::{render, Limits};
    let template = "You summarize support tickets for {{ team }}.\n\
        Ticket {{ ticket.id }}{% if ticket.urgent %} (urgent){% endif %} from {{ ticket.customer }}:\n\
        {% for line in ticket.lines %}- {{ line }}\n{% endfor %}Answer in {{ words }} words.";
    let variables = serde_json::json!({
        "team": "billing", "words": 40,
        "ticket": {"id": "T-1042", "urgent": true, "customer": "Acme",
                   "lines": ["Invoice 7 was charged twice.", "Please refund one.", "Card ends 4242."]}
    });
    c.bench_function("render a ticket-summary prompt template (3 lines)", |b| {
        b.iter(|| {
            render(
                black_box(template),
                black_box(&variables),
                Limits::default(),
            )
        })
    });
    let version = ragq::prompts::store::PromptVersion {
        tenant_id: "acme".into(),
        name: "ticket-summary".into(),
        version: 1,
        system_template: None,
        user_template: template.into(),
        variables_schema: serde_json::json!({"type": "object", "required": ["team", "ticket", "words"],
            "properties": {"team": {"type": "string"}, "words": {"type": "integer", "maximum": 200},
                "ticket": {"type": "object", "required": ["id", "lines"], "properties": {
                    "id": {"type": "string"}, "urgent": {"type": "boolean"},
                    "lines": {"type": "array", "items": {"type": "string", "maxLength": 2000}}}}}}),
        defaults: serde_json::json!({}),
    };
    let field = "input.prompts[0].template";
    c.bench_function(
        "compile a prompt's variables schema and check the variables (once per job)",
        |b| {
            b.iter(|| {
                ragq::prompts::pin::Checked::new(black_box(version.clone()), field)
                    .and_then(|c| c.check(black_box(&variables), field))
            })
        },
    );
    let checked = ragq::prompts::pin::Checked::new(version, field).expect("the schema compiles");
    c.bench_function(
        "check a prompt's variables against its compiled schema (each prompt)",
        |b| b.iter(|| checked.check(black_box(&variables), field)),
    );
}

criterion_group!(
    benches,
    parsing,
    signing,
    routing,
    admission,
    scheduling,
    retrieval,
    url_policy,
    redaction,
    prompt_templates
);
criterion_main!(benches);
