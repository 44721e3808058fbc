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
//! load's snapshot but was processed before the load finished is never missed. The rule
//! lives in the sans-IO steps around each query (`Inner::begin_attach`/`finish_attach`,
//! `Inner::begin_batch`/`finish_batch`), which the tests drive without a database.
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
use std::time::{Duration, SystemTime};
use tokio::sync::Notify;
use tokio::time::Instant;

/// One user's conferences at one revision (sorted by entity). Shared, never mutated.
#[derive(Debug)]
pub struct UserDoc {
    /// Increases with every change to this user's list.
    pub revision: u64,
    /// The conferences.
    pub conferences: Arc<Vec<Conference>>,
    /// When the change that made this revision was committed (the oldest change-log
    /// `changed_at` of its batch); `None` for a load or a repair the log did not carry.
    pub changed_at: Option<SystemTime>,
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
        lock(&self.inner).register_session()
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
        let generation = match lock(&self.inner).begin_attach(
            session,
            user,
            limit,
            self.max_age,
            Instant::now(),
        )? {
            Attach::Cached(doc) => return Ok(doc),
            Attach::Load { generation } => generation,
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
        let (doc, recheck) = inner.finish_attach(session, user, generation, loaded, Instant::now());
        drop(inner);
        if recheck {
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
        lock(&self.inner).current(user)
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
        self.apply(&HashSet::new(), users, false, None).await
    }

    /// Brings the cached users affected by changes to `conferences` up to date; returns how
    /// many users' lists changed. One query fetches every membership of the changed
    /// conferences; each affected user's list is patched (its other conferences did not
    /// change: every change is logged). Users loaded while an earlier batch ran (rechecks)
    /// are recomputed whole. `everyone` recomputes every cached user (polling mode, or a
    /// resync after the log was truncated past us). `changed_at` is when the batch's oldest
    /// change was committed; the new revisions carry it (commit-to-notify latency).
    pub async fn apply_changes(
        &self,
        conferences: &HashSet<String>,
        everyone: bool,
        changed_at: Option<SystemTime>,
    ) -> Result<usize, DirectoryError> {
        self.apply(conferences, &[], everyone, changed_at).await
    }

    /// [`Cache::apply_changes`], also recomputing `extra` users whole.
    async fn apply(
        &self,
        conferences: &HashSet<String>,
        extra: &[String],
        everyone: bool,
        changed_at: Option<SystemTime>,
    ) -> Result<usize, DirectoryError> {
        let whole = lock(&self.inner).begin_batch(extra, everyone);
        let changed: Vec<String> = if everyone {
            Vec::new()
        } else {
            conferences.iter().cloned().collect()
        };
        let read = async {
            let memberships = self.directory.memberships_of(&changed).await?;
            let recomputed = self.directory.conferences_of_many(&whole).await?;
            Ok::<_, DirectoryError>((memberships, recomputed))
        };
        let (memberships, recomputed) = match read.await {
            Ok(read) => read,
            Err(e) => {
                // The next batch must still recheck whoever this one was to.
                lock(&self.inner).abort_batch(whole);
                return Err(e);
            }
        };
        Ok(lock(&self.inner).finish_batch(
            Batch {
                conferences,
                changed: &changed,
                whole,
                memberships,
                recomputed,
                changed_at,
            },
            Instant::now(),
        ))
    }
}

/// What [`Inner::begin_attach`] decided.
#[derive(Debug)]
enum Attach {
    /// The cached entry serves: counted for the session.
    Cached(Arc<UserDoc>),
    /// Read the user from the database, then call [`Inner::finish_attach`] with this.
    Load {
        /// The batch generation when the read began.
        generation: u64,
    },
}

/// What a change batch read, for [`Inner::finish_batch`].
#[derive(Debug)]
struct Batch<'a> {
    /// The conferences the log named.
    conferences: &'a HashSet<String>,
    /// The conferences whose memberships were read (none when everyone is recomputed).
    changed: &'a [String],
    /// The users read whole ([`Inner::begin_batch`]).
    whole: Vec<String>,
    /// (member, conference row) of every changed conference.
    memberships: Vec<(String, Conference)>,
    /// The whole lists of `whole`.
    recomputed: HashMap<String, Vec<Conference>>,
    /// When the batch's oldest change was committed.
    changed_at: Option<SystemTime>,
}

