//! Storage for Travelmap: the traits every backend implements, the embedded SQLite backend that
//! `travelmap serve` uses when no database server is configured, and the PostgreSQL backend for
//! real deployments (several server processes on one database).
//!
//! Two traits, two kinds of data:
//! - [`EventLog`] is the source of truth: an append-only log of journey events with a per-client
//!   stream version, a global position that is strictly increasing in commit order and never
//!   shows a reader a gap that is filled later, and idempotency keyed by event id.
//! - [`ViewStore`] holds projections (read models) and their checkpoints. Everything in it can be
//!   deleted and rebuilt from the log.
//!
//! This crate knows SQL and files; it does not know HTTP. It depends only on the domain crate.
//! Driver errors are classified here (a taken event id becomes [`Error::DuplicateEvent`], a
//! moved stream [`Error::StreamConflict`]) so that callers never match on driver codes.

use std::collections::HashMap;
use std::path::PathBuf;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::watch;
use travelmap_domain::{ClientId, DecodeError, EventDraft, EventId, Provenance, RecordedEvent};

pub mod handshake;
pub mod keys;
mod packed;
pub mod postgres;
mod sealed;
pub mod sqlite;
pub mod webhooks;

pub use handshake::{
    Announcement, EntriesReport, EntriesSignal, EntriesWritten, entries_handshake,
};
pub use keys::{DestroyedKey, KeyStore, Keyring, MasterKey, MasterKeys};
pub use packed::StoredState;
pub use sealed::SealedLog;
pub use webhooks::WebhookStore;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong in a store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The client's stream was not at the version the append was decided against: another
    /// writer got there first. Callers reload and decide again.
    #[error("the stream of client {client_id} is at version {actual}, not {expected}")]
    StreamConflict {
        client_id: ClientId,
        expected: u64,
        actual: u64,
    },
    /// An event with this id was recorded between the caller's look-up and its append.
    #[error("event {0} is already recorded")]
    DuplicateEvent(EventId),
    /// Another process holds the data directory.
    #[error(
        "the data directory {0} is in use by another travelmap process (stop it first, or use another --data-dir)"
    )]
    Locked(PathBuf),
    /// A stored event can no longer be decoded: the store is damaged or was written by a newer
    /// version of Travelmap.
    #[error("stored event at position {position} cannot be decoded: {source}")]
    Corrupt { position: u64, source: DecodeError },
    /// The store's schema is newer than this binary understands.
    #[error("the store {store} has schema version {found}; this binary knows up to {supported}")]
    SchemaTooNew {
        store: String,
        found: i64,
        supported: i64,
    },
    /// The store has been shut down.
    #[error("the store is shut down")]
    Closed,
    /// The database's schema is older than this binary needs, and this connection was not allowed
    /// to migrate it.
    #[error(
        "the database has schema version {found}; this binary needs {needed} (run `travelmap migrate`)"
    )]
    SchemaOutdated { found: i64, needed: i64 },
    /// The store's location is unusable as given (a store URL's parameter it does not know,
    /// a directory that holds no store where one is needed).
    #[error("{0}")]
    BadLocation(String),
    /// The database holds no Travelmap store (its schema was never made), and this connection
    /// was not allowed to make one: a command that only makes sense on an existing store.
    #[error(
        "the database holds no Travelmap store: give the URL of an existing one, or make one with `travelmap migrate` (or `serve`)"
    )]
    NoStore,
    /// The database's heads disagree with what its tables hold: what a restore that failed part
    /// way, or one into a database that already held a store, leaves behind. Appends would fail
    /// on every attempt, so the store is refused rather than served.
    #[error(
        "the database is inconsistent: {0} (a restore that failed part way, or one into a database that was not empty? see docs/operations.md, \"PostgreSQL\")"
    )]
    Inconsistent(String),
    /// One file of the embedded store could not be opened: which one, and why. (Told apart so
    /// that an operator knows which file a permission or a damage is about: the views' file,
    /// say, can simply be removed and rebuilt.)
    #[error("{file}: {source}")]
    Opening {
        file: &'static str,
        source: Box<Error>,
    },
    /// Another process took over writing the views (see [`ViewStore::lead`]); this one must stop
    /// writing them and follow instead.
    #[error("another process now writes the views")]
    NotLeader,
    /// An offline command found the embedded audit trail empty beside an event log of this many
    /// events, while the process holding the data directory had not yet begun it anew (its open
    /// does, and a new store's first entries follow its first events within moments). Nothing
    /// was logged, so the command was not carried out.
    #[error(
        "the audit trail (audit.sqlite) holds no entries beside an event log of {0} events, and the travelmap process holding the data directory has not marked it as begun anew; nothing was done. Try again once that process has started (if the trail was emptied under it, once it has answered a request); see docs/data-protection.md, \"Tamper evidence\""
    )]
    TrailUnjudged(u64),
    /// The embedded audit trail's file was removed or replaced while the serving process had it
    /// open: entries written to the file it holds would be lost with the process, so none is
    /// written, and what they log is refused.
    #[error(
        "the audit trail's file (audit.sqlite) or its write-ahead log (audit.sqlite-wal) was removed or replaced while this process had it open, so nothing can be logged or recorded: stop the process with SIGTERM (its close folds what it still holds into the file it opened), put moved files back, or restore the trail from the backup taken with the log (opened without it, the store begins the trail anew, saying so)"
    )]
    TrailReplaced,
    /// The audit entries written beside an append were not written, so its events were not
    /// stored either (see [`handshake`]).
    #[error("the audit trail could not take this write's entries, so its events were not recorded")]
    Unlogged,
    /// A data key is wrapped under a master key that is not configured.
    #[error(
        "a data key is wrapped under master key `{0}`, which this process was not given (give it the master keys the store's keys are wrapped under, as every process on the store has them; see docs/operations.md, \"Master keys and rotation\")"
    )]
    MasterKeyMissing(String),
    /// A wrapped key does not unwrap: the key store is damaged or the master key is wrong.
    #[error(
        "a stored data key does not unwrap under its master key (wrong master key, or a damaged key store)"
    )]
    KeyDamaged,
    /// A sealed event names a key that is neither in the key store nor recorded as destroyed:
    /// the key store is missing, damaged or not the one that belongs to this log.
    #[error(
        "the key for the personal fields of the event at position {position} is missing from the key store (is it the key store that belongs to this log?)"
    )]
    KeyMissing { position: u64 },
    /// A key the append's personal fields were sealed under was destroyed (by another process)
    /// before the append committed; nothing was stored. Sealing again takes the key now in force.
    #[error("a data key of client {0} was destroyed while its events were being stored")]
    KeyWithdrawn(ClientId),
    /// Sealing needs a new key for a client that has keys: made only once the events to be
    /// sealed under it are known not to be retries of events recorded before (see
    /// `keys::Making`). Never leaves the sealed log.
    #[error("client {0} needs a data key made, for events not yet known to be new")]
    KeysUnconfirmed(ClientId),
    /// The client's personal data was erased; no new key is made for them.
    #[error("the personal data of client {0} has been erased")]
    ClientErased(ClientId),
    /// The database could not be reached or refused for a moment (see [`Error::is_transient`]);
    /// what a group's several waiters each receive, since the database's own error is not
    /// `Clone`.
    #[error("{0}")]
    Unavailable(String),
    /// A failure [`Error::is_out_of_service`] names, passed on to each waiter of a group
    /// commit.
    #[error("{0}")]
    OutOfService(String),
    #[error("postgresql: {0}")]
    Postgres(#[from] sqlx::Error),
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

impl Error {
    /// Whether the database was momentarily busy: worth trying again shortly.
    pub fn is_busy(&self) -> bool {
        matches!(
            self,
            Error::Sqlite(rusqlite::Error::SqliteFailure(failure, _))
                if matches!(failure.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
        )
    }

    /// Whether the failure lies in the database's state rather than in the request or the
    /// code: busy, restarting, unreachable, out of connections, or a transaction it chose to
    /// abort. Nothing was done, and trying again shortly may work.
    pub fn is_transient(&self) -> bool {
        if matches!(self, Error::Unavailable(_)) {
            return true;
        }
        if let Error::Opening { source, .. } = self {
            return source.is_transient();
        }
        let Error::Postgres(error) = self else {
            return self.is_busy();
        };
        match error {
            // Not TLS: a certificate or configuration that fails stays failing.
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => true,
            sqlx::Error::Database(database) => database.code().is_some_and(|code| {
                // SQLSTATE classes 08 (connection exception) and 53 (insufficient resources),
                // a server shutting down or starting up (57P01 to 57P03), a database not taking
                // connections for maintenance (55000, which no statement of the store's answers
                // otherwise), and the transactions PostgreSQL aborts to keep others consistent
                // (40001, 40P01). Also a database that is gone (3D000, as while it is restored
                // from a backup: dropped, then created again) and a login the server refuses
                // (class 28): the store cannot be reached until an operator acts, which is what
                // callers are told (503), not a fault in the request or the code (500). And a
                // table that is missing (42P01), as in a database created again for a restore
                // whose tables are not restored yet: every table was made at start.
                code.starts_with("08")
                    || code.starts_with("53")
                    || code.starts_with("28")
                    || matches!(
                        &*code,
                        "57P01"
                            | "57P02"
                            | "57P03"
                            | "55000"
                            | "40001"
                            | "40P01"
                            | "3D000"
                            | "42P01"
                    )
            }),
            _ => false,
        }
    }
}

impl Error {
    /// Whether the fault is this process's configuration, which a retry cannot mend: a data
    /// key wrapped under a master key this process was not given (another process, started
    /// with a newer key first, wrapped it).
    pub fn is_misconfiguration(&self) -> bool {
        match self {
            Error::MasterKeyMissing(_) => true,
            Error::Opening { source, .. } => source.is_misconfiguration(),
            _ => false,
        }
    }

    /// Whether the store cannot take writes until an operator acts, though nothing is wrong
    /// with the request or the code: a full disk, a file or database made read-only (a
    /// PostgreSQL standby after a failover), an I/O fault. Answered `503`, as PostgreSQL's
    /// "insufficient resources" (among [`Self::is_transient`]'s) already are; unlike those, not
    /// worth retrying at once, and not taken for "unreachable" where that matters (`audit
    /// verify` reports a trail it cannot read as broken, not as out of reach).
    pub fn is_out_of_service(&self) -> bool {
        match self {
            Error::OutOfService(_) | Error::TrailReplaced => true,
            Error::Opening { source, .. } => source.is_out_of_service(),
            Error::Sqlite(rusqlite::Error::SqliteFailure(failure, _)) => matches!(
                failure.code,
                rusqlite::ErrorCode::DiskFull
                    | rusqlite::ErrorCode::ReadOnly
                    | rusqlite::ErrorCode::SystemIoFailure
            ),
            Error::Postgres(sqlx::Error::Database(database)) => database
                .code()
                .is_some_and(|code| matches!(&*code, "25006" | "58030")),
            _ => false,
        }
    }

    /// What each of the several waiters on one failed group commit is told: `context` and this
    /// error, keeping whether it is transient.
    pub fn for_each_waiter(&self, context: &str) -> impl Fn() -> Error + use<> {
        let message = format!("{context}: {self}");
        let transient = self.is_transient();
        let out_of_service = self.is_out_of_service();
        // Told apart by callers: retrying does not help until a restart.
        let trail_replaced = matches!(self, Error::TrailReplaced);
        move || {
            if trail_replaced {
                Error::TrailReplaced
            } else if transient {
                Error::Unavailable(message.clone())
            } else if out_of_service {
                Error::OutOfService(message.clone())
            } else {
                Error::Io(std::io::Error::other(message.clone()))
            }
        }
    }
}

/// One event to append, with the digest of its content (see [`travelmap_domain::content_digest`]).
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub draft: EventDraft,
    pub digest: [u8; 32],
    /// The event's personal fields, sealed by [`SealedLog`]; backends store `public` as the
    /// event's data and the ciphertext beside it. `None`: the data is stored as it is.
    pub sealed: Option<travelmap_domain::Sealed>,
}

/// Events for one client's stream, decided against `expected_version`. The append fails with
/// [`Error::StreamConflict`] if the stream is not at that version when the write commits.
#[derive(Debug, Clone)]
pub struct StreamAppend {
    pub client_id: ClientId,
    pub expected_version: u64,
    pub events: Vec<NewEvent>,
}

/// The acknowledgement for a recorded event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receipt {
    pub id: EventId,
    pub client_id: ClientId,
    pub version: u64,
    pub position: u64,
    pub recorded_at: DateTime<Utc>,
}

