//! Validates rendered documents against `conference-list.xsd` with the system `xmllint`.

mod common;

use std::io::{ErrorKind, Write};
use std::process::{Command, Stdio};

use common::{bare, maximal, weekly_sync};
use conflist_document::{ConferenceList, XSD, diff};

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
    assert_valid(
        "escaped text",
        &ConferenceList::full(user, 3, vec![escaped]),
    );
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
    assert_invalid(
        "wrong namespace",
        &format!(r#"{head} state="full"/>"#)
            .replace("urn:conflist:params:xml:ns:conference-list", "urn:other"),
    );
}
