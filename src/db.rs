//! Postgres: the pool every process shares, database creation, and migrations.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};

#[derive(Debug, thiserror::Error)]
pub enum DbSetupError {
    #[error("invalid database.url: {0}")]
    Url(sqlx::Error),
    #[error("cannot connect to Postgres: {0}")]
    Connect(sqlx::Error),
    #[error("cannot create database `{name}`: {source}")]
    Create { name: String, source: sqlx::Error },
    #[error("migrations failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("cannot seal the secrets stored in clear: {0}")]
    Seal(crate::tenants::secrets::ResealError),
}

/// The migrations in `migrations/`, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Connects, creating the database first if it does not exist, and migrates when configured.
pub async fn connect(cfg: &DatabaseConfig) -> Result<PgPool, DbSetupError> {
    let options = PgConnectOptions::from_str(&cfg.url).map_err(DbSetupError::Url)?;
    ensure_database(&options).await?;
    let pool = PgPoolOptions::new()
        .max_connections(cfg.max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options.log_statements(tracing::log::LevelFilter::Trace))
        .await
        .map_err(DbSetupError::Connect)?;
    if cfg.migrate_on_start {
        migrate(&pool, &cfg.sealing).await?;
    }
    Ok(pool)
}

/// Applies the SQL migrations, then seals the secrets still stored in clear when a key is
/// configured (SQL cannot: the key is not in the database).
pub async fn migrate(pool: &PgPool, sealing: &crate::keyring::Keyring) -> Result<(), DbSetupError> {
    MIGRATOR.run(pool).await?;
    if sealing.current_id().is_some() {
        use crate::tenants::secrets::{reseal, Reseal};
        let actor = crate::audit::Actor::system();
        let sealed = reseal(pool, sealing, &actor, Reseal::ClearOnly)
            .await
            .map_err(DbSetupError::Seal)?;
        if sealed > 0 {
            tracing::info!(sealed, "sealed secrets stored in clear");
        }
    }
    Ok(())
}

async fn ensure_database(options: &PgConnectOptions) -> Result<(), DbSetupError> {
    let Some(name) = options.get_database().map(str::to_string) else {
        return Ok(());
    };
    let admin = options.clone().database("postgres");
    let mut conn = sqlx::PgConnection::connect_with(&admin)
        .await
        .map_err(DbSetupError::Connect)?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&mut conn)
            .await
            .map_err(DbSetupError::Connect)?;
    if !exists {
        // Identifiers cannot be bound; quote_ident in SQL keeps the name safe.
        let sql: String = sqlx::query_scalar("SELECT 'CREATE DATABASE ' || quote_ident($1)")
            .bind(&name)
            .fetch_one(&mut conn)
            .await
            .map_err(DbSetupError::Connect)?;
        match sqlx::raw_sql(&sql).execute(&mut conn).await {
            Ok(_) => {}
            // Another process created it first.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => {}
            Err(source) => return Err(DbSetupError::Create { name, source }),
        }
    }
    let _ = conn.close().await;
    Ok(())
}

#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    pub url: String,
    pub max_connections: u32,
    pub migrate_on_start: bool,
    /// Seals secrets stored in clear when migrating (a data migration after the SQL ones).
    pub sealing: crate::keyring::Keyring,
}

/// Opens a connection for statements that look rows up by key for a batch of keys (the group
/// commit's, the dispatcher's, the response cache's lookups), with the pool's settings. For a batch probing the primary key is
/// the right plan; without statistics (a young table, before autovacuum analyzes it) the planner
/// picked hash joins that scanned all of `jobs` for every batch (886 scans of 25 million rows in a
/// 60,000-job run; a dispatch did the same), so these connections do without hash and merge joins.
/// Nor do they compile plans: a big table's estimates put a dispatch over `jit_above_cost`, and
/// compiling took 40 ms of a statement that runs in 1.
pub async fn connect_for_batches(pool: &PgPool) -> Result<PgConnection, sqlx::Error> {
    let options = (*pool.connect_options()).clone().options([
        ("enable_hashjoin", "off"),
        ("enable_mergejoin", "off"),
        ("jit", "off"),
    ]);
    options.connect().await
}