/// An event already in the log, as needed to answer a retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Existing {
    pub receipt: Receipt,
    pub digest: [u8; 32],
    /// The key the event's personal fields were sealed under, if it has any.
    pub sealed_key: Option<uuid::Uuid>,
    /// That key was destroyed (by erasure or the retention schedule): the fingerprint was keyed
    /// with a key that outlives it, and must not be compared with a retry's, which would confirm
    /// or deny a guess of the destroyed fields. Set by [`sealed::SealedLog`].
    pub shredded: bool,
}

/// The key id in a sealed value's header, as the stores select it (the 16 bytes after the
/// format byte; see [`keys`]).
pub(crate) fn sealed_key(header: Option<Vec<u8>>) -> Option<uuid::Uuid> {
    uuid::Uuid::from_slice(&header?).ok()
}

/// What deciding about a client needs from one of its recorded events: not the data, only the
/// id, the type and (for a retraction) the event it retracts. Loading outlines
/// instead of whole events keeps the cost of a decision independent of how much data the
/// client's history holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outline {
    pub id: EventId,
    pub event_type: String,
    /// For an `event.retracted`, the event it retracts.
    pub target: Option<EventId>,
    /// The day the event occurred, in the offset it was sent with (the date `occurred_at`
    /// begins with): a correction's dated facts are checked against its target's.
    pub occurred_on: Option<chrono::NaiveDate>,
}

