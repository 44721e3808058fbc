//! Property tests: render/parse round trip, and diff/apply convergence.

use std::collections::BTreeMap;

use conflist_document::{
    Conference, ConferenceDescription, ConferenceList, DocumentState, Entry, MediaEntry, Schedule,
    UriEntry, apply, diff,
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

fn conference() -> impl Strategy<Value = Conference> {
    (
        entity(),
        description(),
        proptest::option::of(text()),
        proptest::option::of(text()),
        proptest::option::of(text()),
    )
        .prop_map(|(entity, description, start, end, role)| Conference {
            entity,
            description,
            schedule: Schedule { start, end },
            role,
        })
}

/// Conferences with distinct entities, sorted by entity.
fn conference_set() -> impl Strategy<Value = Vec<Conference>> {
    proptest::collection::vec(conference(), 0..5).prop_map(|cs| {
        let by_entity: BTreeMap<String, Conference> =
            cs.into_iter().map(|c| (c.entity.clone(), c)).collect();
        by_entity.into_values().collect()
    })
}

/// Any document in canonical form: entries sorted by entity, deleted ones only in partials.
fn document() -> impl Strategy<Value = ConferenceList> {
    (
        text(),
        any::<u64>(),
        any::<bool>(),
        conference_set(),
        proptest::collection::vec(any::<bool>(), 5),
    )
        .prop_map(|(entity, version, partial, conferences, deleted)| {
            let state = if partial {
                DocumentState::Partial
            } else {
                DocumentState::Full
            };
            let entries = conferences
                .into_iter()
                .zip(deleted)
                .map(|(c, deleted)| {
                    if partial && deleted {
                        Entry::Deleted { entity: c.entity }
                    } else {
                        Entry::Full(c)
                    }
                })
                .collect();
            ConferenceList {
                entity,
                version,
                state,
                entries,
            }
        })
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
