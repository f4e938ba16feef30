//! The offline commands: import, rebuild, replay, migrate and credential. They open the store
//! directly. On the embedded store, import and rebuild need the server stopped (it holds the
//! data directory); on PostgreSQL they can run beside servers. Replay only reads.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use chrono::{DateTime, SubsecRound, Utc};
use indicatif::{ProgressBar, ProgressStyle};
use travelmap_api::wire::{self, Recorded};
use travelmap_api::{Authenticator, Role};
use travelmap_domain::audit::{AuditRecord, Operation, Outcome};
use travelmap_domain::{AgencyKind, ClientId, EventId, Provenance, RecordedEvent};
use travelmap_projections::{ClientState, TravelMap};
use travelmap_service::{Journeys, Submission};
use travelmap_store::postgres::{self, Migrations, PgStore};
use travelmap_store::sqlite::{SqliteAuditLog, SqliteEventLog, SqliteKeyStore};
use travelmap_store::{AuditLog, EventLog, Keyring, Location, MasterKeys, SealedLog, Store};

/// Events per transaction during an import.
const IMPORT_BATCH: usize = 1000;
/// How many invalid lines an import lists before it stops looking.
const MAX_REPORTED_ERRORS: usize = 20;

/// Loads a JSON-lines file (one event per line, as posted to `POST /v1/events`).
///
/// Every line is checked first (its shape, and that no event id appears twice in the file), so a
/// malformed file changes nothing. Then the events are recorded in batches of 1000, each all or
/// nothing. What can only be decided against the log (an id already recorded with other content, a
/// stale `expected_version`, a correction of an unknown event or of one the agency may not
/// rectify) stops the import at the batch where
/// it occurs, with the batches before it recorded. Events already recorded with the same content
/// are skipped, so after fixing the file the import can simply be run again.
pub async fn import(
    location: &Location,
    file: &Path,
    provenance: Provenance,
    kind: Option<AgencyKind>,
    authenticator: Option<&Authenticator>,
    // Called only once the file is valid: a refused file leaves no generated key behind.
    masters: impl FnOnce() -> Result<MasterKeys, crate::settings::Error>,
) -> anyhow::Result<()> {
    let open = || -> anyhow::Result<BufReader<std::fs::File>> {
        Ok(BufReader::new(
            std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?,
        ))
    };
    let mut errors = Vec::new();
    let mut more_errors = 0usize;
    // Clients named by lines the credential may not post, as a refusal over HTTP names them.
    let mut denied: Vec<ClientId> = Vec::new();
    let mut total = 0u64;
    // Each event's line, type and day: for ids repeated in the file, and so that a correction
    // of an event earlier in the file is checked before anything is recorded, as the server
    // would check it.
    let mut lines_of: HashMap<EventId, LineEvent> = HashMap::new();
    // Why a line's type is outside what the credential may import, if it is.
    let outside_remit = |event_type: &str| -> Option<String> {
        if travelmap_domain::personal::is_lifecycle(event_type) {
            Some(format!(
                "`{event_type}` is recorded by the service itself (through its \
                 data-protection endpoints and commands), not imported"
            ))
        } else if kind.is_some_and(|kind| !travelmap_domain::agency::may_post(kind, event_type)) {
            Some(format!(
                "agency `{}` may not post `{event_type}` events",
                provenance.agency
            ))
        } else {
            None
        }
    };
    for read in ImportLines::new(open()?) {
        let (number, line) = read.with_context(|| format!("reading {}", file.display()))?;
        let line = match line {
            ImportLine::Text(line) if blank(&line) => continue,
            ImportLine::Text(line) => line,
            ImportLine::TooLong => {
                total += 1;
                push_error(
                    &mut errors,
                    &mut more_errors,
                    format!(
                        "line {number}: longer than {} bytes, the most a POST /v1/events body \
                         may hold",
                        travelmap_api::extract::MAX_BODY_BYTES
                    ),
                );
                continue;
            }
        };
        total += 1;
        let problem = match parse_line(&line) {
            Ok(submission) => match outside_remit(submission.draft.event.event_type()) {
                Some(refused) => {
                    note_denied(&mut denied, submission.draft.client_id);
                    Some(refused)
                }
                None => within_remit(&submission, number, authenticator, &mut lines_of),
            },
            // As over HTTP, a type outside the agency's remit is refused as such, whatever its
            // data: read the line's type and client again (only for lines that fail).
            Err(problem) => match line_remit(&line, &outside_remit) {
                Some((refused, client)) => {
                    if let Some(client) = client {
                        note_denied(&mut denied, client);
                    }
                    Some(refused)
                }
                None => Some(problem),
            },
        };
        if let Some(problem) = problem {
            push_error(
                &mut errors,
                &mut more_errors,
                format!("line {number}: {problem}"),
            );
        }
    }
    drop(lines_of);
    if !errors.is_empty() {
        let more = match more_errors {
            0 => String::new(),
            more => format!("\n  ... and {more} more"),
        };
        let refusal = anyhow::anyhow!(
            "{} is not valid; nothing was imported:\n  {}{more}",
            file.display(),
            errors.join("\n  ")
        );
        return Err(log_denied_import(location, &provenance, file, &denied, refusal).await);
    }

    // Before the store is opened: a key is made only for a directory with no key store yet.
    let masters = masters()?;
    let store = Store::open(location)
        .await
        .with_context(|| format!("opening the {}", location.describe()))?;
    let keyring = store.keyring(masters).await?;
    crate::settings::master_key_used();
    let journeys = Journeys::new(store.log(), store.views(), Some(keyring)).await?;
    let audit = store.audit();
    let progress = ProgressBar::new(total).with_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} events ({per_sec}, {eta} left)")
            .expect("valid template"),
    );
    let (mut created, mut skipped) = (0u64, 0u64);
    let mut batch: Vec<Submission> = Vec::with_capacity(IMPORT_BATCH);
    // The file's line number of each event in the batch, to name the one a refusal is about.
    let mut batch_lines: Vec<usize> = Vec::with_capacity(IMPORT_BATCH);
    let mut lines = ImportLines::new(open()?);
    loop {
        let line = match lines.next().transpose()? {
            Some((number, ImportLine::Text(line))) => Some((number, line)),
            Some((number, ImportLine::TooLong)) => bail!("line {number} grew while importing"),
            None => None,
        };
        if let Some((number, line)) = &line
            && !blank(line)
        {
            batch.push(parse_line(line).map_err(anyhow::Error::msg)?);
            batch_lines.push(*number);
        }
        if batch.len() == IMPORT_BATCH || (line.is_none() && !batch.is_empty()) {
            // Logged like a batch posted over HTTP: an entry per client and operation, written
            // beside the commit; an attempt refused for a restricted or erased client as denied.
            let entries = travelmap_api::audit::recorded_by_client(&batch)
                .into_iter()
                .map(|(client, operation, returned)| {
                    offline_record(
                        &provenance,
                        Outcome::Allowed,
                        OfflineLogged {
                            operation,
                            client: Some(client),
                            purpose: None,
                            action: IMPORT_ACTION,
                            returned,
                        },
                    )
                })
                .collect();
            let recorded = journeys
                .record_logged(&provenance, kind, &batch, |_| async {
                    travelmap_store::append_patiently(audit.as_ref(), entries, IMPORT_PATIENCE)
                        .await
                        .map_err(|(error, _)| error)
                })
                .await;
            let stopped = |error: &travelmap_service::Error| {
                let line = error
                    .index()
                    .and_then(|index| batch_lines.get(index))
                    .map(|line| format!("line {line}: "))
                    .unwrap_or_default();
                anyhow::anyhow!(
                    "{line}{error}; the {created} events recorded before this batch stay \
                     recorded (fix the file and run the import again: recorded events are \
                     skipped)"
                )
            };
            let outcomes = match recorded {
                Ok((outcomes, Ok(_))) => outcomes,
                // Every event of the batch was recorded before (a re-run), and its entries
                // for this run could not be written.
                Ok((_, Err(error))) => {
                    return Err(anyhow::Error::new(error).context(format!(
                        "the audit trail could not be written, so the import stopped after the \
                         {created} events before this batch; run it again once the trail can \
                         be written (recorded events are skipped)"
                    )));
                }
                Err(travelmap_service::Error::Store(travelmap_store::Error::Unlogged)) => {
                    return Err(anyhow::anyhow!(
                        "the audit trail could not take this batch's entries, so the batch was \
                         not recorded; the {created} events recorded before it stay recorded \
                         (run the import again once the trail can be written: recorded events \
                         are skipped)"
                    ));
                }
                Err(error) => {
                    if let Some(refused) = travelmap_api::audit::denied_submission(&error, &batch) {
                        let denied = offline_record(
                            &provenance,
                            Outcome::Denied,
                            OfflineLogged {
                                operation: travelmap_api::audit::operation_of(refused),
                                client: Some(refused.draft.client_id),
                                purpose: None,
                                action: IMPORT_ACTION,
                                returned: None,
                            },
                        );
                        audit.append(vec![denied]).await?;
                    }
                    return Err(stopped(&error));
                }
            };
            let fresh = outcomes.iter().filter(|outcome| outcome.created).count() as u64;
            created += fresh;
            skipped += outcomes.len() as u64 - fresh;
            progress.inc(batch.len() as u64);
            batch.clear();
            batch_lines.clear();
        }
        if line.is_none() {
            break;
        }
    }
    progress.finish();
    // On PostgreSQL a running server may hold the view lease; its projector then folds the
    // imported events, and waiting for the lease here would wait for that server to stop.
    if matches!(store, Store::Embedded(_)) {
        journeys.projector().catch_up().await?;
    }
    store.close().await;
    out!(
        "imported {created} events ({skipped} already recorded) from {}",
        file.display()
    );
    Ok(())
}