/// The day an `occurred_at` as stored (RFC 3339, with the sender's offset) falls on there.
pub(crate) fn day_of(occurred_at: &str) -> Option<chrono::NaiveDate> {
    occurred_at
        .get(..10)
        .and_then(|day| chrono::NaiveDate::parse_from_str(day, "%Y-%m-%d").ok())
}

/// The append-only journey event log.
#[async_trait]
pub trait EventLog: Send + Sync {
    /// Appends all streams atomically: either every event is recorded, or none is. Receipts come
    /// back in the order of the streams and of the events within them.
    async fn append(
        &self,
        provenance: &Provenance,
        streams: Vec<StreamAppend>,
    ) -> Result<Vec<Receipt>> {
        self.append_announced(provenance, streams, Announcement::unheard())
            .await
    }

    /// [`Self::append`], sending on `announcement.accepted` once the events have passed the
    /// log's checks (their ids free, their streams at the expected versions) and before their
    /// commit: what a caller does beside the commit (the audit entries) starts only for appends
    /// that will not be refused, and still overlaps the commit. Nothing is sent for a refused
    /// append. With `announcement.entries`, the events are committed only once the caller
    /// reports its entries written; reported not written (or not reported within
    /// [`handshake::ENTRIES_PATIENCE`]), the append stores nothing and fails with
    /// [`Error::Unlogged`], while the other appends of its group commit as usual.
    async fn append_announced(
        &self,
        provenance: &Provenance,
        streams: Vec<StreamAppend>,
        announcement: Announcement,
    ) -> Result<Vec<Receipt>>;

