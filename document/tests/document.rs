//! Rendering, parsing, diffing and applying, against hand-written XML.

mod common;

use common::{bare, maximal, weekly_sync};
use conflist_document::{
    Conference, ConferenceList, DeleteReason, DocumentError, DocumentState, Entry, Organizer,
    Response, Status, apply, diff, entry_len, prefer_full,
};

const DECL: &str = r#"<?xml version="1.0" encoding="UTF-8"?>"#;

const WEEKLY_SYNC_XML: &str = concat!(
    r#"<conference entity="sip:1001@conf.example.com" state="full">"#,
    r#"<conference-description>"#,
    r#"<display-text>Weekly sync</display-text>"#,
    r#"<subject>Roadmap</subject>"#,
    r#"<free-text>Bring your notes</free-text>"#,
    r#"<keywords>a b c</keywords>"#,
    r#"<conf-uris><entry><uri>sip:1001@conf.example.com</uri><display-text>Dial-in</display-text><purpose>participation</purpose></entry></conf-uris>"#,
    r#"<service-uris><entry><uri>https://meet.example.com/1001</uri><purpose>web-page</purpose></entry></service-uris>"#,
    r#"<maximum-user-count>50</maximum-user-count>"#,
    r#"<available-media><entry label="1"><type>audio</type></entry><entry label="2"><type>video</type></entry></available-media>"#,
    r#"</conference-description>"#,
    r#"<schedule start="2026-11-24T09:00:00Z" end="2026-11-24T10:00:00Z"/>"#,
    r#"<role>organizer</role>"#,
    r#"</conference>"#,
);

fn render(doc: &ConferenceList) -> String {
    String::from_utf8(doc.render()).unwrap()
}

fn full_doc() -> ConferenceList {
    ConferenceList::full(
        "sip:alice@example.com",
        7,
        vec![bare("sip:1002@conf.example.com"), weekly_sync()],
    )
}

fn partial_doc() -> ConferenceList {
    let old = [weekly_sync(), bare("sip:1002@conf.example.com")];
    let mut changed = weekly_sync();
    changed.description.subject = Some("Roadmap, take 2".into());
    let new = [bare("sip:1003@conf.example.com"), changed];
    diff("sip:alice@example.com", 8, &old, &new)
}

fn with_subject(subject: &str) -> ConferenceList {
    let mut c = bare("sip:1@x");
    c.description.subject = Some(subject.into());
    ConferenceList::full("sip:a@x", 1, vec![c])
}

#[test]
fn full_document_renders_exactly() {
    let expected = [
        DECL,
        r#"<conference-list xmlns="urn:conflist:params:xml:ns:conference-list" entity="sip:alice@example.com" version="7" state="full">"#,
        WEEKLY_SYNC_XML,
        r#"<conference entity="sip:1002@conf.example.com" state="full"/>"#,
        r#"</conference-list>"#,
    ]
    .concat();
    assert_eq!(render(&full_doc()), expected);
}

#[test]
fn partial_document_renders_exactly() {
    let doc = partial_doc();
    assert_eq!(doc.state, DocumentState::Partial);
    let expected = [
        DECL,
        r#"<conference-list xmlns="urn:conflist:params:xml:ns:conference-list" entity="sip:alice@example.com" version="8" state="partial">"#,
        &WEEKLY_SYNC_XML.replace(">Roadmap<", ">Roadmap, take 2<"),
        r#"<conference entity="sip:1002@conf.example.com" state="deleted" reason="removed"/>"#,
        r#"<conference entity="sip:1003@conf.example.com" state="full"/>"#,
        r#"</conference-list>"#,
    ]
    .concat();
    assert_eq!(render(&doc), expected);
}