/// Refuses a data directory that holds no store, for commands that only make sense on one: run
/// on a mistyped directory, they would create an empty store and a master key there, and report
/// success (a key rotation would even say the old master key may now be removed). Refusals are
/// logged only into a store that exists, never into one made for them.
pub fn existing_store(location: &Location) -> anyhow::Result<()> {
    if let Location::Embedded(data_dir) = location
        && !data_dir.join("events.sqlite").exists()
    {
        bail!(
            "{} holds no store (no events.sqlite): give the --data-dir of an existing one",
            data_dir.display()
        );
    }
    Ok(())
}

/// Appends one entry from an offline command: beside a running server on the embedded store
/// (see `SqliteAuditLog::append_beside`), or to the database's trail.
pub async fn log_offline(location: &Location, record: AuditRecord) -> anyhow::Result<()> {
    log_offline_all(location, vec![record]).await
}

/// [`log_offline`], for several entries at once.
pub async fn log_offline_all(location: &Location, records: Vec<AuditRecord>) -> anyhow::Result<()> {
    match location {
        Location::Embedded(data_dir) => {
            SqliteAuditLog::append_beside(&data_dir.join("audit.sqlite"), &records)?;
        }
        Location::Postgres(url) => {
            let store = PgStore::connect(url, Migrations::Require)
                .await
                .with_context(|| format!("opening the {}", location.describe()))?;
            let logged = store.audit.append(records).await;
            store.close().await;
            logged?;
        }
    }
    Ok(())
}

/// Who replays a client's history, and why: the read is logged under them.
pub struct Reader {
    pub provenance: Provenance,
    /// `audit` or `subject_access`.
    pub purpose: String,
}

/// How long an import retries a batch's entries before it stops (see
/// `travelmap_store::append_patiently`): less than the log waits for them. An attempt begun
/// just before may outlast the log's wait: the batch is then not recorded, and the import
/// stops saying so.
const IMPORT_PATIENCE: std::time::Duration =
    travelmap_store::handshake::ENTRIES_PATIENCE.saturating_sub(std::time::Duration::from_secs(2));

/// How the actions of offline commands in the audit trail begin, and nothing a server logs:
/// a trail with only such entries was never written by a server (see `Application::build`).
pub const OFFLINE_ACTION_PREFIX: &str = "travelmap ";

/// The action under which replays are logged.
pub const REPLAY_ACTION: &str = "travelmap replay";

/// The action under which imports are logged.
pub const IMPORT_ACTION: &str = "travelmap import";

