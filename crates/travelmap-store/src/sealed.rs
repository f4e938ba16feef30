//! The event log with personal fields sealed: a decorator over any backend's [`EventLog`] that
//! seals personal fields on the way in and opens them on the way out. Backends store and return
//! sealed values without knowing a key; everything that reads the log through this wrapper
//! (service, projections, replay, export, rebuild) sees the fields opened, or erased once their
//! key is destroyed. Nothing else needs to know that encryption exists.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::watch;
use travelmap_domain::personal::{self, Category};
use travelmap_domain::{ClientId, EventId, Provenance, RecordedEvent, Sealed};

use crate::keys::{Keyring, Making};
use crate::{Error, EventLog, Existing, Outline, Receipt, Result, StreamAppend};

pub struct SealedLog {
    inner: Arc<dyn EventLog>,
    keyring: Arc<Keyring>,
}

impl SealedLog {
    pub fn new(inner: Arc<dyn EventLog>, keyring: Arc<Keyring>) -> Self {
        Self { inner, keyring }
    }

    pub fn keyring(&self) -> &Arc<Keyring> {
        &self.keyring
    }

    /// The category whose key seals each event (see [`personal::sealing_category`]), with the
    /// targets of corrections and retractions looked up among the client's recorded events and
    /// the request's own.
    async fn categories(&self, streams: &[StreamAppend]) -> Result<HashMap<EventId, Category>> {
        let mut rectifying: Vec<ClientId> = streams
            .iter()
            .filter(|stream| {
                stream
                    .events
                    .iter()
                    .any(|new| personal::category(new.draft.event.event_type()).is_none())
            })
            .map(|stream| stream.client_id)
            .collect();
        let mut types: HashMap<EventId, String> = HashMap::new();
        if !rectifying.is_empty() {
            rectifying.sort_unstable_by_key(|client| client.0);
            rectifying.dedup();
            types = self
                .inner
                .outlines(rectifying)
                .await?
                .into_values()
                .flatten()
                .map(|outline| (outline.id, outline.event_type))
                .collect();
            // A correction may target an event appended in the same request.
            for new in streams.iter().flat_map(|stream| &stream.events) {
                types.insert(new.draft.id, new.draft.event.event_type().to_owned());
            }
        }
        Ok(streams
            .iter()
            .flat_map(|stream| &stream.events)
            .map(|new| {
                let category = personal::sealing_category(&new.draft.event, |target| {
                    types.get(&target).map(String::as_str)
                });
                (new.draft.id, category)
            })
            .collect())
    }
}

impl SealedLog {
    /// Seals the personal fields of the events in `streams`, in place.
    async fn seal_streams(&self, streams: &mut [StreamAppend]) -> Result<()> {
        let mut jobs = Vec::new();
        let mut slots = Vec::new();
        let holds_personal = streams
            .iter()
            .flat_map(|stream| &stream.events)
            .any(|new| !personal::personal_fields(new.draft.event.event_type()).is_empty());
        if holds_personal {
            let categories = self.categories(streams).await?;
            for (stream_index, stream) in streams.iter().enumerate() {
                for (event_index, new) in stream.events.iter().enumerate() {
                    if let Some(split) = personal::split(&new.draft.event) {
                        let category = categories[&new.draft.id];
                        slots.push((
                            stream_index,
                            event_index,
                            split.public.clone(),
                            split.fields(),
                        ));
                        jobs.push((stream.client_id, new.draft.id, category, split));
                    }
                }
            }
        }
        if !jobs.is_empty() {
            let wanted: Vec<(ClientId, Category)> = jobs
                .iter()
                .map(|(client, _, category, _)| (*client, *category))
                .collect();
            let keys = match self.keyring.keys_for(&wanted, Making::Unconfirmed).await {
                // A key of a client that has keys is made only for new events (see
                // `keys::Making`): any event of the append found recorded makes it a retry, and
                // the caller then looks every id up and answers each as recorded.
                Err(Error::KeysUnconfirmed(_)) => {
                    // Every event, not only those sealed: an event without personal fields
                    // found recorded (with other content, say) refuses the request too.
                    let ids: Vec<EventId> = streams
                        .iter()
                        .flat_map(|stream| &stream.events)
                        .map(|new| new.draft.id)
                        .collect();
                    if let Some(existing) = self.inner.lookup(ids).await?.first() {
                        return Err(Error::DuplicateEvent(existing.receipt.id));
                    }
                    self.keyring.keys_for(&wanted, Making::Confirmed).await?
                }
                keys => keys?,
            };
            let sealed = Keyring::seal(&keys, jobs)?;
            for ((stream_index, event_index, public, fields), (ciphertext, key_id)) in
                slots.into_iter().zip(sealed)
            {
                streams[stream_index].events[event_index].sealed = Some(Sealed {
                    fields,
                    ciphertext,
                    public,
                    key_id,
                });
            }
        }
        Ok(())
    }
}