/// Every field of the format: the first part of a state sent in two, and the second.
const EVERY_FIELD_XML: &str = concat!(
    r#"<?xml version="1.0" encoding="UTF-8"?>"#,
    r#"<conference-list xmlns="urn:conflist:params:xml:ns:conference-list" entity="sip:alice@example.com" version="7" state="full" complete="false">"#,
    r#"<conference entity="sip:max@conf.example.com" state="full" revision="2026-11-20T08:15:00.123456Z">"#,
    r#"<conference-description>"#,
    r#"<display-text>Weekly sync</display-text>"#,
    r#"<subject>Roadmap</subject>"#,
    r#"<free-text>Bring your notes</free-text>"#,
    r#"<keywords>a b c</keywords>"#,
    r#"<conf-uris><entry><uri>sip:1001@conf.example.com</uri><display-text>Dial-in</display-text><purpose>participation</purpose></entry></conf-uris>"#,
    r#"<service-uris><entry><uri>https://meet.example.com/1001</uri><display-text>Web</display-text><purpose>web-page</purpose></entry></service-uris>"#,
    r#"<maximum-user-count>50</maximum-user-count>"#,
    r#"<available-media><entry label="1"><display-text>Main audio</display-text><type>audio</type></entry><entry label="2"><type>video</type></entry></available-media>"#,
    r#"</conference-description>"#,
    r#"<schedule start="2026-11-24T09:00:00Z" end="2026-11-24T10:00:00Z" time-zone="Europe/Berlin" recurrence="FREQ=WEEKLY;BYDAY=TU"/>"#,
    r#"<role>organizer</role>"#,
    r#"<response>accepted</response>"#,
    r#"<status>scheduled</status>"#,
    r#"<organizer><uri>sip:carol@example.com</uri><display-text>Carol</display-text></organizer>"#,
    r#"<passcode-required>true</passcode-required>"#,
    r#"</conference>"#,
    r#"</conference-list>"#,
);

const SECOND_PART_XML: &str = concat!(
    r#"<?xml version="1.0" encoding="UTF-8"?>"#,
    r#"<conference-list xmlns="urn:conflist:params:xml:ns:conference-list" entity="sip:alice@example.com" version="8" state="partial">"#,
    r#"<conference entity="sip:1002@conf.example.com" state="full"/>"#,
    r#"</conference-list>"#,
);

fn every_field_doc() -> ConferenceList {
    let mut doc = ConferenceList::full("sip:alice@example.com", 7, vec![maximal()]);
    doc.complete = false;
    doc
}

#[test]
fn every_field_renders_and_parses_exactly() {
    let doc = every_field_doc();
    assert_eq!(render(&doc), EVERY_FIELD_XML);
    assert_eq!(
        ConferenceList::parse(EVERY_FIELD_XML.as_bytes()).unwrap(),
        doc
    );
    let second = ConferenceList::parse(SECOND_PART_XML.as_bytes()).unwrap();
    assert!(second.complete);
    assert_eq!(render(&second), SECOND_PART_XML);
}