/// The action under which `travelmap retention run` logs its shreddings.
pub const RETENTION_ACTION: &str = "travelmap retention run";

/// What an offline command did, for the audit trail: `logged` as the credential it runs as,
/// with no request id or justification.
pub fn offline_record(
    provenance: &Provenance,
    outcome: Outcome,
    logged: OfflineLogged<'_>,
) -> AuditRecord {
    AuditRecord {
        at: Utc::now(),
        credential: provenance.credential.clone(),
        agency: provenance.agency.clone(),
        actor: None,
        operation: logged.operation,
        client_id: logged.client,
        purpose: logged.purpose.map(str::to_owned),
        justification: None,
        request_id: None,
        outcome,
        action: logged.action.to_owned(),
        returned: logged.returned,
    }
}

/// One entry's worth of facts about an offline command (see [`offline_record`]).
pub struct OfflineLogged<'a> {
    pub operation: Operation,
    pub client: Option<ClientId>,
    pub purpose: Option<&'a str>,
    pub action: &'a str,
    pub returned: Option<String>,
}

/// Keeps the first [`MAX_REPORTED_ERRORS`] problems of a file and counts the rest.
fn push_error(errors: &mut Vec<String>, more: &mut usize, problem: String) {
    if errors.len() < MAX_REPORTED_ERRORS {
        errors.push(problem);
    } else {
        *more += 1;
    }
}

/// Why a line that did not parse is outside the credential's remit, judged on its type as
/// written (a type of the catalogue only: an unknown one is the line's own problem), with the
/// client it names when that can be read.
fn line_remit(
    line: &str,
    outside_remit: &dyn Fn(&str) -> Option<String>,
) -> Option<(String, Option<ClientId>)> {
    let value: serde_json::Value = serde_json::from_str(line).ok()?;
    let event_type = value.get("type")?.as_str()?;
    travelmap_domain::agency::posted_by(event_type)?;
    let refused = outside_remit(event_type)?;
    let client = value
        .get("client_id")
        .and_then(serde_json::Value::as_str)
        .and_then(|client| client.parse().ok())
        .map(ClientId);
    Some((refused, client))
}

/// Notes a client named by a line the credential may not post, up to a batch's worth (as a
/// refused batch over HTTP names at most that many).
fn note_denied(denied: &mut Vec<ClientId>, client: ClientId) {
    if denied.len() < wire::MAX_BATCH && !denied.contains(&client) {
        denied.push(client);
    }
}

/// The clients the lines of an import file name, as far as they can be read (up to a batch's
/// worth): for the audit entry of an import refused before its lines are checked.
pub fn clients_named_in(file: &Path) -> Vec<ClientId> {
    let Ok(opened) = std::fs::File::open(file) else {
        return Vec::new();
    };
    let mut clients = Vec::new();
    for read in ImportLines::new(BufReader::new(opened)) {
        let line = match read {
            Ok((_, ImportLine::Text(line))) => line,
            Ok((_, ImportLine::TooLong)) => continue,
            // A read that fails (a directory, a failing disk) fails again: stop here.
            Err(_) => break,
        };
        let named = serde_json::from_str::<serde_json::Value>(&line)
            .ok()
            .and_then(|value| value.get("client_id")?.as_str()?.parse().ok());
        if let Some(client) = named {
            note_denied(&mut clients, ClientId(client));
        }
        if clients.len() == wire::MAX_BATCH {
            break;
        }
    }
    clients
}

/// Logs an import refused for lines its credential may not post, as `denied` under each client
/// they name, as the same refusal over HTTP is; returns `refusal`, with a note if the entries
/// could not be written. A directory with no store has no trail, and none is made for this.
async fn log_denied_import(
    location: &Location,
    provenance: &Provenance,
    file: &Path,
    denied: &[ClientId],
    refusal: anyhow::Error,
) -> anyhow::Error {
    if denied.is_empty() || existing_store(location).is_err() {
        return refusal;
    }
    // One entry for the attempt, and one under each client the file names (up to a batch's
    // worth, and every client of a refused line), as a batch refused over HTTP is logged.
    let mut named = clients_named_in(file);
    for client in denied {
        if !named.contains(client) {
            named.push(*client);
        }
    }
    let clients: Vec<Option<ClientId>> = std::iter::once(None)
        .chain(named.into_iter().map(Some))
        .collect();
    let records: Vec<AuditRecord> = clients
        .iter()
        .map(|client| {
            offline_record(
                provenance,
                Outcome::Denied,
                OfflineLogged {
                    operation: Operation::Collection,
                    client: *client,
                    purpose: None,
                    action: IMPORT_ACTION,
                    returned: None,
                },
            )
        })
        .collect();
    match log_offline_all(location, records).await {
        Ok(()) => refusal,
        Err(logging) => {
            anyhow::anyhow!("{refusal:#}\n(and the refusal could not be logged: {logging:#})")
        }
    }
}

/// The lines of an import file, numbered from 1. A line may hold at most
/// [`travelmap_api::extract::MAX_BODY_BYTES`], as a body POSTed over HTTP: a longer one is read
/// through to its end without being kept, and reported as [`ImportLine::TooLong`].
struct ImportLines<R> {
    reader: R,
    number: usize,
}

enum ImportLine {
    Text(String),
    TooLong,
}

impl<R: BufRead> ImportLines<R> {
    fn new(reader: R) -> Self {
        Self { reader, number: 0 }
    }
}

impl<R: BufRead> Iterator for ImportLines<R> {
    type Item = std::io::Result<(usize, ImportLine)>;

    fn next(&mut self) -> Option<Self::Item> {
        let limit = travelmap_api::extract::MAX_BODY_BYTES;
        let mut line = Vec::new();
        let (mut too_long, mut read_any) = (false, false);
        loop {
            let available = match self.reader.fill_buf() {
                Ok(available) => available,
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(error) => return Some(Err(error)),
            };
            if available.is_empty() {
                if !read_any {
                    return None;
                }
                break;
            }
            read_any = true;
            let newline = available.iter().position(|&byte| byte == b'\n');
            let taken = newline.map_or(available.len(), |at| at + 1);
            if !too_long {
                line.extend_from_slice(&available[..newline.unwrap_or(taken)]);
                if line.len() > limit + 1 {
                    // One byte over is a CR before the newline, which the end trims.
                    too_long = true;
                    line = Vec::new();
                }
            }
            self.reader.consume(taken);
            if newline.is_some() {
                break;
            }
        }
        self.number += 1;
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        if too_long || line.len() > limit {
            return Some(Ok((self.number, ImportLine::TooLong)));
        }
        Some(match String::from_utf8(line) {
            Ok(text) => Ok((self.number, ImportLine::Text(text))),
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("line {} is not valid UTF-8", self.number),
            )),
        })
    }
}

