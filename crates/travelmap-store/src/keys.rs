//! Keys for the personal data in the log: per-client data keys, the master keys that wrap them,
//! and the sealing and opening of events' personal fields (crypto-shredding).
//!
//! - Each client has a **data key per category** (see [`travelmap_domain::personal::Category`]),
//!   32 random bytes used with AES-256-GCM. Keys live in a [`KeyStore`] apart from the log (the
//!   embedded store's `keys.sqlite`, PostgreSQL's `data_keys` table), so a copy of the log alone
//!   holds ciphertext only. Destroying a key erases what it sealed, wherever the log was copied.
//! - Data keys are stored **wrapped** (encrypted) under a **master key** from configuration,
//!   named by an id so that keys can be rotated: new keys are wrapped under the current master,
//!   older ones stay readable under any master still configured, and [`Keyring::rotate`] rewraps
//!   them all under the current one.
//! - Identifiers are found through a **keyed hash** ([`Keyring::lookup_hash`]) under a lookup key
//!   kept (wrapped) in the key store, so the identifier index holds no identifier in plaintext.
//!
//! A sealed value is `[1][key id: 16][field count][len, name]...[nonce: 12][ciphertext + tag]`.
//! The header (which key, which fields) is not secret and is authenticated as associated data,
//! together with the event id, so sealed fields cannot be moved to another event unnoticed.

use std::sync::Arc;

use aes_gcm::aead::{Aead, KeyInit, OsRng, Payload, rand_core::RngCore};
use aes_gcm::{Aes256Gcm, Nonce};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
// Keys are looked up by client and key id several times per sealed event in a rebuild; foldhash
// hashes them in a fraction of SipHash's time (ids come from authenticated senders or are ours).
use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use travelmap_domain::personal::{self, Category};
use travelmap_domain::{ClientId, EventId, PersonalData, RecordedEvent};
use uuid::Uuid;
use zeroize::Zeroizing;

use crate::{Error, Result};

const FORMAT: u8 = 1;
const NONCE_LEN: usize = 12;
/// The system key behind identifier look-ups, stored like a data key under this name.
const LOOKUP_KEY: &str = "identifier-lookup";

/// A data key as stored: wrapped under the master key `master_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredKey {
    pub client_id: ClientId,
    pub category: Category,
    /// Names this key for good: a key destroyed and later created anew has another id, so data
    /// sealed under the old one never opens with the new one.
    pub key_id: Uuid,
    pub master_id: String,
    pub wrapped: Vec<u8>,
    pub created_at: DateTime<Utc>,
}

/// Which missing keys [`Keyring`] makes. A key made for a request that is then refused stays
/// behind with nothing sealed under it; for a client with data, the retention schedule would
/// find it and record a shredding of data never recorded (a retry of an event whose fields it
/// destroyed, say, refused after its category's key was made anew). So keys of a client that
/// already has keys are made only once the events are known to be new; a new client's are made
/// at once, in one write for all its categories (a client with no key has no personal data yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Making {
    /// Keying digests: a client that has keys gets only its data-protection key, if missing;
    /// its other missing keys are left out.
    Digests,
    /// Sealing, before the events are known to be new: a missing key of a client that has
    /// keys is answered [`Error::KeysUnconfirmed`], making no key.
    Unconfirmed,
    /// Sealing events known to be new: every missing key is made.
    Confirmed,
}

/// The record that a data key was destroyed (the key itself is gone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestroyedKey {
    pub client_id: ClientId,
    pub category: Category,
    pub key_id: Uuid,
    pub destroyed_at: DateTime<Utc>,
}

/// Where data keys live, apart from the log.
#[async_trait]
pub trait KeyStore: Send + Sync {
    /// The live keys of the given clients, every category.
    async fn keys(&self, clients: Vec<ClientId>) -> Result<Vec<StoredKey>>;
    /// Stores new keys. Where a client and category already has a key (another request created
    /// it first), that one is kept and returned instead; for an erased client, fails with
    /// [`Error::ClientErased`]. Returns the keys in force, one per requested key.
    async fn create(&self, keys: Vec<StoredKey>) -> Result<Vec<StoredKey>>;
    /// Destroys keys: the given categories of a client's, or with `None` all of them, marking the
    /// client erased so that no key is ever created for them again. Returns how many were
    /// destroyed. The bytes are overwritten where the engine allows (see docs/data-protection.md).
    async fn destroy(&self, client: ClientId, categories: Option<Vec<Category>>) -> Result<usize>;
    /// [`Self::destroy`], only while the client's stream is still at `version` (no event
    /// recorded since): `None`, with nothing destroyed, when it moved. For decisions made on a
    /// history as read (retention): an event recorded meanwhile, sealed under a key about to
    /// be destroyed, would be lost with it, and an event of any kind recorded meanwhile (a
    /// restriction, say) would be left out of the decision. A destruction that checks it
    /// therefore waits for every append under way, and holds off others until it is done. This
    /// default suits a
    /// store only one process uses, whose caller checked the version while holding the
    /// client's turn; a store shared by several processes checks it in the destruction itself.
    async fn destroy_at(
        &self,
        client: ClientId,
        categories: Vec<Category>,
        version: u64,
    ) -> Result<Option<usize>> {
        let _ = version;
        Ok(Some(self.destroy(client, Some(categories)).await?))
    }
    /// Whether this process is the only one using the store (so that it may cache keys).
    fn exclusive(&self) -> bool {
        false
    }
    /// Whether the client was erased.
    async fn is_erased(&self, client: ClientId) -> Result<bool>;
    /// Every client marked erased, in no particular order (erasures are rare: a list of them is
    /// small next to the log).
    async fn erased(&self) -> Result<Vec<ClientId>>;
    /// The keys of the given clients that were destroyed, and when. A sealed value whose key is
    /// neither live nor listed here is not erased but missing (a damaged or wrong key store),
    /// and reading it fails instead of passing it off as erased.
    async fn destroyed(&self, clients: Vec<ClientId>) -> Result<Vec<DestroyedKey>>;
    /// Every live data key (for rotation).
    async fn all(&self) -> Result<Vec<StoredKey>>;
    /// The ids of the master keys that wrap any live data key or system key, each once.
    async fn masters_in_use(&self) -> Result<Vec<String>>;
    /// Replaces the wrapping of existing keys (same key ids), e.g. after a master key rotation.
    async fn rewrap(&self, keys: Vec<StoredKey>) -> Result<()>;
    /// A named system key, wrapped, with its master id.
    async fn system_key(&self, name: &str) -> Result<Option<(String, Vec<u8>)>>;
    /// Stores a system key unless one of that name exists; returns the one in force.
    async fn create_system_key(
        &self,
        name: &str,
        master_id: &str,
        wrapped: Vec<u8>,
    ) -> Result<(String, Vec<u8>)>;
    /// Replaces a system key's wrapping (rotation).
    async fn rewrap_system_key(&self, name: &str, master_id: &str, wrapped: Vec<u8>) -> Result<()>;
}

