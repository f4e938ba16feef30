//! The PostgreSQL backend: the log, the views and their checkpoints in one database, shared by
//! any number of server processes.
//!
//! How the global feed stays gap-safe: positions are handed out from a one-row counter
//! (`log_head`) that every appending transaction locks first and updates last. Appends therefore
//! commit one after another, in position order, across all processes, and a reader that has
//! seen position `p` committed can never later see a smaller one appear. A plain `bigserial`
//! would not do: two transactions can take 7 and 8 and commit 8 first, and a reader that pages
//! past 8 in between skips 7 for ever. See docs/adr/0004-postgres-store.md for why this lock
//! (rather than a high-water mark) and what it costs.
//!
//! Within one process, appends from concurrent requests are grouped into one transaction by a
//! writer task, as in the embedded store, so the lock is taken once per group and each commit's
//! fsync is shared by the whole group.
//!
//! Commits are announced with `NOTIFY` (on `travelmap_log` and, for views, `travelmap_views`), so
//! every process learns of the others' appends and checkpoints without polling.

mod audit;
mod keys;
mod lease;
mod log;
mod schema;
mod scratch;
mod views;
mod webhooks;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Connection};
use tokio::sync::watch;

pub use audit::PgAuditLog;
pub use keys::PgKeyStore;
pub use log::PgEventLog;
pub use schema::MIGRATIONS;
pub use scratch::{DEFAULT_SERVER, ScratchDatabase, server_from_env};
pub use views::PgViewStore;
pub use webhooks::PgWebhookStore;

use crate::{Error, Result};

/// How many connections one process keeps to the database.
const POOL_SIZE: u32 = 16;

/// The channel on which appends announce the new head position.
const LOG_CHANNEL: &str = "travelmap_log";
/// The channel on which view saves announce the new checkpoint.
const VIEWS_CHANNEL: &str = "travelmap_views";

/// Whether connecting may change the database's schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Migrations {
    /// Apply missing migrations (what `travelmap serve` and `travelmap migrate` do).
    Apply,
    /// Refuse a database whose schema is not current (for read-only tools such as `replay`).
    Require,
    /// Apply missing migrations to a database that holds a store, and refuse one that holds
    /// none ([`crate::Error::NoStore`]).
    ApplyToExisting,
}

/// The PostgreSQL store: event log and view store over one database.
pub struct PgStore {
    pub log: Arc<PgEventLog>,
    pub views: Arc<PgViewStore>,
    pub audit: Arc<PgAuditLog>,
    pub keys: Arc<PgKeyStore>,
    pub webhooks: Arc<PgWebhookStore>,
    listener: tokio::task::JoinHandle<()>,
}

impl PgStore {
    /// Connects to the database at `url` (a `postgres://` URL), checking or applying migrations.
    pub async fn connect(url: &str, migrations: Migrations) -> Result<Self> {
        let (options, connect_timeout) = connect_options(url)?;
        first_connection(&options, connect_timeout).await?;
        let pool = PgPoolOptions::new()
            .max_connections(POOL_SIZE)
            .acquire_timeout(connect_timeout)
            // No ping before every checkout: it would add a round trip to every query, and a
            // broken connection fails the query anyway (appends are then retried by the sender
            // and answered idempotently).
            .test_before_acquire(false)
            .connect_with(options.clone())
            .await?;
        match migrations {
            Migrations::Apply => schema::migrate(&pool).await?,
            // Read-only tools (`replay`, `audit verify`) run on a damaged store too: reporting
            // what is wrong with it is what they are for.
            Migrations::Require => schema::require_current(&pool).await?,
            Migrations::ApplyToExisting => {
                if schema::version(&pool).await? == 0 {
                    return Err(crate::Error::NoStore);
                }
                schema::migrate(&pool).await?
            }
        }
        if !matches!(migrations, Migrations::Require) {
            consistent(&pool).await?;
            restore_bookkeeping(&pool).await?;
        }
        // Listen before reading the current head and checkpoint, so that nothing committed in
        // between goes unannounced.
        let mut listener = PgListener::connect_with(&pool).await?;
        listener.listen_all([LOG_CHANNEL, VIEWS_CHANNEL]).await?;
        let (head_position, checkpoint) = heads(&pool).await?;
        let (head, head_receiver) = watch::channel(head_position);
        let (saved, saved_receiver) = watch::channel(checkpoint);
        let rewound = Arc::new(Rewound::default());
        let log = Arc::new(PgEventLog::new(
            pool.clone(),
            head.clone(),
            head_receiver,
            rewound.clone(),
        ));
        let connector = Connector {
            options,
            timeout: connect_timeout,
        };
        let views = Arc::new(PgViewStore::new(
            pool.clone(),
            connector.clone(),
            saved_receiver,
        ));
        let webhooks = Arc::new(PgWebhookStore::new(pool.clone(), connector));
        let audit = Arc::new(PgAuditLog::new(pool.clone()));
        let keys = Arc::new(PgKeyStore::new(pool.clone()));
        let listener = tokio::spawn(follow_notifications(listener, pool, head, saved, rewound));
        Ok(Self {
            log,
            views,
            audit,
            keys,
            webhooks,
            listener,
        })
    }

