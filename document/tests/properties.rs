//! Property tests: render/parse round trip, the exact size API, diff/apply convergence,
//! and states sent in several parts.

use std::collections::BTreeMap;

use conflist_document::{
    Conference, ConferenceDescription, ConferenceList, DeleteReason, DocumentState, Entry,
    MediaEntry, Organizer, Response, Schedule, Status, UriEntry, apply, diff, entry_len,
};
use proptest::prelude::*;
use proptest::sample::Index;

/// Non-empty text mixing markup characters, whitespace (`\r` too) and non-ASCII.
fn text() -> impl Strategy<Value = String> {
    "[ -~\t\r\néß😀\u{FFFD}]{1,12}"
}

/// One keyword: no whitespace.
fn keyword() -> impl Strategy<Value = String> {
    "[!-~é😀]{1,8}"
}

/// Conference URIs from a small pool, so that steps collide.
fn entity() -> impl Strategy<Value = String> {
    "sip:[ab&<\"'][ab]?"
}

fn uri_entry() -> impl Strategy<Value = UriEntry> {
    (
        text(),
        proptest::option::of(text()),
        proptest::option::of(text()),
    )
        .prop_map(|(uri, display_text, purpose)| UriEntry {
            uri,
            display_text,
            purpose,
        })
}

fn media_entry() -> impl Strategy<Value = MediaEntry> {
    // Text elements that are required may be empty: they are rendered anyway.
    ("[ -~😀]{0,4}", "[ -~\r]{0,6}", proptest::option::of(text())).prop_map(
        |(label, media_type, display_text)| MediaEntry {
            label,
            media_type,
            display_text,
        },
    )
}

fn description() -> impl Strategy<Value = ConferenceDescription> {
    (
        proptest::option::of(text()),
        proptest::option::of(text()),
        proptest::option::of(text()),
        proptest::collection::vec(keyword(), 0..4),
        proptest::collection::vec(uri_entry(), 0..3),
        proptest::collection::vec(uri_entry(), 0..3),
        proptest::option::of(any::<u32>()),
        proptest::collection::vec(media_entry(), 0..3),
    )
        .prop_map(
            |(
                display_text,
                subject,
                free_text,
                keywords,
                conf_uris,
                service_uris,
                maximum_user_count,
                available_media,
            )| {
                ConferenceDescription {
                    display_text,
                    subject,
                    free_text,
                    keywords,
                    conf_uris,
                    service_uris,
                    maximum_user_count,
                    available_media,
                }
            },
        )
}

fn schedule() -> impl Strategy<Value = Schedule> {
    (
        proptest::option::of(text()),
        proptest::option::of(text()),
        proptest::option::of(text()),
        proptest::option::of(text()),
    )
        .prop_map(|(start, end, time_zone, recurrence)| Schedule {
            start,
            end,
            time_zone,
            recurrence,
        })
}

fn organizer() -> impl Strategy<Value = Organizer> {
    // The URI is required: an organizer with an empty one is not rendered.
    (text(), proptest::option::of(text()))
        .prop_map(|(uri, display_text)| Organizer { uri, display_text })
}

fn conference() -> impl Strategy<Value = Conference> {
    (
        (
            entity(),
            description(),
            schedule(),
            proptest::option::of(text()),
        ),
        (
            proptest::option::of(proptest::sample::select(Response::ALL.to_vec())),
            proptest::option::of(proptest::sample::select(Status::ALL.to_vec())),
            proptest::option::of(organizer()),
            proptest::option::of(any::<bool>()),
            proptest::option::of(text()),
        ),
    )
        .prop_map(
            |(
                (entity, description, schedule, role),
                (response, status, organizer, passcode_required, revision),
            )| Conference {
                entity,
                description,
                schedule,
                role,
                response,
                status,
                organizer,
                passcode_required,
                revision,
            },
        )
}

/// Conferences with distinct entities, sorted by entity.
fn conference_set() -> impl Strategy<Value = Vec<Conference>> {
    proptest::collection::vec(conference(), 0..5).prop_map(|cs| {
        let by_entity: BTreeMap<String, Conference> =
            cs.into_iter().map(|c| (c.entity.clone(), c)).collect();
        by_entity.into_values().collect()
    })
}

/// Any document in canonical form: distinct entities in any order, deleted ones only in
/// partials.
fn document() -> impl Strategy<Value = ConferenceList> {
    (
        text(),
        any::<u64>(),
        any::<bool>(),
        conference_set().prop_shuffle(),
        proptest::collection::vec(
            proptest::option::of(proptest::option::of(proptest::sample::select(
                DeleteReason::ALL.to_vec(),
            ))),
            5,
        ),
        any::<bool>(),
    )
        .prop_map(
            |(entity, version, partial, conferences, deleted, complete)| {
                let state = if partial {
                    DocumentState::Partial
                } else {
                    DocumentState::Full
                };
                let entries = conferences
                    .into_iter()
                    .zip(deleted)
                    .map(|(c, deleted)| match deleted {
                        Some(reason) if partial => Entry::Deleted {
                            entity: c.entity,
                            reason,
                        },
                        _ => Entry::Full(c),
                    })
                    .collect();
                ConferenceList {
                    entity,
                    version,
                    state,
                    entries,
                    complete,
                }
            },
        )
}