#[test]
fn deletion_reasons_render_and_parse() {
    let ns = r#"xmlns="urn:conflist:params:xml:ns:conference-list""#;
    let mut doc = diff("sip:a", 2, &[], &[]);
    for (i, reason) in DeleteReason::ALL
        .into_iter()
        .map(Some)
        .chain([None])
        .enumerate()
    {
        doc.entries.push(Entry::Deleted {
            entity: format!("sip:{i}"),
            reason,
        });
    }
    let xml = render(&doc);
    assert_eq!(
        xml,
        [
            DECL,
            &format!(r#"<conference-list {ns} entity="sip:a" version="2" state="partial">"#),
            r#"<conference entity="sip:0" state="deleted" reason="removed"/>"#,
            r#"<conference entity="sip:1" state="deleted" reason="cancelled"/>"#,
            r#"<conference entity="sip:2" state="deleted" reason="out-of-window"/>"#,
            r#"<conference entity="sip:3" state="deleted"/>"#,
            r#"</conference-list>"#,
        ]
        .concat()
    );
    assert_eq!(ConferenceList::parse(xml.as_bytes()).unwrap(), doc);
}

/// Tokens a newer server may add parse as absent; known ones are read leniently.
#[test]
fn unknown_tokens_are_absent_and_known_ones_lenient() {
    let ns = r#"xmlns="urn:conflist:params:xml:ns:conference-list""#;
    let one = |attrs: &str, inner: &str| {
        let xml = format!(
            r#"<conference-list {ns} entity="e" version="1" state="partial"><conference entity="c" {attrs}>{inner}</conference></conference-list>"#
        );
        ConferenceList::parse(xml.as_bytes())
            .unwrap_or_else(|e| panic!("{xml}: {e}"))
            .entries
            .remove(0)
    };
    let full = |inner: &str| match one(r#"state="full""#, inner) {
        Entry::Full(c) => c,
        other => panic!("{other:?}"),
    };
    let c = full("<status>postponed</status><response>delegated</response>");
    assert_eq!((c.status, c.response), (None, None));
    let c = full(
        "<status> Active
</status><response>NEEDS_ACTION</response>",
    );
    assert_eq!(c.status, Some(Status::Active));
    assert_eq!(c.response, Some(Response::NeedsAction));
    for (text, value) in [
        ("true", true),
        (" 1 ", true),
        ("false", false),
        ("0", false),
    ] {
        let c = full(&format!("<passcode-required>{text}</passcode-required>"));
        assert_eq!(c.passcode_required, Some(value), "{text:?}");
    }
    let c = full("<organizer><display-text>Nobody</display-text><uri></uri></organizer>");
    assert_eq!(c.organizer, None, "an empty organizer URI is no organizer");
    let c = full(r#"<organizer><uri>sip:o</uri><x:y xmlns:x="urn:x"/></organizer>"#);
    assert_eq!(
        c.organizer,
        Some(Organizer {
            uri: "sip:o".into(),
            display_text: None
        })
    );
    let c = full(r#"<schedule start="" time-zone="UTC"/>"#);
    assert_eq!(c.schedule.start, None);
    assert_eq!(c.schedule.time_zone.as_deref(), Some("UTC"));
    let reason = |r: &str| match one(&format!(r#"state="deleted" reason="{r}""#), "") {
        Entry::Deleted { reason, .. } => reason,
        other => panic!("{other:?}"),
    };
    assert_eq!(reason("superseded"), None);
    assert_eq!(reason(" cancelled "), Some(DeleteReason::Cancelled));
    assert_eq!(reason("out-of-window"), Some(DeleteReason::OutOfWindow));
    for (value, complete) in [
        ("false", false),
        ("0", false),
        ("1", true),
        (" true ", true),
    ] {
        let xml = format!(
            r#"<conference-list {ns} entity="e" version="1" state="full" complete="{value}"/>"#
        );
        assert_eq!(
            ConferenceList::parse(xml.as_bytes()).unwrap().complete,
            complete,
            "{value:?}"
        );
    }
}

#[test]
fn entries_render_in_list_order() {
    let mut doc = ConferenceList::full("sip:a", 1, vec![]);
    doc.entries = ["sip:3", "sip:1", "sip:2"]
        .map(|e| Entry::Full(bare(e)))
        .to_vec();
    let parsed = ConferenceList::parse(&doc.render()).unwrap();
    assert_eq!(parsed, doc);
    let entities: Vec<&str> = parsed.entries.iter().map(Entry::entity).collect();
    assert_eq!(entities, ["sip:3", "sip:1", "sip:2"]);
}

#[test]
fn sizes_add_up_to_the_rendered_length() {
    let mut doc = every_field_doc();
    doc.entries.push(Entry::Full(weekly_sync()));
    let entries: usize = doc.entries.iter().map(entry_len).sum();
    assert_eq!(doc.render().len(), doc.envelope_len() + entries);
    assert_eq!(
        doc.envelope_len(),
        EVERY_FIELD_XML.len() - entry_len(&Entry::Full(maximal()))
    );
    let mut complete = doc.clone();
    complete.complete = true;
    assert_eq!(
        doc.envelope_len() - complete.envelope_len(),
        r#" complete="false""#.len()
    );
}

/// A state too large for one NOTIFY: a full document with `complete="false"`, then partials
/// at the following versions; applied in order they give the whole list.
#[test]
fn a_state_in_parts_applied_in_order_is_the_whole_list() {
    let user = "sip:alice@example.com";
    let all: Vec<Conference> = (0..7)
        .map(|i| bare(&format!("sip:{}@conf.example.com", 1000 + i)))
        .collect();
    let whole = ConferenceList::full(user, 20, all.clone());
    // Split by size, as a notifier does: at most ~3 entries' worth of bytes per part, each
    // part sized with its own envelope (complete="false" until the last).
    let budget = whole.envelope_len() + 3 * entry_len(&whole.entries[0]);
    let mut parts: Vec<ConferenceList> = Vec::new();
    for entry in &whole.entries {
        let fits = parts.last().is_some_and(|p| {
            p.envelope_len() + p.entries.iter().map(entry_len).sum::<usize>() + entry_len(entry)
                <= budget
        });
        if !fits {
            parts.push(ConferenceList {
                entity: user.into(),
                version: 20 + parts.len() as u64,
                state: if parts.is_empty() {
                    DocumentState::Full
                } else {
                    DocumentState::Partial
                },
                entries: Vec::new(),
                complete: false,
            });
        }
        if let Some(p) = parts.last_mut() {
            p.entries.push(entry.clone());
        }
    }
    if let Some(last) = parts.last_mut() {
        last.complete = true;
    }
    assert_eq!(
        parts.len(),
        4,
        "2 + 2 + 2 + 1 entries: complete=\"false\" costs bytes"
    );
    for (i, part) in parts.iter().enumerate() {
        assert!(part.render().len() <= budget, "part {i} over budget");
    }
    let mut held = vec![bare("sip:stale")];
    let mut version = Some(3);
    for part in &parts {
        let part = ConferenceList::parse(&part.render()).unwrap();
        held = apply(&held, version, &part).unwrap();
        version = Some(part.version);
        assert_eq!(held.len() == all.len(), part.complete);
    }
    assert_eq!(held, all);

    // A lost part is a version gap.
    let held = apply(&[], None, &parts[0]).unwrap();
    assert_eq!(
        apply(&held, Some(20), &parts[2]),
        Err(DocumentError::VersionGap {
            expected: 21,
            got: 22
        })
    );
}

#[test]
fn snapshots() {
    insta::assert_snapshot!("full_document", render(&full_doc()));
    insta::assert_snapshot!("partial_document", render(&partial_doc()));
    insta::assert_snapshot!("every_field_document", render(&every_field_doc()));
}

#[test]
fn parses_pretty_printed_prefixed_and_commented_input() {
    let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<!-- a comment -->
<cl:conference-list xmlns:cl="urn:conflist:params:xml:ns:conference-list" xmlns:x="urn:other"
    entity="sip:alice@example.com" version="7" state="full">
  <cl:conference entity="sip:1001@conf.example.com" state="full">
    <cl:conference-description>
      <cl:display-text>Weekly sync</cl:display-text>
      <cl:subject>Road<![CDATA[map]]></cl:subject>
      <cl:free-text>Bring your notes</cl:free-text>
      <cl:keywords> a  b
        c </cl:keywords>
      <cl:conf-uris>
        <cl:entry><cl:uri>sip:1001@conf.example.com</cl:uri><cl:display-text>Dial-in</cl:display-text><cl:purpose>participation</cl:purpose><cl:modified/></cl:entry>
      </cl:conf-uris>
      <cl:service-uris><cl:entry><cl:uri>https://meet.example.com/1001</cl:uri><cl:purpose>web-page</cl:purpose></cl:entry></cl:service-uris>
      <x:future>ignored</x:future>
      <cl:future-element><cl:subject>ignored</cl:subject></cl:future-element>
      <cl:maximum-user-count> 50 </cl:maximum-user-count>
      <cl:available-media>
        <cl:entry label="1"><cl:type>audio</cl:type></cl:entry>
        <cl:entry label="2"><cl:type>video</cl:type></cl:entry>
      </cl:available-media>
    </cl:conference-description>
    <cl:schedule start="2026-11-24T09:00:00Z" end="2026-11-24T10:00:00Z"></cl:schedule>
    <cl:role>organizer</cl:role>
  </cl:conference>
  <cl:conference entity="sip:1002@conf.example.com" state="full"/>
</cl:conference-list>
"#;
    assert_eq!(ConferenceList::parse(xml.as_bytes()).unwrap(), full_doc());
}

#[test]
fn text_needing_escapes_round_trips() {
    for subject in [
        "</subject><x>",
        r#"a & b "q" 'a' <c>"#,
        "émoji 😀",
        "]]> &amp; &#38; <!-- -->",
        "line\r\nbreak\rand\ttab\n",
        "  padded  ",
    ] {
        let doc = with_subject(subject);
        assert_eq!(
            ConferenceList::parse(&doc.render()).unwrap(),
            doc,
            "{subject:?}"
        );
    }
    let attr = "sip:\"q\" & 'a' <c>\t\r\n 😀";
    let mut c = bare(attr);
    c.description
        .available_media
        .push(conflist_document::MediaEntry {
            label: attr.into(),
            media_type: "audio".into(),
            display_text: None,
        });
    let doc = ConferenceList::full(attr, 1, vec![c]);
    assert_eq!(ConferenceList::parse(&doc.render()).unwrap(), doc);
}

/// Characters XML 1.0 cannot carry are replaced with U+FFFD at render time.
#[test]
fn control_characters_become_replacement_characters() {
    let doc = with_subject("a\u{0}b\u{1b}c\u{FFFF}");
    let xml = render(&doc);
    assert!(
        xml.contains("<subject>a\u{FFFD}b\u{FFFD}c\u{FFFD}</subject>"),
        "{xml}"
    );
    let parsed = ConferenceList::parse(xml.as_bytes()).unwrap();
    assert_eq!(parsed, with_subject("a\u{FFFD}b\u{FFFD}c\u{FFFD}"));
}

#[test]
fn parse_errors() {
    let ns = r#"xmlns="urn:conflist:params:xml:ns:conference-list""#;
    let cases: Vec<(String, DocumentError)> = vec![
        (
            format!(r#"<conference-lists {ns} entity="e" version="1" state="full"/>"#),
            DocumentError::WrongRoot,
        ),
        (
            r#"<conference-list xmlns="urn:other" entity="e" version="1" state="full"/>"#.into(),
            DocumentError::WrongRoot,
        ),
        (
            r#"<conference-list entity="e" version="1" state="full"/>"#.into(),
            DocumentError::WrongRoot,
        ),
        (
            format!(r#"<conference-list {ns} version="1" state="full"/>"#),
            DocumentError::MissingAttribute("entity"),
        ),
        (
            format!(r#"<conference-list {ns} entity="e" state="full"/>"#),
            DocumentError::MissingAttribute("version"),
        ),
        (
            format!(r#"<conference-list {ns} entity="e" version="-1" state="full"/>"#),
            DocumentError::BadAttribute("version"),
        ),
        (
            format!(r#"<conference-list {ns} entity="e" version="1x" state="full"/>"#),
            DocumentError::BadAttribute("version"),
        ),
        (
            format!(
                r#"<conference-list {ns} entity="e" version="18446744073709551616" state="full"/>"#
            ),
            DocumentError::BadAttribute("version"),
        ),
        (
            format!(r#"<conference-list {ns} entity="e" version="1"/>"#),
            DocumentError::MissingAttribute("state"),
        ),
        (
            format!(r#"<conference-list {ns} entity="e" version="1" state="bogus"/>"#),
            DocumentError::BadAttribute("state"),
        ),
        (
            format!(
                r#"<conference-list {ns} entity="e" version="1" state="partial"><conference state="full"/></conference-list>"#
            ),
            DocumentError::MissingAttribute("entity"),
        ),
        (
            format!(
                r#"<conference-list {ns} entity="e" version="1" state="partial"><conference entity="c"/></conference-list>"#
            ),
            DocumentError::MissingAttribute("state"),
        ),
        (
            format!(
                r#"<conference-list {ns} entity="e" version="1" state="partial"><conference entity="c" state="partial"/></conference-list>"#
            ),
            DocumentError::BadAttribute("state"),
        ),
        (
            format!(
                r#"<conference-list {ns} entity="e" version="1" state="full"><conference entity="c" state="deleted"/></conference-list>"#
            ),
            DocumentError::DeletedInFull("c".into()),
        ),
        (
            format!(
                r#"<conference-list {ns} entity="e" version="1" state="full"><conference entity="c" state="full"><conference-description><maximum-user-count>many</maximum-user-count></conference-description></conference></conference-list>"#
            ),
            DocumentError::BadElement("maximum-user-count"),
        ),
        (
            format!(
                r#"<conference-list {ns} entity="e" version="1" state="full"><conference entity="c" state="full"><conference-description><conf-uris><entry/></conf-uris></conference-description></conference></conference-list>"#
            ),
            DocumentError::MissingElement("uri"),
        ),
        (
            format!(
                r#"<conference-list {ns} entity="e" version="1" state="full"><conference entity="c" state="full"><conference-description><available-media><entry><type>audio</type></entry></available-media></conference-description></conference></conference-list>"#
            ),
            DocumentError::MissingAttribute("label"),
        ),
        (
            format!(r#"<conference-list {ns} entity="e" version="1" state="full" complete="no"/>"#),
            DocumentError::BadAttribute("complete"),
        ),
        (
            format!(
                r#"<conference-list {ns} entity="e" version="1" state="full"><conference entity="c" state="full"><passcode-required>yes</passcode-required></conference></conference-list>"#
            ),
            DocumentError::BadElement("passcode-required"),
        ),
        (
            format!(
                r#"<conference-list {ns} entity="e" version="1" state="full"><conference entity="c" state="full"><organizer><display-text>x</display-text></organizer></conference></conference-list>"#
            ),
            DocumentError::MissingElement("uri"),
        ),
    ];
    for (xml, expected) in cases {
        assert_eq!(
            ConferenceList::parse(xml.as_bytes()),
            Err(expected),
            "{xml}"
        );
    }
    for malformed in [
        "".to_owned(),
        "not xml".to_owned(),
        format!(r#"<conference-list {ns} entity="e" version="1" state="full">"#),
        format!(r#"<conference-list {ns} entity="e" version="1" state="full"></conference>"#),
        format!(r#"<conference-list {ns} entity="e" version="1" state="full"/><conference-list/>"#),
        format!(
            r#"<conference-list {ns} entity="e" version="1" state="full"><conference entity="a&b" state="full"/></conference-list>"#
        ),
        format!(
            r#"<conference-list {ns} entity="e" version="1" state="full"><conference entity="c" state="full"><role>&nbsp;</role></conference></conference-list>"#
        ),
    ] {
        let result = ConferenceList::parse(malformed.as_bytes());
        assert!(
            matches!(result, Err(DocumentError::Xml(_))),
            "{malformed}: {result:?}"
        );
    }
    let not_utf8 = b"<conference-list \xff/>";
    assert!(matches!(
        ConferenceList::parse(not_utf8),
        Err(DocumentError::Xml(_))
    ));
}

#[test]
fn deleted_conference_children_are_ignored() {
    let xml = r#"<conference-list xmlns="urn:conflist:params:xml:ns:conference-list" entity="e" version="2" state="partial"><conference entity="c" state="deleted"><role>x</role></conference></conference-list>"#;
    let doc = ConferenceList::parse(xml.as_bytes()).unwrap();
    assert_eq!(
        doc.entries,
        vec![Entry::Deleted {
            entity: "c".into(),
            reason: None
        }]
    );
}

#[test]
fn full_sorts_by_entity_and_keeps_the_last_duplicate() {
    let mut second = bare("sip:b");
    second.role = Some("moderator".into());
    let doc = ConferenceList::full(
        "sip:a",
        1,
        vec![bare("sip:c"), bare("sip:b"), bare("sip:a"), second.clone()],
    );
    let entries: Vec<&str> = doc.entries.iter().map(Entry::entity).collect();
    assert_eq!(entries, ["sip:a", "sip:b", "sip:c"]);
    assert_eq!(doc.entries[1], Entry::Full(second));
}

#[test]
fn diff_of_equal_sets_is_empty_whatever_the_order() {
    let a = [weekly_sync(), maximal(), bare("sip:z")];
    let b = [bare("sip:z"), maximal(), weekly_sync()];
    let doc = diff("sip:alice@example.com", 3, &a, &b);
    assert_eq!(doc.state, DocumentState::Partial);
    assert_eq!(doc.version, 3);
    assert!(doc.entries.is_empty());
}

#[test]
fn apply_full_and_partial() {
    let s0 = vec![weekly_sync(), bare("sip:1002@conf.example.com")];
    let held = apply(
        &[bare("sip:old")],
        Some(41),
        &ConferenceList::full("sip:a", 7, s0.clone()),
    )
    .unwrap();
    let mut sorted = s0;
    sorted.sort_by(|a, b| a.entity.cmp(&b.entity));
    assert_eq!(held, sorted);

    let partial = partial_doc(); // version 8
    let expected: Vec<Conference> = match &partial.entries[..] {
        [
            Entry::Full(changed),
            Entry::Deleted { .. },
            Entry::Full(added),
        ] => vec![changed.clone(), added.clone()],
        other => panic!("unexpected entries {other:?}"),
    };
    assert_eq!(apply(&held, Some(7), &partial).unwrap(), expected);
    assert_eq!(apply(&held, None, &partial).unwrap(), expected);
    assert_eq!(
        apply(&held, Some(6), &partial),
        Err(DocumentError::VersionGap {
            expected: 7,
            got: 8
        })
    );
    assert_eq!(
        apply(&held, Some(8), &partial),
        Err(DocumentError::VersionGap {
            expected: 9,
            got: 8
        })
    );
    let mut at_max = partial;
    at_max.version = 0;
    assert_eq!(
        apply(&held, Some(u64::MAX), &at_max),
        Err(DocumentError::VersionGap {
            expected: 0,
            got: 0
        })
    );
}

#[test]
fn prefer_full_compares_rendered_lengths() {
    let full = ConferenceList::full("sip:a", 2, vec![bare("sip:1")]);
    let everything_changed = diff("sip:a", 2, &[], &[bare("sip:1")]);
    assert!(prefer_full(&everything_changed, &full));
    let many: Vec<Conference> = (0..5).map(|i| bare(&format!("sip:{i}"))).collect();
    let one_removed = diff("sip:a", 2, &many, &many[1..]);
    assert!(!prefer_full(
        &one_removed,
        &ConferenceList::full("sip:a", 2, many[1..].to_vec())
    ));
}

/// A partial with one changed conference is far smaller than the full document of 20.
#[test]
fn partial_is_under_a_tenth_of_the_full_document() {
    let conferences: Vec<Conference> = (0..20)
        .map(|i| {
            let mut c = weekly_sync();
            c.entity = format!("sip:{}@conf.example.com", 1000 + i);
            c
        })
        .collect();
    let mut changed = conferences.clone();
    changed[7].description.subject = Some("Moved to Thursday".into());
    let full = ConferenceList::full("sip:alice@example.com", 2, changed.clone())
        .render()
        .len();
    let partial_doc = diff("sip:alice@example.com", 2, &conferences, &changed);
    assert_eq!(partial_doc.entries.len(), 1);
    let partial = partial_doc.render().len();
    assert!(
        partial * 10 < full,
        "partial {partial} bytes, full {full} bytes"
    );
}
