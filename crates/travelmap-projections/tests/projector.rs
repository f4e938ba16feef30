//! The projector when its view store fails or is slow: nothing may be skipped on the next
//! attempt, and a rebuild must not save before the old views are gone.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::json;
use travelmap_domain::{ClientId, EventDraft, EventId, JourneyEvent, Provenance, content_digest};
use travelmap_projections::{ClientState, Projector};
use travelmap_store::sqlite::{SqliteStore, SqliteViewStore};
use travelmap_store::{ClientView, EventLog, NewEvent, StoredState, StreamAppend, ViewStore};
use uuid::Uuid;

/// A view store whose next save fails when asked to, as a full disk would, and whose deletion
/// of every view takes `reset_delay`, as a large one does.
struct FlakyViews {
    inner: Arc<SqliteViewStore>,
    fail_next_save: AtomicBool,
    reset_delay: Duration,
}

impl FlakyViews {
    fn over(inner: Arc<SqliteViewStore>) -> Self {
        Self {
            inner,
            fail_next_save: AtomicBool::new(false),
            reset_delay: Duration::ZERO,
        }
    }

    fn slow_to_reset(inner: Arc<SqliteViewStore>) -> Self {
        Self {
            reset_delay: Duration::from_millis(200),
            ..Self::over(inner)
        }
    }
}

#[async_trait]
impl ViewStore for FlakyViews {
    async fn checkpoint(&self) -> travelmap_store::Result<u64> {
        self.inner.checkpoint().await
    }
    async fn load(
        &self,
        clients: Vec<ClientId>,
    ) -> travelmap_store::Result<HashMap<ClientId, StoredState>> {
        self.inner.load(clients).await
    }
    async fn get(&self, client: ClientId) -> travelmap_store::Result<Option<StoredState>> {
        self.inner.get(client).await
    }
    async fn scan(
        &self,
        after: Option<ClientId>,
        limit: usize,
    ) -> travelmap_store::Result<Vec<(ClientId, StoredState)>> {
        self.inner.scan(after, limit).await
    }
    async fn save(&self, checkpoint: u64, views: Vec<ClientView>) -> travelmap_store::Result<()> {
        if self.fail_next_save.swap(false, Ordering::SeqCst) {
            return Err(travelmap_store::Error::Io(std::io::Error::other(
                "disk full",
            )));
        }
        self.inner.save(checkpoint, views).await
    }
    async fn count(&self) -> travelmap_store::Result<usize> {
        self.inner.count().await
    }
    async fn reset(&self) -> travelmap_store::Result<()> {
        tokio::time::sleep(self.reset_delay).await;
        self.inner.reset().await
    }
    async fn find_by_identifier(
        &self,
        kind: &str,
        value: &str,
    ) -> travelmap_store::Result<Vec<ClientId>> {
        self.inner.find_by_identifier(kind, value).await
    }
    async fn lead(&self) -> travelmap_store::Result<()> {
        self.inner.lead().await
    }
    fn saved(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.saved()
    }
}

fn provenance() -> Provenance {
    Provenance {
        agency: "probation-opava".into(),
        credential: "test".into(),
    }
}

/// One `contact.made` appended to `client`'s stream at `expected_version`.
fn contact(client: ClientId, expected_version: u64) -> StreamAppend {
    let draft = EventDraft {
        id: EventId(Uuid::new_v4()),
        client_id: client,
        occurred_at: "2026-01-01T09:00:00Z".parse().unwrap(),
        actor: None,
        event: JourneyEvent::decode("contact.made", 1, &json!({"kind": "phone"})).unwrap(),
    };
    let digest = content_digest(&draft, &provenance().agency);
    StreamAppend {
        client_id: client,
        expected_version,
        events: vec![NewEvent {
            draft,
            digest,
            sealed: None,
        }],
    }
}

