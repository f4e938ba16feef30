//! Throw-away databases on a PostgreSQL server, one per test or benchmark run, so that runs are
//! independent of each other and can go in parallel.

use std::str::FromStr;

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection};

use crate::Result;

/// The server tests use unless `TRAVELMAP_TEST_POSTGRES` names another (a URL whose database
/// is one the user may connect to, to create others from).
pub const DEFAULT_SERVER: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// The server named by `TRAVELMAP_TEST_POSTGRES`, or [`DEFAULT_SERVER`].
pub fn server_from_env() -> String {
    std::env::var("TRAVELMAP_TEST_POSTGRES").unwrap_or_else(|_| DEFAULT_SERVER.to_owned())
}

/// A database created for one run; [`ScratchDatabase::drop_database`] removes it, and so does
/// dropping the value (for a test that panicked before it could call that).
pub struct ScratchDatabase {
    server: String,
    name: String,
    url: String,
    dropped: bool,
}

impl ScratchDatabase {
    /// Creates an empty database named `<prefix>_<random>` on the server at `server`.
    pub async fn create(server: &str, prefix: &str) -> Result<Self> {
        let name = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
        let options = PgConnectOptions::from_str(server)?;
        let mut connection = options.connect().await?;
        sqlx::raw_sql(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut connection)
            .await?;
        connection.close().await?;
        let url = options.database(&name).to_url_lossy().to_string();
        Ok(Self {
            server: server.to_owned(),
            name,
            url,
            dropped: false,
        })
    }

    /// The new database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The URL of the new database.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Drops the database, closing whatever connections are still open to it.
    pub async fn drop_database(mut self) -> Result<()> {
        self.dropped = true;
        drop_database(&self.server, &self.name).await
    }
}

impl Drop for ScratchDatabase {
    fn drop(&mut self) {
        if self.dropped {
            return;
        }
        // Not awaited by anyone: do it on a thread of its own, with a runtime of its own, since
        // this may run while a runtime is unwinding from a panic.
        let (server, name) = (self.server.clone(), self.name.clone());
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime
                .block_on(drop_database(&server, &name))
                .map_err(std::io::Error::other)
        });
        if let Ok(Err(error)) = cleanup.join() {
            tracing::warn!(%error, database = %self.name, "could not drop a scratch database");
        }
    }
}

async fn drop_database(server: &str, name: &str) -> Result<()> {
    let mut connection = PgConnectOptions::from_str(server)?.connect().await?;
    sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .execute(&mut connection)
        .await?;
    connection.close().await?;
    Ok(())
}
