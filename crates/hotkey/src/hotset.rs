//! [`HotKeySet`]: the in-memory set of hot keys every instance consults.
//!
//! Readers call [`HotKeySet::is_hot`] on every cache read, so the read path
//! takes no lock: the set is an immutable snapshot behind an
//! [`arc_swap::ArcSwap`], and a writer replaces the whole snapshot
//! (copy-on-write). Writes are rare (a key turns hot or cools down) and
//! small (the hot set holds tens to thousands of keys), so copying is cheap
//! next to the reads it keeps lock-free.

use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;
use hashbrown::HashSet;
use parking_lot::Mutex;
use tokio::sync::watch;

/// An immutable snapshot of the hot keys, as returned by
/// [`HotKeySet::snapshot`].
#[derive(Clone, Default)]
pub struct HotKeySnapshot {
    keys: HashSet<Box<[u8]>>,
    version: u64,
}

impl HotKeySnapshot {
    /// Whether `key` is in this snapshot.
    #[must_use]
    pub fn contains(&self, key: &[u8]) -> bool {
        self.keys.contains(key)
    }

    /// Number of hot keys.
    #[must_use]
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key is hot.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The hot keys, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.keys.iter().map(|k| &**k)
    }

    /// The hot keys, sorted (handy for assertions and logs).
    #[must_use]
    pub fn sorted(&self) -> Vec<Vec<u8>> {
        let mut keys: Vec<Vec<u8>> = self.keys.iter().map(|k| k.to_vec()).collect();
        keys.sort();
        keys
    }

    /// The version of the set this snapshot was taken from; it grows by one
    /// with every change.
    #[must_use]
    pub fn version(&self) -> u64 {
        self.version
    }
}

impl fmt::Debug for HotKeySnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HotKeySnapshot")
            .field("version", &self.version)
            .field("len", &self.keys.len())
            .finish()
    }
}

struct Shared {
    current: ArcSwap<HotKeySnapshot>,
    /// Serialises writers; readers never touch it.
    write: Mutex<()>,
    version_tx: watch::Sender<u64>,
}

/// The set of keys that are hot right now, shared by every reader of one
/// application instance.
///
/// * [`is_hot`](Self::is_hot) is lock-free and allocation-free: one atomic
///   load of the current snapshot and one hash lookup.
/// * Cloning is cheap (an `Arc`); all clones see the same set.
/// * [`subscribe`](Self::subscribe) returns a [`watch::Receiver`] that
///   changes whenever the set does, for callers that want to drop local
///   caches when a key cools down.
///
/// A set is filled either by hand ([`HotKeySet::from_keys`],
/// [`HotKeySet::manual`], handy in tests and for static configuration) or by
/// a ZooKeeper watcher (`HotKeySet::watch`, feature `zookeeper`) that mirrors
/// what the detector published.
///
/// ```
/// use hotkey::HotKeySet;
///
/// let (set, updater) = HotKeySet::manual();
/// assert!(!set.is_hot(b"user:42"));
/// updater.insert(b"user:42");
/// assert!(set.is_hot(b"user:42"));
/// updater.remove(b"user:42");
/// assert!(!set.is_hot(b"user:42"));
///
/// let fixed = HotKeySet::from_keys(["a", "b"]);
/// assert!(fixed.is_hot(b"a") && !fixed.is_hot(b"c"));
/// ```
#[derive(Clone)]
pub struct HotKeySet {
    shared: Arc<Shared>,
}

impl fmt::Debug for HotKeySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("HotKeySet")
            .field(&*self.shared.current.load())
            .finish()
    }
}

impl Default for HotKeySet {
    fn default() -> Self {
        Self::empty()
    }
}

impl HotKeySet {
    /// An empty set that nobody updates.
    #[must_use]
    pub fn empty() -> Self {
        Self::with_snapshot(HotKeySnapshot::default())
    }

    /// A fixed set holding `keys` (any byte strings).
    #[must_use]
    pub fn from_keys<I, K>(keys: I) -> Self
    where
        I: IntoIterator<Item = K>,
        K: AsRef<[u8]>,
    {
        let keys = keys
            .into_iter()
            .map(|k| Box::<[u8]>::from(k.as_ref()))
            .collect();
        Self::with_snapshot(HotKeySnapshot { keys, version: 0 })
    }

    /// An empty set and the [`HotKeySetUpdater`] that changes it.
    #[must_use]
    pub fn manual() -> (Self, HotKeySetUpdater) {
        let set = Self::empty();
        let updater = HotKeySetUpdater {
            shared: Arc::clone(&set.shared),
        };
        (set, updater)
    }

    fn with_snapshot(snapshot: HotKeySnapshot) -> Self {
        let (version_tx, _) = watch::channel(snapshot.version);
        HotKeySet {
            shared: Arc::new(Shared {
                current: ArcSwap::from_pointee(snapshot),
                write: Mutex::new(()),
                version_tx,
            }),
        }
    }

    /// Whether `key` is hot. Lock-free; never blocks on writers.
    #[must_use]
    #[inline]
    pub fn is_hot(&self, key: &[u8]) -> bool {
        self.shared.current.load().keys.contains(key)
    }

    /// The current snapshot (cheap: an `Arc` clone).
    #[must_use]
    pub fn snapshot(&self) -> Arc<HotKeySnapshot> {
        self.shared.current.load_full()
    }

    /// Number of hot keys right now.
    #[must_use]
    pub fn len(&self) -> usize {
        self.shared.current.load().keys.len()
    }

    /// Whether no key is hot right now.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The version of the set: it grows by one with every change.
    #[must_use]
    pub fn version(&self) -> u64 {
        self.shared.current.load().version
    }

