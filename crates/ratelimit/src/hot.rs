//! Which keys are hot: a small predicate trait.
//!
//! Hot keys get the per-key limit and the local cache. Anything that can
//! answer "is this key hot?" quickly will do: a closure, a static set, or
//! (with the `hotkey` feature) `hotkey::HotKeySet`, which every instance
//! keeps in sync with ZooKeeper.

/// Answers whether a key is hot. Called on every read, so it must be cheap
/// and must not block.
pub trait HotKeys: Send + Sync + 'static {
    /// Whether `key` is hot now.
    fn is_hot(&self, key: &[u8]) -> bool;
}

impl<F> HotKeys for F
where
    F: Fn(&[u8]) -> bool + Send + Sync + 'static,
{
    #[inline]
    fn is_hot(&self, key: &[u8]) -> bool {
        self(key)
    }
}

/// No key is hot (the default).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoHotKeys;

impl HotKeys for NoHotKeys {
    #[inline]
    fn is_hot(&self, _key: &[u8]) -> bool {
        false
    }
}

/// Keys reported hot by `hotkey`'s detection (watched from ZooKeeper, or
/// managed by hand with `HotKeySet::manual`).
#[cfg(feature = "hotkey")]
impl HotKeys for hotkey::HotKeySet {
    #[inline]
    fn is_hot(&self, key: &[u8]) -> bool {
        hotkey::HotKeySet::is_hot(self, key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn closures_and_trait_objects() {
        let hot: Arc<dyn HotKeys> = Arc::new(|k: &[u8]| k.starts_with(b"hot:"));
        assert!(hot.is_hot(b"hot:1"));
        assert!(!hot.is_hot(b"cold:1"));
        assert!(!NoHotKeys.is_hot(b"hot:1"));
    }

    #[cfg(feature = "hotkey")]
    #[test]
    fn hotkey_sets_are_hot_keys() {
        let (set, updater) = hotkey::HotKeySet::manual();
        let hot: Arc<dyn HotKeys> = Arc::new(set);
        assert!(!hot.is_hot(b"k"));
        updater.insert(b"k");
        assert!(hot.is_hot(b"k"));
    }
}
