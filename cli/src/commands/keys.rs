//! `ragq key …`: create, list, revoke and rotate API keys.

use chrono::{DateTime, Utc};

use ragq::audit::Actor;
use ragq::config::Config;
use ragq::tenants::keys::{self, KeySpec, Scope};

#[derive(Debug, clap::Subcommand)]
pub enum KeyCommand {
    /// Create a key; prints its id and secret (the secret once).
    Create {
        /// The tenant the key acts for; leave it out for an operator key (`--scopes operator`).
        #[arg(long)]
        tenant: Option<String>,
        /// A name unique among the tenant's live keys (e.g. `ci`, `backend-prod`).
        #[arg(long)]
        name: String,
        /// Comma-separated: jobs:write, jobs:read, spend:read, pipelines:read, pipelines:write,
        /// prompts:write (default: all of them), or operator.
        #[arg(long)]
        scopes: Option<String>,
        /// The key stops working after this long (`90d`, `12h`).
        #[arg(long, value_parser = humantime::parse_duration, conflicts_with = "expires_at")]
        expires_in: Option<std::time::Duration>,
        /// The key stops working at this time (RFC 3339).
        #[arg(long)]
        expires_at: Option<DateTime<Utc>>,
    },
    /// List keys (never their secrets) with scopes, last use, expiry and state.
    List {
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Revoke a key: both of its secrets stop working at the next request.
    Revoke { id: String },
    /// Give a key a new secret; the current one keeps working for the grace period, then stops.
    Rotate {
        id: String,
        /// How long the current secret keeps working (`0s`: it stops at once).
        #[arg(long, value_parser = humantime::parse_duration, default_value = "24h")]
        grace: std::time::Duration,
    },
}

pub async fn run(cfg: &Config, command: KeyCommand) -> anyhow::Result<()> {
    let pool = ragq::db::connect(&cfg.database).await?;
    match command {
        KeyCommand::Create {
            tenant,
            name,
            scopes,
            expires_in,
            expires_at,
        } => {
            let scopes = match scopes {
                Some(list) => Scope::parse_list(&list).map_err(anyhow::Error::msg)?,
                None if tenant.is_some() => Scope::TENANT.to_vec(),
                None => vec![Scope::Operator],
            };
            let expires_at = match expires_in {
                Some(d) => Some(Utc::now() + chrono::Duration::from_std(d)?),
                None => expires_at,
            };
            let spec = KeySpec {
                tenant,
                name,
                scopes,
                expires_at,
            };
            let key = keys::create(&pool, &Actor::cli(), &spec).await?;
            println!("key:    {}", key.id);
            println!("secret: {}", key.secret.expose());
            println!("(the secret is shown once; ragq stores only its hash)");
        }
        KeyCommand::List { tenant } => list(&pool, tenant.as_deref()).await?,
        KeyCommand::Revoke { id } => {
            keys::revoke(&pool, &Actor::cli(), &id).await?;
            println!("key `{id}` revoked");
        }
        KeyCommand::Rotate { id, grace } => {
            let key = keys::rotate(&pool, &Actor::cli(), &id, grace).await?;
            println!("key:    {}", key.id);
            println!("secret: {}", key.secret.expose());
            println!(
                "(the previous secret works for {} more; the new one is shown once)",
                humantime::format_duration(grace)
            );
        }
    }
    Ok(())
}

async fn list(pool: &sqlx::PgPool, tenant: Option<&str>) -> anyhow::Result<()> {
    let now = Utc::now();
    let time =
        |t: Option<DateTime<Utc>>| t.map_or("-".into(), |t| t.format("%Y-%m-%d %H:%M").to_string());
    println!(
        "{:<20} {:<12} {:<16} {:<17} {:<17} {:<17} {:<26} scopes",
        "id", "tenant", "name", "created", "last used", "expires", "state"
    );
    for k in keys::list(pool, tenant).await? {
        let state = match (k.revoked_at, k.expires_at, k.previous_until) {
            (Some(_), _, _) => "revoked".to_string(),
            (None, Some(at), _) if at <= now => "expired".to_string(),
            (None, _, Some(until)) if until > now => {
                format!("old secret until {}", until.format("%m-%d %H:%M"))
            }
            _ => "active".to_string(),
        };
        println!(
            "{:<20} {:<12} {:<16} {:<17} {:<17} {:<17} {:<26} {}",
            k.id,
            k.tenant.as_deref().unwrap_or("(operator)"),
            k.name,
            time(Some(k.created_at)),
            time(k.last_used_at),
            time(k.expires_at),
            state,
            k.scopes.join(",")
        );
    }
    Ok(())
}