/// Whether an import line holds nothing but JSON's white space (a form feed, which JSON does not
/// count as such, makes the line a malformed event rather than one to skip).
fn blank(line: &str) -> bool {
    line.trim_matches([' ', '\t', '\r', '\n']).is_empty()
}

fn parse_line(line: &str) -> Result<Submission, String> {
    // As over HTTP, where a body that starts with one is not JSON either; said plainly, since
    // editors add it unseen.
    if line.starts_with('\u{feff}') {
        return Err("starts with a byte-order mark: save the file as UTF-8 without one".to_owned());
    }
    // Parsed as the HTTP API parses bodies: a member named twice is refused there too.
    let value = travelmap_api::extract::parse_json(line.as_bytes())?;
    wire::parse_event(&value).map_err(|error| match error.field {
        Some(field) => format!("{field}: {}", error.detail),
        None => error.detail,
    })
}

/// What the import's first pass keeps of each line's event.
struct LineEvent {
    number: usize,
    event_type: &'static str,
    occurred_on: chrono::NaiveDate,
}

/// What the import's first pass finds wrong with a line's event within its agency's remit: a
/// named agency the configuration does not declare, an id an earlier line has, or its dated
/// facts. Notes the line's event in `lines_of`.
fn within_remit(
    submission: &Submission,
    number: usize,
    authenticator: Option<&Authenticator>,
    lines_of: &mut HashMap<EventId, LineEvent>,
) -> Option<String> {
    let named = authenticator
        .map(|authenticator| authenticator.check_named_agency(&submission.draft.event))
        .unwrap_or(Ok(()));
    let draft = &submission.draft;
    let line = LineEvent {
        number,
        event_type: draft.event.event_type(),
        occurred_on: draft.occurred_at.date_naive(),
    };
    match (named, lines_of.insert(draft.id, line)) {
        (Err(invalid), _) => Some(format!(
            "{}: {}",
            invalid.field.as_deref().unwrap_or_default(),
            invalid.detail
        )),
        (Ok(()), Some(first)) => Some(format!(
            "event id {} already appears on line {}",
            draft.id, first.number
        )),
        (Ok(()), None) => dated_facts(draft, lines_of),
    }
}

/// What the server checks of an event's dated facts when it decides (see
/// [`travelmap_domain::journey::check_replacement`]), checked by the import's first pass so
/// that a file is refused whole: the event's own, and for a correction of an event earlier in
/// the file, its replacement's. `lines_of` holds each earlier line's event.
fn dated_facts(
    draft: &travelmap_domain::EventDraft,
    lines_of: &HashMap<EventId, LineEvent>,
) -> Option<String> {
    if let Err(invalid) = draft.event.check_past_dates(draft.occurred_at.date_naive()) {
        return Some(format!(
            "{}: {}",
            travelmap_domain::field_path("data", &invalid.field),
            invalid.message
        ));
    }
    let travelmap_domain::JourneyEvent::EventCorrected(correction) = &draft.event else {
        return None;
    };
    let target = lines_of.get(&correction.event_id)?;
    let invalid = travelmap_domain::journey::check_replacement(
        target.event_type,
        Some(target.occurred_on),
        draft,
    )
    .err()?;
    Some(format!(
        "{}: replacement data: {}",
        travelmap_domain::field_path("data.data", &invalid.field),
        invalid.message
    ))
}

/// Deletes every projection and folds the whole log again.
pub async fn rebuild(location: &Location, masters: MasterKeys) -> anyhow::Result<()> {
    let store = Store::open_existing(location)
        .await
        .with_context(|| format!("opening the {}", location.describe()))?;
    if matches!(store, Store::Postgres(_)) {
        eprintln!("taking the view lease (while any server runs, this waits: stop them all first)");
    }
    let keyring = store.keyring(masters).await?;
    crate::settings::master_key_used();
    let journeys = Journeys::new(store.log(), store.views(), Some(keyring)).await?;
    let report = journeys.projector().rebuild().await?;
    store.close().await;
    let seconds = report.elapsed.as_secs_f64();
    out!(
        "rebuilt {} client views from {} events in {:.2}s ({:.0} events/s)",
        report.clients,
        report.events,
        seconds,
        report.events as f64 / seconds.max(f64::EPSILON)
    );
    Ok(())
}