    /// Looks up events by id (for idempotent retries); ids not in the log are left out.
    async fn lookup(&self, ids: Vec<EventId>) -> Result<Vec<Existing>>;

    /// The outlines of the given clients' streams, each in version order. Clients without
    /// events are left out.
    async fn outlines(&self, clients: Vec<ClientId>) -> Result<HashMap<ClientId, Vec<Outline>>>;

    /// The current version of each given client's stream (one index probe each, where
    /// [`Self::outlines`] reads every event's row). Clients without events are left out.
    async fn stream_versions(&self, clients: Vec<ClientId>) -> Result<HashMap<ClientId, u64>>;

    /// A client's stream in version order; with `recorded_until`, only what had been recorded by
    /// then.
    async fn read_stream(
        &self,
        client_id: ClientId,
        recorded_until: Option<DateTime<Utc>>,
    ) -> Result<Vec<RecordedEvent>>;

    /// The global feed: up to `limit` events with position greater than `after`, in position
    /// order. A reader that pages through it never misses an event and never sees one twice.
    async fn read_all(&self, after: u64, limit: usize) -> Result<Vec<RecordedEvent>>;

    /// The events with `after < position <= up_to`, in position order. Unlike `read_all`, the
    /// next range is known without the previous one's result, so ranges can be read in parallel.
    async fn read_range(&self, after: u64, up_to: u64) -> Result<Vec<RecordedEvent>>;

    /// The highest committed position, updated after every commit; projections wait on it.
    fn head(&self) -> watch::Receiver<u64>;

    /// Called before the whole log is read (a rebuild), so that a log that can make such a read
    /// cheaper prepares for it (the sealed log loads every live key in one pass). The full
    /// read's ranges are then read with [`Self::read_range_of_full_read`], until
    /// [`Self::end_full_read`].
    async fn prepare_full_read(&self) -> Result<()> {
        Ok(())
    }

    /// [`Self::read_range`] for a range of the full read under way, which may use what
    /// [`Self::prepare_full_read`] kept. Only the full read's own ranges come through here:
    /// other readers (the feed, subscribers) read as usual meanwhile.
    async fn read_range_of_full_read(&self, after: u64, up_to: u64) -> Result<Vec<RecordedEvent>> {
        self.read_range(after, up_to).await
    }

    /// Called when a full read ends (or fails), to drop what [`Self::prepare_full_read`] kept.
    fn end_full_read(&self) {}

