//! One builder for every configuration file the tooling writes (the demo, each benchmark, the test
//! harness): the local services, the sim provider's catalog, and only the settings a caller
//! changes, instead of a hand-written TOML template per caller.

use toml_edit::{DocumentMut, Item, Table, Value};

/// A configuration file being built.
#[derive(Debug, Clone)]
pub struct ConfigFile {
    doc: DocumentMut,
    /// Who wrote it, for the file's first line.
    by: String,
}

/// The sealing key of a local stack, beside its vector store: made (random) on first use and
/// kept, so every process of the stack opens what the others sealed.
fn sealing_key_file(vectors: &str) -> String {
    let path = format!("{}.sealing-key", vectors.trim_end_matches('/'));
    if !std::path::Path::new(&path).exists() {
        if let Some(dir) = std::path::Path::new(&path).parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        // create_new: of two processes making it at once, one writes and the other keeps it.
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let file = options.open(&path);
        if let Ok(mut file) = file {
            use std::io::Write;
            let _ = file.write_all(ragq::keyring::Keyring::generate_key().as_bytes());
        }
    }
    path
}

impl ConfigFile {
    /// A file pointing at the local services: the database, the RabbitMQ vhost and the directory
    /// of the embedded vector store.
    pub fn new(by: &str, database: &str, queue: &str, vectors: &str) -> Self {
        // The local stack's webhook receivers listen on loopback, which the URL policy refuses
        // unless the operator allows it. Demos and tests run pipelines every second or two, and
        // send bursts of requests with one key.
        Self::empty(by)
            .set("database.url", database)
            .set("queue.url", queue)
            .set("retrieval.path", vectors)
            .set("secrets.key_file", sealing_key_file(vectors))
            .list("webhooks.allow_private", ["127.0.0.0/8"])
            .set("scheduler.min_cron_interval_s", 1)
            .set("api.rate_limit_per_s", 10_000)
    }

    /// A file with only the defaults (the local services on their standard ports).
    pub fn empty(by: &str) -> Self {
        Self {
            doc: DocumentMut::new(),
            by: by.to_string(),
        }
    }

    /// Sets `key`, a dotted path whose last part is the key (`queue.prefetch`,
    /// `policies.cheap.models`).
    pub fn set(mut self, key: &str, value: impl Into<Value>) -> Self {
        let (table, key) = key.rsplit_once('.').unwrap_or(("", key));
        let slot = if table.is_empty() {
            self.doc.as_table_mut()
        } else {
            table_mut(&mut self.doc, table)
        };
        slot[key] = Item::Value(value.into());
        self
    }

    /// Sets `table.key` to a list.
    pub fn list<V: Into<Value>>(self, key: &str, values: impl IntoIterator<Item = V>) -> Self {
        let array: toml_edit::Array = values.into_iter().map(Into::into).collect();
        self.set(key, array)
    }

    /// Merges TOML text: its tables' keys are set (replacing ones already set), its arrays of
    /// tables (`[[providers]]`, `[[models]]`) appended. Fails on text that is not TOML.
    pub fn merge(mut self, text: &str) -> Result<Self, toml_edit::TomlError> {
        let other: DocumentMut = text.parse()?;
        for (key, item) in other.iter() {
            match (self.doc.get_mut(key), item) {
                (Some(Item::Table(mine)), Item::Table(theirs)) => {
                    for (k, v) in theirs.iter() {
                        mine[k] = v.clone();
                    }
                }
                (Some(Item::ArrayOfTables(mine)), Item::ArrayOfTables(theirs)) => {
                    for t in theirs.iter() {
                        mine.push(t.clone());
                    }
                }
                _ => {
                    self.doc[key] = item.clone();
                }
            }
        }
        Ok(self)
    }

    /// The sim provider at `sim_url` (calls time out after `timeout_ms`) with its two chat models
    /// of different prices and its embeddings model, without policies.
    pub fn sim_models(self, sim_url: &str, timeout_ms: u64) -> Self {
        let text = format!(
            "[[providers]]\nname = \"sim\"\nkind = \"openai\"\nbase_url = \"{sim_url}\"\n\
             timeout_ms = {timeout_ms}\n{}{}{}",
            model("sim-small", 150_000, 600_000, 16_384, ""),
            model("sim-large", 2_500_000, 10_000_000, 128_000, ""),
            model(
                "sim-embed",
                20_000,
                0,
                8_191,
                "capabilities = [\"embeddings\"]\ndimensions = 256\n"
            ),
        );
        self.merge(&text).unwrap_or_else(|e| unreachable_toml(&e))
    }

    /// [`Self::sim_models`] (5 s timeout) with the default policies over them: `cost-optimized`
    /// (small first) and `reliable` (large first).
    pub fn sim_catalog(self, sim_url: &str) -> Self {
        self.sim_models(sim_url, 5000)
            .list("policies.cost-optimized.models", ["sim-small", "sim-large"])
            .list("policies.reliable.models", ["sim-large", "sim-small"])
    }

    /// The file's text.
    pub fn render(&self) -> String {
        format!("# Written by `{}`.\n{}", self.by, self.doc)
    }
}

impl std::fmt::Display for ConfigFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.render())
    }
}

/// The table at a dotted path, created (implicitly, so it renders only with its keys) if absent.
fn table_mut<'a>(doc: &'a mut DocumentMut, path: &str) -> &'a mut Table {
    let mut table = doc.as_table_mut();
    for part in path.split('.') {
        let entry = table.entry(part).or_insert_with(|| {
            let mut t = Table::new();
            t.set_implicit(true);
            Item::Table(t)
        });
        if !entry.is_table() {
            *entry = Item::Table(Table::new());
        }
        let Some(next) = entry.as_table_mut() else {
            doc_unreachable()
        };
        table = next;
    }
    table
}

fn model(name: &str, input: u64, output: u64, window: u32, extra: &str) -> String {
    format!(
        "[[models]]\nname = \"{name}\"\nprovider = \"sim\"\nmodel_id = \"{name}\"\n\
         input_price_micros_per_mtok = {input}\noutput_price_micros_per_mtok = {output}\n\
         context_window = {window}\n{extra}"
    )
}

/// The sim catalog is fixed text known to parse; reaching this is a bug in this file.
#[allow(clippy::panic)]
fn unreachable_toml(e: &toml_edit::TomlError) -> ! {
    panic!("the sim catalog is not TOML: {e}")
}

#[allow(clippy::panic)]
fn doc_unreachable() -> ! {
    panic!("a table just made a table is not a table")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_built_file_is_a_valid_configuration_with_its_settings() {
        let text = ConfigFile::new("test", "postgres://h/db", "amqp://h/v", "/tmp/v")
            .set("queue.prefetch", 64)
            .list("queue.retry_delays_ms", [100, 300])
            .sim_catalog("http://127.0.0.1:9/v1")
            .merge("[queue]\ndelivery_limit = 2\n[policies.extra]\nmodels = [\"sim-small\"]\n")
            .unwrap()
            .render();
        assert!(text.starts_with("# Written by `test`."), "{text}");
        let cfg = ragq::config::Config::from_toml(&text).unwrap();
        assert_eq!(cfg.queue.prefetch, 64);
        assert_eq!(cfg.queue.delivery_limit, 2);
        assert_eq!(cfg.queue.retry_delays.len(), 2);
        assert_eq!(cfg.database.url, "postgres://h/db");
        assert!(cfg.catalog.policy("extra").is_some());
        assert!(cfg.catalog.policy("reliable").is_some());
        assert_eq!(
            cfg.catalog.model("sim-large").unwrap().context_window,
            128_000
        );
    }
}