/// A master key: 32 bytes and the id under which wrapped keys name it.
#[derive(Clone)]
pub struct MasterKey {
    pub id: String,
    key: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MasterKey").field("id", &self.id).finish()
    }
}

impl MasterKey {
    pub fn new(id: impl Into<String>, key: [u8; 32]) -> Self {
        Self {
            id: id.into(),
            key: Zeroizing::new(key),
        }
    }

    /// A new random master key.
    pub fn generate(id: impl Into<String>) -> Self {
        let mut key = [0u8; 32];
        OsRng.fill_bytes(&mut key);
        Self::new(id, key)
    }

    /// The key as 64 hex digits (for writing a new key file).
    pub fn to_hex(&self) -> String {
        hex::encode(&self.key[..])
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new_from_slice(&self.key[..]).expect("32-byte key")
    }
}

/// The configured master keys: the first wraps new keys, all of them unwrap.
#[derive(Debug, Clone)]
pub struct MasterKeys {
    keys: Vec<MasterKey>,
}

impl MasterKeys {
    /// Parses `id:hex` entries, one per line or separated by commas; `#` starts a comment. The
    /// first entry is the current key.
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        let mut keys = Vec::new();
        for entry in text
            .lines()
            .map(|line| line.split('#').next().unwrap_or(""))
            .flat_map(|line| line.split(','))
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
        {
            let (id, digits) = entry
                .split_once(':')
                .ok_or_else(|| "each master key is written `id:64-hex-digits`".to_owned())?;
            let id = id.trim();
            if id.is_empty()
                || !id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                return Err(format!(
                    "master key id `{id}` must be letters, digits, `-`, `_` or `.`"
                ));
            }
            let bytes = hex::decode(digits.trim())
                .ok()
                .filter(|bytes| bytes.len() == 32)
                .ok_or_else(|| format!("master key `{id}` must be 64 hex digits (32 bytes)"))?;
            if keys.iter().any(|key: &MasterKey| key.id == id) {
                return Err(format!("master key id `{id}` is listed twice"));
            }
            let mut key = [0u8; 32];
            key.copy_from_slice(&bytes);
            keys.push(MasterKey::new(id, key));
        }
        if keys.is_empty() {
            return Err("no master key given".to_owned());
        }
        Ok(Self { keys })
    }

    pub fn new(current: MasterKey, older: Vec<MasterKey>) -> Self {
        let mut keys = vec![current];
        keys.extend(older);
        Self { keys }
    }

    pub fn current(&self) -> &MasterKey {
        &self.keys[0]
    }

    fn get(&self, id: &str) -> Option<&MasterKey> {
        self.keys.iter().find(|key| key.id == id)
    }
}

/// A data key, unwrapped, for one call's use.
pub(crate) struct DataKey {
    key_id: Uuid,
    key: Zeroizing<[u8; 32]>,
    /// The expanded key, made once rather than for every event it seals or opens.
    cipher: Aes256Gcm,
}

impl DataKey {
    fn new(key_id: Uuid, key: Zeroizing<[u8; 32]>) -> Self {
        let cipher = Aes256Gcm::new_from_slice(&key[..]).expect("32-byte key");
        Self {
            key_id,
            key,
            cipher,
        }
    }

    fn cipher(&self) -> &Aes256Gcm {
        &self.cipher
    }
}

/// Seals and opens events' personal fields with the clients' data keys.
pub struct Keyring {
    store: Arc<dyn KeyStore>,
    masters: MasterKeys,
    lookup: Zeroizing<[u8; 32]>,
    /// Unwrapped keys for sealing (and for keying digests), by client and category. This
    /// process's own erasures drop them. A key destroyed by another process sharing the store
    /// may still be here: the log then refuses the append with [`Error::KeyWithdrawn`] (it
    /// checks, in the transaction that stores the events, that each sealing key is still in
    /// force), the sealed log forgets the client's keys, and the caller seals again under the
    /// key now in force. Opening never uses this cache: whether a key still exists is asked of
    /// the store (see [`Keyring::open_events_of_full_read`] for a rebuild's pages).
    sealing_cache: KeyCache,
    /// Unwrapped keys by key id, for opening and sealing (see [`Keyring::unwrapped`]).
    unwrapped: std::sync::Mutex<HashMap<Uuid, Arc<DataKey>>>,
    /// Each client's live keys, where this process is the store's only user (see
    /// [`Keyring::live_keys`]).
    live: Option<LiveKeys>,
    /// Where other processes share the store: every client's live keys as read when a full read
    /// of the log (a rebuild) began, for opening that read's pages (see
    /// [`Keyring::open_events_of_full_read`]).
    full_read: std::sync::Mutex<Option<Arc<KeysByClient>>>,
}

