//! The database: one `sqlx::Any` pool over SQLite or Postgres, the
//! embedded, numbered SQL migrations of each backend, and one module of
//! queries per resource (handlers never hold SQL).
//!
//! Every query in this crate is portable SQL with `$n` placeholders (SQLite
//! accepts them too) and values passed with `.bind()`. Columns are only
//! `BIGINT` and `TEXT` (booleans are 0/1, JSON is text, money is integer
//! micro-units, times are unix seconds or ms), the types the `Any` driver
//! decodes identically on both backends. Aggregates are `CAST(... AS BIGINT)`
//! because Postgres sums `BIGINT` into `NUMERIC`.

pub mod audit;
pub mod keys;
pub mod ledger;
pub mod routing;
pub mod sessions;
pub mod stats;
pub mod usage;
pub mod users;

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};
use sqlx::AnyPool;
use std::borrow::Cow;
use std::time::Duration;

/// Which database engine is behind the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// From a `DATABASE_URL`.
    pub fn from_url(url: &str) -> Self {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Self::Postgres
        } else {
            Self::Sqlite
        }
    }

    /// `"sqlite"` or `"postgres"`, as `GET /health` reports it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
        }
    }
}

/// The pool plus the backend it talks to.
#[derive(Debug, Clone)]
pub struct Db {
    pub pool: AnyPool,
    pub backend: Backend,
}

/// `(version, description, sql)` of each migration, in order.
type EmbeddedList = &'static [(i64, &'static str, &'static str)];

const SQLITE_MIGRATIONS: EmbeddedList = &[
    (1, "initial", include_str!("../../migrations/sqlite/0001_initial.sql")),
    (2, "usage row", include_str!("../../migrations/sqlite/0002_usage_row.sql")),
    (3, "accounts", include_str!("../../migrations/sqlite/0003_accounts.sql")),
    (4, "oidc states", include_str!("../../migrations/sqlite/0004_oidc_states.sql")),
    (5, "key budgets", include_str!("../../migrations/sqlite/0005_key_budgets.sql")),
    (6, "key pin allowed", include_str!("../../migrations/sqlite/0006_key_pin_allowed.sql")),
    (7, "model options", include_str!("../../migrations/sqlite/0007_model_options.sql")),
    (8, "usage units", include_str!("../../migrations/sqlite/0008_usage_units.sql")),
    (9, "channel settings", include_str!("../../migrations/sqlite/0009_channel_settings.sql")),
    (10, "usage attempts", include_str!("../../migrations/sqlite/0010_usage_attempts.sql")),
    (11, "key max wait", include_str!("../../migrations/sqlite/0011_key_max_wait.sql")),
    (13, "request policy", include_str!("../../migrations/sqlite/0013_request_policy.sql")),
];

const POSTGRES_MIGRATIONS: EmbeddedList = &[
    (1, "initial", include_str!("../../migrations/postgres/0001_initial.sql")),
    (2, "usage row", include_str!("../../migrations/postgres/0002_usage_row.sql")),
    (3, "accounts", include_str!("../../migrations/postgres/0003_accounts.sql")),
    (4, "oidc states", include_str!("../../migrations/postgres/0004_oidc_states.sql")),
    (5, "key budgets", include_str!("../../migrations/postgres/0005_key_budgets.sql")),
    (6, "key pin allowed", include_str!("../../migrations/postgres/0006_key_pin_allowed.sql")),
    (7, "model options", include_str!("../../migrations/postgres/0007_model_options.sql")),
    (8, "usage units", include_str!("../../migrations/postgres/0008_usage_units.sql")),
    (9, "channel settings", include_str!("../../migrations/postgres/0009_channel_settings.sql")),
    (10, "usage attempts", include_str!("../../migrations/postgres/0010_usage_attempts.sql")),
    (11, "key max wait", include_str!("../../migrations/postgres/0011_key_max_wait.sql")),
    (13, "request policy", include_str!("../../migrations/postgres/0013_request_policy.sql")),
];

/// Migrations compiled into the binary, so the service needs no files at run
/// time and no proc-macro build of the database drivers at compile time.
#[derive(Debug, Clone, Copy)]
struct Embedded(EmbeddedList);

impl MigrationSource<'static> for Embedded {
    fn resolve(self) -> BoxFuture<'static, Result<Vec<Migration>, sqlx::error::BoxDynError>> {
        let list = self.0;
        Box::pin(async move {
            Ok(list
                .iter()
                .map(|&(version, description, sql)| {
                    Migration::new(
                        version,
                        Cow::Borrowed(description),
                        MigrationType::Simple,
                        Cow::Borrowed(sql),
                        false,
                    )
                })
                .collect())
        })
    }
}