/// A user's list as read, for [`swap_in`].
#[derive(Debug)]
struct Revision {
    conferences: Vec<Conference>,
    /// Set when the list was read whole (which resets its age), at this instant.
    read_whole_at: Option<Instant>,
    changed_at: Option<SystemTime>,
}

impl Inner {
    fn register_session(&mut self) -> (SessionKey, Arc<SessionWake>) {
        let key = self.next_session;
        self.next_session += 1;
        let wake = Arc::new(SessionWake::default());
        self.sessions.insert(key, wake.clone());
        (key, wake)
    }

    /// Step one of [`Cache::attach_limited`]: refused over `limit`, served from the cache
    /// when cached and fresh (`max_age` at `now`), otherwise counted as loading.
    fn begin_attach(
        &mut self,
        session: SessionKey,
        user: &str,
        limit: usize,
        max_age: Option<Duration>,
        now: Instant,
    ) -> Result<Attach, AttachError> {
        let held = self
            .users
            .get(user)
            .map_or(0, |e| e.sessions.values().sum::<usize>())
            + self.loading.get(user).copied().unwrap_or(0);
        if held >= limit {
            return Err(AttachError::TooMany);
        }
        if let Some(e) = self.users.get_mut(user)
            && max_age.is_none_or(|age| now.saturating_duration_since(e.loaded_at) < age)
        {
            *e.sessions.entry(session).or_default() += 1;
            return Ok(Attach::Cached(e.doc.clone()));
        }
        *self.loading.entry(user.to_owned()).or_default() += 1;
        Ok(Attach::Load {
            generation: self.generation,
        })
    }

    /// Step two: `loaded` is the list read since `generation`. Returns the user's document
    /// and whether the next batch must recheck the user (a batch was applied while the read
    /// ran, so `loaded` may predate a change that batch could not apply to an uncached user).
    fn finish_attach(
        &mut self,
        session: SessionKey,
        user: &str,
        generation: u64,
        loaded: Vec<Conference>,
        now: Instant,
    ) -> (Arc<UserDoc>, bool) {
        unload(self, user);
        let stale = self.generation != generation;
        let Inner {
            users,
            by_conference,
            sessions,
            recheck,
            rolls,
            ..
        } = self;
        if let Some(e) = users.get_mut(user) {
            // A stale entry re-read, or another session loaded it meanwhile. Ours is the
            // newest unless a batch was applied since our read began: then the next batch
            // re-reads the user instead.
            if stale {
                recheck.insert(user.to_owned());
            } else {
                let revision = Revision {
                    conferences: loaded,
                    read_whole_at: Some(now),
                    changed_at: None,
                };
                swap_in(e, by_conference, sessions, rolls, user, revision);
            }
            *e.sessions.entry(session).or_default() += 1;
            return (e.doc.clone(), stale);
        }
        let doc = Arc::new(UserDoc {
            revision: 0,
            conferences: Arc::new(loaded),
            changed_at: None,
        });
        index(self, user, &doc.conferences);
        self.users.insert(
            user.to_owned(),
            Entry {
                doc: doc.clone(),
                sessions: HashMap::from([(session, 1)]),
                loaded_at: now,
            },
        );
        if stale {
            self.recheck.insert(user.to_owned());
        }
        (doc, stale)
    }

    /// Step one of a batch: the users to read whole (every recheck, and `extra`'s cached
    /// users or, with `everyone`, every cached user).
    fn begin_batch(&mut self, extra: &[String], everyone: bool) -> Vec<String> {
        let mut whole = std::mem::take(&mut self.recheck);
        if everyone {
            whole.extend(self.users.keys().cloned());
        } else {
            whole.extend(
                extra
                    .iter()
                    .filter(|u| self.users.contains_key(*u))
                    .cloned(),
            );
        }
        whole.into_iter().collect()
    }