/// Each client's live keys.
type KeysByClient = HashMap<ClientId, Arc<[StoredKey]>>;

type LiveKeys = std::sync::Mutex<LiveCache>;

/// Each client's live keys, and a count of the changes made to any (see
/// [`Keyring::live_keys`]).
#[derive(Default)]
struct LiveCache {
    generation: u64,
    lists: HashMap<ClientId, Arc<[StoredKey]>>,
}

/// The most clients [`Keyring::live_keys`] remembers before it starts over.
const LIVE_KEY_CLIENTS: usize = 100_000;

/// The most keys [`Keyring::unwrapped`] keeps. An unwrapped key with its expanded cipher takes
/// about 2 KiB, so the caches are bounded by the clients being worked on, not by all clients
/// ever seen; a miss costs one unwrap (microseconds) or one key-store read.
const UNWRAPPED_KEYS: usize = 4_096;

type KeyCache = std::sync::Mutex<HashMap<(ClientId, Category), Arc<DataKey>>>;

/// The most keys the sealing cache holds (they are shared with [`Keyring::unwrapped`]'s).
const SEALING_CACHE_KEYS: usize = 4_096;

/// Makes room for `incoming` entries in a cache bounded at `bound`, evicting only the excess
/// (arbitrary entries), so that the cache stays near its bound instead of starting over empty.
fn make_room<K: Clone + Eq + std::hash::Hash, V>(
    cache: &mut HashMap<K, V>,
    incoming: usize,
    bound: usize,
) {
    let excess = (cache.len() + incoming).saturating_sub(bound);
    if excess > 0 {
        let evicted: Vec<K> = cache.keys().take(excess).cloned().collect();
        for key in evicted {
            cache.remove(&key);
        }
    }
}

impl Keyring {
    /// Opens the keyring over `store`, creating the identifier lookup key on first use.
    pub async fn open(store: Arc<dyn KeyStore>, masters: MasterKeys) -> Result<Self> {
        let (master_id, wrapped) = match store.system_key(LOOKUP_KEY).await? {
            Some(found) => found,
            None => {
                let mut key = Zeroizing::new([0u8; 32]);
                OsRng.fill_bytes(&mut key[..]);
                let current = masters.current();
                let wrapped = wrap(current, LOOKUP_KEY.as_bytes(), &key[..]);
                store
                    .create_system_key(LOOKUP_KEY, &current.id, wrapped)
                    .await?
            }
        };
        let lookup = unwrap(&masters, &master_id, LOOKUP_KEY.as_bytes(), &wrapped)?;
        // Every key the store holds must be openable, not only the lookup key: a process that
        // lacks a master key others wrap under would otherwise start, hold the views' lease and
        // fail only on meeting such a key. Refusing here names the missing key before any work.
        let mut in_use = store.masters_in_use().await?;
        in_use.sort_unstable();
        if let Some(missing) = in_use.into_iter().find(|id| masters.get(id).is_none()) {
            return Err(Error::MasterKeyMissing(missing));
        }
        let exclusive = store.exclusive();
        Ok(Self {
            store,
            masters,
            lookup,
            sealing_cache: std::sync::Mutex::new(HashMap::new()),
            unwrapped: std::sync::Mutex::new(HashMap::new()),
            live: exclusive.then(|| std::sync::Mutex::new(LiveCache::default())),
            full_read: std::sync::Mutex::new(None),
        })
    }

    pub fn store(&self) -> &Arc<dyn KeyStore> {
        &self.store
    }

    /// The keyed hash under which an identifier is indexed: hex HMAC-SHA256 of kind and value.
    /// Without the lookup key, the index reveals nothing about the identifiers in it.
    pub fn lookup_hash(&self, kind: &str, value: &str) -> String {
        lookup_hash(&self.lookup, kind, value)
    }

    /// Which keys of the given clients were destroyed, as `(client, key id)`.
    pub(crate) async fn destroyed_keys(
        &self,
        mut clients: Vec<ClientId>,
    ) -> Result<HashSet<(ClientId, Uuid)>> {
        clients.sort_unstable();
        clients.dedup();
        Ok(self
            .store
            .destroyed(clients)
            .await?
            .into_iter()
            .map(|key| (key.client_id, key.key_id))
            .collect())
    }

