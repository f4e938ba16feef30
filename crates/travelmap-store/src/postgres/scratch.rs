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

/// A database created for one run; [`ScratchDatabase::drop_database`] removes it.
pub struct ScratchDatabase {
    server: String,
    name: String,
    url: String,
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
        })
    }

    /// The URL of the new database.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Drops the database, closing whatever connections are still open to it.
    pub async fn drop_database(self) -> Result<()> {
        let mut connection = PgConnectOptions::from_str(&self.server)?.connect().await?;
        sqlx::raw_sql(&format!(
            "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
            self.name
        ))
        .execute(&mut connection)
        .await?;
        connection.close().await?;
        Ok(())
    }
}