/// Prints a client's history exactly as recorded (optionally as recorded by `as_of`) and the
/// travel map folded from it.
pub async fn replay(
    location: &Location,
    client: ClientId,
    as_of: Option<DateTime<Utc>>,
    json: bool,
    reader: &Reader,
    masters: MasterKeys,
) -> anyhow::Result<()> {
    // Read-only but for the audit trail: the embedded log is opened without the data
    // directory's lock, and a database is not migrated (a replay changes nothing else).
    // Personal fields are opened with the keys; where a key was destroyed they read as erased,
    // exactly as the service shows them.
    let events = match location {
        Location::Embedded(data_dir) => {
            let log = SqliteEventLog::open_read_only(&data_dir.join("events.sqlite"))?;
            let key_store = data_dir.join("keys.sqlite");
            if !key_store.exists() {
                // Opening would create an empty key store, and every sealed field would then
                // read as missing: say what is wrong instead.
                bail!(
                    "{} holds no key store (keys.sqlite); the personal fields cannot be opened",
                    data_dir.display()
                );
            }
            // Read only, so that a copy the auditor may not write can be replayed up to the
            // audit entry; a store never given a key (made by `migrate`, with nothing in it)
            // is opened as the service opens it, which makes the identifiers' look-up key.
            let keys = if SqliteKeyStore::holds_wrapped_keys(&key_store).context("keys.sqlite")? {
                SqliteKeyStore::open_read_only(&key_store)
            } else {
                SqliteKeyStore::open(&key_store)
            }
            .context("keys.sqlite")?;
            let keyring = Arc::new(Keyring::open(Arc::new(keys), masters).await?);
            SealedLog::new(Arc::new(log), keyring)
                .read_stream(client, as_of)
                .await?
        }
        Location::Postgres(url) => {
            let store = PgStore::connect(url, Migrations::Require)
                .await
                .with_context(|| format!("opening the {}", location.describe()))?;
            let keyring = Arc::new(Keyring::open(store.keys.clone(), masters).await?);
            let events = SealedLog::new(store.log.clone(), keyring)
                .read_stream(client, as_of)
                .await;
            store.close().await;
            events?
        }
    };
    // Logged before anything is printed, like a read through the API: no entry, no output. A
    // replay that finds nothing is logged too (with nothing returned), as the API logs a read of
    // an unknown client: the attempt is what a review looks for.
    let record = offline_record(
        &reader.provenance,
        Outcome::Allowed,
        OfflineLogged {
            operation: Operation::Consultation,
            client: Some(client),
            purpose: Some(&reader.purpose),
            action: REPLAY_ACTION,
            returned: travelmap_api::audit::returned_events(&events),
        },
    );
    log_offline(location, record)
        .await
        .context("logging the replay in the audit trail")?;
    if events.is_empty() {
        bail!(
            "no events recorded for client {client}{}",
            match as_of {
                Some(at) => format!(" as of {}", shown(&at)),
                None => String::new(),
            }
        );
    }
    let now = as_of.unwrap_or_else(Utc::now).trunc_subsecs(6);
    let map = ClientState::from_history(client, events.iter().cloned()).travel_map(now);
    let mut out = std::io::stdout().lock();
    let written = if json {
        let history: Vec<Recorded> = events.iter().map(Recorded::from).collect();
        serde_json::to_writer_pretty(
            &mut out,
            &serde_json::json!({"client_id": client, "events": history, "travel_map": map}),
        )
        .map_err(anyhow::Error::from)
        .and_then(|()| Ok(writeln!(out)?))
    } else {
        write_replay(&mut out, client, as_of, now, &events, &map)
    };
    // A reader that had enough (`| head`, a pager quit early) is no failure: the replay was
    // made and logged; what it did not read is simply not shown.
    match written {
        Err(error) if closed_output(&error) => Ok(()),
        written => written,
    }
}

/// A time as the JSON output and the API write it: a UTC time with `Z`, fractions of a second in
/// groups of three digits.
fn shown<Tz: chrono::TimeZone>(at: &DateTime<Tz>) -> String
where
    Tz::Offset: std::fmt::Display,
{
    at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

/// Whether `error` is a write to an output whose reader has gone.
fn closed_output(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            || cause
                .downcast_ref::<serde_json::Error>()
                .and_then(serde_json::Error::io_error_kind)
                == Some(std::io::ErrorKind::BrokenPipe)
    })
}

/// The text form of a replay: every event as recorded (its id, who recorded it, when it
/// happened and when it was learned, and its data exactly as stored), then the whole travel map
/// folded from them, so that the default output holds what `--json` holds.
fn write_replay(
    out: &mut impl Write,
    client: ClientId,
    as_of: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    events: &[RecordedEvent],
    map: &TravelMap,
) -> anyhow::Result<()> {
    writeln!(
        out,
        "History of client {client} ({} events, as recorded{})",
        events.len(),
        as_of.map_or(String::new(), |at| format!(" by {}", shown(&at)))
    )?;
    for event in events {
        let recorded = Recorded::from(event);
        writeln!(
            out,
            "  v{:<4} #{:<8} {} (schema {}) {}",
            recorded.version,
            recorded.position,
            recorded.event_type,
            recorded.schema_version,
            recorded.id,
        )?;
        writeln!(
            out,
            "        occurred {}  recorded {}  by {} ({}){}",
            shown(&recorded.occurred_at),
            shown(&recorded.recorded_at),
            recorded.agency,
            recorded.credential,
            labelled(", actor ", recorded.actor.as_ref()),
        )?;
        writeln!(out, "        data {}", recorded.data)?;
        if let Some(personal_data) = &recorded.personal_data {
            writeln!(out, "        personal data {personal_data}")?;
        }
    }
    writeln!(
        out,
        "\nTravel map as of {} (version {}, position {})",
        shown(&now),
        map.version,
        map.position
    )?;
    writeln!(out, "  phase: {}", snake(&map.phase)?)?;
    for span in &map.phases {
        writeln!(
            out,
            "    {} from {}{}",
            snake(&span.phase)?,
            shown(&span.from),
            span.to
                .map_or(String::new(), |to| format!(" to {}", shown(&to))),
        )?;
    }
    for involvement in &map.involvements {
        writeln!(
            out,
            "  involvement: {} as {}{} from {} to {}{} (recorded by {}{})",
            involvement.agency,
            snake(&involvement.role)?,
            labelled(", worker ", involvement.worker.as_ref()),
            involvement.from.map_or("?".into(), |at| shown(&at)),
            involvement.to.map_or("open".into(), |at| shown(&at)),
            if involvement.handover {
                ", a hand-over"
            } else {
                ""
            },
            involvement.recorded_by,
            labelled(", closed by ", involvement.closed_by.as_ref()),
        )?;
    }
    writeln!(out, "  steps:")?;
    for step in &map.steps {
        writeln!(
            out,
            "    {}  {}  ({}{})",
            shown(&step.occurred_at),
            step.summary,
            step.agency,
            labelled(", actor ", step.actor.as_ref()),
        )?;
        for correction in &step.corrections {
            writeln!(
                out,
                "      corrected by {} ({}, recorded {}): {}",
                correction.event_id,
                correction.agency,
                shown(&correction.recorded_at),
                correction.reason
            )?;
        }
    }
    for (area, need) in &map.needs {
        writeln!(
            out,
            "  need: {} {} since {} ({})",
            snake(area)?,
            snake(&need.status)?,
            shown(&need.since),
            need.agency
        )?;
    }
    for appointment in &map.next {
        writeln!(
            out,
            "  next: {} at {} ({}){}{}",
            appointment.appointment_id,
            shown(&appointment.at),
            appointment.agency,
            labelled(": ", appointment.purpose.as_ref()),
            if appointment.overdue { ", overdue" } else { "" },
        )?;
    }
    for flag in &map.flags {
        writeln!(
            out,
            "  FLAG {} since {}: {}",
            flag.kind,
            shown(&flag.since),
            flag.detail
        )?;
    }
    Ok(())
}