/// The boxed future sqlx's `MigrationSource` returns.
type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

impl Db {
    /// Connects to `url` and applies the migrations. For a SQLite file, the
    /// parent directory is created first.
    pub async fn connect(url: &str) -> Result<Self, sqlx::Error> {
        sqlx::any::install_default_drivers();
        let backend = Backend::from_url(url);
        if backend == Backend::Sqlite {
            create_sqlite_parent_dir(url)?;
        }
        let pool = AnyPoolOptions::new()
            .max_connections(if backend == Backend::Sqlite { 4 } else { 10 })
            .acquire_timeout(Duration::from_secs(10))
            .connect(url)
            .await?;
        if backend == Backend::Sqlite {
            // WAL lets readers proceed while a writer commits; the mode is
            // stored in the file, so once is enough.
            sqlx::query("PRAGMA journal_mode = WAL").execute(&pool).await?;
        }
        let db = Self { pool, backend };
        db.migrate().await?;
        Ok(db)
    }

    /// Wraps an existing pool (tests use this for a per-test Postgres schema).
    pub fn from_pool(pool: AnyPool, backend: Backend) -> Self {
        Self { pool, backend }
    }

    /// Applies the pending migrations of this backend.
    pub async fn migrate(&self) -> Result<(), sqlx::Error> {
        let list = match self.backend {
            Backend::Sqlite => SQLITE_MIGRATIONS,
            Backend::Postgres => POSTGRES_MIGRATIONS,
        };
        let migrator = Migrator::new(Embedded(list)).await.map_err(|e| sqlx::Error::Migrate(Box::new(e)))?;
        migrator.run(&self.pool).await.map_err(|e| sqlx::Error::Migrate(Box::new(e)))
    }
}

/// Creates the directory of a SQLite database file (`sqlite://.dev/a.sqlite?mode=rwc`).
fn create_sqlite_parent_dir(url: &str) -> Result<(), sqlx::Error> {
    let rest = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")).unwrap_or(url);
    let path = rest.split('?').next().unwrap_or(rest);
    if path.is_empty() || path.starts_with(':') || path.starts_with("file:") {
        return Ok(()); // in-memory or URI form: nothing to create
    }
    match std::path::Path::new(path).parent() {
        Some(dir) if !dir.as_os_str().is_empty() => std::fs::create_dir_all(dir).map_err(sqlx::Error::Io),
        _ => Ok(()),
    }
}

/// Small typed accessors over `AnyRow`, so row mapping stays readable.
pub trait RowExt {
    fn text(&self, column: &str) -> Result<String, sqlx::Error>;
    fn opt_text(&self, column: &str) -> Result<Option<String>, sqlx::Error>;
    fn int(&self, column: &str) -> Result<i64, sqlx::Error>;
    fn opt_int(&self, column: &str) -> Result<Option<i64>, sqlx::Error>;
}

impl RowExt for AnyRow {
    fn text(&self, column: &str) -> Result<String, sqlx::Error> {
        sqlx::Row::try_get(self, column)
    }
    fn opt_text(&self, column: &str) -> Result<Option<String>, sqlx::Error> {
        sqlx::Row::try_get(self, column)
    }
    fn int(&self, column: &str) -> Result<i64, sqlx::Error> {
        sqlx::Row::try_get(self, column)
    }
    fn opt_int(&self, column: &str) -> Result<Option<i64>, sqlx::Error> {
        sqlx::Row::try_get(self, column)
    }
}

/// Whether `err` is a unique-constraint violation (duplicate id).
pub fn is_unique_violation(err: &sqlx::Error) -> bool {
    err.as_database_error().is_some_and(|e| e.is_unique_violation())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_from_url() {
        assert_eq!(Backend::from_url("postgres://u@h/db"), Backend::Postgres);
        assert_eq!(Backend::from_url("postgresql://u@h/db"), Backend::Postgres);
        assert_eq!(Backend::from_url("sqlite::memory:"), Backend::Sqlite);
    }

    #[test]
    fn sqlite_parent_dir() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a/b/admin.sqlite");
        create_sqlite_parent_dir(&format!("sqlite://{}?mode=rwc", file.display())).unwrap();
        assert!(dir.path().join("a/b").is_dir());
        create_sqlite_parent_dir("sqlite::memory:").unwrap();
    }
}