    /// The stored form of events' content digests (see [`NewEvent::digest`]): what `lookup`
    /// answers with, and what a retry's digest must be turned into before comparing. A log that
    /// seals personal data keys the digests of events holding any with a key of the client's that
    /// erasure destroys, so that a digest cannot confirm a guess about erased data.
    async fn fingerprints(&self, events: Vec<(&EventDraft, [u8; 32])>) -> Result<Vec<[u8; 32]>> {
        Ok(events.into_iter().map(|(_, digest)| digest).collect())
    }
}

/// The stored form of one client's views, as written by the client-view projection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientView {
    pub client_id: ClientId,
    /// The projection's state for the client, encoded and compressed (see [`ClientView::new`]).
    packed_state: Vec<u8>,
    /// `(type, value)` pairs under which the client can be found.
    pub identifiers: Vec<(String, String)>,
}

impl ClientView {
    /// A view of `state`. The state is encoded and compressed here, by whoever makes the view,
    /// rather than by the store: the projector makes views on several threads while the store's
    /// single writer only writes.
    pub fn new(
        client_id: ClientId,
        state: &impl serde::Serialize,
        identifiers: Vec<(String, String)>,
    ) -> Self {
        Self {
            client_id,
            packed_state: packed::pack(state),
            identifiers,
        }
    }

    /// The state as stored; [`ViewStore::get`] and its kind unpack it.
    pub(crate) fn packed_state(&self) -> &[u8] {
        &self.packed_state
    }
}

/// Storage for the client-view projection (travel maps and the identifier index) and its
/// checkpoint. Each `save` writes its views and sets the checkpoint in one transaction. The
/// projector never sets a checkpoint beyond what is saved, and each view remembers the last
/// position folded into it, which is what makes re-folding events after a crash harmless.
#[async_trait]
pub trait ViewStore: Send + Sync {
    /// The position of the last event folded into the stored views (0 when empty).
    async fn checkpoint(&self) -> Result<u64>;
    /// The stored states of the given clients (clients without a view are left out).
    async fn load(&self, clients: Vec<ClientId>) -> Result<HashMap<ClientId, StoredState>>;
    /// One client's stored state.
    async fn get(&self, client: ClientId) -> Result<Option<StoredState>>;
    /// Up to `limit` stored states in client id order, after `after` (for reports that go
    /// through every client: retention, statistics).
    async fn scan(
        &self,
        after: Option<ClientId>,
        limit: usize,
    ) -> Result<Vec<(ClientId, StoredState)>>;
    /// Writes views and moves the checkpoint to `checkpoint`, atomically.
    async fn save(&self, checkpoint: u64, views: Vec<ClientView>) -> Result<()>;
    /// As [`ViewStore::save`], for views of clients that have none stored yet (no save since
    /// [`ViewStore::reset`]), which a store may write without looking for older ones.
    async fn save_new(&self, checkpoint: u64, views: Vec<ClientView>) -> Result<()> {
        self.save(checkpoint, views).await
    }
    /// How many clients have a view.
    async fn count(&self) -> Result<usize>;
    /// Deletes every view and resets the checkpoint to 0 (before a rebuild). Await it to its
    /// end: dropped during its commit, a reset may be committed all the same (see
    /// `Projector::new`, which races only the wait for [`Self::lead`], never this).
    async fn reset(&self) -> Result<()>;
    /// Clients known under an identifier.
    async fn find_by_identifier(&self, kind: &str, value: &str) -> Result<Vec<ClientId>>;

    /// Waits until this process may write the views, and fences off any process that wrote them
    /// before: from then on, a `save` by that process fails with [`Error::NotLeader`]. Several
    /// server processes can share one database, but only one may fold the log into views at a
    /// time, or they would overwrite each other's work. Returns at once when this process
    /// already leads (and always, for a store only one process can open).
    async fn lead(&self) -> Result<()>;

    /// The checkpoint as committed by whichever process writes the views, so that a process that
    /// does not lead still knows how far the stored views reach.
    fn saved(&self) -> watch::Receiver<u64>;

    /// Makes sure views overwritten since (after an erasure) leave no copy behind in the store's
    /// files where the engine keeps one (SQLite's write-ahead log). PostgreSQL keeps old row
    /// versions until vacuum; see docs/data-protection.md.
    async fn scrub(&self) -> Result<()> {
        Ok(())
    }
}