    /// Content digests as stored: for an event with personal fields, keyed (HMAC-SHA-256) with
    /// the client's data-protection key, which erasure destroys, so that the stored fingerprint
    /// can never be tested against guesses after an erasure (a birth date has only so many
    /// values); other events' digests cover journey facts only and are stored as they are. The
    /// retention schedule destroys only some categories' keys; a fingerprint of fields it
    /// destroyed is then left uncompared (see [`crate::Existing::shredded`]).
    pub(crate) async fn keyed_digests(
        &self,
        events: Vec<(&travelmap_domain::EventDraft, [u8; 32])>,
    ) -> Result<Vec<[u8; 32]>> {
        let holds_personal = |draft: &travelmap_domain::EventDraft| {
            !personal::personal_fields(draft.event.event_type()).is_empty()
        };
        // The keys the events will be sealed under are made in the same go, so that a new
        // client costs one write to the key store, not one per key.
        let mut wanted: Vec<(ClientId, Category)> = Vec::new();
        for (draft, _) in events.iter().filter(|(draft, _)| holds_personal(draft)) {
            for slot in [
                Some((draft.client_id, Category::DataProtection)),
                personal::category(draft.event.event_type())
                    .map(|category| (draft.client_id, category)),
            ]
            .into_iter()
            .flatten()
            {
                if !wanted.contains(&slot) {
                    wanted.push(slot);
                }
            }
        }
        // The digests need only the data-protection keys; the others are made here only for
        // new clients (see `Making`).
        let keys = self.keys_for(&wanted, Making::Digests).await?;
        Ok(events
            .into_iter()
            .map(
                |(draft, digest)| match keys.get(&(draft.client_id, Category::DataProtection)) {
                    Some(key) if holds_personal(draft) => {
                        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&key.key[..])
                            .expect("any key length");
                        mac.update(b"digest");
                        mac.update(&digest);
                        mac.finalize().into_bytes().into()
                    }
                    _ => digest,
                },
            )
            .collect())
    }

    /// The data keys in force for `(client, category)` pairs, creating those that do not exist
    /// yet (durably, before any event sealed under them can be committed), as `making` says:
    /// for sealing, [`Making::Unconfirmed`] until the caller knows the events are new.
    pub(crate) async fn keys_for(
        &self,
        wanted: &[(ClientId, Category)],
        making: Making,
    ) -> Result<HashMap<(ClientId, Category), Arc<DataKey>>> {
        let mut keys: HashMap<(ClientId, Category), Arc<DataKey>> =
            HashMap::with_capacity(wanted.len());
        let mut uncached: Vec<(ClientId, Category)> = Vec::new();
        {
            let cache = self.sealing_cache.lock().expect("key cache lock");
            for slot in wanted {
                match cache.get(slot) {
                    Some(key) => {
                        keys.insert(*slot, key.clone());
                    }
                    None => uncached.push(*slot),
                }
            }
        }
        if uncached.is_empty() {
            return Ok(keys);
        }
        uncached.sort_unstable_by_key(|(client, category)| (client.0, *category));
        uncached.dedup();
        // Only the clients with a slot not cached are asked for, and only the wanted keys among
        // theirs are unwrapped and cached: unwrapping every category of every client of a batch
        // of 1,000 events was most of what keying its digests cost, and crowded the bounded
        // cache with keys no event asked for.
        let mut clients: Vec<ClientId> = uncached.iter().map(|(client, _)| *client).collect();
        clients.dedup();
        let mut found: HashMap<(ClientId, Category), StoredKey> = self
            .store
            .keys(clients)
            .await?
            .into_iter()
            .map(|key| ((key.client_id, key.category), key))
            .collect();
        let keyed: HashSet<ClientId> = found.keys().map(|(client, _)| *client).collect();
        let mut left_out: HashSet<(ClientId, Category)> = HashSet::new();
        let mut missing: Vec<StoredKey> = Vec::new();
        for &(client, category) in uncached.iter().filter(|slot| !found.contains_key(slot)) {
            let has_keys = keyed.contains(&client);
            match making {
                Making::Digests if has_keys && category != Category::DataProtection => {
                    left_out.insert((client, category));
                    continue;
                }
                Making::Unconfirmed if has_keys => return Err(Error::KeysUnconfirmed(client)),
                _ => {}
            }
            missing.push(self.new_key(client, category));
        }
        if !missing.is_empty() {
            for key in &missing {
                self.forget_live(key.client_id);
            }
            let created = self.store.create(missing).await?;
            for key in created {
                self.forget_live(key.client_id);
                found.insert((key.client_id, key.category), key);
            }
        }
        // Through the cache of unwrapped keys, so that a key used for sealing and opening is
        // held once.
        let mut fetched = Vec::with_capacity(uncached.len());
        for slot in uncached.iter().filter(|slot| !left_out.contains(slot)) {
            let stored = found.get(slot).ok_or_else(|| Error::KeyWithdrawn(slot.0))?;
            fetched.push((*slot, self.unwrapped(stored)?));
        }
        let mut cache = self.sealing_cache.lock().expect("key cache lock");
        make_room(&mut cache, fetched.len(), SEALING_CACHE_KEYS);
        for (slot, key) in fetched {
            cache.insert(slot, key.clone());
            keys.insert(slot, key);
        }
        Ok(keys)
    }

    fn new_key(&self, client_id: ClientId, category: Category) -> StoredKey {
        let mut key = Zeroizing::new([0u8; 32]);
        OsRng.fill_bytes(&mut key[..]);
        let key_id = Uuid::new_v4();
        let current = self.masters.current();
        StoredKey {
            client_id,
            category,
            key_id,
            master_id: current.id.clone(),
            wrapped: wrap(
                current,
                &wrap_context(client_id, category, key_id),
                &key[..],
            ),
            created_at: Utc::now(),
        }
    }

    /// The live keys of `clients`, one list per client that has any. On a store only this
    /// process uses, the lists are kept: every change to them goes through this keyring, which
    /// drops a client's list when it creates or destroys one of its keys. (A rebuild reads every
    /// client on every page; asking the store each time was most of what opening cost.)
    async fn live_keys(&self, clients: Vec<ClientId>) -> Result<Vec<Arc<[StoredKey]>>> {
        let Some(known) = &self.live else {
            let mut by_client: HashMap<ClientId, Vec<StoredKey>> = HashMap::new();
            for key in self.store.keys(clients).await? {
                by_client.entry(key.client_id).or_default().push(key);
            }
            return Ok(by_client.into_values().map(Arc::from).collect());
        };
        let mut lists = Vec::with_capacity(clients.len());
        let mut unknown = Vec::new();
        let generation = {
            let known = known.lock().expect("live key cache lock");
            for client in clients {
                match known.lists.get(&client) {
                    Some(list) => lists.push(list.clone()),
                    None => unknown.push(client),
                }
            }
            known.generation
        };
        if unknown.is_empty() {
            return Ok(lists);
        }
        let mut fetched: HashMap<ClientId, Vec<StoredKey>> =
            unknown.iter().map(|client| (*client, Vec::new())).collect();
        for key in self.store.keys(unknown).await? {
            fetched.entry(key.client_id).or_default().push(key);
        }
        let mut known = known.lock().expect("live key cache lock");
        // Kept only if no key was created or destroyed meanwhile: what was read may be older
        // than that change, and a kept list must never hold a destroyed key.
        let keep = known.generation == generation;
        if keep && known.lists.len() + fetched.len() > LIVE_KEY_CLIENTS {
            known.lists.clear();
        }
        for (client, keys) in fetched {
            let list: Arc<[StoredKey]> = Arc::from(keys);
            if keep {
                known.lists.insert(client, list.clone());
            }
            lists.push(list);
        }
        Ok(lists)
    }

    /// Prepares for a full read of the log (a rebuild), which opens the events of every client:
    /// every live key is read in one pass over the key store, which costs less than a query per
    /// page. Where this process is the store's only user, the keys go into [`Self::live_keys`]'s
    /// lists. Where other processes share the store, they are kept apart, for the pages of the
    /// full read alone ([`Self::open_events_of_full_read`]), until [`Self::end_full_read`].
    pub async fn begin_full_read(&self) -> Result<()> {
        let generation = self
            .live
            .as_ref()
            .map(|known| known.lock().expect("live key cache lock").generation);
        let mut by_client: HashMap<ClientId, Vec<StoredKey>> = HashMap::new();
        for key in self.store.all().await? {
            by_client.entry(key.client_id).or_default().push(key);
        }
        if by_client.len() > LIVE_KEY_CLIENTS {
            // Too many to hold: the pages ask the store for their clients' keys instead.
            return Ok(());
        }
        let lists = by_client
            .into_iter()
            .map(|(client, keys)| (client, Arc::from(keys)));
        let Some(known) = &self.live else {
            *self.full_read.lock().expect("full read keys lock") = Some(Arc::new(lists.collect()));
            return Ok(());
        };
        let mut known = known.lock().expect("live key cache lock");
        // A key made or destroyed meanwhile may be missing from what was read, or still in it.
        if Some(known.generation) == generation {
            known.lists.clear();
            known.lists.extend(lists);
        }
        Ok(())
    }

    /// Ends a full read of the log: the keys read for it are dropped.
    pub fn end_full_read(&self) {
        self.full_read.lock().expect("full read keys lock").take();
    }

    /// Forgets the sealing keys of clients for which the log refused a key as withdrawn, so that
    /// the next append asks the store for the keys in force.
    pub(crate) fn forget_sealing_keys(&self, clients: &[ClientId]) {
        self.sealing_cache
            .lock()
            .expect("key cache lock")
            .retain(|(owner, _), _| !clients.contains(owner));
    }

    /// Forgets what [`Self::live_keys`] knows of a client whose keys change.
    fn forget_live(&self, client: ClientId) {
        if let Some(known) = &self.live {
            let mut known = known.lock().expect("live key cache lock");
            known.generation += 1;
            known.lists.remove(&client);
        }
    }

    /// A live key, unwrapped: from the cache of unwrapped keys, or unwrapped now and kept. The
    /// cache is keyed by key id, which names one key's bytes for good, and is consulted only for
    /// keys the store has just said are live, so it never revives a destroyed key.
    fn unwrapped(&self, stored: &StoredKey) -> Result<Arc<DataKey>> {
        if let Some(key) = self
            .unwrapped
            .lock()
            .expect("unwrapped key cache lock")
            .get(&stored.key_id)
        {
            return Ok(key.clone());
        }
        let key = Arc::new(self.unwrap_key(stored)?);
        let mut cache = self.unwrapped.lock().expect("unwrapped key cache lock");
        make_room(&mut cache, 1, UNWRAPPED_KEYS);
        cache.insert(stored.key_id, key.clone());
        Ok(key)
    }

    fn unwrap_key(&self, stored: &StoredKey) -> Result<DataKey> {
        let key = unwrap(
            &self.masters,
            &stored.master_id,
            &wrap_context(stored.client_id, stored.category, stored.key_id),
            &stored.wrapped,
        )?;
        Ok(DataKey::new(stored.key_id, key))
    }

    /// Seals the personal fields of events about to be appended. `jobs` lists, per event, its
    /// client, id, category and split; the answer is the sealed value of each, in order, with
    /// the id of the key that sealed it; `keys` are those [`Self::keys_for`] gave for the same
    /// jobs.
    pub(crate) fn seal(
        keys: &HashMap<(ClientId, Category), Arc<DataKey>>,
        jobs: Vec<(ClientId, EventId, Category, personal::Split)>,
    ) -> Result<Vec<(Vec<u8>, Uuid)>> {
        jobs.into_iter()
            .map(|(client, event_id, category, split)| {
                let key = &keys[&(client, category)];
                let fields = split.fields();
                let plaintext =
                    Zeroizing::new(serde_json::Value::Object(split.personal).to_string());
                Ok((
                    seal_value(key, client, event_id, &fields, plaintext.as_bytes()),
                    key.key_id,
                ))
            })
            .collect()
    }

    /// Opens the sealed events among `events` in place: their personal fields come back, or,
    /// where the key is gone, they are marked erased for good.
    pub async fn open_events(&self, events: &mut [RecordedEvent]) -> Result<()> {
        self.open_with(events, None).await
    }

    /// [`Self::open_events`] for a range of the full read under way (a rebuild's page, and
    /// nothing else: other readers open with the keys as the store has them): where other
    /// processes share the store, with the keys read when it began (see
    /// [`Self::begin_full_read`]).
    ///
    /// Such a page may then be opened with a key that another process has destroyed since, and
    /// a rebuilt view may hold personal data erased meanwhile, but not for long: erasure and
    /// retention destroy keys first and then record their event, and when the projector folds
    /// that event it folds the client again from the log, opened with the keys then in force
    /// (an erasure is answered only once that is done). A key made since is not among those
    /// read, and is asked of the store as for any read.
    pub async fn open_events_of_full_read(&self, events: &mut [RecordedEvent]) -> Result<()> {
        let keys = self.full_read.lock().expect("full read keys lock").clone();
        self.open_with(events, keys.as_deref()).await
    }

    /// Opens `events` with the live keys of `read_before` where given, else as the store has
    /// them now.
    async fn open_with(
        &self,
        events: &mut [RecordedEvent],
        read_before: Option<&KeysByClient>,
    ) -> Result<()> {
        let mut clients: Vec<ClientId> = events
            .iter()
            .filter(|event| matches!(event.personal, PersonalData::Sealed(_)))
            .map(|event| event.draft.client_id)
            .collect();
        if clients.is_empty() {
            return Ok(());
        }
        clients.sort_unstable_by_key(|client| client.0);
        clients.dedup();
        // Which keys are live is asked of the store (a full read of a shared store asked it once
        // when it began); a live key is unwrapped once per read and only if some event needs it
        // (a rebuild's page names thousands of clients).
        let stored = match read_before {
            Some(lists) => clients
                .iter()
                .filter_map(|client| lists.get(client).cloned())
                .collect(),
            None => self.live_keys(clients.clone()).await?,
        };
        let live: HashMap<Uuid, &StoredKey> = stored
            .iter()
            .flat_map(|keys| keys.iter())
            .map(|key| (key.key_id, key))
            .collect();
        let mut keys: HashMap<Uuid, (ClientId, Arc<DataKey>)> = HashMap::new();
        let mut refreshed: HashSet<ClientId> = HashSet::new();
        // Fetched only when some key is not live: the usual read never needs it.
        let mut destroyed: Option<HashSet<(ClientId, Uuid)>> = None;
        for event in events.iter_mut() {
            let PersonalData::Sealed(sealed) = std::mem::take(&mut event.personal) else {
                continue;
            };
            let position = event.meta.position;
            let corrupt = |message: String| Error::Corrupt {
                position,
                source: travelmap_domain::DecodeError::Invalid(
                    travelmap_domain::ValidationError::new("", message),
                ),
            };
            let header = Header::locate(&sealed.ciphertext).map_err(corrupt)?;
            let client = event.draft.client_id;
            if !keys.contains_key(&header.key_id)
                && let Some(stored) = live.get(&header.key_id)
            {
                keys.insert(header.key_id, (stored.client_id, self.unwrapped(stored)?));
            }
            if !keys.contains_key(&header.key_id) && refreshed.insert(client) {
                // Not among the keys known to be live: ask the store itself before concluding
                // anything (a key may have been made since the list was read).
                self.forget_live(client);
                for stored in self.store.keys(vec![client]).await? {
                    if stored.key_id == header.key_id {
                        keys.insert(stored.key_id, (stored.client_id, self.unwrapped(&stored)?));
                    }
                }
            }
            let key = match keys.get(&header.key_id) {
                Some((owner, key)) if *owner == client => key.clone(),
                Some(_) => {
                    return Err(corrupt(
                        "sealed fields name another client's key".to_owned(),
                    ));
                }
                None => {
                    if destroyed.is_none() {
                        destroyed = Some(
                            self.store
                                .destroyed(clients.clone())
                                .await?
                                .into_iter()
                                .map(|key| (key.client_id, key.key_id))
                                .collect(),
                        );
                    }
                    let erased = destroyed
                        .as_ref()
                        .is_some_and(|destroyed| destroyed.contains(&(client, header.key_id)));
                    if !erased {
                        return Err(Error::KeyMissing { position });
                    }
                    event.draft.event = personal::join_erased(
                        event.draft.event.event_type(),
                        event.draft.event.schema_version(),
                        &sealed.public,
                        &sealed.fields,
                    )
                    .map_err(|source| Error::Corrupt { position, source })?;
                    event.personal = PersonalData::Erased;
                    continue;
                }
            };
            let plaintext = Zeroizing::new(
                open_value(&key, client, event.draft.id, &sealed.ciphertext, &header)
                    .map_err(|()| corrupt("sealed fields fail authentication".to_owned()))?,
            );
            let personal = std::str::from_utf8(&plaintext)
                .map_err(|error| corrupt(format!("sealed fields: {error}")))?;
            event.draft.event = personal::join_text(
                event.draft.event.event_type(),
                event.draft.event.schema_version(),
                &sealed.public,
                personal,
            )
            .map_err(|source| Error::Corrupt { position, source })?;
            event.personal = PersonalData::Clear;
        }
        Ok(())
    }

    /// Destroys a client's keys (all, or some categories). See [`KeyStore::destroy`].
    pub async fn destroy(
        &self,
        client: ClientId,
        categories: Option<Vec<Category>>,
    ) -> Result<usize> {
        self.forget_keys(client, categories.as_deref());
        let destroyed = self.store.destroy(client, categories.clone()).await?;
        self.forget_keys(client, categories.as_deref());
        Ok(destroyed)
    }

    /// Destroys some categories of a client's keys while the stream is still at `version`.
    /// See [`KeyStore::destroy_at`].
    pub async fn destroy_at(
        &self,
        client: ClientId,
        categories: Vec<Category>,
        version: u64,
    ) -> Result<Option<usize>> {
        self.forget_keys(client, Some(&categories));
        let destroyed = self
            .store
            .destroy_at(client, categories.clone(), version)
            .await?;
        self.forget_keys(client, Some(&categories));
        Ok(destroyed)
    }

    /// Drops what is cached of a client's keys (all, or some categories).
    fn forget_keys(&self, client: ClientId, categories: Option<&[Category]>) {
        self.sealing_cache
            .lock()
            .expect("key cache lock")
            .retain(|(owner, category), _| {
                *owner != client
                    || categories.is_some_and(|destroyed| !destroyed.contains(category))
            });
        self.forget_live(client);
        // Not needed for correctness (see `unwrapped`), but a destroyed key's bytes should not
        // linger in memory either.
        self.unwrapped
            .lock()
            .expect("unwrapped key cache lock")
            .clear();
    }

    /// Rewraps every data key (and the lookup key) under the current master key; returns how
    /// many keys were rewrapped. Afterwards, older master keys can be removed from the
    /// configuration.
    pub async fn rotate(&self) -> Result<usize> {
        let current = self.masters.current();
        let mut rewrapped = Vec::new();
        for stored in self.store.all().await? {
            if stored.master_id == current.id {
                continue;
            }
            let key = self.unwrap_key(&stored)?;
            let context = wrap_context(stored.client_id, stored.category, stored.key_id);
            rewrapped.push(StoredKey {
                master_id: current.id.clone(),
                wrapped: wrap(current, &context, &key.key[..]),
                ..stored
            });
        }
        let count = rewrapped.len();
        if count > 0 {
            self.store.rewrap(rewrapped).await?;
        }
        if let Some(known) = &self.live {
            let mut known = known.lock().expect("live key cache lock");
            known.generation += 1;
            known.lists.clear();
        }
        if let Some((master_id, _)) = self.store.system_key(LOOKUP_KEY).await?
            && master_id != current.id
        {
            let wrapped = wrap(current, LOOKUP_KEY.as_bytes(), &self.lookup[..]);
            self.store
                .rewrap_system_key(LOOKUP_KEY, &current.id, wrapped)
                .await?;
        }
        Ok(count)
    }
}

