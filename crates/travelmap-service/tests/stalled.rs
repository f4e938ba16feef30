//! Writes queued behind one that waits on a store that does not answer.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::json;
use tokio::sync::watch;
use travelmap_domain::{ClientId, EventDraft, EventId, JourneyEvent, Provenance, RecordedEvent};
use travelmap_service::{Error, Journeys, Submission};
use travelmap_store::sqlite::SqliteStore;
use travelmap_store::{EventLog, Existing, Outline, Receipt, Result, StreamAppend};
use uuid::Uuid;

/// An event log whose appends never answer, as one on a connection that stalled; everything
/// else is the embedded log's.
struct StalledAppends(Arc<dyn EventLog>);

#[async_trait]
impl EventLog for StalledAppends {
    async fn append_announced(
        &self,
        _provenance: &Provenance,
        _streams: Vec<StreamAppend>,
        _announcement: travelmap_store::Announcement,
    ) -> Result<Vec<Receipt>> {
        std::future::pending().await
    }

    async fn lookup(&self, ids: Vec<EventId>) -> Result<Vec<Existing>> {
        self.0.lookup(ids).await
    }

    async fn outlines(&self, clients: Vec<ClientId>) -> Result<HashMap<ClientId, Vec<Outline>>> {
        self.0.outlines(clients).await
    }

    async fn stream_versions(&self, clients: Vec<ClientId>) -> Result<HashMap<ClientId, u64>> {
        self.0.stream_versions(clients).await
    }

    async fn read_stream(
        &self,
        client_id: ClientId,
        recorded_until: Option<DateTime<Utc>>,
    ) -> Result<Vec<RecordedEvent>> {
        self.0.read_stream(client_id, recorded_until).await
    }

    async fn read_all(&self, after: u64, limit: usize) -> Result<Vec<RecordedEvent>> {
        self.0.read_all(after, limit).await
    }

    async fn read_range(&self, after: u64, up_to: u64) -> Result<Vec<RecordedEvent>> {
        self.0.read_range(after, up_to).await
    }

    fn head(&self) -> watch::Receiver<u64> {
        self.0.head()
    }
}

fn contact(client: ClientId) -> Submission {
    Submission {
        draft: EventDraft {
            id: EventId(Uuid::new_v4()),
            client_id: client,
            occurred_at: "2026-01-01T09:00:00Z".parse().unwrap(),
            actor: None,
            event: JourneyEvent::decode("contact.made", 1, &json!({"kind": "phone"})).unwrap(),
        },
        expected_version: None,
    }
}

/// A write waits a bounded time for the client's earlier writes: queued behind one that hangs
/// on the store, it is answered that the client is busy, rather than each waiting out all the
/// ones before it (and a shutdown waiting out them all).
#[tokio::test]
async fn a_write_behind_one_that_hangs_is_answered_in_bounded_time() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).unwrap();
    let log: Arc<dyn EventLog> = Arc::new(StalledAppends(store.log.clone()));
    let journeys = Arc::new(Journeys::new(log, store.views.clone(), None).await.unwrap());
    let provenance = Provenance {
        agency: "probation-opava".into(),
        credential: "test".into(),
    };
    let client = ClientId(Uuid::new_v4());
    let hanging = tokio::spawn({
        let (journeys, provenance) = (journeys.clone(), provenance.clone());
        async move { journeys.record(&provenance, &[contact(client)]).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let queued = tokio::time::timeout(
        Duration::from_secs(60),
        journeys.record(&provenance, &[contact(client)]),
    )
    .await
    .expect("the queued write is answered");
    assert!(matches!(queued, Err(Error::Contention)), "{queued:?}");
    assert!(started.elapsed() < Duration::from_secs(20));
    hanging.abort();
}