    /// Stops taking appends, lets the writer finish what is queued, and stops listening.
    pub async fn close(&self) {
        self.log.close().await;
        self.audit.close().await;
        self.keys.close().await;
        self.listener.abort();
    }
}

/// Applies missing migrations to the database at `url` and returns the schema version it is at.
pub async fn migrate(url: &str) -> Result<i64> {
    let (options, connect_timeout) = connect_options(url)?;
    first_connection(&options, connect_timeout).await?;
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(connect_timeout)
        .connect_with(options)
        .await?;
    schema::migrate(&pool).await?;
    let version = schema::version(&pool).await?;
    pool.close().await;
    Ok(version)
}

/// Settings for every connection.
///
/// - JIT compilation is off: our statements are short, and the planner's guess for the one-row
///   `log_head` (never analysed) is large enough to trigger a JIT compile that costs far more
///   than the statement itself.
/// - Each prepared statement is planned once and the plan kept (`force_generic_plan`). Left to
///   choose, PostgreSQL kept planning the statements that take arrays on every execution (it
///   prices a plan for known array lengths below the generic one), and planning was a fifth of
///   its CPU in single-event ingest. Kept plans are made again whenever the tables' statistics
///   change, which the log writer sees to while the log is young (see `log::analyse`).
///
/// - A session idle inside a transaction for [`IDLE_IN_TRANSACTION`] is ended by the server.
///
/// `connect_timeout` (libpq's, in seconds), which sqlx does not take, is read here: it bounds
/// each wait for a connection (10 s when not given).
pub(crate) fn connect_options(url: &str) -> Result<(PgConnectOptions, Duration)> {
    let (url, connect_timeout) = take_connect_timeout(url)?;
    let mut options = PgConnectOptions::from_str(&url)?.options([
        ("jit", "off"),
        ("plan_cache_mode", "force_generic_plan"),
        ("idle_in_transaction_session_timeout", IDLE_IN_TRANSACTION),
    ]);
    if options.get_application_name().is_none() {
        options = options.application_name("travelmap");
    }
    // Left out, the driver takes the user's name for the database's, as libpq does: `migrate`
    // would then create the store's tables wherever that leads (often the `postgres`
    // database).
    if options.get_database().is_none() {
        return Err(Error::BadLocation(
            "the store URL names no database: write it as postgres://USER@HOST/DATABASE".to_owned(),
        ));
    }
    Ok((options, connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT)))
}

/// How long a wait for a connection lasts unless the URL's `connect_timeout` says otherwise.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a group commit (of events or audit entries) may go without its answer before it is
/// given up: a connection whose peer stopped answering (a network partition, a frozen proxy)
/// gives no error, so without a bound every append, and then the shutdown that waits for them,
/// would hang for as long as the kernel keeps the connection (minutes to hours). Far above any
/// commit's normal time (milliseconds), so that a slow disk is not taken for a dead peer.
pub(crate) const COMMIT_PATIENCE: Duration = Duration::from_secs(30);

/// How long PostgreSQL lets a session sit idle inside a transaction before it ends the session
/// (`idle_in_transaction_session_timeout`): the server's half of [`COMMIT_PATIENCE`]. When this
/// process gives up on a transaction that holds the log head's lock and the server never hears
/// of it (the connection is dead, not closed), the server ends the session and frees the lock
/// for the other processes. Shorter than the patience, so that the other processes' appends
/// waiting on that lock are answered within theirs; still far above how long a live
/// transaction idles between its statements (milliseconds).
const IDLE_IN_TRANSACTION: &str = "20s";

