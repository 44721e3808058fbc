//! The per-user document cache shared by every session of this server instance.
//!
//! A user is cached while at least one live subscription (in any session) needs them. The
//! cache indexes which cached users hold which conference, so a change to a conference
//! recomputes exactly the users who were or are its members, with one query per batch. A
//! changed user is marked dirty in every interested session's wake set (a set, so bursts
//! coalesce by construction, and bounded by the session's distinct users).
//!
//! Race rule (no lost update): a user loaded while a batch was being applied is re-checked
//! in the next batch (the `generation` counter tells), so a change that committed after the
//! load's snapshot but was processed before the load finished is never missed.

use crate::directory::{Directory, DirectoryError};
use document::Conference;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use tokio::sync::Notify;

/// One user's conferences at one revision (sorted by entity). Shared, never mutated.
#[derive(Debug)]
pub struct UserDoc {
    /// Increases with every change to this user's list.
    pub revision: u64,
    /// The conferences.
    pub conferences: Arc<Vec<Conference>>,
}

/// Identifies a session's registration.
pub type SessionKey = u64;

/// A session's wake-up: the users that changed since it last looked.
#[derive(Debug, Default)]
pub struct SessionWake {
    dirty: Mutex<HashSet<String>>,
    notify: Notify,
}

impl SessionWake {
    /// Waits until some user changed.
    pub async fn changed(&self) {
        self.notify.notified().await;
    }

    /// Takes the users that changed.
    pub fn take(&self) -> HashSet<String> {
        std::mem::take(&mut *lock(&self.dirty))
    }

    fn mark(&self, user: &str) {
        lock(&self.dirty).insert(user.to_owned());
        self.notify.notify_one();
    }
}

#[derive(Debug)]
struct Entry {
    doc: Arc<UserDoc>,
    /// Subscriptions per session that need this user.
    sessions: HashMap<SessionKey, usize>,
}

#[derive(Debug, Default)]
struct Inner {
    users: HashMap<String, Entry>,
    by_conference: HashMap<String, HashSet<String>>,
    sessions: HashMap<SessionKey, Arc<SessionWake>>,
    next_session: SessionKey,
    /// Bumped whenever a batch is applied.
    generation: u64,
    /// Users to recompute in the next batch.
    recheck: HashSet<String>,
    /// Attaches of uncached users still loading, per user (they count toward the limit).
    loading: HashMap<String, usize>,
}

/// Why [`Cache::attach_limited`] refused.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// The user already holds the most subscriptions allowed on this instance.
    #[error("too many subscriptions for this user")]
    TooMany,
    /// The user's document could not be loaded.
    #[error(transparent)]
    Directory(#[from] DirectoryError),
}

/// Undoes a `loading` count when an attach finishes or is dropped mid-load (its session
/// ended), so the per-user count never leaks.
struct Loading<'a> {
    cache: &'a Cache,
    user: &'a str,
    armed: bool,
}

impl Drop for Loading<'_> {
    fn drop(&mut self) {
        if self.armed {
            unload(&mut lock(&self.cache.inner), self.user);
        }
    }
}

fn unload(inner: &mut Inner, user: &str) {
    if let Some(n) = inner.loading.get_mut(user) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            inner.loading.remove(user);
        }
    }
}

/// The cache.
#[derive(Debug)]
pub struct Cache {
    inner: Mutex<Inner>,
    directory: Directory,
    /// Wakes the change follower (a recheck is pending).
    pub follower_wake: Notify,
}

impl Cache {
    /// An empty cache over `directory`.
    pub fn new(directory: Directory) -> Self {
        Self {
            inner: Mutex::default(),
            directory,
            follower_wake: Notify::new(),
        }
    }

    /// The directory behind the cache.
    pub fn directory(&self) -> &Directory {
        &self.directory
    }

    /// Registers a session; its wake set receives the users that change.
    pub fn register_session(&self) -> (SessionKey, Arc<SessionWake>) {
        let mut inner = lock(&self.inner);
        let key = inner.next_session;
        inner.next_session += 1;
        let wake = Arc::new(SessionWake::default());
        inner.sessions.insert(key, wake.clone());
        (key, wake)
    }

    /// Forgets a session and everything it attached.
    pub fn unregister_session(&self, key: SessionKey) {
        let mut inner = lock(&self.inner);
        inner.sessions.remove(&key);
        let users: Vec<String> = inner
            .users
            .iter()
            .filter(|(_, e)| e.sessions.contains_key(&key))
            .map(|(u, _)| u.clone())
            .collect();
        for user in users {
            if let Some(e) = inner.users.get_mut(&user) {
                e.sessions.remove(&key);
                if e.sessions.is_empty() {
                    remove_user(&mut inner, &user);
                }
            }
        }
    }

