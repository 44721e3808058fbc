//! The document model under arbitrary input, two ways:
//!
//! * bytes → `ConferenceList::parse`: never panics; whatever parses renders to a document
//!   that parses back to the same value (render is a fixed point after one parse).
//! * two conference sets built from the bytes → `diff` and `apply`: applying the partial
//!   document to the old set gives the new one, at the next version, and a full document of
//!   the new set gives it too; both survive render → parse unchanged.
#![no_main]

use document::{
    Conference, ConferenceDescription, ConferenceList, DocumentState, MediaEntry, Schedule,
    UriEntry, apply, diff, prefer_full,
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
    // Applying what a client received never panics, whatever it held.
    let held: Vec<Conference> = match &doc.state {
        DocumentState::Full => Vec::new(),
        DocumentState::Partial => doc
            .entries
            .iter()
            .filter_map(|e| match e {
                document::Entry::Full(c) => Some(c.clone()),
                document::Entry::Deleted { .. } => None,
            })
            .collect(),
    };
    let _ = apply(&held, doc.version.checked_sub(1), &doc);
    let _ = apply(&held, Some(doc.version), &doc);
}

fn model(u: &mut Unstructured<'_>) -> Result<()> {
    let entity = text(u)?.unwrap_or_else(|| "sip:alice@example.com".into());
    let old = conferences(u)?;
    let new = conferences(u)?;
    let version: u64 = u.arbitrary()?;

    let partial = diff(&entity, version.wrapping_add(1), &old, &new);
    let applied = apply(&old, Some(version), &partial);
    if version == u64::MAX {
        assert!(applied.is_err(), "a partial past u64::MAX was accepted");
        return Ok(());
    }
    let applied = applied.expect("a diff applies to the set it was computed from");
    assert_eq!(applied, sorted(&new), "old + diff(old, new) != new");

    let full = ConferenceList::full(entity.clone(), version, new.clone());
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
        },
        role: text(u)?,
    })
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