/// What a data key's wrapping is bound to: it unwraps only for its own client, category and id.
fn wrap_context(client: ClientId, category: Category, key_id: Uuid) -> Vec<u8> {
    let mut context = Vec::with_capacity(48);
    context.extend_from_slice(client.0.as_bytes());
    context.extend_from_slice(key_id.as_bytes());
    context.extend_from_slice(category.as_str().as_bytes());
    context
}

fn wrap(master: &MasterKey, context: &[u8], key: &[u8]) -> Vec<u8> {
    let mut nonce = [0u8; NONCE_LEN];
    OsRng.fill_bytes(&mut nonce);
    let sealed = master
        .cipher()
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: key,
                aad: context,
            },
        )
        .expect("AES-GCM encryption of a short message cannot fail");
    let mut wrapped = nonce.to_vec();
    wrapped.extend_from_slice(&sealed);
    wrapped
}

fn unwrap(
    masters: &MasterKeys,
    master_id: &str,
    context: &[u8],
    wrapped: &[u8],
) -> Result<Zeroizing<[u8; 32]>> {
    let master = masters
        .get(master_id)
        .ok_or_else(|| Error::MasterKeyMissing(master_id.to_owned()))?;
    if wrapped.len() < NONCE_LEN {
        return Err(Error::KeyDamaged);
    }
    let (nonce, sealed) = wrapped.split_at(NONCE_LEN);
    let key = Zeroizing::new(
        master
            .cipher()
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: context,
                },
            )
            .map_err(|_| Error::KeyDamaged)?,
    );
    let mut out = Zeroizing::new([0u8; 32]);
    if key.len() != 32 {
        return Err(Error::KeyDamaged);
    }
    out.copy_from_slice(&key);
    Ok(out)
}