    /// One more subscription of `session` needs `user`: the user's current document,
    /// loaded from the database if not cached. Refused when `user` already has `limit`
    /// subscriptions on this instance (every session, loads in progress included).
    pub async fn attach_limited(
        &self,
        session: SessionKey,
        user: &str,
        limit: usize,
    ) -> Result<Arc<UserDoc>, AttachError> {
        let generation = {
            let mut inner = lock(&self.inner);
            let held = inner
                .users
                .get(user)
                .map_or(0, |e| e.sessions.values().sum::<usize>())
                + inner.loading.get(user).copied().unwrap_or(0);
            if held >= limit {
                return Err(AttachError::TooMany);
            }
            if let Some(e) = inner.users.get_mut(user) {
                *e.sessions.entry(session).or_default() += 1;
                return Ok(e.doc.clone());
            }
            *inner.loading.entry(user.to_owned()).or_default() += 1;
            inner.generation
        };
        let mut loading = Loading {
            cache: self,
            user,
            armed: true,
        };
        let loaded = self
            .directory
            .conferences_of_many(&[user.to_owned()])
            .await?
            .remove(user)
            .unwrap_or_default();
        let mut inner = lock(&self.inner);
        // Counted as held from here on, in the same critical section.
        loading.armed = false;
        unload(&mut inner, user);
        if let Some(e) = inner.users.get_mut(user) {
            // Another session loaded it meanwhile; theirs is as fresh as ours.
            *e.sessions.entry(session).or_default() += 1;
            return Ok(e.doc.clone());
        }
        let doc = Arc::new(UserDoc {
            revision: 0,
            conferences: Arc::new(loaded),
        });
        index(&mut inner, user, &doc.conferences);
        inner.users.insert(
            user.to_owned(),
            Entry {
                doc: doc.clone(),
                sessions: HashMap::from([(session, 1)]),
            },
        );
        if inner.generation != generation {
            inner.recheck.insert(user.to_owned());
            drop(inner);
            self.follower_wake.notify_one();
        }
        Ok(doc)
    }

    /// One subscription of `session` no longer needs `user`.
    pub fn detach(&self, session: SessionKey, user: &str) {
        let mut inner = lock(&self.inner);
        let Some(e) = inner.users.get_mut(user) else {
            return;
        };
        if let Some(n) = e.sessions.get_mut(&session) {
            *n -= 1;
            if *n == 0 {
                e.sessions.remove(&session);
            }
        }
        if e.sessions.is_empty() {
            remove_user(&mut inner, user);
        }
    }

    /// The current document of a cached user.
    pub fn current(&self, user: &str) -> Option<Arc<UserDoc>> {
        lock(&self.inner).users.get(user).map(|e| e.doc.clone())
    }

    /// Number of cached users.
    pub fn len(&self) -> usize {
        lock(&self.inner).users.len()
    }