    /// A batch whose reads failed: its users (those still cached) are rechecked by the next.
    fn abort_batch(&mut self, whole: Vec<String>) {
        let cached: Vec<String> = whole
            .into_iter()
            .filter(|u| self.users.contains_key(u))
            .collect();
        self.recheck.extend(cached);
    }

    /// Step two: installs what the batch read; returns how many users' lists changed. It
    /// counts as an applied batch for loads in progress (the generation moves on).
    fn finish_batch(&mut self, batch: Batch<'_>, now: Instant) -> usize {
        let Batch {
            conferences,
            changed,
            whole,
            memberships,
            mut recomputed,
            changed_at,
        } = batch;
        // The new rows of the changed conferences, per member.
        let mut patches: HashMap<String, Vec<Conference>> = HashMap::new();
        for (user, conference) in memberships {
            patches.entry(user).or_default().push(conference);
        }
        self.generation += 1;
        let whole: HashSet<String> = whole.into_iter().collect();
        let mut patched: HashSet<String> = changed
            .iter()
            .filter_map(|c| self.by_conference.get(c))
            .flatten()
            .cloned()
            .collect();
        patched.extend(
            patches
                .keys()
                .filter(|u| self.users.contains_key(*u))
                .cloned(),
        );
        patched.retain(|u| !whole.contains(u));

        let mut changed_users = 0;
        for user in whole.iter().chain(patched.iter()) {
            if whole.contains(user) {
                let new = Revision {
                    conferences: recomputed.remove(user).unwrap_or_default(),
                    read_whole_at: Some(now),
                    changed_at,
                };
                if install(self, user, new) {
                    changed_users += 1;
                }
                continue;
            }
            let Some(entry) = self.users.get(user) else {
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
            let new = Revision {
                conferences: new,
                read_whole_at: None,
                changed_at,
            };
            if install(self, user, new) {
                changed_users += 1;
            }
        }
        changed_users
    }

    /// The current document of a cached user.
    fn current(&self, user: &str) -> Option<Arc<UserDoc>> {
        self.users.get(user).map(|e| e.doc.clone())
    }
}

/// Swaps in `new` as `user`'s list when it differs (a new revision, the index updated,
/// every session holding the user woken); returns whether it did.
fn install(inner: &mut Inner, user: &str, new: Revision) -> bool {
    let Inner {
        users,
        by_conference,
        sessions,
        rolls,
        ..
    } = inner;
    match users.get_mut(user) {
        Some(entry) => swap_in(entry, by_conference, sessions, rolls, user, new),
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
    new: Revision,
) -> bool {
    if let Some(at) = new.read_whole_at {
        entry.loaded_at = at;
    }
    if *entry.doc.conferences == new.conferences {
        return false;
    }
    let old = entry.doc.conferences.clone();
    let doc = Arc::new(UserDoc {
        revision: entry.doc.revision + 1,
        conferences: Arc::new(new.conferences),
        changed_at: new.changed_at,
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

    const ALICE: &str = "sip:alice@example.com";
    const ROOM: &str = "sip:1001@conf.example.com";

    fn room(subject: &str) -> Conference {
        let mut c = Conference {
            entity: ROOM.into(),
            ..Conference::default()
        };
        c.description.subject = Some(subject.into());
        c
    }

    /// A batch that read `memberships` for the changed `conferences` and `recomputed` for
    /// the users it was asked to read whole.
    fn batch<'a>(
        conferences: &'a HashSet<String>,
        changed: &'a [String],
        whole: Vec<String>,
        memberships: Vec<(String, Conference)>,
        recomputed: HashMap<String, Vec<Conference>>,
    ) -> Batch<'a> {
        Batch {
            conferences,
            changed,
            whole,
            memberships,
            recomputed,
            changed_at: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)),
        }
    }

    fn load(inner: &mut Inner, session: SessionKey, now: Instant) -> u64 {
        match inner.begin_attach(session, ALICE, 10, None, now).unwrap() {
            Attach::Load { generation } => generation,
            Attach::Cached(_) => unreachable!("not cached yet"),
        }
    }

