//! Versioned schema migrations, recorded in `travelmap_schema`. Each migration runs once; all
//! missing ones run in one transaction under an advisory lock, so two processes starting at once
//! against a new database do not both try to create it. PostgreSQL's DDL is transactional: a
//! migration that fails leaves the schema as it was.

use sqlx::PgPool;

use crate::{Error, Result};

/// Serialises migrations across processes (an arbitrary constant: "travelmigr").
const MIGRATION_LOCK: i64 = 0x7472_6176_6d69_6772;

/// The migrations, in order; the schema version is how many have been applied.
pub const MIGRATIONS: &[&str] = &[
    // 1: the log, its head, the views and their checkpoints.
    //
    // `log_head` is the single row every append locks first: it serialises appends so that
    // positions commit in order (the gap-safe feed) and it holds the last position and
    // recorded_at, which is how positions stay free of holes and recorded_at never goes back.
    // `occurred_at` keeps the sender's text (with its offset) as recorded; `recorded_at` is the
    // server's clock. `retracts` lets deciding about a client skip decoding event data.
    "CREATE TABLE log_head (
        singleton   boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
        position    bigint      NOT NULL,
        recorded_at timestamptz NOT NULL
    );
    INSERT INTO log_head (position, recorded_at) VALUES (0, 'epoch');
    CREATE TABLE events (
        position       bigint      PRIMARY KEY,
        event_id       uuid        NOT NULL UNIQUE,
        client_id      uuid        NOT NULL,
        version        bigint      NOT NULL CHECK (version > 0),
        event_type     text        NOT NULL,
        schema_version integer     NOT NULL,
        occurred_at    text        NOT NULL,
        recorded_at    timestamptz NOT NULL,
        agency         text        NOT NULL,
        credential     text        NOT NULL,
        actor          text,
        data           json        NOT NULL,
        retracts       uuid,
        digest         bytea       NOT NULL,
        UNIQUE (client_id, version)
    );
    CREATE TABLE projection_checkpoints (
        projection text   PRIMARY KEY,
        position   bigint NOT NULL,
        epoch      bigint NOT NULL
    );
    INSERT INTO projection_checkpoints (projection, position, epoch) VALUES ('client_views', 0, 0);
    CREATE TABLE client_views (
        client_id uuid  PRIMARY KEY,
        state     bytea NOT NULL
    );
    -- States are LZ4-compressed already; PostgreSQL need not try to compress them again.
    ALTER TABLE client_views ALTER COLUMN state SET STORAGE EXTERNAL;
    CREATE TABLE client_identifiers (
        kind      text NOT NULL,
        value     text NOT NULL,
        client_id uuid NOT NULL,
        PRIMARY KEY (kind, value, client_id)
    );
    CREATE INDEX client_identifiers_by_client ON client_identifiers (client_id);",
    // 2: the audit trail. `audit_head` is locked by every append, like `log_head`, so that
    //    entries from all processes form one chain; `hash` chains each entry to the one before
    //    (see travelmap_domain::audit).
    "CREATE TABLE audit_head (
        singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
        seq       bigint  NOT NULL,
        hash      bytea   NOT NULL
    );
    INSERT INTO audit_head (seq, hash) VALUES (0, '\\x0000000000000000000000000000000000000000000000000000000000000000');
    CREATE TABLE audit_entries (
        seq           bigint      PRIMARY KEY,
        at            timestamptz NOT NULL,
        credential    text        NOT NULL,
        agency        text        NOT NULL,
        actor         text,
        operation     text        NOT NULL,
        client_id     uuid,
        purpose       text,
        justification text,
        request_id    text,
        outcome       text        NOT NULL,
        action        text        NOT NULL,
        returned      text,
        hash          bytea       NOT NULL
    );
    CREATE INDEX audit_entries_by_client ON audit_entries (client_id, seq);
    CREATE INDEX audit_entries_by_action ON audit_entries (action, seq);",
    // 3: personal fields sealed apart from the journey facts (see crate::keys): `events.sealed`
    //    holds the encrypted personal fields; `data_keys` the clients' data keys per category,
    //    wrapped under a master key; `erased_clients` the clients no key is ever made for again;
    //    `destroyed_keys` which keys were destroyed (a missing key is not an erased one);
    //    `system_keys` the identifier look-up key. Identifiers are indexed by keyed hash from now
    //    on, so the views are emptied for a rebuild.
    "ALTER TABLE events ADD COLUMN sealed bytea;
    CREATE TABLE data_keys (
        client_id  uuid        NOT NULL,
        category   text        NOT NULL,
        key_id     uuid        NOT NULL UNIQUE,
        master_id  text        NOT NULL,
        wrapped    bytea       NOT NULL,
        created_at timestamptz NOT NULL,
        PRIMARY KEY (client_id, category)
    );
    CREATE TABLE erased_clients (
        client_id uuid        PRIMARY KEY,
        erased_at timestamptz NOT NULL
    );
    CREATE TABLE destroyed_keys (
        key_id       uuid        PRIMARY KEY,
        client_id    uuid        NOT NULL,
        category     text        NOT NULL,
        destroyed_at timestamptz NOT NULL
    );
    CREATE INDEX destroyed_keys_by_client ON destroyed_keys (client_id);
    CREATE TABLE system_keys (
        name      text  PRIMARY KEY,
        master_id text  NOT NULL,
        wrapped   bytea NOT NULL
    );
    TRUNCATE client_views, client_identifiers;
    UPDATE projection_checkpoints SET position = 0;",
    // 4: webhooks (see crate::webhooks): registrations with their cursors, the log of delivery
    //    attempts (`seq` orders them; older ones are pruned), and `webhook_dispatch`, whose
    //    `epoch` each process that takes over delivery bumps, fencing off the one before.
    "CREATE TABLE webhooks (
        id         uuid        PRIMARY KEY,
        agency     text        NOT NULL,
        credential text        NOT NULL,
        url        text        NOT NULL,
        types      text[]      NOT NULL,
        purpose    text        NOT NULL,
        secret     text        NOT NULL,
        created_at timestamptz NOT NULL,
        state      text        NOT NULL,
        cursor     bigint      NOT NULL
    );
    CREATE INDEX webhooks_by_agency ON webhooks (agency, created_at);
    CREATE TABLE webhook_attempts (
        seq         bigserial   PRIMARY KEY,
        id          uuid        NOT NULL,
        webhook_id  uuid        NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
        event_id    uuid        NOT NULL,
        position    bigint      NOT NULL,
        attempt     integer     NOT NULL,
        at          timestamptz NOT NULL,
        status      integer,
        error       text,
        duration_ms bigint      NOT NULL,
        outcome     text        NOT NULL
    );
    CREATE INDEX webhook_attempts_by_webhook ON webhook_attempts (webhook_id, seq);
    CREATE TABLE webhook_dispatch (
        singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
        epoch     bigint  NOT NULL
    );
    INSERT INTO webhook_dispatch (epoch) VALUES (0);",
    // 5: views are stored in the row, uncompressed by PostgreSQL. A view is LZ4-compressed JSON
    //    of about 2.6 KiB; above about 2 KiB PostgreSQL tried to compress it again (in vain) and
    //    then moved it to the TOAST table, which halved how fast views were written and added a
    //    look-up to every read. Rows up to a page stay whole; larger ones go out of line
    //    without a second compression. Views already stored change as they are saved again.
    "ALTER TABLE client_views SET (toast_tuple_target = 8160);
    ALTER TABLE client_views ALTER COLUMN state SET STORAGE EXTERNAL;",
];