/// `label` and `value` when there is a value (`, worker W`), else nothing.
fn labelled(label: &str, value: Option<&impl std::fmt::Display>) -> String {
    value.map_or(String::new(), |value| format!("{label}{value}"))
}

/// A unit enum's wire name (`in_custody`, `probation_officer`, ...).
fn snake(value: &impl serde::Serialize) -> anyhow::Result<String> {
    Ok(serde_json::to_value(value)?
        .as_str()
        .unwrap_or("?")
        .to_owned())
}

/// Prints a new key (on stderr, for the person setting it up) and the `[[credentials]]` entry
/// that accepts it (on stdout, so it can be appended to the config file without the key).
pub fn new_credential(
    id: &str,
    agency: &str,
    kind: Option<AgencyKind>,
    roles: &[Role],
) -> anyhow::Result<()> {
    let key = crate::settings::new_key();
    // Checked as the server checks its configuration, so that no entry printed here is refused
    // when the server reads it (a blank or padded name, an id in the tokens' `jwt:` namespace).
    Authenticator::new([(
        Authenticator::hash_key(&key),
        travelmap_api::auth::Credential {
            id: id.to_owned(),
            agency: agency.to_owned(),
            agency_kind: kind,
            roles: roles.to_vec(),
        },
    )])?;
    // Quoted as TOML strings, so that an id with a quote or a backslash still makes an entry
    // the configuration reads back as given.
    let quoted = |text: &str| toml::Value::String(text.to_owned()).to_string();
    let (id_text, agency_text) = (id, agency);
    let (id, agency) = (quoted(id), quoted(agency));
    let roles: Vec<String> = roles.iter().map(|role| format!("\"{role}\"")).collect();
    eprintln!(
        "Key for `{id_text}` of `{agency_text}` (give it to the agency system; it is shown once and stored nowhere):"
    );
    eprintln!("{key}");
    // A blank line first: entries appended one after another (`>> travelmap.toml`) stay apart.
    out!();
    if let Some(kind) = kind {
        out!("[[agencies]]");
        out!("id = {agency}");
        out!("kind = \"{kind}\"");
        out!();
    }
    out!("[[credentials]]");
    out!("id = {id}");
    out!("agency = {agency}");
    out!("roles = [{}]", roles.join(", "));
    out!("key_sha256 = \"{}\"", Authenticator::hash_key(&key));
    Ok(())
}

/// Applies missing schema migrations and reports the version the store is at.
pub async fn migrate(location: &Location) -> anyhow::Result<()> {
    match location {
        Location::Postgres(url) => {
            let version = postgres::migrate(url)
                .await
                .with_context(|| format!("migrating the {}", location.describe()))?;
            out!("{} is at schema version {version}", location.describe());
        }
        Location::Embedded(_) => {
            // Opening the embedded store applies its migrations.
            let store = Store::open(location).await?;
            store.close().await;
            out!("{} is up to date", location.describe());
        }
    }
    Ok(())
}

/// A checkpoint file as served by `GET /v1/audit/checkpoint`: the whole document, with its
/// `seq` and `hash`.
pub fn read_checkpoint(path: &Path) -> anyhow::Result<(serde_json::Value, u64, String)> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the checkpoint {}", path.display()))?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a checkpoint (JSON)", path.display()))?;
    let seq = value["seq"].as_u64();
    let hash = value["hash"].as_str().map(str::to_owned);
    match (seq, hash) {
        (Some(seq), Some(hash)) => Ok((value, seq, hash)),
        (seq, hash) => {
            let missing: Vec<&str> = [("`seq`", seq.is_none()), ("`hash`", hash.is_none())]
                .into_iter()
                .filter_map(|(field, missing)| missing.then_some(field))
                .collect();
            bail!(
                "{} is not a checkpoint: it lacks {} (`seq` a whole number, `hash` a string, as \
                 served by GET /v1/audit/checkpoint)",
                path.display(),
                missing.join(" and ")
            )
        }
    }
}

/// What `audit verify` concluded.
pub enum Verified {
    Intact,
    Broken,
}