    #[test]
    fn a_user_loaded_while_a_batch_ran_is_rechecked_by_the_next_batch() {
        let now = Instant::now();
        let mut inner = Inner::default();
        let (s1, wake) = inner.register_session();
        // The load's read begins before the change commits...
        let generation = load(&mut inner, s1, now);
        // ...and the change's batch is applied before the load finishes: alice is not cached
        // yet, so the batch cannot patch her.
        let conferences = HashSet::from([ROOM.to_owned()]);
        let changed = vec![ROOM.to_owned()];
        let whole = inner.begin_batch(&[], false);
        assert!(whole.is_empty());
        let applied = inner.finish_batch(
            batch(
                &conferences,
                &changed,
                whole,
                vec![(ALICE.into(), room("new"))],
                HashMap::new(),
            ),
            now,
        );
        assert_eq!(applied, 0);

        // The load ends with what it read: the old row.
        let (doc, recheck) = inner.finish_attach(s1, ALICE, generation, vec![room("old")], now);
        assert!(recheck, "the follower must be woken");
        assert_eq!(
            doc.conferences[0].description.subject.as_deref(),
            Some("old")
        );

        // The next batch, whatever it carries, reads alice whole and installs the new row.
        let whole = inner.begin_batch(&[], false);
        assert_eq!(whole, vec![ALICE.to_owned()]);
        let none = HashSet::new();
        let applied = inner.finish_batch(
            batch(
                &none,
                &[],
                whole,
                Vec::new(),
                HashMap::from([(ALICE.to_owned(), vec![room("new")])]),
            ),
            now,
        );
        assert_eq!(applied, 1);
        let doc = inner.current(ALICE).unwrap();
        assert_eq!(
            (
                doc.revision,
                doc.conferences[0].description.subject.as_deref()
            ),
            (1, Some("new"))
        );
        assert!(
            doc.changed_at.is_some(),
            "the revision carries its batch's time"
        );
        assert_eq!(wake.take(), HashSet::from([ALICE.to_owned()]));
        assert!(inner.begin_batch(&[], false).is_empty(), "rechecked once");
    }

    #[test]
    fn a_load_with_no_batch_in_between_is_not_rechecked() {
        let now = Instant::now();
        let mut inner = Inner::default();
        let (s1, _) = inner.register_session();
        let (s2, _) = inner.register_session();
        let generation = load(&mut inner, s1, now);
        let (doc, recheck) = inner.finish_attach(s1, ALICE, generation, vec![room("a")], now);
        assert!(!recheck);
        assert_eq!((doc.revision, doc.changed_at), (0, None));
        assert!(inner.begin_batch(&[], false).is_empty());

        // A second session's load of the cached user while a batch ran: rechecked too, and
        // its stale read is not installed over the cached list.
        let Attach::Load { generation } = inner
            .begin_attach(s2, ALICE, 10, Some(Duration::ZERO), now)
            .unwrap()
        else {
            unreachable!("max age zero: re-read")
        };
        let none = HashSet::new();
        let whole = inner.begin_batch(&[], false);
        inner.finish_batch(batch(&none, &[], whole, Vec::new(), HashMap::new()), now);
        let (doc, recheck) = inner.finish_attach(s2, ALICE, generation, vec![room("stale")], now);
        assert!(recheck);
        assert_eq!(doc.conferences[0].description.subject.as_deref(), Some("a"));
        assert_eq!(inner.begin_batch(&[], false), vec![ALICE.to_owned()]);
    }

    #[test]
    fn a_batch_whose_reads_fail_keeps_its_rechecks_for_the_next() {
        let now = Instant::now();
        let mut inner = Inner::default();
        let (s1, _) = inner.register_session();
        let generation = load(&mut inner, s1, now);
        let none = HashSet::new();
        let whole = inner.begin_batch(&[], false);
        inner.finish_batch(batch(&none, &[], whole, Vec::new(), HashMap::new()), now);
        inner.finish_attach(s1, ALICE, generation, vec![room("old")], now);

        let whole = inner.begin_batch(&[], false);
        assert_eq!(whole, vec![ALICE.to_owned()]);
        inner.abort_batch(whole);
        assert_eq!(inner.begin_batch(&[], false), vec![ALICE.to_owned()]);
    }

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
