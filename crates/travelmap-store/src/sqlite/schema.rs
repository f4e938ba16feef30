//! Versioned schema migrations, tracked in SQLite's `user_version`. Each migration runs once, in
//! its own transaction; opening a store applies whatever is missing, so upgrades need no separate
//! step. A store newer than the binary is refused rather than guessed at.

use std::path::Path;

use rusqlite::Connection;

use crate::{Error, Result};

pub(crate) const EVENTS: &[&str] = &[
    // 1: the log. `position` is the global order; `(client_id, version)` the per-client stream;
    //    `event_id` the idempotency key. `recorded_at` is microseconds since the Unix epoch (UTC)
    //    so that `as_of` comparisons are plain integer comparisons.
    "CREATE TABLE events (
        position       INTEGER PRIMARY KEY,
        event_id       BLOB    NOT NULL UNIQUE,
        client_id      BLOB    NOT NULL,
        version        INTEGER NOT NULL,
        event_type     TEXT    NOT NULL,
        schema_version INTEGER NOT NULL,
        occurred_at    TEXT    NOT NULL,
        recorded_at    INTEGER NOT NULL,
        agency         TEXT    NOT NULL,
        credential     TEXT    NOT NULL,
        actor          TEXT,
        data           TEXT    NOT NULL,
        digest         BLOB    NOT NULL,
        UNIQUE (client_id, version)
    );",
    // 2: personal fields sealed apart from the journey facts (see crate::keys): `data` holds the
    //    facts, `sealed` the encrypted personal fields (NULL when the event has none).
    "ALTER TABLE events ADD COLUMN sealed BLOB;",
    // 3: the last audit entry the trail beside it had written (number and hash) when events were
    //    last recorded, a record kept outside the trail's own file: a trail found without that
    //    entry at the next open was replaced by an older copy, cut short, or lost its last
    //    entries in a power cut (see `SqliteAuditLog::open`).
    "CREATE TABLE trail_recorded (
        id   INTEGER PRIMARY KEY CHECK (id = 1),
        seq  INTEGER NOT NULL,
        hash BLOB    NOT NULL
    );",
];

pub(crate) const VIEWS: &[&str] = &[
    // 1: checkpoints per projection, client views and the identifier index.
    "CREATE TABLE checkpoints (
        projection TEXT PRIMARY KEY,
        position   INTEGER NOT NULL
    );
    CREATE TABLE client_views (
        client_id BLOB PRIMARY KEY,
        state     BLOB NOT NULL  -- the view's JSON, LZ4-compressed
    );
    CREATE TABLE client_identifiers (
        kind      TEXT NOT NULL,
        value     TEXT NOT NULL,
        client_id BLOB NOT NULL,
        PRIMARY KEY (kind, value, client_id)
    );
    CREATE INDEX client_identifiers_by_client ON client_identifiers (client_id);",
    // 2: identifiers are indexed by keyed hash instead of in plaintext; the views are rebuilt.
    "DELETE FROM client_views;
    DELETE FROM client_identifiers;
    DELETE FROM checkpoints;",
];

pub(crate) const KEYS: &[&str] = &[
    // 1: data keys per client and category (wrapped under a master key), the clients whose data
    //    was erased (no key is ever made for them again), which keys were destroyed (so that a
    //    missing key is told apart from an erased one), and system keys (identifier look-ups).
    "CREATE TABLE data_keys (
        client_id  BLOB    NOT NULL,
        category   TEXT    NOT NULL,
        key_id     BLOB    NOT NULL UNIQUE,
        master_id  TEXT    NOT NULL,
        wrapped    BLOB    NOT NULL,
        created_at INTEGER NOT NULL,
        PRIMARY KEY (client_id, category)
    );
    CREATE TABLE erased_clients (
        client_id BLOB PRIMARY KEY,
        erased_at INTEGER NOT NULL
    );
    CREATE TABLE destroyed_keys (
        key_id       BLOB    PRIMARY KEY,
        client_id    BLOB    NOT NULL,
        category     TEXT    NOT NULL,
        destroyed_at INTEGER NOT NULL
    );
    CREATE INDEX destroyed_keys_by_client ON destroyed_keys (client_id);
    CREATE TABLE system_keys (
        name      TEXT PRIMARY KEY,
        master_id TEXT NOT NULL,
        wrapped   BLOB NOT NULL
    );",
];