    /// True when nobody is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Brings the cached users affected by changes to `conferences` up to date; returns how
    /// many users' lists changed. One query fetches every membership of the changed
    /// conferences; each affected user's list is patched (its other conferences did not
    /// change: every change is logged). Users loaded while an earlier batch ran (rechecks)
    /// are recomputed whole. `everyone` recomputes every cached user (polling mode, or a
    /// resync after the log was truncated past us).
    pub async fn apply_changes(
        &self,
        conferences: &HashSet<String>,
        everyone: bool,
    ) -> Result<usize, DirectoryError> {
        let whole: Vec<String> = {
            let mut inner = lock(&self.inner);
            let mut whole = std::mem::take(&mut inner.recheck);
            if everyone {
                whole.extend(inner.users.keys().cloned());
            }
            whole.into_iter().collect()
        };
        let changed: Vec<String> = if everyone {
            Vec::new()
        } else {
            conferences.iter().cloned().collect()
        };
        let memberships = self.directory.memberships_of(&changed).await?;
        let mut recomputed = self.directory.conferences_of_many(&whole).await?;

        // The new rows of the changed conferences, per member.
        let mut patches: HashMap<String, Vec<Conference>> = HashMap::new();
        for (user, conference) in memberships {
            patches.entry(user).or_default().push(conference);
        }
        let mut inner = lock(&self.inner);
        inner.generation += 1;
        let whole: HashSet<String> = whole.into_iter().collect();
        let mut patched: HashSet<String> = changed
            .iter()
            .filter_map(|c| inner.by_conference.get(c))
            .flatten()
            .cloned()
            .collect();
        patched.extend(
            patches
                .keys()
                .filter(|u| inner.users.contains_key(*u))
                .cloned(),
        );
        patched.retain(|u| !whole.contains(u));

        let mut changed_users = 0;
        for user in whole.iter().chain(patched.iter()) {
            let Some(entry) = inner.users.get(user) else {
                continue;
            };
            let new = if whole.contains(user) {
                let new = recomputed.remove(user).unwrap_or_default();
                if *entry.doc.conferences == new {
                    continue;
                }
                new
            } else {
                let mut rows = patches.remove(user).unwrap_or_default();
                rows.sort_by(|a, b| a.entity.cmp(&b.entity));
                // Only the changed conferences can differ: compare just those.
                let before = entry
                    .doc
                    .conferences
                    .iter()
                    .filter(|c| conferences.contains(&c.entity));
                if before.eq(rows.iter()) {
                    continue;
                }
                let mut list: Vec<Conference> = entry
                    .doc
                    .conferences
                    .iter()
                    .filter(|c| !conferences.contains(&c.entity))
                    .cloned()
                    .collect();
                list.extend(rows);
                list.sort_by(|a, b| a.entity.cmp(&b.entity));
                list
            };
            let old = entry.doc.conferences.clone();
            let doc = Arc::new(UserDoc {
                revision: entry.doc.revision + 1,
                conferences: Arc::new(new),
            });
            reindex(&mut inner, user, &old, &doc.conferences);
            let sessions: Vec<SessionKey> = match inner.users.get_mut(user) {
                Some(e) => {
                    e.doc = doc;
                    e.sessions.keys().copied().collect()
                }
                None => continue,
            };
            for key in sessions {
                if let Some(wake) = inner.sessions.get(&key) {
                    wake.mark(user);
                }
            }
            changed_users += 1;
        }
        Ok(changed_users)
    }
}

/// Updates the conference index for the conferences that entered or left `user`'s list
/// (both lists sorted by entity); a change of content alone touches nothing.
fn reindex(inner: &mut Inner, user: &str, old: &[Conference], new: &[Conference]) {
    let old_set: HashSet<&str> = old.iter().map(|c| c.entity.as_str()).collect();
    let new_set: HashSet<&str> = new.iter().map(|c| c.entity.as_str()).collect();
    for gone in old.iter().filter(|c| !new_set.contains(c.entity.as_str())) {
        if let Some(set) = inner.by_conference.get_mut(&gone.entity) {
            set.remove(user);
            if set.is_empty() {
                inner.by_conference.remove(&gone.entity);
            }
        }
    }
    for added in new.iter().filter(|c| !old_set.contains(c.entity.as_str())) {
        inner
            .by_conference
            .entry(added.entity.clone())
            .or_default()
            .insert(user.to_owned());
    }
}

fn index(inner: &mut Inner, user: &str, conferences: &[Conference]) {
    for c in conferences {
        inner
            .by_conference
            .entry(c.entity.clone())
            .or_default()
            .insert(user.to_owned());
    }
}

fn unindex(inner: &mut Inner, user: &str, conferences: &[Conference]) {
    for c in conferences {
        if let Some(set) = inner.by_conference.get_mut(&c.entity) {
            set.remove(user);
            if set.is_empty() {
                inner.by_conference.remove(&c.entity);
            }
        }
    }
}

fn remove_user(inner: &mut Inner, user: &str) {
    if let Some(e) = inner.users.remove(user) {
        let confs = e.doc.conferences.clone();
        unindex(inner, user, &confs);
    }
    inner.recheck.remove(user);
}

/// Locks a mutex; critical sections here are short and never span an await.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn subscriptions_per_user_are_limited_across_sessions() {
        let directory = Directory::connect("sqlite::memory:", 1).await.unwrap();
        directory.migrate().await.unwrap();
        let cache = Cache::new(directory);
        let (s1, _w1) = cache.register_session();
        let (s2, _w2) = cache.register_session();
        let alice = "sip:alice@example.com";
        cache.attach_limited(s1, alice, 2).await.unwrap();
        cache.attach_limited(s2, alice, 2).await.unwrap();
        assert!(matches!(
            cache.attach_limited(s1, alice, 2).await,
            Err(AttachError::TooMany)
        ));
        assert!(
            cache
                .attach_limited(s1, "sip:bob@example.com", 2)
                .await
                .is_ok(),
            "per user"
        );
        cache.detach(s2, alice);
        assert!(
            cache.attach_limited(s1, alice, 2).await.is_ok(),
            "room again"
        );
        assert!(lock(&cache.inner).loading.is_empty());
    }
}