/// Statements run straight on the pool, given up after [`COMMIT_PATIENCE`] like group commits:
/// on a connection whose peer stopped answering, a read (or a write of a single statement)
/// would otherwise wait as long as the kernel keeps the connection, holding the request, the
/// client's turn and the shutdown that waits for both. Past the patience the statement is
/// dropped with its connection and the answer is [`Error::Unavailable`] (a 503).
pub(crate) trait Patiently<T>:
    std::future::Future<Output = sqlx::Result<T>> + Sized
{
    fn patiently(self) -> impl std::future::Future<Output = Result<T>> + Send
    where
        Self: Send,
        T: Send,
    {
        async move {
            match tokio::time::timeout(COMMIT_PATIENCE, self).await {
                Ok(answer) => Ok(answer?),
                Err(_) => Err(Error::Unavailable(format!(
                    "no answer from PostgreSQL within {} s",
                    COMMIT_PATIENCE.as_secs()
                ))),
            }
        }
    }
}

impl<T, F: std::future::Future<Output = sqlx::Result<T>>> Patiently<T> for F {}

/// Runs `commit`, a group commit, for at most [`COMMIT_PATIENCE`]. Past that it is dropped (its
/// connection with it) and the answer is [`Error::Unavailable`]: the commit may or may not have
/// happened, which the senders' retries settle (they are answered from the log if it did).
pub(crate) async fn within_patience<T>(
    what: &str,
    commit: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    tokio::time::timeout(COMMIT_PATIENCE, commit)
        .await
        .unwrap_or_else(|_| {
            Err(Error::Unavailable(format!(
                "{what}: no answer from PostgreSQL within {} s; the outcome is unknown",
                COMMIT_PATIENCE.as_secs()
            )))
        })
}

/// The parameters a store URL may carry: those of libpq's that the driver reads, and
/// `connect_timeout`, which is read here. (The driver's own spellings, such as `ssl-mode`, are
/// left out: with them a URL could name one setting twice.)
const URL_PARAMETERS: [&str; 14] = [
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "application_name",
    "options",
    "connect_timeout",
    // The driver writes it into the URLs it makes.
    "statement-cache-capacity",
];

/// `url` without its `connect_timeout` parameter, and that parameter's value.
fn take_connect_timeout(url: &str) -> Result<(String, Option<Duration>)> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_owned(), None));
    };
    let mut timeout = None;
    let mut kept = Vec::new();
    let mut named: Vec<&str> = Vec::new();
    for pair in query.split('&') {
        // The driver would only warn of a parameter it does not know and go on without it; a
        // misspelt `sslmode` would then connect without the TLS it asked for.
        let name = pair.split_once('=').map_or(pair, |(name, _)| name);
        if !URL_PARAMETERS.contains(&name) {
            return Err(Error::BadLocation(format!(
                "the store URL's parameter `{name}` is not one of {}",
                URL_PARAMETERS.join(", ")
            )));
        }
        // Which of two would count is the driver's business; that is not good enough for
        // `sslmode`.
        if named.contains(&name) {
            return Err(Error::BadLocation(format!(
                "the store URL gives its parameter `{name}` twice"
            )));
        }
        named.push(name);
        match pair.strip_prefix("connect_timeout=") {
            Some(seconds) => {
                let seconds: u64 = seconds.parse().map_err(|_| {
                    Error::BadLocation(format!(
                        "connect_timeout `{seconds}` is not a whole number of seconds"
                    ))
                })?;
                // libpq reads 0 as "wait for ever"; a wait that never ends helps nobody here.
                timeout = Some(Duration::from_secs(seconds.max(1)));
            }
            None => kept.push(pair),
        }
    }
    let url = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((url, timeout))
}

/// Makes connections outside the pool (for the leases, held for as long as a process leads),
/// each within the URL's `connect_timeout`.
#[derive(Debug, Clone)]
pub(crate) struct Connector {
    options: PgConnectOptions,
    timeout: Duration,
}

impl Connector {
    pub(crate) async fn connect(&self) -> Result<sqlx::PgConnection> {
        tokio::time::timeout(self.timeout, self.options.connect())
            .await
            .map_err(|_| {
                Error::Unavailable(format!(
                    "no connection to PostgreSQL within {} s",
                    self.timeout.as_secs()
                ))
            })?
            .map_err(Error::from)
    }
}

/// Makes one connection directly, before any pool: a pool that cannot connect reports only that
/// it timed out, after its whole timeout, while this says why (refused, no such database,
/// authentication) at once.
async fn first_connection(options: &PgConnectOptions, timeout: Duration) -> Result<()> {
    let connection = tokio::time::timeout(timeout, options.connect())
        .await
        .map_err(|_| {
            Error::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no connection to PostgreSQL within {} s", timeout.as_secs()),
            ))
        })??;
    connection.close().await?;
    Ok(())
}

