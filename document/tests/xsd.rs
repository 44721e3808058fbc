//! Validates rendered documents against `conference-list.xsd` with the system `xmllint`.

mod common;

use std::io::{ErrorKind, Write};
use std::process::{Command, Stdio};

use common::{bare, maximal, weekly_sync};
use conflist_document::{
    ConferenceList, DeleteReason, DocumentState, Entry, Organizer, Response, Status, XSD, diff,
};

/// Runs `xmllint --noout --nonet --schema conference-list.xsd -` on `xml`:
/// whether it validates, and what xmllint said.
fn xmllint(xml: &[u8]) -> (bool, String) {
    let schema = concat!(env!("CARGO_MANIFEST_DIR"), "/conference-list.xsd");
    let mut child = match Command::new("xmllint")
        .args(["--noout", "--nonet", "--schema", schema, "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            panic!("xmllint not found: apt-get install libxml2-utils")
        }
        Err(e) => panic!("cannot run xmllint: {e}"),
    };
    child.stdin.take().unwrap().write_all(xml).unwrap();
    let out = child.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.success(), said)
}

fn assert_valid(name: &str, doc: &ConferenceList) {
    let xml = doc.render();
    let (ok, said) = xmllint(&xml);
    assert!(
        ok,
        "{name} does not validate: {said}\n{}",
        String::from_utf8_lossy(&xml)
    );
}

fn assert_invalid(name: &str, xml: &str) {
    let (ok, said) = xmllint(xml.as_bytes());
    assert!(!ok, "{name} validates but must not: {said}\n{xml}");
}

