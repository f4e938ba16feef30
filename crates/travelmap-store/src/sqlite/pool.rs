//! A small pool of read-only connections, used from async code through `spawn_blocking`, or
//! directly for reads of a few rows.
//! SQLite connections are cheap to keep and expensive enough to open that reusing them matters
//! for read latency.

use std::path::PathBuf;
use std::sync::Mutex;

use rusqlite::Connection;

use crate::{Error, Result};

/// How often a read that found the database busy is tried again.
const BUSY_RETRIES: u64 = 5;

/// How many idle connections to keep. More readers than this rarely run at once (the blocking
/// pool serves every read), and each idle connection holds a page cache; extra connections are
/// opened when needed and closed when returned.
const MAX_IDLE: usize = 8;

/// How many point look-ups a read may make on the calling thread. A travel-map read makes one
/// in each of two databases; each takes a few tens of microseconds in mapped pages.
const INLINE_POINTS: usize = 4;

pub(crate) struct ReadPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    /// Opened by a read-only command, which may be looking at a copy it cannot write (see
    /// [`super::open_copy_read_only`]); a server's own pools never are.
    copy: bool,
}

impl ReadPool {
    pub(crate) fn new(path: PathBuf) -> Self {
        Self {
            path,
            idle: Mutex::new(Vec::new()),
            copy: false,
        }
    }

    /// A pool for a read-only command's store, which may be a copy it cannot write.
    pub(crate) fn for_copy(path: PathBuf) -> Self {
        Self {
            copy: true,
            ..Self::new(path)
        }
    }

    fn take(&self) -> Result<Connection> {
        if let Some(connection) = self.idle.lock().expect("pool lock").pop() {
            return Ok(connection);
        }
        let connection = if self.copy {
            super::open_copy_read_only(&self.path)?
        } else {
            super::open_read_only(&self.path)?
        };
        super::reader(&connection)?;
        Ok(connection)
    }

    fn give_back(&self, connection: Connection) {
        let mut idle = self.idle.lock().expect("pool lock");
        if idle.len() < MAX_IDLE {
            idle.push(connection);
        }
    }

    /// Runs a short `read` on a pooled connection on the calling thread. Meant for point reads of
    /// a few rows (a handful of B-tree probes in pages that are mapped or cached, tens of
    /// microseconds): handing those to the blocking pool cost more than the read itself, in two
    /// thread switches each way. A read that finds the database busy goes to the blocking pool,
    /// where waiting for it harms nobody.
    pub(crate) async fn read_now<T, F>(self: &std::sync::Arc<Self>, read: F) -> Result<T>
    where
        T: Send + 'static,
        F: Fn(&Connection) -> Result<T> + Send + 'static,
    {
        let first = {
            let connection = self.take()?;
            let result = read(&connection);
            self.give_back(connection);
            result
        };
        match first {
            Err(error) if error.is_busy() => self.read(read).await,
            other => other,
        }
    }

    /// Runs a read of `rows` point look-ups where it costs least: on the calling thread if they
    /// are few (see [`Self::read_now`]), on the blocking pool otherwise, so that a large read
    /// (a projector's page of clients) does not hold up the runtime's other tasks.
    pub(crate) async fn read_points<T, F>(
        self: &std::sync::Arc<Self>,
        rows: usize,
        read: F,
    ) -> Result<T>
    where
        T: Send + 'static,
        F: Fn(&Connection) -> Result<T> + Send + 'static,
    {
        if rows <= INLINE_POINTS {
            self.read_now(read).await
        } else {
            self.read(read).await
        }
    }

    /// Runs `read` on a pooled connection on the blocking thread pool. A read that finds the
    /// database momentarily busy (SQLite answers so at once in some WAL states, without
    /// consulting the busy timeout) is tried again a few times before the error is reported.
    pub(crate) async fn read<T, F>(self: &std::sync::Arc<Self>, read: F) -> Result<T>
    where
        T: Send + 'static,
        F: Fn(&Connection) -> Result<T> + Send + 'static,
    {
        let pool = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut attempt = 0;
            loop {
                let connection = pool.take()?;
                let result = read(&connection);
                pool.give_back(connection);
                match result {
                    Err(error) if error.is_busy() && attempt < BUSY_RETRIES => {
                        attempt += 1;
                        std::thread::sleep(std::time::Duration::from_millis(attempt * 2));
                    }
                    other => return other,
                }
            }
        })
        .await
        .map_err(|_| Error::Closed)?
    }
}