    /// A receiver of the set's version, marked changed after every change.
    #[must_use]
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.shared.version_tx.subscribe()
    }
}

/// One change to a [`HotKeySet`], applied in batches by
/// [`HotKeySetUpdater::apply`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetChange {
    /// The key became hot.
    Insert(Vec<u8>),
    /// The key cooled down.
    Remove(Vec<u8>),
}

/// The writing side of a [`HotKeySet`] made with [`HotKeySet::manual`] (the
/// ZooKeeper watcher uses one internally).
///
/// Each call publishes a new snapshot atomically; readers see either the old
/// set or the new one, never a mix. Writers are serialised by a mutex that
/// readers never take.
#[derive(Clone)]
pub struct HotKeySetUpdater {
    shared: Arc<Shared>,
}

impl fmt::Debug for HotKeySetUpdater {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HotKeySetUpdater").finish_non_exhaustive()
    }
}

impl HotKeySetUpdater {
    /// The set this updater writes.
    #[must_use]
    pub fn set(&self) -> HotKeySet {
        HotKeySet {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Marks `key` hot; returns whether it was not hot before.
    pub fn insert(&self, key: impl AsRef<[u8]>) -> bool {
        self.apply([SetChange::Insert(key.as_ref().to_vec())]) > 0
    }

    /// Marks `key` cold; returns whether it was hot before.
    pub fn remove(&self, key: impl AsRef<[u8]>) -> bool {
        self.apply([SetChange::Remove(key.as_ref().to_vec())]) > 0
    }

    /// Applies `changes` in order as one new snapshot; returns how many of
    /// them changed the set. Publishes nothing when none did.
    pub fn apply(&self, changes: impl IntoIterator<Item = SetChange>) -> usize {
        let _w = self.shared.write.lock();
        let current = self.shared.current.load_full();
        let mut next: Option<HotKeySnapshot> = None;
        let mut changed = 0;
        for change in changes {
            let keys = &mut next.get_or_insert_with(|| (*current).clone()).keys;
            let did = match change {
                SetChange::Insert(k) => keys.insert(k.into_boxed_slice()),
                SetChange::Remove(k) => keys.remove(k.as_slice()),
            };
            changed += usize::from(did);
        }
        if changed > 0 {
            let mut next = next.expect("a change was applied to a copy");
            next.version = current.version + 1;
            self.publish(next);
        }
        changed
    }

    /// Replaces the whole set with `keys`; returns whether it changed.
    pub fn replace<I, K>(&self, keys: I) -> bool
    where
        I: IntoIterator<Item = K>,
        K: AsRef<[u8]>,
    {
        let _w = self.shared.write.lock();
        let current = self.shared.current.load_full();
        let keys: HashSet<Box<[u8]>> = keys
            .into_iter()
            .map(|k| Box::<[u8]>::from(k.as_ref()))
            .collect();
        if keys == current.keys {
            return false;
        }
        self.publish(HotKeySnapshot {
            keys,
            version: current.version + 1,
        });
        true
    }

    fn publish(&self, next: HotKeySnapshot) {
        let version = next.version;
        self.shared.current.store(Arc::new(next));
        self.shared.version_tx.send_replace(version);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_updates_are_seen_by_all_clones_and_bump_the_version() {
        let (set, up) = HotKeySet::manual();
        let clone = set.clone();
        let mut rx = set.subscribe();
        assert_eq!(set.version(), 0);
        assert!(up.insert(b"k1"));
        assert!(!up.insert(b"k1"), "second insert is a no-op");
        assert!(clone.is_hot(b"k1"));
        assert_eq!(set.version(), 1);
        assert!(rx.has_changed().unwrap());
        assert_eq!(*rx.borrow_and_update(), 1);
        assert!(up.remove(b"k1"));
        assert!(!up.remove(b"k1"));
        assert!(!clone.is_hot(b"k1"));
        assert_eq!(set.version(), 2);
    }

    #[test]
    fn batch_and_replace_publish_one_snapshot() {
        let (set, up) = HotKeySet::manual();
        let n = up.apply([
            SetChange::Insert(b"a".to_vec()),
            SetChange::Insert(b"b".to_vec()),
            SetChange::Remove(b"a".to_vec()),
            SetChange::Remove(b"zz".to_vec()),
        ]);
        assert_eq!(n, 3);
        assert_eq!(set.version(), 1);
        assert_eq!(set.snapshot().sorted(), vec![b"b".to_vec()]);
        assert!(up.replace([&b"x"[..], b"", b"\xff\x00"]));
        assert!(
            !up.replace([&b"x"[..], b"", b"\xff\x00"]),
            "same set: no new version"
        );
        assert_eq!(set.version(), 2);
        assert!(set.is_hot(b"") && set.is_hot(b"\xff\x00") && !set.is_hot(b"b"));
    }

    #[test]
    fn old_snapshots_stay_valid_after_updates() {
        let (set, up) = HotKeySet::manual();
        up.insert("a");
        let before = set.snapshot();
        up.insert("b");
        assert!(before.contains(b"a") && !before.contains(b"b"));
        assert_eq!(set.len(), 2);
    }

    #[test]
    fn readers_on_other_threads_see_updates() {
        let (set, up) = HotKeySet::manual();
        let reader = {
            let set = set.clone();
            std::thread::spawn(move || {
                let mut seen = 0u64;
                while !set.is_hot(b"stop") {
                    seen += u64::from(set.is_hot(b"k"));
                    std::hint::spin_loop();
                }
                seen
            })
        };
        for _ in 0..1000 {
            up.insert("k");
            up.remove("k");
        }
        up.insert("stop");
        reader.join().unwrap();
        assert!(set.is_hot(b"stop"));
    }
}
