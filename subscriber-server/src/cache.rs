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
//!
//! Repair of what the log cannot see: [`Cache::verify`] re-reads given users whole (the
//! follower walks every cached user in slices each `--verify-interval`), and an entry whose
//! last whole read is older than the cache's max age (`--cache-max-age`) is re-read before
//! it serves a new subscription.

use crate::directory::{Directory, DirectoryError};
use chrono::{DateTime, Utc};
use document::Conference;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

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
    /// When the whole list was last read from the database (patches do not count).
    loaded_at: Instant,
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
    /// When a cached recurring meeting's shown occurrence ends, by conference: it is read
    /// again then, so the list rolls on to the next occurrence. An entry of a conference
    /// nobody caches any more costs one empty read when due.
    rolls: BTreeSet<(DateTime<Utc>, String)>,
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
    /// A cached list read longer ago than this is re-read before it serves a new
    /// subscription; `None`: never.
    max_age: Option<Duration>,
    /// Wakes the change follower (a recheck is pending).
    pub follower_wake: Notify,
}

impl Cache {
    /// An empty cache over `directory`; cached lists serve new subscriptions at any age.
    pub fn new(directory: Directory) -> Self {
        Self {
            inner: Mutex::default(),
            directory,
            max_age: None,
            follower_wake: Notify::new(),
        }
    }