/// Fails unless the heads every append locks are at least where the tables they guard end:
/// a head behind them (a restore that failed part way, or one into a database that already
/// held a store, restores rows but not the head) makes every append collide with a stored row,
/// and every audited request with a stored entry, while the service would look healthy.
async fn consistent(pool: &PgPool) -> Result<()> {
    let (head, last, audit_head, last_entry): (Option<i64>, Option<i64>, Option<i64>, Option<i64>) =
        sqlx::query_as(
            "SELECT (SELECT position FROM log_head), (SELECT MAX(position) FROM events),
                    (SELECT seq FROM audit_head), (SELECT MAX(seq) FROM audit_entries)",
        )
        .fetch_one(pool)
        .await?;
    let (head, audit_head) = (head.unwrap_or(-1), audit_head.unwrap_or(-1));
    if let Some(last) = last
        && last > head
    {
        return Err(crate::Error::Inconsistent(format!(
            "its events end at position {last}, but its log head is at {head}"
        )));
    }
    if let Some(last_entry) = last_entry
        && last_entry > audit_head
    {
        return Err(crate::Error::Inconsistent(format!(
            "its audit trail ends at entry {last_entry}, but its head is at entry {audit_head}"
        )));
    }
    Ok(())
}

/// Puts back the rows that only keep the views' checkpoint and the leases' epochs, where a
/// restore left them out (a dump taken without those tables' data): they say where work stands,
/// not what was recorded, so without them the views are folded again from the start and the
/// leases count their epochs from zero, instead of every start failing on the missing row.
async fn restore_bookkeeping(pool: &PgPool) -> Result<()> {
    let (checkpoint, dispatch): (bool, bool) = sqlx::query_as(
        "SELECT EXISTS (SELECT 1 FROM projection_checkpoints WHERE projection = 'client_views'),
                EXISTS (SELECT 1 FROM webhook_dispatch)",
    )
    .fetch_one(pool)
    .await?;
    if checkpoint && dispatch {
        return Ok(());
    }
    // Two processes starting at once may both find the rows missing: each row has a key, so
    // only one adds it, and only the one that did says so.
    let made_checkpoint = sqlx::query(
        "INSERT INTO projection_checkpoints (projection, position, epoch)
         VALUES ('client_views', 0, 0) ON CONFLICT DO NOTHING",
    )
    .execute(pool)
    .await?
    .rows_affected();
    let made_dispatch =
        sqlx::query("INSERT INTO webhook_dispatch (epoch) VALUES (0) ON CONFLICT DO NOTHING")
            .execute(pool)
            .await?
            .rows_affected();
    if made_checkpoint + made_dispatch > 0 {
        tracing::warn!(
            views_checkpoint_made = made_checkpoint > 0,
            webhook_lease_made = made_dispatch > 0,
            "the store lacked the rows that keep the views' checkpoint or the webhooks' lease \
             (restored from a dump without them?); made them again: the views are folded again \
             from the log"
        );
    }
    Ok(())
}

async fn heads(pool: &PgPool) -> Result<(u64, u64)> {
    // A checkpoint row left out of a restore reads as no view folded yet: the commands that
    // only read work meanwhile, and the next one that writes makes the row again.
    let (head, checkpoint): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT position FROM log_head),
                COALESCE((SELECT position FROM projection_checkpoints
                          WHERE projection = 'client_views'), 0)",
    )
    .fetch_one(pool)
    .await?;
    Ok((head as u64, checkpoint as u64))
}

/// The log's head seen going back while this process ran: the database was restored under it
/// (an older dump put back while servers ran, which docs/operations.md warns against), or
/// failed over to a replica that lacked the last commits. Every
/// position this process has passed may then be given to new events, which its projector and
/// index would never fold; so from then on it refuses to record events (`503`, which readiness
/// shows as the store failing) until it is restarted, and says why.
#[derive(Default)]
pub(crate) struct Rewound(std::sync::OnceLock<(u64, u64)>);

impl Rewound {
    /// Notes that the head was at `from` and is now at `to`, below it; logged the first time.
    fn noticed(&self, from: u64, to: u64) {
        if self.0.set((from, to)).is_ok() {
            tracing::error!(
                from,
                to,
                "the event log's head went back while this server ran: the database was \
                 restored under it, or failed over to a replica that lacked the last commits. \
                 Events recorded from now on would take positions this \
                 server has passed and never reach its travel maps, so it records none. Stop \
                 every server, run `travelmap rebuild`, and start them again (see \
                 docs/operations.md, \"PostgreSQL\")"
            );
        }
    }

