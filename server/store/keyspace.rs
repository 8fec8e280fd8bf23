//! Key spaces: the store's "trees", kept as prefixes of one sled tree.
//!
//! Why one tree: the writer's batch must reach the event log, the dedupe index, the
//! operations and the status index atomically. sled makes a batch on one tree atomic (also
//! across a crash) for the cost of the writes alone, while a transaction over several trees
//! also reads every key it writes. Each [`Space`] is a one-byte prefix of the shared tree with
//! the subset of `sled::Tree`'s API the store uses; keys come back without the prefix.

use std::ops::Bound;

use sled::IVec;

/// One key space: every key of the shared tree that starts with `prefix`.
#[derive(Clone, Debug)]
pub(crate) struct Space {
    tree: sled::Tree,
    prefix: u8,
}

type Entry = sled::Result<(IVec, IVec)>;

impl Space {
    pub(crate) fn new(tree: sled::Tree, prefix: u8) -> Self {
        Space { tree, prefix }
    }

    fn key(&self, key: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(key.len() + 1);
        k.push(self.prefix);
        k.extend_from_slice(key);
        k
    }

    fn strip(kv: Entry) -> Entry {
        kv.map(|(k, v)| (k.subslice(1, k.len() - 1), v))
    }

    fn prefixed(&self, bound: Bound<Vec<u8>>) -> Bound<Vec<u8>> {
        match bound {
            Bound::Included(k) => Bound::Included(self.key(&k)),
            Bound::Excluded(k) => Bound::Excluded(self.key(&k)),
            Bound::Unbounded => Bound::Unbounded,
        }
    }

    pub(crate) fn get(&self, key: impl AsRef<[u8]>) -> sled::Result<Option<IVec>> {
        self.tree.get(self.key(key.as_ref()))
    }

    /// Writes directly, outside any batch: only for initialization before the writer starts.
    pub(crate) fn insert_now(&self, key: &[u8], value: &[u8]) -> sled::Result<()> {
        self.tree.insert(self.key(key), value).map(|_| ())
    }

    /// Every entry, in key order.
    pub(crate) fn iter(&self) -> impl DoubleEndedIterator<Item = Entry> + use<> {
        self.tree.scan_prefix([self.prefix]).map(Self::strip)
    }

    /// Every entry whose key starts with `prefix`, in key order.
    pub(crate) fn scan_prefix(
        &self,
        prefix: &[u8],
    ) -> impl DoubleEndedIterator<Item = Entry> + use<> {
        self.tree.scan_prefix(self.key(prefix)).map(Self::strip)
    }

    /// The entries between two bounds (keys without the prefix), in key order.
    pub(crate) fn range(
        &self,
        start: Bound<Vec<u8>>,
        end: Bound<Vec<u8>>,
    ) -> impl DoubleEndedIterator<Item = Entry> + use<> {
        let end = match end {
            Bound::Unbounded => Bound::Excluded(vec![self.prefix + 1]),
            bounded => self.prefixed(bounded),
        };
        self.tree
            .range((self.prefixed(start), end))
            .map(Self::strip)
    }

    /// How many entries (a scan: for reports, not hot paths).
    pub(crate) fn len(&self) -> usize {
        self.tree.scan_prefix([self.prefix]).count()
    }
}

/// Writes to any spaces, applied as one atomic sled batch.
#[derive(Debug, Default)]
pub(crate) struct Writes {
    batch: sled::Batch,
}

impl Writes {
    pub(crate) fn insert(&mut self, space: &Space, key: &[u8], value: impl Into<IVec>) {
        self.batch.insert(space.key(key), value.into());
    }

    pub(crate) fn remove(&mut self, space: &Space, key: &[u8]) {
        self.batch.remove(space.key(key));
    }

    /// Applies every write at once: after a crash, all of them or none are there.
    pub(crate) fn apply(self, tree: &sled::Tree) -> sled::Result<()> {
        tree.apply_batch(self.batch)
    }
}
