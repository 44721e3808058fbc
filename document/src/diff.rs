//! Partial documents: computing them ([`diff`]), applying documents ([`apply`]),
//! and choosing between partial and full ([`prefer_full`]).

use std::collections::BTreeMap;

use crate::model::{Conference, ConferenceList, DeleteReason, DocumentState, Entry};
use crate::{DocumentError, entry_len};

/// Conferences by entity; on duplicates the last one wins.
fn by_entity(conferences: &[Conference]) -> BTreeMap<&str, &Conference> {
    conferences.iter().map(|c| (c.entity.as_str(), c)).collect()
}

/// The partial document that takes a client from `old` to `new` (both the complete
/// lists of conferences of the subscriber, any order): changed or added conferences
/// as [`Entry::Full`], removed ones as [`Entry::Deleted`] with reason
/// [`DeleteReason::Removed`] (a caller that knows better may change it), sorted by
/// entity (a notifier may reorder them: they are rendered in list order). Empty entries
/// when nothing changed; the document is complete.
pub fn diff(entity: &str, version: u64, old: &[Conference], new: &[Conference]) -> ConferenceList {
    let old = by_entity(old);
    let new = by_entity(new);
    let mut entries: BTreeMap<&str, Entry> = BTreeMap::new();
    for (key, conference) in &new {
        if old.get(key) != Some(conference) {
            entries.insert(key, Entry::Full((*conference).clone()));
        }
    }
    for key in old.keys().filter(|key| !new.contains_key(*key)) {
        entries.insert(
            key,
            Entry::Deleted {
                entity: (*key).to_owned(),
                reason: Some(DeleteReason::Removed),
            },
        );
    }
    ConferenceList {
        entity: entity.to_owned(),
        version,
        state: DocumentState::Partial,
        entries: entries.into_values().collect(),
        complete: true,
    }
}

/// Applies `doc` to the conference set a client holds: a full document replaces it;
/// a partial one replaces/adds its full entries and removes its deleted ones.
/// Returns the new set sorted by entity, whatever the order of the entries.
///
/// A partial document must carry `held_version + 1` when `held_version` is known,
/// else [`DocumentError::VersionGap`]; a full document is accepted at any version.
///
/// A state sent in several parts ([`ConferenceList::complete`] false: a full document,
/// then partials at consecutive versions, the last one complete) needs nothing more:
/// applied in order they give the whole list, and a lost part is a version gap. The
/// caller keeps `doc.complete` to know whether the set it holds is the whole state.
pub fn apply(
    held: &[Conference],
    held_version: Option<u64>,
    doc: &ConferenceList,
) -> Result<Vec<Conference>, DocumentError> {
    let mut set: BTreeMap<&str, &Conference> = match doc.state {
        DocumentState::Full => BTreeMap::new(),
        DocumentState::Partial => {
            if let Some(held_version) = held_version
                && held_version.checked_add(1) != Some(doc.version)
            {
                return Err(DocumentError::VersionGap {
                    expected: held_version.wrapping_add(1),
                    got: doc.version,
                });
            }
            by_entity(held)
        }
    };
    for entry in &doc.entries {
        match entry {
            Entry::Full(c) => {
                set.insert(&c.entity, c);
            }
            Entry::Deleted { entity, .. } => {
                set.remove(entity.as_str());
            }
        }
    }
    Ok(set.into_values().cloned().collect())
}

/// True when the partial document is not smaller than the full one (the notifier
/// then sends the full one); compares rendered byte lengths.
pub fn prefer_full(partial: &ConferenceList, full: &ConferenceList) -> bool {
    rendered_len(partial) >= rendered_len(full)
}

/// `doc.render().len()`, from the size API.
fn rendered_len(doc: &ConferenceList) -> usize {
    doc.envelope_len() + doc.entries.iter().map(entry_len).sum::<usize>()
}