#[async_trait]
impl EventLog for SealedLog {
    async fn append_announced(
        &self,
        provenance: &Provenance,
        mut streams: Vec<StreamAppend>,
        announcement: crate::Announcement,
    ) -> Result<Vec<Receipt>> {
        self.seal_streams(&mut streams).await?;
        let clients: Vec<ClientId> = streams.iter().map(|stream| stream.client_id).collect();
        let appended = self
            .inner
            .append_announced(provenance, streams, announcement)
            .await;
        if let Err(Error::KeyWithdrawn(_)) = &appended {
            // Another process destroyed a key cached here; the caller tries again, and the keys
            // are then read from the store.
            self.keyring.forget_sealing_keys(&clients);
        }
        appended
    }

    async fn lookup(&self, ids: Vec<EventId>) -> Result<Vec<Existing>> {
        let mut found = self.inner.lookup(ids).await?;
        let sealed: Vec<ClientId> = found
            .iter()
            .filter(|existing| existing.sealed_key.is_some())
            .map(|existing| existing.receipt.client_id)
            .collect();
        if sealed.is_empty() {
            return Ok(found);
        }
        let destroyed = self.keyring.destroyed_keys(sealed).await?;
        for existing in &mut found {
            if let Some(key) = existing.sealed_key {
                existing.shredded = destroyed.contains(&(existing.receipt.client_id, key));
            }
        }
        Ok(found)
    }

    async fn outlines(&self, clients: Vec<ClientId>) -> Result<HashMap<ClientId, Vec<Outline>>> {
        self.inner.outlines(clients).await
    }

    async fn stream_versions(&self, clients: Vec<ClientId>) -> Result<HashMap<ClientId, u64>> {
        self.inner.stream_versions(clients).await
    }

    async fn read_stream(
        &self,
        client_id: ClientId,
        recorded_until: Option<DateTime<Utc>>,
    ) -> Result<Vec<RecordedEvent>> {
        let mut events = self.inner.read_stream(client_id, recorded_until).await?;
        self.keyring.open_events(&mut events).await?;
        Ok(events)
    }

    async fn read_all(&self, after: u64, limit: usize) -> Result<Vec<RecordedEvent>> {
        let mut events = self.inner.read_all(after, limit).await?;
        self.keyring.open_events(&mut events).await?;
        Ok(events)
    }

    async fn read_range(&self, after: u64, up_to: u64) -> Result<Vec<RecordedEvent>> {
        let mut events = self.inner.read_range(after, up_to).await?;
        self.keyring.open_events(&mut events).await?;
        Ok(events)
    }

    async fn read_range_of_full_read(&self, after: u64, up_to: u64) -> Result<Vec<RecordedEvent>> {
        let mut events = self.inner.read_range(after, up_to).await?;
        self.keyring.open_events_of_full_read(&mut events).await?;
        Ok(events)
    }

    fn head(&self) -> watch::Receiver<u64> {
        self.inner.head()
    }

    async fn prepare_full_read(&self) -> Result<()> {
        self.keyring.begin_full_read().await
    }

    fn end_full_read(&self) {
        self.keyring.end_full_read();
    }

    async fn fingerprints(
        &self,
        events: Vec<(&travelmap_domain::EventDraft, [u8; 32])>,
    ) -> Result<Vec<[u8; 32]>> {
        let personal: Vec<ClientId> = events
            .iter()
            .filter(|(draft, _)| !personal::personal_fields(draft.event.event_type()).is_empty())
            .map(|(draft, _)| draft.client_id)
            .collect();
        if personal.is_empty() {
            return Ok(events.into_iter().map(|(_, digest)| digest).collect());
        }
        self.keyring.keyed_digests(events).await
    }
}