    /// Re-read a cached list whose last whole read is older than `max_age` before it
    /// serves a new subscription (`--cache-max-age`; zero: always re-read).
    #[must_use]
    pub fn with_max_age(mut self, max_age: Option<Duration>) -> Self {
        self.max_age = max_age;
        self
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
    /// loaded from the database if not cached, or re-read if its last whole read is older
    /// than the max age. Refused when `user` already has `limit` subscriptions on this
    /// instance (every session, loads in progress included).
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
            if let Some(e) = inner.users.get_mut(user)
                && self.max_age.is_none_or(|age| e.loaded_at.elapsed() < age)
            {
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
        let Inner {
            users,
            by_conference,
            sessions,
            generation: applied,
            recheck,
            rolls,
            ..
        } = &mut *inner;
        if let Some(e) = users.get_mut(user) {
            // A stale entry re-read, or another session loaded it meanwhile. Ours is the
            // newest unless a batch was applied since our read began: then the next batch
            // re-reads the user instead.
            if *applied == generation {
                swap_in(e, by_conference, sessions, rolls, user, loaded, true);
            } else {
                recheck.insert(user.to_owned());
                self.follower_wake.notify_one();
            }
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
                loaded_at: Instant::now(),
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

    /// Recurring meetings whose shown occurrence has ended by `now`: read them again (as
    /// changed conferences) so that their members see the next occurrence.
    pub fn take_due_rolls(&self, now: DateTime<Utc>) -> HashSet<String> {
        let mut inner = lock(&self.inner);
        let mut due = HashSet::new();
        while let Some((at, _)) = inner.rolls.first() {
            if *at > now {
                break;
            }
            if let Some((_, conference)) = inner.rolls.pop_first() {
                due.insert(conference);
            }
        }
        due
    }

    /// The users cached now (for a verification pass).
    pub fn cached_users(&self) -> Vec<String> {
        lock(&self.inner).users.keys().cloned().collect()
    }

    /// Re-reads `users` whole and swaps in any list that differs from the cached one (a
    /// change the log did not carry); returns how many lists changed. Users no longer
    /// cached are skipped. Run by the follower, so it never races a change batch.
    pub async fn verify(&self, users: &[String]) -> Result<usize, DirectoryError> {
        self.apply(&HashSet::new(), users, false).await
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
        self.apply(conferences, &[], everyone).await
    }

    /// [`Cache::apply_changes`], also recomputing `extra` users whole.
    async fn apply(
        &self,
        conferences: &HashSet<String>,
        extra: &[String],
        everyone: bool,
    ) -> Result<usize, DirectoryError> {
        let whole: Vec<String> = {
            let mut inner = lock(&self.inner);
            let mut whole = std::mem::take(&mut inner.recheck);
            if everyone {
                whole.extend(inner.users.keys().cloned());
            } else {
                whole.extend(
                    extra
                        .iter()
                        .filter(|u| inner.users.contains_key(*u))
                        .cloned(),
                );
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
            if whole.contains(user) {
                let new = recomputed.remove(user).unwrap_or_default();
                if install(&mut inner, user, new, true) {
                    changed_users += 1;
                }
                continue;
            }
            let Some(entry) = inner.users.get(user) else {
                continue;
            };
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
            let mut new: Vec<Conference> = entry
                .doc
                .conferences
                .iter()
                .filter(|c| !conferences.contains(&c.entity))
                .cloned()
                .collect();
            new.extend(rows);
            new.sort_by(|a, b| a.entity.cmp(&b.entity));
            if install(&mut inner, user, new, false) {
                changed_users += 1;
            }
        }
        Ok(changed_users)
    }
}

/// Swaps in `new` as `user`'s list when it differs (a new revision, the index updated,
/// every session holding the user woken); returns whether it did. `whole` says the list
/// was read whole, which resets its age.
fn install(inner: &mut Inner, user: &str, new: Vec<Conference>, whole: bool) -> bool {
    let Inner {
        users,
        by_conference,
        sessions,
        rolls,
        ..
    } = inner;
    match users.get_mut(user) {
        Some(entry) => swap_in(entry, by_conference, sessions, rolls, user, new, whole),
        None => false,
    }
}

/// [`install`] on the entry itself.
fn swap_in(
    entry: &mut Entry,
    by_conference: &mut HashMap<String, HashSet<String>>,
    sessions: &HashMap<SessionKey, Arc<SessionWake>>,
    rolls: &mut BTreeSet<(DateTime<Utc>, String)>,
    user: &str,
    new: Vec<Conference>,
    whole: bool,
) -> bool {
    if whole {
        entry.loaded_at = Instant::now();
    }
    if *entry.doc.conferences == new {
        return false;
    }
    let old = entry.doc.conferences.clone();
    let doc = Arc::new(UserDoc {
        revision: entry.doc.revision + 1,
        conferences: Arc::new(new),
    });
    reindex(by_conference, user, &old, &doc.conferences);
    note_rolls(rolls, &doc.conferences);
    entry.doc = doc;
    for key in entry.sessions.keys() {
        if let Some(wake) = sessions.get(key) {
            wake.mark(user);
        }
    }
    true
}

/// Updates the conference index for the conferences that entered or left `user`'s list
/// (both lists sorted by entity); a change of content alone touches nothing.
fn reindex(
    by_conference: &mut HashMap<String, HashSet<String>>,
    user: &str,
    old: &[Conference],
    new: &[Conference],
) {
    let old_set: HashSet<&str> = old.iter().map(|c| c.entity.as_str()).collect();
    let new_set: HashSet<&str> = new.iter().map(|c| c.entity.as_str()).collect();
    for gone in old.iter().filter(|c| !new_set.contains(c.entity.as_str())) {
        if let Some(set) = by_conference.get_mut(&gone.entity) {
            set.remove(user);
            if set.is_empty() {
                by_conference.remove(&gone.entity);
            }
        }
    }
    for added in new.iter().filter(|c| !old_set.contains(c.entity.as_str())) {
        by_conference
            .entry(added.entity.clone())
            .or_default()
            .insert(user.to_owned());
    }
}

/// Records when each recurring meeting among `conferences` rolls on to its next occurrence
/// (the shown one's end, or its start when it has none).
fn note_rolls(rolls: &mut BTreeSet<(DateTime<Utc>, String)>, conferences: &[Conference]) {
    let now = Utc::now();
    for c in conferences
        .iter()
        .filter(|c| c.schedule.recurrence.is_some())
    {
        let at = c
            .schedule
            .end
            .as_deref()
            .or(c.schedule.start.as_deref())
            .and_then(crate::directory::rows::parse_time);
        if let Some(at) = at.filter(|at| *at > now) {
            rolls.insert((at, c.entity.clone()));
        }
    }
}

fn index(inner: &mut Inner, user: &str, conferences: &[Conference]) {
    note_rolls(&mut inner.rolls, conferences);
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

    async fn demo_cache(max_age: Option<Duration>) -> Cache {
        let directory = Directory::connect("sqlite::memory:", 1).await.unwrap();
        directory.migrate().await.unwrap();
        directory.load_demo_data().await.unwrap();
        Cache::new(directory).with_max_age(max_age)
    }

    /// A write the cache is not told about (no follower runs in these tests).
    async fn unlogged_subject(cache: &Cache, subject: &str) {
        let Some(pool) = cache.directory().sqlite_pool() else {
            unreachable!("sqlite")
        };
        sqlx::query(
            "UPDATE conflist_conferences SET subject = ?1 \
             WHERE conference_uri = 'sip:1001@conf.example.com'",
        )
        .bind(subject)
        .execute(pool)
        .await
        .unwrap();
    }

    fn subject(doc: &UserDoc) -> Option<&str> {
        doc.conferences[0].description.subject.as_deref()
    }

    #[tokio::test]
    async fn verification_corrects_a_list_the_log_did_not_change() {
        let cache = demo_cache(None).await;
        let (s1, w1) = cache.register_session();
        let alice = "sip:alice@example.com";
        cache.attach_limited(s1, alice, 10).await.unwrap();
        unlogged_subject(&cache, "unlogged").await;
        let users = cache.cached_users();
        assert_eq!(cache.verify(&users).await.unwrap(), 1);
        let doc = cache.current(alice).unwrap();
        assert_eq!((doc.revision, subject(&doc)), (1, Some("unlogged")));
        assert_eq!(w1.take(), HashSet::from([alice.to_owned()]));
        assert_eq!(
            cache.verify(&users).await.unwrap(),
            0,
            "nothing more to fix"
        );
        assert_eq!(
            cache
                .verify(&["sip:nobody@example.com".into()])
                .await
                .unwrap(),
            0,
            "users not cached are not loaded"
        );
        assert_eq!(cache.len(), 1);
    }

    #[tokio::test]
    async fn an_entry_past_its_max_age_is_re_read_for_a_new_subscription() {
        let alice = "sip:alice@example.com";
        // Zero: always re-read.
        let cache = demo_cache(Some(Duration::ZERO)).await;
        let (s1, w1) = cache.register_session();
        let (s2, _w2) = cache.register_session();
        cache.attach_limited(s1, alice, 10).await.unwrap();
        unlogged_subject(&cache, "unlogged").await;
        let doc = cache.attach_limited(s2, alice, 10).await.unwrap();
        assert_eq!((doc.revision, subject(&doc)), (1, Some("unlogged")));
        assert_eq!(
            w1.take(),
            HashSet::from([alice.to_owned()]),
            "the older tab follows"
        );
        assert!(matches!(
            cache.attach_limited(s2, alice, 2).await,
            Err(AttachError::TooMany)
        ));

        // Without a max age the cached entry serves as it is.
        let cache = demo_cache(None).await;
        let (s1, _w1) = cache.register_session();
        cache.attach_limited(s1, alice, 10).await.unwrap();
        unlogged_subject(&cache, "unlogged").await;
        let doc = cache.attach_limited(s1, alice, 10).await.unwrap();
        assert_eq!((doc.revision, subject(&doc)), (0, Some("Team status")));
    }
}