/// The audit trail: an append-only, hash-chained log of operations on personal data, kept by
/// every backend beside its events. One writer at a time gives entries their sequence numbers
/// and chains them, so the log is always one unbroken chain.
#[async_trait]
pub trait AuditLog: Send + Sync {
    /// Appends records in order, chaining each to the one before; returns their sequence numbers.
    async fn append(&self, records: Vec<travelmap_domain::audit::AuditRecord>) -> Result<Vec<u64>>;
    /// [`Self::append`], telling `written` as soon as the entries are committed: a write's
    /// entries, whose events the log commits only then (see [`handshake`]).
    async fn append_signalling(
        &self,
        records: Vec<travelmap_domain::audit::AuditRecord>,
        written: EntriesSignal,
    ) -> Result<Vec<u64>> {
        let numbers = self.append(records).await?;
        written.written();
        Ok(numbers)
    }
    /// Up to `limit` entries after `after`, in sequence order.
    async fn read_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<travelmap_domain::audit::AuditEntry>>;
    /// Every entry about one client, in sequence order.
    async fn read_client(
        &self,
        client: ClientId,
    ) -> Result<Vec<travelmap_domain::audit::AuditEntry>>;
    /// The last entry's sequence number and hash (0 and the genesis hash when empty).
    async fn head(&self) -> Result<(u64, [u8; 32])>;
    /// Every entry of one action (e.g. the break-glass grants), in sequence order.
    async fn read_action(&self, action: &str) -> Result<Vec<travelmap_domain::audit::AuditEntry>>;
    /// How many stored rows are numbered 0 or below. The chain starts at 1 and no reader sees
    /// such rows (every read asks for entries from 1 on), so only a hand outside the service
    /// can have put them there; verification counts them as a break.
    async fn before_the_first(&self) -> Result<u64>;
    /// Whether any entry's action does not start with `prefix` (the offline commands' actions
    /// all start with `travelmap `: whether a serving process wrote to the trail).
    async fn any_action_outside(&self, prefix: &str) -> Result<bool>;
    /// Whether the trail can take no more entries until the process is restarted (see
    /// [`Error::TrailReplaced`]).
    fn out_of_service(&self) -> bool {
        false
    }
}

/// Appends `records`, retrying a failed append with growing pauses for up to `patience` (the
/// last attempt begins before it ends, and may take longer). For entries of what has happened
/// whatever the trail does (a decision carried out), a trail that is briefly locked or
/// unreachable must not leave it without its entry. An append whose answer was
/// lost may be written twice by the retry: twice is better than never. On failure, the records
/// come back with the last error, for the caller to keep trying.
pub async fn append_patiently(
    audit: &dyn AuditLog,
    records: Vec<travelmap_domain::audit::AuditRecord>,
    patience: std::time::Duration,
) -> std::result::Result<Vec<u64>, (Error, Vec<travelmap_domain::audit::AuditRecord>)> {
    let deadline = tokio::time::Instant::now() + patience;
    let mut pause = std::time::Duration::from_millis(50);
    loop {
        match audit.append(records.clone()).await {
            Ok(numbers) => return Ok(numbers),
            // A closed trail (the service is stopping), or one whose file is gone, does not
            // come back.
            Err(error) if matches!(error, Error::Closed | Error::TrailReplaced) => {
                return Err((error, records));
            }
            Err(error) if tokio::time::Instant::now() + pause < deadline => {
                tracing::warn!(%error, "could not write the audit trail; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_secs(2));
            }
            Err(error) => return Err((error, records)),
        }
    }
}

/// An audit log that keeps nothing. It exists so that the benchmark can measure what the real
/// trail costs; the service itself never runs without one.
pub struct DiscardedAudit;

#[async_trait]
impl AuditLog for DiscardedAudit {
    async fn append(&self, records: Vec<travelmap_domain::audit::AuditRecord>) -> Result<Vec<u64>> {
        Ok(vec![0; records.len()])
    }
    async fn read_after(
        &self,
        _after: u64,
        _limit: usize,
    ) -> Result<Vec<travelmap_domain::audit::AuditEntry>> {
        Ok(Vec::new())
    }
    async fn read_client(
        &self,
        _client: ClientId,
    ) -> Result<Vec<travelmap_domain::audit::AuditEntry>> {
        Ok(Vec::new())
    }
    async fn head(&self) -> Result<(u64, [u8; 32])> {
        Ok((0, travelmap_domain::audit::GENESIS))
    }
    async fn read_action(&self, _action: &str) -> Result<Vec<travelmap_domain::audit::AuditEntry>> {
        Ok(Vec::new())
    }
    async fn before_the_first(&self) -> Result<u64> {
        Ok(0)
    }

    async fn any_action_outside(&self, _prefix: &str) -> Result<bool> {
        Ok(false)
    }
}

/// An event's columns as every backend stores them, read back but not yet decoded. Text is
/// borrowed from the row where the backend allows: it is decoded at once, and the data is
/// copied only when it is kept, as a sealed event's public part.
pub(crate) struct StoredEvent<'row> {
    pub position: u64,
    pub event_id: uuid::Uuid,
    pub client_id: uuid::Uuid,
    pub version: u64,
    pub event_type: &'row str,
    pub schema_version: u32,
    /// RFC 3339, with the sender's offset.
    pub occurred_at: &'row str,
    pub recorded_at: DateTime<Utc>,
    pub agency: String,
    pub credential: String,
    pub actor: Option<String>,
    pub data: &'row str,
    pub sealed: Option<Vec<u8>>,
}

