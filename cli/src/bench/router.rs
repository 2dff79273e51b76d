//! `ragq bench --router`: the routing decision's own time, per call, over a 50-model catalog with
//! a cost-ranked policy and constraints, as quantiles (criterion in `benches/` reports means).

use std::fmt::Write;
use std::sync::Arc;
use std::time::Instant;

use ragq::config::Config;
use ragq::providers::{ChatMessage, ChatRequest};
use ragq::routing::{CallScope, Router};

const MODELS: usize = 50;
const DECISIONS: usize = 200_000;

/// Fifty models over five providers, prices and tiers spread, half in `eu`.
fn catalog_toml() -> String {
    let mut t = String::new();
    for p in 0..5 {
        let _ = write!(t, "[[providers]]\nname = \"p{p}\"\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"\n");
    }
    for m in 0..MODELS {
        let _ = write!(
            t,
            "[[models]]\nname = \"m{m}\"\nprovider = \"p{}\"\nmodel_id = \"m{m}\"\n\
             input_price_micros_per_mtok = {}\noutput_price_micros_per_mtok = {}\ncontext_window = {}\n\
             quality_tier = {}\nregion = \"{}\"\n",
            m % 5,
            100_000 + (m * 37_919) % 3_000_000,
            400_000 + (m * 91_331) % 12_000_000,
            8_192 << (m % 5),
            1 + m % 3,
            if m % 2 == 0 { "eu" } else { "us" },
        );
    }
    let models: Vec<String> = (0..MODELS).map(|m| format!("\"m{m}\"")).collect();
    let _ = write!(
        t,
        "[policies.cost-50]\nmodels = [{}]\nstrategy = \"cost\"\nregions = [\"eu\", \"us\"]\nmin_quality = 1\nplans = {{ free = [\"m0\", \"m2\", \"m4\"], \"*\" = [{}] }}\n",
        models.join(", "),
        models.join(", ")
    );
    t
}

pub fn run(json: bool) -> anyhow::Result<()> {
    let cfg = Config::from_toml(&catalog_toml())?;
    let router = Router::new(Arc::new(cfg.catalog), cfg.retry)?;
    let request = ChatRequest {
        messages: vec![ChatMessage {
            role: "user".into(),
            content: "Summarise support ticket 42: the customer cannot export invoices".into(),
        }],
        max_tokens: Some(256),
        temperature: None,
        call_id: Some("acme/job-1/1/0".into()),
        counted_input_tokens: None,
        credential: None,
    };
    let scope = CallScope {
        plan: Some("pro"),
        cost_cap_micros: None,
        own_keys: None,
    };
    // Warm up, then time each decision on its own.
    for _ in 0..10_000 {
        std::hint::black_box(router.plan("cost-50", &request, scope)?);
    }
    let mut nanos: Vec<u64> = Vec::with_capacity(DECISIONS);
    for _ in 0..DECISIONS {
        let started = Instant::now();
        std::hint::black_box(router.plan("cost-50", &request, scope)?);
        nanos.push(u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX));
    }
    nanos.sort_unstable();
    let at = |q: f64| nanos[((nanos.len() - 1) as f64 * q) as usize] as f64 / 1000.0;
    let (p50, p99, p999) = (at(0.5), at(0.99), at(0.999));
    if json {
        println!(
            "{}",
            serde_json::json!({"models": MODELS, "decisions": DECISIONS, "p50_us": p50, "p99_us": p99, "p999_us": p999})
        );
    } else {
        println!("== ragq bench --router: {DECISIONS} decisions, {MODELS}-model cost-ranked policy with constraints");
        println!("decision time p50 {p50:.2} us, p99 {p99:.2} us, p99.9 {p999:.2} us");
    }
    Ok(())
}