/// Applies whatever migrations the database lacks.
pub(crate) async fn migrate(pool: &PgPool) -> Result<()> {
    let mut transaction = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(MIGRATION_LOCK)
        .execute(&mut *transaction)
        .await?;
    // Checked rather than `CREATE TABLE IF NOT EXISTS`, whose notice would be logged each start.
    let tracked: bool = sqlx::query_scalar("SELECT to_regclass('travelmap_schema') IS NOT NULL")
        .fetch_one(&mut *transaction)
        .await?;
    if !tracked {
        sqlx::query(
            "CREATE TABLE travelmap_schema (
                version    integer     PRIMARY KEY,
                applied_at timestamptz NOT NULL DEFAULT now()
            )",
        )
        .execute(&mut *transaction)
        .await?;
    }
    let current: i64 =
        sqlx::query_scalar("SELECT COALESCE(MAX(version), 0)::bigint FROM travelmap_schema")
            .fetch_one(&mut *transaction)
            .await?;
    let supported = MIGRATIONS.len() as i64;
    if current > supported {
        return Err(too_new(current));
    }
    for (index, migration) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        sqlx::raw_sql(migration).execute(&mut *transaction).await?;
        sqlx::query("INSERT INTO travelmap_schema (version) VALUES ($1)")
            .bind(index as i32 + 1)
            .execute(&mut *transaction)
            .await?;
        tracing::info!(version = index + 1, "applied schema migration");
    }
    transaction.commit().await?;
    Ok(())
}

/// The schema version the database is at (0 for a database Travelmap has never touched).
pub(crate) async fn version(pool: &PgPool) -> Result<i64> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('travelmap_schema') IS NOT NULL")
        .fetch_one(pool)
        .await?;
    if !exists {
        return Ok(0);
    }
    Ok(
        sqlx::query_scalar("SELECT COALESCE(MAX(version), 0)::bigint FROM travelmap_schema")
            .fetch_one(pool)
            .await?,
    )
}

/// Fails unless the database is at exactly the schema version this binary was built for.
pub(crate) async fn require_current(pool: &PgPool) -> Result<()> {
    let found = version(pool).await?;
    let needed = MIGRATIONS.len() as i64;
    if found > needed {
        return Err(too_new(found));
    }
    if found < needed {
        return Err(Error::SchemaOutdated { found, needed });
    }
    Ok(())
}

fn too_new(found: i64) -> Error {
    Error::SchemaTooNew {
        store: "in PostgreSQL".into(),
        found,
        supported: MIGRATIONS.len() as i64,
    }
}