/// `set` sent as a full document with `complete="false"` and partials at the following
/// versions, cut before the entries at `cuts` (indices into `set`, any, deduplicated).
fn in_parts(user: &str, v0: u64, set: &[Conference], cuts: &[Index]) -> Vec<ConferenceList> {
    let mut at: Vec<usize> = cuts.iter().map(|i| i.index(set.len() + 1)).collect();
    at.push(0);
    at.push(set.len());
    at.sort_unstable();
    at.dedup();
    let parts: Vec<&[Conference]> = if at.len() < 2 {
        vec![set]
    } else {
        at.windows(2).map(|w| &set[w[0]..w[1]]).collect()
    };
    let last = parts.len() - 1;
    parts
        .into_iter()
        .enumerate()
        .map(|(i, part)| ConferenceList {
            entity: user.to_owned(),
            version: v0 + i as u64,
            state: if i == 0 {
                DocumentState::Full
            } else {
                DocumentState::Partial
            },
            entries: part.iter().cloned().map(Entry::Full).collect(),
            complete: i == last,
        })
        .collect()
}

#[derive(Debug, Clone)]
enum Step {
    /// Adds the conference, or replaces the one of the same entity.
    Upsert(Box<Conference>),
    /// Removes one of the held conferences, if any.
    Remove(Index),
    /// Changes the subject of one of the held conferences, if any.
    Retitle(Index, Option<String>),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        conference().prop_map(|c| Step::Upsert(Box::new(c))),
        any::<Index>().prop_map(Step::Remove),
        (any::<Index>(), proptest::option::of(text())).prop_map(|(i, s)| Step::Retitle(i, s)),
    ]
}

fn take(set: &[Conference], step: Step) -> Vec<Conference> {
    let mut next: BTreeMap<String, Conference> =
        set.iter().map(|c| (c.entity.clone(), c.clone())).collect();
    let key = |i: &Index| (!set.is_empty()).then(|| set[i.index(set.len())].entity.clone());
    match step {
        Step::Upsert(c) => {
            next.insert(c.entity.clone(), *c);
        }
        Step::Remove(i) => {
            if let Some(k) = key(&i) {
                next.remove(&k);
            }
        }
        Step::Retitle(i, subject) => {
            if let Some(c) = key(&i).and_then(|k| next.get_mut(&k)) {
                c.description.subject = subject;
            }
        }
    }
    next.into_values().collect()
}

fn through_bytes(doc: &ConferenceList) -> ConferenceList {
    ConferenceList::parse(&doc.render()).expect("a rendered document parses")
}

proptest! {
    #[test]
    fn parse_of_render_is_identity(doc in document()) {
        prop_assert_eq!(through_bytes(&doc), doc);
    }

    #[test]
    fn rendered_length_is_envelope_plus_entries(doc in document()) {
        let sizes: usize = doc.entries.iter().map(entry_len).sum();
        prop_assert_eq!(doc.render().len(), doc.envelope_len() + sizes);
        let mut empty = doc.clone();
        empty.entries.clear();
        prop_assert_eq!(empty.render().len(), doc.envelope_len());
    }

    #[test]
    fn a_state_in_parts_applied_in_order_is_the_whole_list(
        held in conference_set(),
        set in conference_set(),
        v0 in 0u64..1_000_000,
        cuts in proptest::collection::vec(any::<Index>(), 0..4),
    ) {
        let user = "sip:alice@example.com";
        let parts = in_parts(user, v0, &set, &cuts);
        prop_assert!(parts.len() == 1 || !parts[0].complete);
        let mut list = held.clone();
        let mut list_bytes = held;
        let mut version = Some(v0.wrapping_sub(7));
        for part in &parts {
            list = apply(&list, version, part).unwrap();
            let part = through_bytes(part);
            list_bytes = apply(&list_bytes, version, &part).unwrap();
            version = Some(part.version);
        }
        prop_assert!(parts.last().is_some_and(|p| p.complete));
        prop_assert_eq!(&list, &set);
        prop_assert_eq!(&list_bytes, &set);
    }

    #[test]
    fn partials_take_the_client_to_each_new_set(
        s0 in conference_set(),
        v0 in 0u64..1_000_000,
        steps in proptest::collection::vec(step(), 0..12),
    ) {
        let user = "sip:alice@example.com";
        let first = ConferenceList::full(user, v0, s0.clone());
        let mut held = apply(&[], None, &first).unwrap();
        let mut held_bytes = apply(&[], None, &through_bytes(&first)).unwrap();
        prop_assert_eq!(&held, &s0);
        prop_assert_eq!(&held_bytes, &s0);
        let mut current = s0;
        for (version, step) in (v0..).zip(steps) {
            let next = take(&current, step);
            // The server keeps its sets in any order.
            let reversed: Vec<Conference> = next.iter().rev().cloned().collect();
            let partial = diff(user, version + 1, &current, &reversed);
            held = apply(&held, Some(version), &partial).unwrap();
            held_bytes = apply(&held_bytes, Some(version), &through_bytes(&partial)).unwrap();
            prop_assert_eq!(&held, &next);
            prop_assert_eq!(&held_bytes, &next);
            current = next;
        }
    }
}
