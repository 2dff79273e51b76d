//! `ragq prompt`: a tenant's (or the operator's shared) prompt templates. Each save is the next
//! immutable version; labels move between versions, or split traffic between them.

use ragq::audit::Actor;
use ragq::config::Config;
use ragq::prompts::store::{self, Arm, PromptSpec, SHARED};

/// Names the operator's shared prompts where a tenant is expected (no tenant id has a `:`).
const SHARED_OWNER: &str = ":shared";

#[derive(Debug, clap::Subcommand)]
pub enum PromptCommand {
    /// Save FILE (TOML or JSON: `system`, `user`, `variables` (a JSON Schema), `defaults`) as the
    /// next version of the prompt NAME, and print the version.
    Create {
        /// The owning tenant, or `:shared` for a prompt every tenant without its own may use.
        #[arg(long)]
        tenant: String,
        name: String,
        #[arg(long)]
        file: std::path::PathBuf,
    },
    /// Point LABEL of the prompt at a version (`3`), or split it by weight (`3=70,4=30`).
    Label {
        /// The owning tenant, or `:shared`.
        tenant: String,
        name: String,
        label: String,
        target: String,
    },
    /// The prompts a tenant can use: its own and the shared ones, with their labels.
    List {
        #[arg(long)]
        tenant: String,
    },
    /// Every version of a prompt, and its labels.
    Show {
        #[arg(long)]
        tenant: String,
        name: String,
    },
}

pub async fn run(cfg: &Config, command: PromptCommand) -> anyhow::Result<()> {
    let pool = ragq::db::connect(&cfg.database).await?;
    let cli = Actor::cli();
    match command {
        PromptCommand::Create { tenant, name, file } => {
            let owner = owner(&pool, &tenant).await?;
            let spec = read_spec(&file)?;
            let version = store::create(&pool, &cli, owner, &name, &spec).await?;
            println!("saved `{name}` version {version} ({})", whose(owner));
        }
        PromptCommand::Label {
            tenant,
            name,
            label,
            target,
        } => {
            let owner = owner(&pool, &tenant).await?;
            let arms = parse_target(&target)?;
            match arms.as_slice() {
                [one] if one.weight == 0 => {
                    store::set_label(&pool, &cli, owner, &name, &label, one.version).await?
                }
                _ => store::set_split(&pool, &cli, owner, &name, &label, &arms).await?,
            }
            println!(
                "`{name}` label `{label}` now names {target} ({})",
                whose(owner)
            );
        }
        PromptCommand::List { tenant } => {
            let owner = owner(&pool, &tenant).await?;
            for p in store::list(&pool, owner).await? {
                let labels: Vec<String> = (p.labels.iter())
                    .map(|l| match &l.split {
                        Some(split) => format!("{}={split}", l.label),
                        None => format!("{}={}", l.label, l.version),
                    })
                    .collect();
                let kind = if p.shared { "shared" } else { "own" };
                println!(
                    "{:<32} {kind:<6} latest={:<4} {}",
                    p.name,
                    p.latest,
                    labels.join(" ")
                );
            }
        }
        PromptCommand::Show { tenant, name } => {
            let owner = owner(&pool, &tenant).await?;
            let detail = store::detail(&pool, owner, &name).await?;
            println!("{}", serde_json::to_string_pretty(&detail)?);
        }
    }
    Ok(())
}

/// The owner a `--tenant` names: an existing tenant, or the shared prompts.
async fn owner<'a>(pool: &sqlx::PgPool, tenant: &'a str) -> anyhow::Result<&'a str> {
    if tenant == SHARED_OWNER {
        return Ok(SHARED);
    }
    let known: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM tenants WHERE id = $1)")
        .bind(tenant)
        .fetch_one(pool)
        .await?;
    anyhow::ensure!(
        known,
        "unknown tenant `{tenant}` (`{SHARED_OWNER}` names the shared prompts)"
    );
    Ok(tenant)
}

fn whose(owner: &str) -> String {
    if owner == SHARED {
        "shared".into()
    } else {
        format!("tenant `{owner}`")
    }
}

/// Reads a prompt file: JSON if it ends in `.json`, else TOML.
fn read_spec(path: &std::path::Path) -> anyhow::Result<PromptSpec> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    let spec = if path.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
    } else {
        toml_edit::de::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
    };
    Ok(spec)
}

/// `3` (one version; weight 0 marks it) or `3=70,4=30` (a split).
fn parse_target(target: &str) -> anyhow::Result<Vec<Arm>> {
    let bad = || anyhow::anyhow!("target {target:?}: a version (`3`) or a split (`3=70,4=30`)");
    if let Ok(version) = target.trim().parse() {
        return Ok(vec![Arm { version, weight: 0 }]);
    }
    (target.split(','))
        .map(|arm| {
            let (v, w) = arm.split_once('=').ok_or_else(bad)?;
            Ok(Arm {
                version: v.trim().parse().map_err(|_| bad())?,
                weight: w.trim().parse().map_err(|_| bad())?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_readme_prompt_file_reads() {
        let path = std::env::temp_dir().join(format!("ragq-prompt-{}.toml", std::process::id()));
        let text = "system = \"You summarize support tickets for {{ team }}.\"\n\
            user = \"Summarize ticket {{ ticket.id }}:\\n{% for line in ticket.lines %}- {{ line }}\\n{% endfor %}\"\n\
            defaults = { max_tokens = 120, temperature = 0.2 }\n\
            [variables]\ntype = \"object\"\nrequired = [\"team\", \"ticket\"]\n\
            properties.team = { type = \"string\" }\n\
            properties.ticket = { type = \"object\", required = [\"id\", \"lines\"] }\n";
        std::fs::write(&path, text).unwrap();
        let spec = read_spec(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(
            spec.variables["required"],
            serde_json::json!(["team", "ticket"])
        );
        assert_eq!(spec.variables["properties"]["ticket"]["type"], "object");
        assert_eq!(spec.defaults["max_tokens"], 120);
        assert!(spec.user.contains("{% for line in ticket.lines %}"));
    }

    #[test]
    fn a_label_target_is_a_version_or_a_split() {
        assert_eq!(
            parse_target("3").unwrap(),
            [Arm {
                version: 3,
                weight: 0
            }]
        );
        assert_eq!(
            parse_target("3=70, 4=30").unwrap(),
            [
                Arm {
                    version: 3,
                    weight: 70
                },
                Arm {
                    version: 4,
                    weight: 30
                }
            ]
        );
        assert!(parse_target("3=x").is_err());
        assert!(parse_target("latest").is_err());
    }
}