#[tokio::test]
async fn a_failed_save_is_retried_from_the_stored_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).unwrap();
    let views = Arc::new(FlakyViews::over(store.views.clone()));
    let projector = Projector::new(store.log.clone(), views.clone(), None)
        .await
        .unwrap();
    let provenance = provenance();
    let client = ClientId(Uuid::new_v4());
    let append = |version: u64| contact(client, version);

    store
        .log
        .append(&provenance, vec![append(0)])
        .await
        .unwrap();
    projector.catch_up().await.unwrap();
    store
        .log
        .append(&provenance, vec![append(1)])
        .await
        .unwrap();
    views.fail_next_save.store(true, Ordering::SeqCst);
    assert!(projector.catch_up().await.is_err());
    assert_eq!(
        *projector.progress().borrow(),
        1,
        "progress only reports what was saved"
    );

    projector.catch_up().await.unwrap();
    let stored: ClientState = views.get(client).await.unwrap().unwrap().decode().unwrap();
    assert_eq!(
        stored.version, 2,
        "the event whose save failed is folded on the next attempt"
    );
    assert_eq!(views.checkpoint().await.unwrap(), 2);
    let history = store.log.read_stream(client, None).await.unwrap();
    assert_eq!(stored, ClientState::from_history(client, history));
}

#[tokio::test]
async fn a_change_set_hands_over_the_saved_states_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).unwrap();
    let projector = Projector::new(store.log.clone(), store.views.clone(), None)
        .await
        .unwrap();
    let mut changes = projector.changes();
    let clients = [ClientId(Uuid::new_v4()), ClientId(Uuid::new_v4())];
    let appends = clients.iter().map(|&client| contact(client, 0)).collect();
    store.log.append(&provenance(), appends).await.unwrap();
    projector.catch_up().await.unwrap();

    let set = changes.try_recv().expect("the save announced its changes");
    assert_eq!((set.after, set.up_to), (0, 2));
    let mut announced: Vec<ClientId> = set.clients.to_vec();
    announced.sort();
    let mut expected = clients.to_vec();
    expected.sort();
    assert_eq!(announced, expected);

    let states = set.states.take();
    assert_eq!(states.len(), 2);
    for state in &states {
        let saved: ClientState = store
            .views
            .get(state.client_id)
            .await
            .unwrap()
            .unwrap()
            .decode()
            .unwrap();
        assert_eq!(**state, saved, "the handed-over state is the one saved");
    }
    assert!(
        set.states.take().is_empty(),
        "a second follower finds the states taken and reads the views"
    );
}

/// The views of `clients`, as stored.
async fn stored(views: &dyn ViewStore, clients: &[ClientId]) -> Vec<Option<StoredState>> {
    let mut stored = Vec::new();
    for &client in clients {
        stored.push(views.get(client).await.unwrap());
    }
    stored
}

/// The deletion of the old views runs while the log is read; the views a rebuild saves must
/// not be deleted with them, however long the deletion takes.
#[tokio::test]
async fn a_rebuild_saves_nothing_until_the_old_views_are_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).unwrap();
    let clients: Vec<ClientId> = (0..5).map(|_| ClientId(Uuid::new_v4())).collect();
    for version in 0..3 {
        let appends = clients
            .iter()
            .map(|&client| contact(client, version))
            .collect();
        store.log.append(&provenance(), appends).await.unwrap();
    }
    let views = Arc::new(FlakyViews::slow_to_reset(store.views.clone()));
    let projector = Projector::new(store.log.clone(), views.clone(), None)
        .await
        .unwrap();
    projector.catch_up().await.unwrap();
    let live = stored(views.as_ref(), &clients).await;
    assert!(live.iter().all(Option::is_some));

    let report = projector.rebuild().await.unwrap();
    assert_eq!(report.clients, clients.len());
    assert_eq!(stored(views.as_ref(), &clients).await, live);
}

/// With nothing to fold nothing is saved, and the rebuild must still end only once the old
/// views are gone.
#[tokio::test]
async fn a_rebuild_of_an_empty_log_leaves_no_view() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).unwrap();
    let views = Arc::new(FlakyViews::slow_to_reset(store.views.clone()));
    let stranger = ClientId(Uuid::new_v4());
    views
        .save(
            0,
            vec![ClientView::new(
                stranger,
                &ClientState::new(stranger),
                Vec::new(),
            )],
        )
        .await
        .unwrap();
    let projector = Projector::new(store.log.clone(), views.clone(), None)
        .await
        .unwrap();

    let report = projector.rebuild().await.unwrap();
    assert_eq!((report.events, report.clients), (0, 0));
    assert_eq!(views.get(stranger).await.unwrap(), None);
}