    /// The answer to an append once the head has been seen going back.
    pub(crate) fn refusal(&self) -> Option<crate::Error> {
        self.0.get().map(|(from, to)| {
            crate::Error::Unavailable(format!(
                "the event log's head went back from position {from} to {to} while this server \
                 ran (the database was restored under it, or failed over to a replica that \
                 lacked the last commits); restart it after a rebuild"
            ))
        })
    }
}

/// Moves the head and checkpoint watches as other processes (and this one) announce commits.
/// Notifications sent while the listening connection was down are lost, so after every
/// reconnection, once listening again, both are read from the tables again. The task runs until
/// the store is closed (which aborts it).
///
/// Appends commit one at a time under the `log_head` lock, each announcing the head it moved to,
/// and notifications arrive in commit order: so each announced head is past the one announced
/// before, and one that is not means the log went back (see [`Rewound`]). Only announcements are
/// compared with announcements: a head read from the table may already count commits whose
/// announcements are still on their way.
async fn follow_notifications(
    mut listener: PgListener,
    pool: PgPool,
    head: watch::Sender<u64>,
    saved: watch::Sender<u64>,
    rewound: Arc<Rewound>,
) {
    // The last head announced.
    let mut heard = 0;
    loop {
        match listener.try_recv().await {
            Ok(Some(notification)) => {
                let Ok(position) = notification.payload().parse::<u64>() else {
                    continue;
                };
                // The head never goes back; the views' checkpoint can (to 0, on a rebuild).
                if notification.channel() == LOG_CHANNEL {
                    if position <= heard {
                        rewound.noticed(heard, position);
                    }
                    heard = position;
                    advance(&head, position);
                } else {
                    saved.send_replace(position);
                }
            }
            Ok(None) | Err(_) => {
                // The connection was lost. Listen again first, pausing so a down database is
                // not hammered, and only then catch up on what may have been missed: heads read
                // before the listening resumed would miss what was announced in between, for
                // good if nothing is committed after it.
                // On a new listener: after some errors the old one keeps its dead connection.
                listener = loop {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    let Ok(mut fresh) = PgListener::connect_with(&pool).await else {
                        continue;
                    };
                    if fresh.listen_all([LOG_CHANNEL, VIEWS_CHANNEL]).await.is_ok() {
                        break fresh;
                    }
                };
                loop {
                    if let Ok((position, checkpoint)) = heads(&pool).await {
                        if position < heard {
                            rewound.noticed(heard, position);
                        }
                        advance(&head, position);
                        saved.send_replace(checkpoint);
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }
}

/// Moves the head watch forward to `position` (never back: announcements from several
/// processes and connections can arrive out of order).
pub(super) fn advance(head: &watch::Sender<u64>, position: u64) {
    head.send_if_modified(|current| {
        let moved = position > *current;
        *current = (*current).max(position);
        moved
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_timeout_is_taken_from_the_url_and_the_rest_left_alone() {
        let take = |url: &str| take_connect_timeout(url).unwrap();
        assert_eq!(
            take("postgres://h/db"),
            ("postgres://h/db".to_owned(), None)
        );
        assert_eq!(
            take("postgres://h/db?connect_timeout=2"),
            ("postgres://h/db".to_owned(), Some(Duration::from_secs(2)))
        );
        assert_eq!(
            take("postgres://h/db?sslmode=disable&connect_timeout=0&application_name=x"),
            (
                "postgres://h/db?sslmode=disable&application_name=x".to_owned(),
                Some(Duration::from_secs(1))
            )
        );
        assert!(take_connect_timeout("postgres://h/db?connect_timeout=soon").is_err());
    }

    #[test]
    fn a_parameter_the_driver_would_ignore_is_refused() {
        let error = take_connect_timeout("postgres://h/db?sslmod=require").unwrap_err();
        assert!(error.to_string().contains("`sslmod`"), "{error}");
        assert!(take_connect_timeout("postgres://h/db?bogus").is_err());
        assert!(take_connect_timeout("postgres://h/db?sslmode=require&user=x").is_ok());
        let twice = take_connect_timeout("postgres://h/db?sslmode=disable&sslmode=require");
        assert!(twice.unwrap_err().to_string().contains("twice"));
    }

    #[test]
    fn a_url_must_name_its_database() {
        for url in ["postgres://u@h:5432", "postgres://u@h:5432/"] {
            let error = connect_options(url).unwrap_err();
            assert!(
                error.to_string().contains("names no database"),
                "{url}: {error}"
            );
        }
        assert!(connect_options("postgres://u@h:5432/travelmap").is_ok());
        assert!(connect_options("postgres://u@h:5432?dbname=travelmap").is_ok());
    }
}