pub(crate) const AUDIT: &[&str] = &[
    // 1: the audit trail. `hash` chains each entry to the one before (see
    //    travelmap_domain::audit); `at` is microseconds since the Unix epoch (UTC).
    "CREATE TABLE audit (
        seq           INTEGER PRIMARY KEY,
        at            INTEGER NOT NULL,
        credential    TEXT    NOT NULL,
        agency        TEXT    NOT NULL,
        actor         TEXT,
        operation     TEXT    NOT NULL,
        client_id     BLOB,
        purpose       TEXT,
        justification TEXT,
        request_id    TEXT,
        outcome       TEXT    NOT NULL,
        action        TEXT    NOT NULL,
        returned      TEXT,
        hash          BLOB    NOT NULL
    );
    CREATE INDEX audit_by_client ON audit (client_id, seq);
    CREATE INDEX audit_by_action ON audit (action, seq);",
    // 2: the head, kept apart from the entries and moved in the transaction that adds them (as
    //    PostgreSQL's `audit_head`): entries removed at the end, which leave a chain that checks,
    //    leave a head that names an entry no longer there.
    "CREATE TABLE audit_head (
        id   INTEGER PRIMARY KEY CHECK (id = 1),
        seq  INTEGER NOT NULL,
        hash BLOB    NOT NULL
    );
    INSERT INTO audit_head (id, seq, hash)
        SELECT 1, seq, hash FROM audit WHERE seq > 0 ORDER BY seq DESC LIMIT 1;",
];

pub(crate) const WEBHOOKS: &[&str] = &[
    // 1: webhook registrations with their cursors, and the log of delivery attempts. `types` is
    //    a JSON array of type patterns; `created_at` and `at` are microseconds since the Unix
    //    epoch (UTC); `seq` orders attempts (newest kept, older pruned).
    "CREATE TABLE webhooks (
        id         BLOB    PRIMARY KEY,
        agency     TEXT    NOT NULL,
        credential TEXT    NOT NULL,
        url        TEXT    NOT NULL,
        types      TEXT    NOT NULL,
        purpose    TEXT    NOT NULL,
        secret     TEXT    NOT NULL,
        created_at INTEGER NOT NULL,
        state      TEXT    NOT NULL,
        cursor     INTEGER NOT NULL
    );
    CREATE INDEX webhooks_by_agency ON webhooks (agency, created_at);
    CREATE TABLE webhook_attempts (
        seq         INTEGER PRIMARY KEY,
        id          BLOB    NOT NULL,
        webhook_id  BLOB    NOT NULL,
        event_id    BLOB    NOT NULL,
        position    INTEGER NOT NULL,
        attempt     INTEGER NOT NULL,
        at          INTEGER NOT NULL,
        status      INTEGER,
        error       TEXT,
        duration_ms INTEGER NOT NULL,
        outcome     TEXT    NOT NULL
    );
    CREATE INDEX webhook_attempts_by_webhook ON webhook_attempts (webhook_id, seq);",
];

pub(crate) fn migrate(connection: &mut Connection, path: &Path, migrations: &[&str]) -> Result<()> {
    let current = known_version(connection, path, migrations)?;
    for (index, migration) in migrations.iter().enumerate().skip(current as usize) {
        let transaction = connection.transaction()?;
        transaction.execute_batch(migration)?;
        transaction.pragma_update(None, "user_version", index as i64 + 1)?;
        transaction.commit()?;
        tracing::info!(store = %path.display(), version = index + 1, "applied schema migration");
    }
    Ok(())
}

/// Refuses a store whose schema is not the one this binary works with: newer (written by a later
/// version, which this one would misread) or older (not yet migrated). For connections that must
/// not migrate: readers and offline writers beside a running server.
pub(crate) fn require_current(
    connection: &Connection,
    path: &Path,
    migrations: &[&str],
) -> Result<()> {
    let found = known_version(connection, path, migrations)?;
    let needed = migrations.len() as i64;
    if found < needed {
        return Err(Error::SchemaOutdated { found, needed });
    }
    Ok(())
}

/// [`require_current`], content with a store at `oldest` or later: for readers that read such a
/// store as it is (the event log before it recorded the audit trail's last entry).
pub(crate) fn require_at_least(
    connection: &Connection,
    path: &Path,
    migrations: &[&str],
    oldest: i64,
) -> Result<()> {
    let found = known_version(connection, path, migrations)?;
    if found < oldest {
        return Err(Error::SchemaOutdated {
            found,
            needed: oldest,
        });
    }
    Ok(())
}

/// The event log's schema version before it recorded the audit trail's last entry: read-only
/// commands (`replay`, `audit verify`) still read such a log, so that a backup kept unmigrated
/// (on read-only media, say) stays readable.
pub(crate) const EVENTS_READABLE_FROM: i64 = 2;

/// The store's schema version, refused if it is newer than `migrations` know of.
fn known_version(connection: &Connection, path: &Path, migrations: &[&str]) -> Result<i64> {
    let found: i64 = connection.pragma_query_value(None, "user_version", |row| row.get(0))?;
    let supported = migrations.len() as i64;
    if found > supported {
        return Err(Error::SchemaTooNew {
            store: path.display().to_string(),
            found,
            supported,
        });
    }
    Ok(found)
}
