//! What one watch has seen: a summary per object, fed by the watch's events, and the keys that
//! changed since the evaluator last took them (the dirty set). An event whose summary equals the
//! one kept (a status heartbeat, an annotation) marks nothing. A fresh list (at the start, and
//! after the watch was lost) is buffered and replaces the table once complete: objects missing
//! from it are gone, objects that differ are dirty.

use kube::runtime::watcher::Event;
use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::sync::{Arc, Mutex};

/// A table shared between its watch task and the evaluator.
pub type Shared<S> = Arc<Mutex<Table<S>>>;

#[derive(Debug)]
pub struct Table<S> {
    items: HashMap<Arc<str>, S>,
    dirty: HashSet<Arc<str>>,
    /// The fresh list being received.
    listing: Option<HashMap<Arc<str>, S>>,
    /// A complete list was received at least once.
    listed: bool,
}

impl<S> Default for Table<S> {
    fn default() -> Self {
        Table {
            items: HashMap::new(),
            dirty: HashSet::new(),
            listing: None,
            listed: false,
        }
    }
}

impl<S: PartialEq> Table<S> {
    pub fn shared() -> Shared<S> {
        Arc::new(Mutex::new(Table::default()))
    }

    /// Applies one watch event. `summarize` gives the object's key and its summary, None for an
    /// object the monitor does not watch (not selected: as if absent).
    pub fn apply<K>(&mut self, event: Event<K>, summarize: impl Fn(&K) -> (Arc<str>, Option<S>)) {
        match event {
            Event::Apply(o) => {
                let (key, summary) = summarize(&o);
                self.set(key, summary);
            }
            Event::Delete(o) => {
                let (key, _) = summarize(&o);
                self.set(key, None);
            }
            Event::Init => self.listing = Some(HashMap::new()),
            Event::InitApply(o) => {
                let (key, summary) = summarize(&o);
                if let (Some(listing), Some(s)) = (self.listing.as_mut(), summary) {
                    listing.insert(key, s);
                }
            }
            Event::InitDone => {
                let fresh = self.listing.take().unwrap_or_default();
                for key in self.items.keys() {
                    if !fresh.contains_key(key) {
                        self.dirty.insert(Arc::clone(key));
                    }
                }
                for (key, s) in &fresh {
                    if self.items.get(key) != Some(s) {
                        self.dirty.insert(Arc::clone(key));
                    }
                }
                self.items = fresh;
                self.listed = true;
            }
        }
    }

    fn set(&mut self, key: Arc<str>, summary: Option<S>) {
        match summary {
            Some(s) => {
                if self.items.get(&key) != Some(&s) {
                    self.items.insert(Arc::clone(&key), s);
                    self.dirty.insert(key);
                }
            }
            None => {
                if self.items.remove(&key).is_some() {
                    self.dirty.insert(key);
                }
            }
        }
    }
}

impl<S> Table<S> {
    /// A complete list was received at least once.
    pub fn listed(&self) -> bool {
        self.listed
    }

    /// The keys changed since the last call.
    pub fn take_dirty(&mut self) -> HashSet<Arc<str>> {
        std::mem::take(&mut self.dirty)
    }

    pub fn get<Q: ?Sized + Hash + Eq>(&self, key: &Q) -> Option<&S>
    where
        Arc<str>: std::borrow::Borrow<Q>,
    {
        self.items.get(key)
    }

    pub fn values(&self) -> impl Iterator<Item = &S> {
        self.items.values()
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Obj = (&'static str, u32);

    fn summarize(o: &Obj) -> (Arc<str>, Option<u32>) {
        // Odd values are "not selected".
        (o.0.into(), o.1.is_multiple_of(2).then_some(o.1))
    }

    fn dirty(t: &mut Table<u32>) -> Vec<String> {
        let mut d: Vec<String> = t.take_dirty().iter().map(|k| k.to_string()).collect();
        d.sort();
        d
    }

    #[test]
    fn only_changes_are_dirty_and_a_fresh_list_replaces_the_table_once_complete() {
        let mut t = Table::default();
        t.apply(Event::Init, summarize);
        t.apply(Event::InitApply(("a", 2)), summarize);
        t.apply(Event::InitApply(("b", 4)), summarize);
        t.apply(Event::InitApply(("x", 1)), summarize);
        assert!(
            !t.listed() && t.is_empty(),
            "nothing before the list is complete"
        );
        t.apply(Event::InitDone, summarize);
        assert!(t.listed());
        assert_eq!(dirty(&mut t), vec!["a", "b"]);
        // The same summary again: nothing changed.
        t.apply(Event::Apply(("a", 2)), summarize);
        assert!(dirty(&mut t).is_empty());
        t.apply(Event::Apply(("a", 6)), summarize);
        t.apply(Event::Apply(("b", 5)), summarize); // no longer selected: gone
        t.apply(Event::Delete(("x", 1)), summarize); // never kept: nothing
        assert_eq!(dirty(&mut t), vec!["a", "b"]);
        assert_eq!((t.get("a"), t.get("b")), (Some(&6), None));
        // A relist (after a lost watch): a changed, c new, b still gone; a half list changes nothing.
        t.apply(Event::Init, summarize);
        t.apply(Event::InitApply(("a", 6)), summarize);
        t.apply(Event::Init, summarize);
        t.apply(Event::InitApply(("c", 8)), summarize);
        assert!(dirty(&mut t).is_empty());
        t.apply(Event::InitDone, summarize);
        assert_eq!(dirty(&mut t), vec!["a", "c"]);
        assert_eq!((t.get("a"), t.get("c"), t.len()), (None, Some(&8), 1));
    }
}