/// The readable header of a sealed value.
struct Header {
    key_id: Uuid,
    fields: Vec<String>,
    /// Where the nonce starts.
    body: usize,
}

impl Header {
    /// The key id and where the nonce starts, without collecting the field names.
    fn locate(sealed: &[u8]) -> std::result::Result<Self, String> {
        let damaged = || "sealed value is damaged".to_owned();
        if sealed.first() != Some(&FORMAT) || sealed.len() < 18 {
            return Err(damaged());
        }
        let key_id = Uuid::from_slice(&sealed[1..17]).map_err(|_| damaged())?;
        let mut at = 18;
        for _ in 0..sealed[17] {
            at += 1 + *sealed.get(at).ok_or_else(damaged)? as usize;
        }
        if sealed.len() < at + NONCE_LEN + 16 {
            return Err(damaged());
        }
        Ok(Self {
            key_id,
            fields: Vec::new(),
            body: at,
        })
    }

    fn parse(sealed: &[u8]) -> std::result::Result<Self, String> {
        let damaged = || "sealed value is damaged".to_owned();
        if sealed.first() != Some(&FORMAT) || sealed.len() < 18 {
            return Err(damaged());
        }
        let key_id = Uuid::from_slice(&sealed[1..17]).map_err(|_| damaged())?;
        let count = sealed[17] as usize;
        let mut at = 18;
        let mut fields = Vec::with_capacity(count);
        for _ in 0..count {
            let len = *sealed.get(at).ok_or_else(damaged)? as usize;
            let name = sealed.get(at + 1..at + 1 + len).ok_or_else(damaged)?;
            fields.push(String::from_utf8(name.to_vec()).map_err(|_| damaged())?);
            at += 1 + len;
        }
        if sealed.len() < at + NONCE_LEN + 16 {
            return Err(damaged());
        }
        Ok(Self {
            key_id,
            fields,
            body: at,
        })
    }
}