/// Checks the whole audit trail's hash chain, and that it extends `checkpoint` (a JSON file as
/// served by `GET /v1/audit/checkpoint`) if one is given. Prints what it found.
pub async fn verify_audit(
    location: &Location,
    checkpoint: Option<&Path>,
    public_key: Option<&str>,
) -> anyhow::Result<Verified> {
    use travelmap_domain::audit::{ChainCheck, ChainError, hex};
    let checkpoint: Option<(u64, String)> = match checkpoint {
        Some(path) => {
            let (value, seq, hash) = read_checkpoint(path)?;
            if let Err(problem) = check_signature(&value, seq, &hash, public_key) {
                out!("audit checkpoint rejected: {problem}");
                return Ok(Verified::Broken);
            }
            Some((seq, hash))
        }
        None if public_key.is_some() => bail!("--public-key checks a --checkpoint; give one"),
        None => None,
    };
    if let Location::Embedded(data_dir) = location {
        // A trail removed from beside a log with events is broken as an emptied one is (every
        // recorded event was logged), not a store that cannot be checked: a monitor that
        // alerts on "broken" must hear of it.
        // So is a file emptied to nothing, or one that holds no trail's tables at all.
        let events = data_dir.join("events.sqlite");
        let path = data_dir.join("audit.sqlite");
        let trail = match std::fs::metadata(&path) {
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Some("missing"),
            Ok(metadata) if metadata.len() == 0 => Some("an empty file"),
            _ => match SqliteAuditLog::holds_trail(&path) {
                Ok(false) => Some("a database without the trail's tables"),
                _ => None,
            },
        };
        if let Some(trail) = trail
            && events.exists()
        {
            let log = SqliteEventLog::open_read_only(&events).context("events.sqlite")?;
            let recorded = *travelmap_store::EventLog::head(&log).borrow();
            if recorded > 0 {
                out!(
                    "audit trail broken: {} (audit.sqlite is {trail})",
                    ChainError::EmptyBesideEvents(recorded)
                );
                return Ok(Verified::Broken);
            }
        }
    }
    let (audit, _store): (std::sync::Arc<dyn AuditLog>, Option<PgStore>) = match location {
        Location::Embedded(data_dir) => (
            std::sync::Arc::new(
                SqliteAuditLog::open_read_only(&data_dir.join("audit.sqlite"))
                    .context("audit.sqlite")?,
            ),
            None,
        ),
        Location::Postgres(url) => {
            let store = PgStore::connect(url, Migrations::Require)
                .await
                .with_context(|| format!("opening the {}", location.describe()))?;
            (store.audit.clone(), Some(store))
        }
    };
    // Where the store keeps the head apart from the entries (PostgreSQL's `audit_head`), a
    // trail cut short at its end still says how far it went. Read first: servers may append
    // while this runs, and the entries read after it reach at least this far.
    // A head that cannot be read (its row removed or altered, or, on the embedded store, the
    // last entry damaged) is a break too; an unreachable database is not.
    let mut head_unreadable: Option<String> = None;
    let (stored_head, stored_hash) = match audit.head().await {
        Ok(head) => head,
        Err(error) if error.is_transient() => return Err(error.into()),
        Err(error) => {
            head_unreadable = Some(error.to_string());
            (0, travelmap_domain::audit::GENESIS)
        }
    };
    let mut at_stored_head: Option<[u8; 32]> = (stored_head == 0).then_some(stored_hash);
    // The embedded log records beside its events the trail's last entry known to be on disk:
    // the trail must hold it. Read before the entries, for the
    // same reason as the head.
    let recorded_by_log = match location {
        // A log too old to hold the record (or emptied to nothing) leaves the trail to be
        // checked on its own, saying so; any other failure to read it is an error.
        Location::Embedded(data_dir) if data_dir.join("events.sqlite").exists() => {
            match SqliteEventLog::open_read_only(&data_dir.join("events.sqlite")) {
                Ok(log) => log.trail_recorded(),
                Err(error @ travelmap_store::Error::SchemaOutdated { .. }) => {
                    eprintln!(
                        "could not read which entry the event log recorded the trail held \
                         (events.sqlite: {error}); checking the trail without it"
                    );
                    None
                }
                Err(error) => return Err(anyhow::Error::new(error).context("events.sqlite")),
            }
        }
        _ => None,
    };
    let mut at_recorded_by_log: Option<[u8; 32]> = None;
    let mut check = ChainCheck::default();
    let mut at_checkpoint: Option<String> = None;
    let mut broken: Option<ChainError> = None;
    let mut begun_anew: Option<(u64, String)> = None;
    let mut page_size = 1000;
    'pages: loop {
        // A row that cannot be read back (a column of the wrong type, a hash of the wrong
        // length) was altered or damaged: reported as a break, like an entry that does not
        // match its hash, rather than as a failure to run. A page that fails is read again an
        // entry at a time, to name the entry.
        let page = match audit.read_after(check.head().0, page_size).await {
            Ok(page) => page,
            // A database that cannot be reached says nothing of the trail.
            Err(error) if error.is_transient() => return Err(error.into()),
            Err(_) if page_size > 1 => {
                page_size = 1;
                continue;
            }
            Err(error) => {
                broken = Some(ChainError::Unreadable {
                    after: check.head().0,
                    reason: error.to_string(),
                });
                break;
            }
        };
        if page.is_empty() {
            break;
        }
        for entry in &page {
            if let Err(error) = check.next(entry) {
                broken = Some(error);
                break 'pages;
            }
            // The first such entry: a process writes one wherever it finds entries missing.
            if begun_anew.is_none()
                && entry.record.action == travelmap_domain::audit::TRAIL_BEGUN_ANEW
            {
                begun_anew = Some((entry.seq, entry.record.returned.clone().unwrap_or_default()));
            }
            if checkpoint
                .as_ref()
                .is_some_and(|(seq, _)| *seq == entry.seq)
            {
                at_checkpoint = Some(hex(&entry.hash));
            }
            if entry.seq == stored_head {
                at_stored_head = Some(entry.hash);
            }
            if recorded_by_log.is_some_and(|(seq, _)| seq == entry.seq) {
                at_recorded_by_log = Some(entry.hash);
            }
        }
    }
    if broken.is_none() {
        match audit.before_the_first().await {
            Ok(0) => {}
            Ok(count) => broken = Some(ChainError::BeforeTheFirst(count)),
            Err(error) if error.is_transient() => return Err(error.into()),
            Err(error) => {
                broken = Some(ChainError::Unreadable {
                    after: 0,
                    reason: error.to_string(),
                })
            }
        }
    }
    if broken.is_none()
        && let Some(reason) = head_unreadable
    {
        broken = Some(ChainError::Unreadable {
            after: check.head().0,
            reason: format!("the stored head: {reason}"),
        });
    }
    // A head behind the last entry is as wrong as one past it: what a restore that failed
    // part way leaves, and what appends then collide with. Read again after the entries: an
    // append moves the head in the transaction that adds its entry, so by now the head is at
    // least at every entry read, however many servers appended meanwhile.
    if broken.is_none() {
        match audit.head().await {
            Ok((head, _)) if head < check.head().0 => {
                broken = Some(ChainError::HeadMismatch {
                    last: check.head().0,
                    head,
                });
            }
            Err(error) if error.is_transient() => return Err(error.into()),
            _ => {}
        }
    }
    // Every recorded event was logged, so an empty trail beside a log with events was removed
    // or emptied: the chain alone, with nothing in it, cannot show that.
    if broken.is_none() && check.head().0 == 0 {
        let events = match (location, &_store) {
            (Location::Embedded(data_dir), _) => {
                let events = data_dir.join("events.sqlite");
                if events.exists() {
                    let log = SqliteEventLog::open_read_only(&events).context("events.sqlite")?;
                    *travelmap_store::EventLog::head(&log).borrow()
                } else {
                    0
                }
            }
            (Location::Postgres(_), Some(store)) => *store.log.head().borrow(),
            (Location::Postgres(_), None) => 0,
        };
        if events > 0 {
            broken = Some(ChainError::EmptyBesideEvents(events));
        }
    }
    if broken.is_none() && at_stored_head != Some(stored_hash) {
        broken = Some(ChainError::HeadMismatch {
            last: check.head().0,
            head: stored_head,
        });
    }
    if broken.is_none()
        && let Some((recorded, hash)) = recorded_by_log
        && at_recorded_by_log != Some(hash)
    {
        broken = Some(ChainError::NotAsRecorded {
            recorded,
            found: match at_recorded_by_log {
                Some(_) => format!("its entry {recorded} has another hash"),
                None => format!("the trail ends at entry {}", check.head().0),
            },
        });
    }
    if broken.is_none()
        && let Some((seq, hash)) = &checkpoint
    {
        broken = match &at_checkpoint {
            None if *seq > 0 => Some(ChainError::ShorterThanCheckpoint {
                last: check.head().0,
                checkpoint: *seq,
            }),
            Some(found) if found != hash => Some(ChainError::CheckpointMismatch(*seq)),
            _ => None,
        };
    }
    // A trail the store found empty beside events, and began anew saying so: reported last, so
    // that what the head and a checkpoint say of the new chain is reported first.
    let begun_anew = begun_anew.map(|(seq, beside)| ChainError::BegunAnew { seq, beside });
    if broken.is_none() {
        broken = begun_anew.clone();
    }
    let (seq, hash) = check.head();
    Ok(match broken {
        None => {
            out!(
                "audit trail intact: {seq} entries, head hash {}{}",
                hex(&hash),
                checkpoint.map_or(String::new(), |(seq, _)| format!(
                    "; extends the checkpoint at entry {seq}"
                ))
            );
            Verified::Intact
        }
        Some(error) => {
            // A trail begun anew also explains what the head or a checkpoint found: said too.
            match begun_anew {
                Some(begun_anew) if begun_anew != error => {
                    out!("audit trail broken: {error}; and {begun_anew}")
                }
                _ => out!("audit trail broken: {error}"),
            }
            Verified::Broken
        }
    })
}

