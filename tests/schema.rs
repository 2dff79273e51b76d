//! The published JSON Schema and the worker's validation accept and refuse the same messages.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{json, Value};

fn cases() -> Vec<(&'static str, Value)> {
    let base = json!({
        "id": "job-1", "tenant": "acme", "kind": "batch.complete",
        "input": {"prompts": [{"prompt": "hi"}]}
    });
    let with = |f: &dyn Fn(&mut Value)| {
        let mut v = base.clone();
        f(&mut v);
        v
    };
    vec![
        ("minimal", base.clone()),
        (
            "full",
            with(&|v| {
                v["policy"] = "reliable".into();
                v["webhook_url"] = "https://example.com/hook".into();
                v["tags"] = json!({"feature": "faq", "plan": "pro"});
                v["input"]["system"] = "be brief".into();
                v["input"]["max_tokens"] = 50.into();
                v["input"]["temperature"] = 0.5.into();
            }),
        ),
        ("unknown field", with(&|v| v["priority"] = 1.into())),
        (
            "cache",
            with(&|v| v["cache"] = json!({"mode": "semantic", "ttl_s": 60, "min_similarity": 0.9})),
        ),
        ("cache off", with(&|v| v["cache"] = json!({"mode": "off"}))),
        (
            "cache mode unknown",
            with(&|v| v["cache"] = json!({"mode": "fuzzy"})),
        ),
        ("cache ttl 0", with(&|v| v["cache"] = json!({"ttl_s": 0}))),
        (
            "cache similarity over 1",
            with(&|v| v["cache"] = json!({"min_similarity": 1.5})),
        ),
        (
            "cache extra field",
            with(&|v| v["cache"] = json!({"mode": "exact", "key": "x"})),
        ),
        ("unknown kind", with(&|v| v["kind"] = "mine".into())),
        (
            "missing input",
            with(&|v| {
                v.as_object_mut().unwrap().remove("input");
            }),
        ),
        (
            "saved prompt by label",
            with(&|v| {
                v["input"]["prompts"] = json!([{"template": {"name": "ticket-summary",
                    "label": "production", "variables": {"ticket": "T-1"}}}])
            }),
        ),
        (
            "saved prompt pinned and rendered",
            with(&|v| {
                v["input"]["prompts"] = json!([{"prompt": "Summarize T-1", "system": "Be brief.",
                    "template": {"name": "ticket-summary", "version": 2, "shared": true}}])
            }),
        ),
        (
            "saved prompt without a name",
            with(&|v| v["input"]["prompts"] = json!([{"template": {"label": "production"}}])),
        ),
        (
            "saved prompt version 0",
            with(&|v| v["input"]["prompts"] = json!([{"template": {"name": "t", "version": 0}}])),
        ),
        (
            "saved prompt bad label",
            with(&|v| {
                v["input"]["prompts"] = json!([{"template": {"name": "t", "label": "Prod uction"}}])
            }),
        ),
        (
            "saved prompt variables not an object",
            with(&|v| {
                v["input"]["prompts"] = json!([{"template": {"name": "t", "variables": [1]}}])
            }),
        ),
        (
            "empty prompts",
            with(&|v| v["input"]["prompts"] = json!([])),
        ),
        (
            "blank prompt",
            with(&|v| v["input"]["prompts"][0]["prompt"] = "  ".into()),
        ),
        (
            "extra input field",
            with(&|v| v["input"]["stream"] = true.into()),
        ),
        ("bad id", with(&|v| v["id"] = "has space".into())),
        ("long id", with(&|v| v["id"] = "x".repeat(129).into())),
        ("bad tenant", with(&|v| v["tenant"] = "Acme".into())),
        (
            "non-http webhook",
            with(&|v| v["webhook_url"] = "ftp://x".into()),
        ),
        ("tag not a string", with(&|v| v["tags"] = json!({"n": 1}))),
        (
            "ingest",
            json!({"id": "i", "tenant": "acme", "kind": "ingest", "input": {"collection": "docs",
                "documents": [{"id": "a", "text": "t", "metadata": {"lang": "en"}}], "delete": ["b"]}}),
        ),
        (
            "ingest without collection",
            json!({"id": "i", "tenant": "acme", "kind": "ingest", "input": {"documents": []}}),
        ),
        (
            "ingest document without text",
            json!({"id": "i", "tenant": "acme", "kind": "ingest", "input": {"collection": "docs",
                "documents": [{"id": "a"}]}}),
        ),
        (
            "ingest document with unknown field",
            json!({"id": "i", "tenant": "acme", "kind": "ingest", "input": {"collection": "docs",
                "documents": [{"id": "a", "text": "t", "title": "x"}]}}),
        ),
        (
            "rag.answer",
            json!({"id": "r", "tenant": "acme", "kind": "rag.answer", "input": {"collection": "docs",
                "question": "why?", "top_k": 3, "score_threshold": 0.2, "template": "default",
                "filter": {"lang": "en", "year": 2026, "public": true, "team": ["a", "b"], "n": [1, 2]},
                "max_tokens": 100, "temperature": 0.1}}),
        ),
        (
            "rag.answer with a saved prompt",
            json!({"id": "r", "tenant": "acme", "kind": "rag.answer", "input": {"collection": "docs",
                "question": "why?", "template": {"name": "faq-answer", "variables": {"tone": "warm"}}}}),
        ),
        (
            "rag.answer with a saved prompt of no name",
            json!({"id": "r", "tenant": "acme", "kind": "rag.answer", "input": {"collection": "docs",
                "question": "why?", "template": {"label": "production"}}}),
        ),
        (
            "rag.answer filter with an object value",
            json!({"id": "r", "tenant": "acme", "kind": "rag.answer", "input": {"collection": "docs",
                "question": "why?", "filter": {"lang": {"$ne": "en"}}}}),
        ),
        (
            "rag.answer filter with a float",
            json!({"id": "r", "tenant": "acme", "kind": "rag.answer", "input": {"collection": "docs",
                "question": "why?", "filter": {"score": 1.5}}}),
        ),
        (
            "rag.answer negative top_k",
            json!({"id": "r", "tenant": "acme", "kind": "rag.answer", "input": {"collection": "docs",
                "question": "why?", "top_k": -1}}),
        ),
        (
            "rag.answer without question",
            json!({"id": "r", "tenant": "acme", "kind": "rag.answer", "input": {"collection": "docs"}}),
        ),
        (
            "zero max_tokens",
            with(&|v| v["input"]["max_tokens"] = 0.into()),
        ),
        (
            "hot temperature",
            with(&|v| v["input"]["temperature"] = 3.into()),
        ),
        ("not an object", json!([1, 2])),
    ]
}

#[test]
fn schema_and_parser_agree() {
    let schema: Value = serde_json::from_str(include_str!("../schemas/job.schema.json")).unwrap();
    let validator = jsonschema::validator_for(&schema).expect("schema compiles");
    for (name, message) in cases() {
        let by_schema = validator.is_valid(&message);
        let by_parser =
            ragq::jobs::JobMessage::parse(message.to_string().as_bytes(), 1 << 20).is_ok();
        assert_eq!(
            by_schema, by_parser,
            "{name}: schema says {by_schema}, parser says {by_parser}"
        );
    }
    assert!(
        validator.is_valid(&cases()[0].1),
        "the minimal message is valid"
    );
}