/// The key a sealed value was sealed under and the names of the fields it holds (both readable
/// without any key).
pub(crate) fn sealed_outline(sealed: &[u8]) -> std::result::Result<(Uuid, Vec<String>), String> {
    Header::parse(sealed).map(|header| (header.key_id, header.fields))
}

fn seal_value(
    key: &DataKey,
    client: ClientId,
    event_id: EventId,
    fields: &[String],
    plaintext: &[u8],
) -> Vec<u8> {
    let mut sealed = vec![FORMAT];
    sealed.extend_from_slice(key.key_id.as_bytes());
    sealed.push(fields.len() as u8);
    for field in fields {
        sealed.push(field.len() as u8);
        sealed.extend_from_slice(field.as_bytes());
    }
    let aad = associated_data(&sealed, client, event_id);
    let mut nonce = [0u8; NONCE_LEN];
    OsRng.fill_bytes(&mut nonce);
    let ciphertext = key
        .cipher()
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad: &aad,
            },
        )
        .expect("AES-GCM encryption cannot fail for a message this size");
    sealed.extend_from_slice(&nonce);
    sealed.extend_from_slice(&ciphertext);
    sealed
}

/// What a sealed value is bound to besides its key: its own header (which key, which fields),
/// the client and the event.
fn associated_data(header: &[u8], client: ClientId, event_id: EventId) -> Vec<u8> {
    let mut aad = header.to_vec();
    aad.extend_from_slice(client.0.as_bytes());
    aad.extend_from_slice(event_id.0.as_bytes());
    aad
}