impl StoredEvent<'_> {
    /// The recorded event, or [`Error::Corrupt`] naming its position.
    pub(crate) fn decode(self) -> Result<RecordedEvent> {
        let position = self.position;
        let corrupt = |source| Error::Corrupt { position, source };
        let invalid = |message: String| {
            corrupt(DecodeError::Invalid(
                travelmap_domain::ValidationError::new("", message),
            ))
        };
        let (event, personal) =
            decode_data(self.event_type, self.schema_version, self.data, self.sealed)
                .map_err(corrupt)?;
        let occurred_at = DateTime::parse_from_rfc3339(self.occurred_at)
            .map_err(|error| invalid(format!("occurred_at: {error}")))?;
        let actor = self
            .actor
            .map(travelmap_domain::Text::try_from)
            .transpose()
            .map_err(|error| invalid(format!("actor: {error}")))?;
        Ok(RecordedEvent {
            draft: EventDraft {
                id: EventId(self.event_id),
                client_id: ClientId(self.client_id),
                occurred_at,
                actor,
                event,
            },
            provenance: Provenance {
                agency: self.agency,
                credential: self.credential,
            },
            meta: travelmap_domain::RecordMeta {
                version: self.version,
                position,
                recorded_at: self.recorded_at,
            },
            personal,
        })
    }
}

/// Decodes an event's stored data: as it is, or, when its personal fields are sealed, from the
/// facts alone, with the sealed value kept for [`Keyring::open_events`] (which puts the personal
/// fields back, or the erased placeholders). Backends call this for every row.
fn decode_data(
    event_type: &str,
    schema_version: u32,
    data: &str,
    sealed: Option<Vec<u8>>,
) -> std::result::Result<
    (
        travelmap_domain::JourneyEvent,
        travelmap_domain::PersonalData,
    ),
    DecodeError,
> {
    use travelmap_domain::{JourneyEvent, PersonalData, Sealed, ValidationError, personal};
    match sealed {
        None => Ok((
            JourneyEvent::decode_stored(event_type, schema_version, data)?,
            PersonalData::None,
        )),
        Some(ciphertext) => {
            let (key_id, fields) = keys::sealed_outline(&ciphertext)
                .map_err(|message| ValidationError::new("", message))?;
            // Until the keyring opens it, the event reads as its facts alone. Most types' personal
            // fields are optional, so the facts decode as they are; a type that requires one
            // reads with the erased placeholder in its place.
            let event = match JourneyEvent::decode_stored(event_type, schema_version, data) {
                Ok(event) => event,
                Err(_) => personal::join_erased(event_type, schema_version, data, &fields)?,
            };
            Ok((
                event,
                PersonalData::Sealed(Sealed {
                    fields,
                    ciphertext,
                    public: data.to_owned(),
                    key_id,
                }),
            ))
        }
    }
}

/// Where a store lives, as chosen by configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// The embedded store in a data directory.
    Embedded(PathBuf),
    /// A PostgreSQL database, by `postgres://` URL.
    Postgres(String),
}

impl Location {
    /// A description fit for logs: the directory, or the URL without its password.
    pub fn describe(&self) -> String {
        match self {
            Location::Embedded(dir) => format!("embedded store in {}", dir.display()),
            Location::Postgres(url) => match postgres::connect_options(url) {
                Ok((options, _)) => format!(
                    "PostgreSQL database {} on {}:{}",
                    options.get_database().unwrap_or("(default)"),
                    options.get_host(),
                    options.get_port()
                ),
                Err(_) => "PostgreSQL database".to_owned(),
            },
        }
    }
}

/// An open store of either kind.
pub enum Store {
    Embedded(sqlite::SqliteStore),
    Postgres(postgres::PgStore),
}

