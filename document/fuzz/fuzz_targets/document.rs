//! The document model under arbitrary input, two ways:
//!
//! * bytes → `ConferenceList::parse`: never panics; whatever parses renders to a document
//!   that parses back to the same value (render is a fixed point after one parse), of
//!   exactly `envelope_len() + Σ entry_len` bytes.
//! * two conference sets built from the bytes → `diff` and `apply`: applying the partial
//!   document to the old set gives the new one, at the next version, and a full document of
//!   the new set gives it too; both survive render → parse unchanged.
#![no_main]

use document::{
    Conference, ConferenceDescription, ConferenceList, DeleteReason, DocumentState, Entry,
    MediaEntry, Organizer, Response, Schedule, Status, UriEntry, apply, diff, entry_len,
    prefer_full,
};
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // First byte picks the mode, so the corpus holds both XML documents and model seeds.
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        parsed_bytes(rest);
    } else {
        let _ = model(&mut Unstructured::new(rest));
    }
});

fn parsed_bytes(xml: &[u8]) {
    let Ok(doc) = ConferenceList::parse(xml) else {
        return;
    };
    let again = ConferenceList::parse(&doc.render())
        .unwrap_or_else(|e| panic!("rendered document does not parse: {e}\n{doc:?}"));
    assert_eq!(
        again.render(),
        doc.render(),
        "render is not stable after a parse"
    );
    assert_size(&doc);
    // Applying what a client received never panics, whatever it held.
    let held: Vec<Conference> = match &doc.state {
        DocumentState::Full => Vec::new(),
        DocumentState::Partial => doc
            .entries
            .iter()
            .filter_map(|e| match e {
                Entry::Full(c) => Some(c.clone()),
                Entry::Deleted { .. } => None,
            })
            .collect(),
    };
    let _ = apply(&held, doc.version.checked_sub(1), &doc);
    let _ = apply(&held, Some(doc.version), &doc);
}

/// The size API is exact.
fn assert_size(doc: &ConferenceList) {
    let entries: usize = doc.entries.iter().map(entry_len).sum();
    assert_eq!(
        doc.render().len(),
        doc.envelope_len() + entries,
        "rendered length != envelope_len + Σ entry_len"
    );
}

fn model(u: &mut Unstructured<'_>) -> Result<()> {
    let entity = text(u)?.unwrap_or_else(|| "sip:alice@example.com".into());
    let old = conferences(u)?;
    let new = conferences(u)?;
    let version: u64 = u.arbitrary()?;

    let mut partial = diff(&entity, version.wrapping_add(1), &old, &new);
    // Any reason, any order, either completeness: none of it changes what applies.
    for e in &mut partial.entries {
        if let Entry::Deleted { reason, .. } = e {
            *reason = pick(u, &DeleteReason::ALL)?;
        }
    }
    if u.arbitrary()? {
        partial.entries.reverse();
    }
    partial.complete = u.arbitrary()?;
    let applied = apply(&old, Some(version), &partial);
    if version == u64::MAX {
        assert!(applied.is_err(), "a partial past u64::MAX was accepted");
        return Ok(());
    }
    let applied = applied.expect("a diff applies to the set it was computed from");
    assert_eq!(applied, sorted(&new), "old + diff(old, new) != new");

    let mut full = ConferenceList::full(entity.clone(), version, new.clone());
    full.complete = u.arbitrary()?;
    assert_eq!(apply(&old, Some(version), &full).unwrap(), sorted(&new));
    let _ = prefer_full(&partial, &full);

    // What goes on the wire comes back as the same document, up to the documented
    // normalisations (control characters become U+FFFD, empty strings become absent,
    // keywords split at whitespace); canonicalised sets are compared after a first trip.
    for doc in [&partial, &full] {
        let once = ConferenceList::parse(&doc.render())
            .unwrap_or_else(|e| panic!("rendered document does not parse: {e}\n{doc:?}"));
        assert_eq!(once.version, doc.version);
        assert_eq!(once.state, doc.state);
        assert_eq!(once.complete, doc.complete);
        assert_size(doc);
        assert_eq!(once.entries.len(), doc.entries.len(), "entries lost");
        let twice = ConferenceList::parse(&once.render()).unwrap();
        assert_eq!(twice, once, "render/parse is not a fixed point");
    }
    Ok(())
}

fn sorted(set: &[Conference]) -> Vec<Conference> {
    let by: std::collections::BTreeMap<&str, &Conference> =
        set.iter().map(|c| (c.entity.as_str(), c)).collect();
    by.into_values().cloned().collect()
}

fn conferences(u: &mut Unstructured<'_>) -> Result<Vec<Conference>> {
    let n = u.int_in_range(0..=6)?;
    (0..n).map(|_| conference(u)).collect()
}

fn conference(u: &mut Unstructured<'_>) -> Result<Conference> {
    // A small entity pool, so old and new share conferences and diffs have all three kinds.
    let entity = match u.int_in_range(0..=4)? {
        4 => text(u)?.unwrap_or_default(),
        n => format!("sip:conf{n}@example.com"),
    };
    Ok(Conference {
        entity,
        description: ConferenceDescription {
            display_text: text(u)?,
            subject: text(u)?,
            free_text: text(u)?,
            keywords: (0..u.int_in_range(0..=3)?)
                .map(|_| text(u).map(Option::unwrap_or_default))
                .collect::<Result<_>>()?,
            conf_uris: uris(u)?,
            service_uris: uris(u)?,
            maximum_user_count: u.arbitrary()?,
            available_media: (0..u.int_in_range(0..=2)?)
                .map(|_| {
                    Ok(MediaEntry {
                        label: text(u)?.unwrap_or_default(),
                        media_type: text(u)?.unwrap_or_else(|| "audio".into()),
                        display_text: text(u)?,
                    })
                })
                .collect::<Result<_>>()?,
        },
        schedule: Schedule {
            start: text(u)?,
            end: text(u)?,
            time_zone: text(u)?,
            recurrence: text(u)?,
        },
        role: text(u)?,
        response: pick(u, &Response::ALL)?,
        status: pick(u, &Status::ALL)?,
        organizer: match text(u)? {
            Some(uri) => Some(Organizer {
                uri,
                display_text: text(u)?,
            }),
            None => None,
        },
        passcode_required: u.arbitrary()?,
        revision: text(u)?,
    })
}

/// One of `all`, or none.
fn pick<T: Copy>(u: &mut Unstructured<'_>, all: &[T]) -> Result<Option<T>> {
    let i = u.int_in_range(0..=all.len())?;
    Ok(all.get(i).copied())
}

fn uris(u: &mut Unstructured<'_>) -> Result<Vec<UriEntry>> {
    (0..u.int_in_range(0..=2)?)
        .map(|_| {
            Ok(UriEntry {
                uri: text(u)?.unwrap_or_else(|| "sip:x@example.com".into()),
                display_text: text(u)?,
                purpose: text(u)?,
            })
        })
        .collect()
}

/// Short strings biased towards what XML escaping must get right.
fn text(u: &mut Unstructured<'_>) -> Result<Option<String>> {
    Ok(match u.int_in_range(0..=3)? {
        0 => None,
        1 => Some(
            [
                "",
                " ",
                "a b",
                "<&>\"'",
                "]]>",
                "x\ty\nz\r",
                "\u{0}\u{1f}",
                "Zoë ☃",
                "&amp;",
            ][u.int_in_range(0..=8)?]
            .to_owned(),
        ),
        _ => Some(u.arbitrary::<String>()?.chars().take(24).collect()),
    })
}