fn open_value(
    key: &DataKey,
    client: ClientId,
    event_id: EventId,
    sealed: &[u8],
    header: &Header,
) -> std::result::Result<Vec<u8>, ()> {
    let aad = associated_data(&sealed[..header.body], client, event_id);
    let nonce = &sealed[header.body..header.body + NONCE_LEN];
    key.cipher()
        .decrypt(
            Nonce::from_slice(nonce),
            Payload {
                msg: &sealed[header.body + NONCE_LEN..],
                aad: &aad,
            },
        )
        .map_err(|_| ())
}

/// The keyed hash of an identifier under the lookup key, as lowercase hex. The kind's length
/// goes first, so that no kind and value run together into another pair's bytes.
fn lookup_hash(key: &[u8; 32], kind: &str, value: &str) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("any key length");
    mac.update(&(kind.len() as u64).to_be_bytes());
    mac.update(kind.as_bytes());
    mac.update(value.as_bytes());
    // Hex by table into a buffer of the right size: formatting each byte was most of the cost of
    // a view with identifiers, and `hex::encode` still collects a character at a time.
    let mut text = [0u8; 64];
    hex::encode_to_slice(mac.finalize().into_bytes(), &mut text)
        .expect("64 hex digits for 32 bytes");
    std::str::from_utf8(&text)
        .expect("hex digits are ASCII")
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stored indexes hold these hashes: a change of their form would lose every identifier.
    #[test]
    fn identifier_hashes_keep_their_form() {
        assert_eq!(
            lookup_hash(&[1u8; 32], "prison_number", "OP-2024-117"),
            "b2897a1a5e10fa24c66127f213696297adbaf7249ff7cde27b0a87b0e1991b43"
        );
        assert_ne!(
            lookup_hash(&[1u8; 32], "prison_number", "OP-2024-118"),
            lookup_hash(&[1u8; 32], "prison_number", "OP-2024-117")
        );
    }

    fn data_key() -> DataKey {
        DataKey::new(Uuid::from_u128(5), Zeroizing::new([7u8; 32]))
    }

    #[test]
    fn a_sealed_value_opens_only_for_its_own_event_and_key() {
        let key = data_key();
        let event = EventId(Uuid::from_u128(1));
        let client = ClientId(Uuid::from_u128(8));
        let fields = vec!["note".to_owned()];
        let sealed = seal_value(&key, client, event, &fields, b"{\"note\":\"diabetes\"}");
        assert!(!sealed.windows(8).any(|window| window == b"diabetes"));
        let header = Header::parse(&sealed).unwrap();
        assert_eq!(header.fields, fields);
        assert_eq!(header.key_id, key.key_id);
        assert_eq!(
            open_value(&key, client, event, &sealed, &header).unwrap(),
            b"{\"note\":\"diabetes\"}"
        );
        assert!(open_value(&key, client, EventId(Uuid::from_u128(2)), &sealed, &header).is_err());
        assert!(open_value(&key, ClientId(Uuid::from_u128(9)), event, &sealed, &header).is_err());
        let other = DataKey::new(key.key_id, Zeroizing::new([8u8; 32]));
        assert!(open_value(&other, client, event, &sealed, &header).is_err());
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(open_value(&key, client, event, &tampered, &header).is_err());
    }

    #[test]
    fn master_keys_parse_with_the_first_current() {
        let first = "a".repeat(64);
        let second = "b".repeat(64);
        let keys = MasterKeys::parse(&format!("# keys\nk2:{first}\nk1:{second}\n")).unwrap();
        assert_eq!(keys.current().id, "k2");
        assert!(keys.get("k1").is_some());
        assert!(MasterKeys::parse("k1:abcd").is_err());
        assert!(MasterKeys::parse("").is_err());
        assert!(MasterKeys::parse(&format!("k1:{first},k1:{second}")).is_err());
        // Only hex digits: a sign that integer parsing would take is not one.
        assert!(MasterKeys::parse(&format!("k1:+f{}", "a".repeat(62))).is_err());
        assert!(MasterKeys::parse(&format!("k1:{}", "g".repeat(64))).is_err());
    }

    #[test]
    fn a_master_key_writes_as_the_hex_it_reads_from() {
        let key = MasterKey::new("m1", [0xa5; 32]);
        let written = key.to_hex();
        assert_eq!(written, "a5".repeat(32));
        let read = MasterKeys::parse(&format!("m1:{written}")).unwrap();
        assert_eq!(read.current().to_hex(), written);
    }

    #[test]
    fn wrapped_keys_unwrap_only_in_their_own_context() {
        let masters = MasterKeys::new(MasterKey::new("m1", [3u8; 32]), Vec::new());
        let wrapped = wrap(masters.current(), b"context", &[9u8; 32]);
        assert_eq!(
            *unwrap(&masters, "m1", b"context", &wrapped).unwrap(),
            [9u8; 32]
        );
        assert!(matches!(
            unwrap(&masters, "m1", b"other", &wrapped),
            Err(Error::KeyDamaged)
        ));
        assert!(matches!(
            unwrap(&masters, "m0", b"context", &wrapped),
            Err(Error::MasterKeyMissing(_))
        ));
    }
}