impl Store {
    /// Opens the store at `location`, applying schema migrations.
    pub async fn open(location: &Location) -> Result<Self> {
        Ok(match location {
            Location::Embedded(dir) => Store::Embedded(sqlite::SqliteStore::open(dir)?),
            Location::Postgres(url) => {
                Store::Postgres(postgres::PgStore::connect(url, postgres::Migrations::Apply).await?)
            }
        })
    }

    /// Opens an existing store, applying whatever migrations it lacks, and refuses to make one:
    /// for commands that only make sense on a store (a rebuild, a retention run, a key
    /// rotation). Pointed at a mistyped directory or an empty database, they would otherwise
    /// make a store there, report success, and leave behind a schema a later restore collides
    /// with.
    pub async fn open_existing(location: &Location) -> Result<Self> {
        Ok(match location {
            Location::Embedded(dir) => {
                if !dir.join("events.sqlite").exists() {
                    return Err(Error::BadLocation(format!(
                        "{} holds no store (no events.sqlite): give the --data-dir of an existing one",
                        dir.display()
                    )));
                }
                Store::Embedded(sqlite::SqliteStore::open(dir)?)
            }
            Location::Postgres(url) => Store::Postgres(
                postgres::PgStore::connect(url, postgres::Migrations::ApplyToExisting).await?,
            ),
        })
    }

    pub fn log(&self) -> std::sync::Arc<dyn EventLog> {
        match self {
            Store::Embedded(store) => store.log.clone(),
            Store::Postgres(store) => store.log.clone(),
        }
    }

    pub fn views(&self) -> std::sync::Arc<dyn ViewStore> {
        match self {
            Store::Embedded(store) => store.views.clone(),
            Store::Postgres(store) => store.views.clone(),
        }
    }

    pub fn keys(&self) -> std::sync::Arc<dyn KeyStore> {
        match self {
            Store::Embedded(store) => store.keys.clone(),
            Store::Postgres(store) => store.keys.clone(),
        }
    }

    pub fn webhooks(&self) -> std::sync::Arc<dyn WebhookStore> {
        match self {
            Store::Embedded(store) => store.webhooks.clone(),
            Store::Postgres(store) => store.webhooks.clone(),
        }
    }

    pub fn audit(&self) -> std::sync::Arc<dyn AuditLog> {
        match self {
            Store::Embedded(store) => store.audit.clone(),
            Store::Postgres(store) => store.audit.clone(),
        }
    }

    /// The keyring over this store's key store, under `masters`.
    pub async fn keyring(&self, masters: MasterKeys) -> Result<std::sync::Arc<Keyring>> {
        Ok(std::sync::Arc::new(
            Keyring::open(self.keys(), masters).await?,
        ))
    }

    /// Stops taking appends and waits for those queued to be answered.
    pub async fn close(&self) {
        match self {
            Store::Embedded(store) => {
                // The log first, so that nothing it takes goes unlogged; then the trail, whose
                // writer's last checkpoint tells which entry is on disk, for the log to record
                // beside its events (see `sqlite::SqliteEventLog::trail_recorded`).
                store.log.close();
                store.audit.close();
                if let Err(error) = store.log.record_trail_after_close() {
                    tracing::warn!(%error, "could not record the audit trail's last entry on close");
                }
                store.views.close();
                store.keys.close();
            }
            Store::Postgres(store) => store.close().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Error;

    fn sqlite(code: i32) -> Error {
        Error::Sqlite(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(code),
            None,
        ))
    }

    #[test]
    fn a_full_disk_or_a_read_only_file_is_out_of_service_and_a_constraint_is_not() {
        for code in [
            rusqlite::ffi::SQLITE_FULL,
            rusqlite::ffi::SQLITE_READONLY,
            rusqlite::ffi::SQLITE_IOERR,
        ] {
            assert!(sqlite(code).is_out_of_service(), "{code}");
            assert!(!sqlite(code).is_transient(), "{code}");
            // As each waiter of a failed group commit is told it.
            assert!(sqlite(code).for_each_waiter("committing")().is_out_of_service());
        }
        assert!(sqlite(rusqlite::ffi::SQLITE_BUSY).is_transient());
        for code in [
            rusqlite::ffi::SQLITE_CONSTRAINT,
            rusqlite::ffi::SQLITE_CORRUPT,
        ] {
            assert!(!sqlite(code).is_out_of_service(), "{code}");
            assert!(!sqlite(code).is_transient(), "{code}");
        }
    }
}