#[test]
fn shipped_schema_is_the_file() {
    assert!(XSD.contains(r#"targetNamespace="urn:conflist:params:xml:ns:conference-list""#));
}

#[test]
fn rendered_documents_validate() {
    let user = "sip:alice@example.com";
    assert_valid("empty full list", &ConferenceList::full(user, 0, vec![]));
    assert_valid(
        "empty partial",
        &diff(user, 1, &[weekly_sync()], &[weekly_sync()]),
    );
    assert_valid(
        "full",
        &ConferenceList::full(
            user,
            7,
            vec![weekly_sync(), bare("sip:1002@conf.example.com")],
        ),
    );
    assert_valid(
        "maximal",
        &ConferenceList::full(user, u64::MAX, vec![maximal()]),
    );

    let old = [weekly_sync(), bare("sip:1002@conf.example.com")];
    let mut changed = weekly_sync();
    changed.description.subject = Some("Moved".into());
    let partial = diff(user, 8, &old, &[changed, maximal()]);
    assert!(
        partial
            .render()
            .windows(15)
            .any(|w| w == b"state=\"deleted\"")
    );
    assert_valid("partial with deleted", &partial);

    let mut escaped = weekly_sync();
    escaped.description.display_text = Some("</subject><x>".into());
    escaped.description.subject = Some(r#"a & b "q" 'a' <c>"#.into());
    escaped.description.free_text = Some("émoji 😀\r\n\tnul:\u{0} esc:\u{1b} ]]>".into());
    escaped.description.keywords = vec!["<k>".into(), "&".into(), "😀".into()];
    escaped.description.available_media[0].label = "\"<&>'\t\n".into();
    escaped.role = Some("<organizer/>".into());
    escaped.revision = Some("\"<&>'\t\n".into());
    escaped.schedule.time_zone = Some("<&>".into());
    escaped.schedule.recurrence = Some("FREQ=WEEKLY;BYDAY=MO\t\"".into());
    escaped.organizer = Some(Organizer {
        uri: "sip:o@x".into(),
        display_text: Some("<&>".into()),
    });
    assert_valid(
        "escaped text",
        &ConferenceList::full(user, 3, vec![escaped]),
    );
}

#[test]
fn every_new_field_validates() {
    let user = "sip:alice@example.com";
    let mut first = ConferenceList::full(user, 7, vec![maximal()]);
    first.complete = false;
    assert_valid("full, complete=false, every field", &first);
    let mut empty_first = ConferenceList::full(user, 7, vec![]);
    empty_first.complete = false;
    assert_valid("empty full, complete=false", &empty_first);
    let mut middle = diff(user, 8, &[], &[weekly_sync()]);
    middle.complete = false;
    assert_valid("partial, complete=false", &middle);

    for response in Response::ALL {
        for status in Status::ALL {
            for passcode in [true, false] {
                let mut c = bare("sip:1@x");
                c.response = Some(response);
                c.status = Some(status);
                c.passcode_required = Some(passcode);
                c.organizer = Some(Organizer {
                    uri: "sip:o@x".into(),
                    display_text: None,
                });
                assert_valid(
                    &format!("{response:?} {status:?} {passcode}"),
                    &ConferenceList::full(user, 1, vec![c]),
                );
            }
        }
    }
    let mut deletions = diff(user, 9, &[], &[]);
    for (i, reason) in DeleteReason::ALL
        .into_iter()
        .map(Some)
        .chain([None])
        .enumerate()
    {
        deletions.entries.push(Entry::Deleted {
            entity: format!("sip:{i}@x"),
            reason,
        });
    }
    deletions.entries.push(Entry::Full(maximal()));
    assert_eq!(deletions.state, DocumentState::Partial);
    assert_valid("deletions with reasons", &deletions);
}

#[test]
fn documents_of_the_earlier_format_stay_valid() {
    let head = r#"<?xml version="1.0" encoding="UTF-8"?><conference-list xmlns="urn:conflist:params:xml:ns:conference-list" entity="sip:alice@example.com" version="1""#;
    for xml in [
        format!(r#"{head} state="full"/>"#),
        format!(
            r#"{head} state="full"><conference entity="sip:1" state="full"><schedule start="2026-11-24T09:00:00Z"/><role>x</role></conference></conference-list>"#
        ),
        format!(
            r#"{head} state="partial"><conference entity="sip:1" state="deleted"/></conference-list>"#
        ),
    ] {
        let (ok, said) = xmllint(xml.as_bytes());
        assert!(ok, "{said}\n{xml}");
    }
}

#[test]
fn invalid_documents_are_rejected() {
    let head = r#"<?xml version="1.0" encoding="UTF-8"?><conference-list xmlns="urn:conflist:params:xml:ns:conference-list" entity="sip:alice@example.com" version="1""#;
    let valid = format!(
        r#"{head} state="partial"><conference entity="sip:1" state="deleted"/></conference-list>"#
    );
    assert!(xmllint(valid.as_bytes()).0, "the baseline must validate");

    assert_invalid("bogus list state", &format!(r#"{head} state="bogus"/>"#));
    assert_invalid("missing list state", &format!("{head}/>"));
    assert_invalid(
        "negative version",
        &format!(r#"{head} state="full"/>"#).replace(r#"version="1""#, r#"version="-1""#),
    );
    assert_invalid(
        "conference without entity",
        &format!(r#"{head} state="full"><conference state="full"/></conference-list>"#),
    );
    assert_invalid(
        "bogus conference state",
        &format!(
            r#"{head} state="full"><conference entity="sip:1" state="bogus"/></conference-list>"#
        ),
    );
    assert_invalid(
        "duplicate conference",
        &format!(
            r#"{head} state="full"><conference entity="sip:1" state="full"/><conference entity="sip:1" state="full"/></conference-list>"#
        ),
    );
    assert_invalid(
        "children out of order",
        &format!(
            r#"{head} state="full"><conference entity="sip:1" state="full"><role>x</role><schedule/></conference></conference-list>"#
        ),
    );
    assert_invalid(
        "media entry without label",
        &format!(
            r#"{head} state="full"><conference entity="sip:1" state="full"><conference-description><available-media><entry><type>audio</type></entry></available-media></conference-description></conference></conference-list>"#
        ),
    );
    assert_invalid(
        "bad schedule",
        &format!(
            r#"{head} state="full"><conference entity="sip:1" state="full"><schedule start="tomorrow"/></conference></conference-list>"#
        ),
    );
    let conference = |inner: &str| {
        format!(
            r#"{head} state="full"><conference entity="sip:1" state="full">{inner}</conference></conference-list>"#
        )
    };
    assert_invalid("bogus status", &conference("<status>postponed</status>"));
    assert_invalid("bogus response", &conference("<response>maybe</response>"));
    assert_invalid(
        "bogus passcode flag",
        &conference("<passcode-required>yes</passcode-required>"),
    );
    assert_invalid(
        "organizer without uri",
        &conference("<organizer><display-text>x</display-text></organizer>"),
    );
    assert_invalid(
        "new children out of order",
        &conference("<status>active</status><response>accepted</response>"),
    );
    assert_invalid(
        "role after status",
        &conference("<status>active</status><role>x</role>"),
    );
    assert_invalid(
        "bogus reason",
        &format!(
            r#"{head} state="partial"><conference entity="sip:1" state="deleted" reason="gone"/></conference-list>"#
        ),
    );
    assert_invalid(
        "bogus complete",
        &format!(r#"{head} state="full" complete="no"/>"#),
    );
    assert_invalid(
        "wrong namespace",
        &format!(r#"{head} state="full"/>"#)
            .replace("urn:conflist:params:xml:ns:conference-list", "urn:other"),
    );
}