/// Checks a checkpoint's signature against `pinned`, the service's key: that is what makes a
/// checkpoint evidence. The key a checkpoint names is not used, since anyone can sign with a key
/// of their own.
fn check_signature(
    checkpoint: &serde_json::Value,
    seq: u64,
    hash: &str,
    pinned: Option<&str>,
) -> Result<(), String> {
    use ed25519_dalek::{Signature, Verifier, VerifyingKey};
    let Some(signature) = checkpoint["signature"].as_str() else {
        return Err("it is not signed".into());
    };
    let key_hex = pinned.ok_or("give --public-key, the service's checkpoint key")?;
    let key: [u8; 32] = hex::decode(key_hex)
        .ok()
        .and_then(|bytes| bytes.try_into().ok())
        .ok_or("the public key is not 64 hex digits")?;
    let key = VerifyingKey::from_bytes(&key).map_err(|_| "the public key is not an ed25519 key")?;
    let signature: [u8; 64] = hex::decode(signature)
        .ok()
        .and_then(|bytes| bytes.try_into().ok())
        .ok_or("the signature is not 128 hex digits")?;
    let message = travelmap_domain::audit::checkpoint_message(seq, hash);
    key.verify(message.as_bytes(), &Signature::from_bytes(&signature))
        .map_err(|_| "its signature does not match its contents and the key".to_owned())
}

/// Runs the retention schedule once and prints what was due and what was done.
pub async fn retention_run(
    location: &Location,
    masters: MasterKeys,
    schedule: &travelmap_projections::retention::Schedule,
    patience: std::time::Duration,
) -> anyhow::Result<()> {
    if schedule.is_empty() {
        // The report is still printed (an empty one), so that a script reading it as JSON
        // works whether a schedule is configured or not; the reason goes to standard error.
        eprintln!(
            "no retention schedule is configured ([retention] in the config file); nothing is due"
        );
        let report = crate::retention::Report {
            ran_at: Utc::now(),
            ..Default::default()
        };
        serde_json::to_writer_pretty(std::io::stdout().lock(), &report)?;
        out!();
        return Ok(());
    }
    let store = Store::open_existing(location)
        .await
        .with_context(|| format!("opening the {}", location.describe()))?;
    let keyring = store.keyring(masters).await?;
    crate::settings::master_key_used();
    let journeys = Journeys::new(store.log(), store.views(), Some(keyring)).await?;
    let (report, ran) = crate::retention::run(
        &journeys,
        &store.audit(),
        None,
        schedule,
        Utc::now(),
        patience,
        RETENTION_ACTION,
    )
    .await;
    store.close().await;
    // Printed also when the run failed part way: what it shredded before is done for good.
    serde_json::to_writer_pretty(std::io::stdout().lock(), &report)?;
    out!();
    ran?;
    if !report.failed.is_empty() {
        bail!("{} client(s) could not be handled", report.failed.len());
    }
    Ok(())
}

/// Rewraps every data key under the current master key.
pub async fn rotate_keys(location: &Location, masters: MasterKeys) -> anyhow::Result<()> {
    let store = Store::open_existing(location)
        .await
        .with_context(|| format!("opening the {}", location.describe()))?;
    let current = masters.current().id.clone();
    let keyring = store.keyring(masters).await?;
    crate::settings::master_key_used();
    let count = keyring.rotate().await?;
    store.close().await;
    out!(
        "rewrapped {count} data key(s) under master key `{current}`; older master keys can now be removed"
    );
    if matches!(location, Location::Postgres(_)) {
        // The servers read the keys afresh: one started without the new key cannot open them.
        eprintln!(
            "every server on this database must hold master key `{current}`: one that does not stops when it meets a key wrapped under it (docs/operations.md, \"Rotation\")"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_jsons_white_space_makes_an_import_line_blank() {
        for blank in ["", " \t", "\r", "  \r\n"] {
            assert!(super::blank(blank), "{blank:?}");
        }
        for not_blank in ["\u{c}", " \u{a0} ", "{}"] {
            assert!(!super::blank(not_blank), "{not_blank:?}");
        }
    }
}
