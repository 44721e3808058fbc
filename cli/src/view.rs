//! What `watch` and `list` print: the list as a table, a change as one line per conference
//! (what changed, not the whole list), a NOTIFY as one JSON object.

use document::{Conference, ConferenceList, DeleteReason, DocumentState, Entry};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::fmt::Write as _;

/// Why conferences left the list: entity → the `reason` of its deletion (None when the
/// document gave none), gathered over the documents since the list was last printed.
pub(crate) type Deletions = HashMap<String, Option<DeleteReason>>;

/// The join link of a conference: its first conference URI.
fn join(c: &Conference) -> &str {
    c.description
        .conf_uris
        .first()
        .map_or("", |u| u.uri.as_str())
}

fn subject(c: &Conference) -> &str {
    c.description
        .subject
        .as_deref()
        .or(c.description.display_text.as_deref())
        .unwrap_or("")
}

fn status(c: &Conference) -> &str {
    c.status.map_or("", |s| s.as_str())
}

fn response(c: &Conference) -> &str {
    c.response.map_or("", |r| r.as_str())
}

/// The organiser's name, else their URI.
fn organizer(c: &Conference) -> &str {
    c.organizer
        .as_ref()
        .map_or("", |o| o.display_text.as_deref().unwrap_or(&o.uri))
}

fn passcode(c: &Conference) -> &str {
    match c.passcode_required {
        Some(true) => "yes",
        Some(false) => "no",
        None => "",
    }
}

fn time_zone(c: &Conference) -> &str {
    c.schedule.time_zone.as_deref().unwrap_or("")
}

fn recurrence(c: &Conference) -> &str {
    c.schedule.recurrence.as_deref().unwrap_or("")
}

/// The table's columns: header, cell, and whether the column is shown even when every cell
/// is empty (the optional meeting fields are left out when no conference has them).
type Column = (&'static str, fn(&Conference) -> String, bool);

const COLUMNS: [Column; 11] = [
    // A recurring meeting's schedule is its next occurrence (REPEATS names the rule).
    (
        "START",
        |c| c.schedule.start.clone().unwrap_or_default(),
        true,
    ),
    ("END", |c| c.schedule.end.clone().unwrap_or_default(), true),
    ("TIME ZONE", |c| time_zone(c).to_owned(), false),
    ("REPEATS", |c| recurrence(c).to_owned(), false),
    ("STATUS", |c| status(c).to_owned(), false),
    ("SUBJECT", |c| subject(c).to_owned(), true),
    ("ROLE", |c| c.role.clone().unwrap_or_default(), true),
    ("RESPONSE", |c| response(c).to_owned(), false),
    ("ORGANIZER", |c| organizer(c).to_owned(), false),
    ("PASSCODE", |c| passcode(c).to_owned(), false),
    ("JOIN", |c| join(c).to_owned(), true),
];

/// The list as a table, sorted by start (conferences without one last), then entity.
pub(crate) fn table(conferences: &[Conference]) -> String {
    let mut rows: Vec<&Conference> = conferences.iter().collect();
    rows.sort_by(|a, b| {
        (a.schedule.start.is_none(), &a.schedule.start, &a.entity).cmp(&(
            b.schedule.start.is_none(),
            &b.schedule.start,
            &b.entity,
        ))
    });
    let all: Vec<Vec<String>> = rows
        .iter()
        .map(|c| COLUMNS.iter().map(|(_, cell, _)| cell(c)).collect())
        .collect();
    let shown: Vec<usize> = (0..COLUMNS.len())
        .filter(|&i| COLUMNS[i].2 || all.iter().any(|row| !row[i].is_empty()))
        .collect();
    let header: Vec<&str> = shown.iter().map(|&i| COLUMNS[i].0).collect();
    let cells: Vec<Vec<&str>> = all
        .iter()
        .map(|row| shown.iter().map(|&i| row[i].as_str()).collect())
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &cells {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[&str]| {
        let mut l = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                l.push_str(cell);
            } else {
                let _ = write!(l, "{cell:<w$}  ");
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&header);
    for row in &cells {
        line(row);
    }
    let _ = write!(out, "({} conferences)", conferences.len());
    out
}

/// "removed", "removed (out-of-window)", "removed (cancelled)".
fn removed(reason: Option<DeleteReason>) -> String {
    match reason {
        None | Some(DeleteReason::Removed) => "removed".to_owned(),
        Some(r) => format!("removed ({})", r.as_str()),
    }
}

/// One line per added, changed or removed conference between `old` and `new`; a removed one
/// says why (`deleted`: the reasons the documents in between gave).
pub(crate) fn changes(old: &[Conference], new: &[Conference], deleted: &Deletions) -> Vec<String> {
    let old_by: HashMap<&str, &Conference> = old.iter().map(|c| (c.entity.as_str(), c)).collect();
    let mut lines = Vec::new();
    for c in new {
        match old_by.get(c.entity.as_str()) {
            None => {
                let mut line = format!(
                    "+ {}  {:?}  start {}  role {}",
                    c.entity,
                    subject(c),
                    c.schedule.start.as_deref().unwrap_or("-"),
                    c.role.as_deref().unwrap_or("-"),
                );
                if let Some(s) = c.status {
                    let _ = write!(line, "  status {}", s.as_str());
                }
                lines.push(line);
            }
            Some(o) if *o != c => {
                let mut what = Vec::new();
                let mut field = |name: &str, a: &str, b: &str| {
                    if a != b {
                        what.push(format!("{name} {a:?} -> {b:?}"));
                    }
                };
                field("subject", subject(o), subject(c));
                field("status", status(o), status(c));
                field(
                    "start",
                    o.schedule.start.as_deref().unwrap_or(""),
                    c.schedule.start.as_deref().unwrap_or(""),
                );
                field(
                    "end",
                    o.schedule.end.as_deref().unwrap_or(""),
                    c.schedule.end.as_deref().unwrap_or(""),
                );
                field("time zone", time_zone(o), time_zone(c));
                field("repeats", recurrence(o), recurrence(c));
                field(
                    "role",
                    o.role.as_deref().unwrap_or(""),
                    c.role.as_deref().unwrap_or(""),
                );
                field("response", response(o), response(c));
                field("organizer", organizer(o), organizer(c));
                field("passcode", passcode(o), passcode(c));
                field("join", join(o), join(c));
                if what.is_empty() {
                    what.push("details".to_owned());
                }
                lines.push(format!("~ {}  {}", c.entity, what.join(", ")));
            }
            Some(_) => {}
        }
    }
    let new_entities: std::collections::HashSet<&str> =
        new.iter().map(|c| c.entity.as_str()).collect();
    for o in old {
        if !new_entities.contains(o.entity.as_str()) {
            let reason = deleted.get(&o.entity).copied().flatten();
            lines.push(format!(
                "- {}  {:?}  {}",
                o.entity,
                subject(o),
                removed(reason)
            ));
        }
    }
    lines
}

fn conference_json(c: &Conference) -> Value {
    json!({
        "entity": c.entity,
        "state": "full",
        "subject": c.description.subject,
        "display_text": c.description.display_text,
        "start": c.schedule.start,
        "end": c.schedule.end,
        "time_zone": c.schedule.time_zone,
        "recurrence": c.schedule.recurrence,
        "status": c.status.map(|s| s.as_str()),
        "role": c.role,
        "response": c.response.map(|r| r.as_str()),
        "organizer": c.organizer.as_ref().map(|o| json!({ "uri": o.uri, "display_text": o.display_text })),
        "passcode_required": c.passcode_required,
        "revision": c.revision,
        "join": c.description.conf_uris.first().map(|u| &u.uri),
    })
}

/// One NOTIFY as a JSON object: its Subscription-State and, if it had one, its document
/// (`complete`: false while a state sent in several NOTIFYs is still arriving).
pub(crate) fn notify_json(subscription_state: &str, doc: Option<&ConferenceList>) -> Value {
    let Some(doc) = doc else {
        return json!({ "subscription_state": subscription_state, "document": null });
    };
    let entries: Vec<Value> = doc
        .entries
        .iter()
        .map(|e| match e {
            Entry::Full(c) => conference_json(c),
            Entry::Deleted { entity, reason } => json!({
                "entity": entity,
                "state": "deleted",
                "reason": reason.map(|r| r.as_str()),
            }),
        })
        .collect();
    json!({
        "subscription_state": subscription_state,
        "document": {
            "entity": doc.entity,
            "version": doc.version,
            "state": match doc.state {
                DocumentState::Full => "full",
                DocumentState::Partial => "partial",
            },
            "complete": doc.complete,
            "conferences": entries,
        },
    })
}

/// The list a subscription holds, and what of it was printed. A state sent in several
/// NOTIFYs (a full document marked `complete="false"`, then partials) is printed once its
/// last part is applied: the table the first time, change lines after that.
#[derive(Debug, Default)]
pub(crate) struct Follow {
    held: Vec<Conference>,
    version: Option<u64>,
    /// Whether the last document applied completed the state.
    complete: bool,
    /// The list as last printed (None: nothing printed yet).
    shown: Option<Vec<Conference>>,
    /// Deletions since then, with their reasons.
    deleted: Deletions,
}

impl Follow {
    /// Applies one document; returns what to print when it completes the state (the table
    /// the first time, then one line per change, possibly none), None while parts are
    /// still to come.
    pub(crate) fn apply(
        &mut self,
        doc: &ConferenceList,
    ) -> Result<Option<Vec<String>>, document::DocumentError> {
        let new = document::apply(&self.held, self.version, doc)?;
        self.held = new;
        self.version = Some(doc.version);
        self.complete = doc.complete;
        for e in &doc.entries {
            if let Entry::Deleted { entity, reason } = e {
                self.deleted.insert(entity.clone(), *reason);
            }
        }
        if !doc.complete {
            return Ok(None);
        }
        let out = match &self.shown {
            None => vec![table(&self.held)],
            Some(old) => changes(old, &self.held, &self.deleted),
        };
        self.shown = Some(self.held.clone());
        self.deleted.clear();
        Ok(Some(out))
    }

    /// Forgets the version held: the next document must be full (a new subscription).
    pub(crate) fn resubscribe(&mut self) {
        self.version = None;
        self.complete = false;
    }

    /// Whether the list held is the whole state.
    pub(crate) fn complete(&self) -> bool {
        self.complete
    }

    /// How many conferences are held.
    pub(crate) fn len(&self) -> usize {
        self.held.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use document::{Organizer, Response, Status};

    fn conf(entity: &str, subject: &str, start: &str) -> Conference {
        let mut c = Conference {
            entity: entity.into(),
            description: Default::default(),
            role: Some("participant".into()),
            ..Conference::default()
        };
        c.description.subject = Some(subject.into());
        c.schedule.start = Some(start.into());
        c
    }

    #[test]
    fn changes_name_what_changed() {
        let a = conf("sip:a@x", "Standup", "2026-12-01T09:00:00Z");
        let b = conf("sip:b@x", "Review", "2026-12-01T10:00:00Z");
        let mut a2 = a.clone();
        a2.description.subject = Some("Standup (moved)".into());
        let c = conf("sip:c@x", "Retro", "2026-12-02T10:00:00Z");
        let lines = changes(&[a, b], &[a2, c], &Deletions::new());
        assert_eq!(
            lines,
            vec![
                "~ sip:a@x  subject \"Standup\" -> \"Standup (moved)\"".to_owned(),
                "+ sip:c@x  \"Retro\"  start 2026-12-02T10:00:00Z  role participant".to_owned(),
                "- sip:b@x  \"Review\"  removed".to_owned(),
            ]
        );
    }

    #[test]
    fn changes_name_the_meeting_fields_and_why_a_conference_left() {
        let a = conf("sip:a@x", "Standup", "2026-12-01T09:00:00Z");
        let mut a2 = a.clone();
        a2.status = Some(Status::Cancelled);
        a2.response = Some(Response::Declined);
        a2.passcode_required = Some(true);
        a2.organizer = Some(Organizer {
            uri: "sip:carol@x".into(),
            display_text: Some("Carol".into()),
        });
        a2.schedule.time_zone = Some("Europe/Berlin".into());
        a2.schedule.recurrence = Some("FREQ=DAILY".into());
        let old = [
            a,
            conf("sip:b@x", "Review", "2026-12-01T10:00:00Z"),
            conf("sip:c@x", "Retro", "2026-12-01T11:00:00Z"),
            conf("sip:d@x", "Planning", "2026-12-01T12:00:00Z"),
        ];
        let deleted: Deletions = [
            ("sip:b@x".to_owned(), Some(DeleteReason::OutOfWindow)),
            ("sip:c@x".to_owned(), Some(DeleteReason::Cancelled)),
            ("sip:d@x".to_owned(), Some(DeleteReason::Removed)),
        ]
        .into_iter()
        .collect();
        let lines = changes(&old, &[a2], &deleted);
        assert_eq!(
            lines,
            vec![
                "~ sip:a@x  status \"\" -> \"cancelled\", time zone \"\" -> \"Europe/Berlin\", \
                 repeats \"\" -> \"FREQ=DAILY\", response \"\" -> \"declined\", \
                 organizer \"\" -> \"Carol\", passcode \"\" -> \"yes\""
                    .to_owned(),
                "- sip:b@x  \"Review\"  removed (out-of-window)".to_owned(),
                "- sip:c@x  \"Retro\"  removed (cancelled)".to_owned(),
                "- sip:d@x  \"Planning\"  removed".to_owned(),
            ]
        );
    }

    #[test]
    fn table_sorts_by_start() {
        let t = table(&[
            conf("sip:b@x", "Later", "2026-12-02T10:00:00Z"),
            conf("sip:a@x", "Sooner", "2026-12-01T10:00:00Z"),
        ]);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("START"), "{t}");
        assert!(
            lines[1].contains("Sooner") && lines[2].contains("Later"),
            "{t}"
        );
        assert_eq!(lines[3], "(2 conferences)");
    }

    #[test]
    fn table_shows_the_meeting_fields_only_when_a_conference_has_them() {
        let plain = table(&[conf("sip:a@x", "Standup", "2026-12-01T09:00:00Z")]);
        assert_eq!(
            plain.lines().next().unwrap(),
            "START                 END  SUBJECT  ROLE         JOIN",
            "{plain}"
        );
        let mut b = conf("sip:b@x", "Review", "2026-12-02T08:30:00Z");
        b.schedule.end = Some("2026-12-02T08:45:00Z".into());
        b.schedule.time_zone = Some("Europe/Berlin".into());
        b.schedule.recurrence = Some("FREQ=WEEKLY;BYDAY=MO,TU".into());
        b.status = Some(Status::Scheduled);
        b.response = Some(Response::Tentative);
        b.organizer = Some(Organizer {
            uri: "sip:carol@x".into(),
            display_text: None,
        });
        b.passcode_required = Some(true);
        let t = table(&[conf("sip:a@x", "Standup", "2026-12-01T09:00:00Z"), b]);
        let lines: Vec<&str> = t.lines().collect();
        let cols: Vec<&str> = lines[0]
            .split("  ")
            .filter(|c| !c.is_empty())
            .map(str::trim)
            .collect();
        assert_eq!(
            cols,
            [
                "START",
                "END",
                "TIME ZONE",
                "REPEATS",
                "STATUS",
                "SUBJECT",
                "ROLE",
                "RESPONSE",
                "ORGANIZER",
                "PASSCODE",
                "JOIN"
            ],
            "{t}"
        );
        let row: Vec<&str> = lines[2]
            .split("  ")
            .filter(|c| !c.is_empty())
            .map(str::trim)
            .collect();
        assert_eq!(
            row,
            [
                "2026-12-02T08:30:00Z",
                "2026-12-02T08:45:00Z",
                "Europe/Berlin",
                "FREQ=WEEKLY;BYDAY=MO,TU",
                "scheduled",
                "Review",
                "participant",
                "tentative",
                "sip:carol@x",
                "yes",
            ],
            "the organiser's URI when there is no name: {t}"
        );
    }

    fn doc(
        version: u64,
        state: DocumentState,
        entries: Vec<Entry>,
        complete: bool,
    ) -> ConferenceList {
        ConferenceList {
            entity: "sip:alice@x".into(),
            version,
            state,
            entries,
            complete,
        }
    }

    #[test]
    fn a_state_in_several_parts_is_printed_once_complete_then_changes_with_reasons() {
        let c = |n: u32| {
            conf(
                &format!("sip:{n}@x"),
                &format!("Meeting {n}"),
                &format!("2026-12-0{n}T09:00:00Z"),
            )
        };
        let mut f = Follow::default();
        let part = |v, state, ns: &[u32], complete| {
            doc(
                v,
                state,
                ns.iter().map(|&n| Entry::Full(c(n))).collect(),
                complete,
            )
        };
        assert_eq!(
            f.apply(&part(0, DocumentState::Full, &[1, 2], false))
                .unwrap(),
            None
        );
        assert!(!f.complete());
        assert_eq!(
            f.apply(&part(1, DocumentState::Partial, &[3], false))
                .unwrap(),
            None
        );
        let printed = f
            .apply(&part(2, DocumentState::Partial, &[4], true))
            .unwrap()
            .unwrap();
        assert!(f.complete());
        assert_eq!(printed.len(), 1, "the table, once: {printed:?}");
        assert!(printed[0].ends_with("(4 conferences)"), "{}", printed[0]);
        for n in 1..=4 {
            assert!(
                printed[0].contains(&format!("Meeting {n}")),
                "{}",
                printed[0]
            );
        }

        // Then changes: a deletion with its reason, and a new conference.
        let next = doc(
            3,
            DocumentState::Partial,
            vec![
                Entry::Deleted {
                    entity: "sip:1@x".into(),
                    reason: Some(DeleteReason::OutOfWindow),
                },
                Entry::Full(c(5)),
            ],
            true,
        );
        assert_eq!(
            f.apply(&next).unwrap().unwrap(),
            vec![
                "+ sip:5@x  \"Meeting 5\"  start 2026-12-05T09:00:00Z  role participant".to_owned(),
                "- sip:1@x  \"Meeting 1\"  removed (out-of-window)".to_owned(),
            ]
        );

        // A full resend in parts (a new subscription): only what differs from the printed
        // list, once the last part is in; a reason seen in an earlier part is kept.
        f.resubscribe();
        assert_eq!(
            f.apply(&part(0, DocumentState::Full, &[2, 3], false))
                .unwrap(),
            None
        );
        let gone = doc(
            1,
            DocumentState::Partial,
            vec![Entry::Deleted {
                entity: "sip:4@x".into(),
                reason: Some(DeleteReason::Cancelled),
            }],
            false,
        );
        assert_eq!(f.apply(&gone).unwrap(), None);
        assert_eq!(
            f.apply(&part(2, DocumentState::Partial, &[5], true))
                .unwrap()
                .unwrap(),
            vec!["- sip:4@x  \"Meeting 4\"  removed (cancelled)".to_owned()]
        );
    }

    #[test]
    fn a_lost_part_is_a_version_gap() {
        let mut f = Follow::default();
        let first = doc(
            0,
            DocumentState::Full,
            vec![Entry::Full(conf("sip:1@x", "One", "2026-12-01T09:00:00Z"))],
            false,
        );
        assert_eq!(f.apply(&first).unwrap(), None);
        let skipped = doc(2, DocumentState::Partial, vec![], true);
        assert!(matches!(
            f.apply(&skipped),
            Err(document::DocumentError::VersionGap {
                expected: 1,
                got: 2
            })
        ));
        assert!(!f.complete(), "still loading");
    }

    #[test]
    fn json_carries_the_meeting_fields_and_the_complete_flag() {
        let mut c = conf("sip:a@x", "Standup", "2026-12-01T09:00:00Z");
        c.status = Some(Status::Active);
        c.response = Some(Response::Accepted);
        c.passcode_required = Some(false);
        c.organizer = Some(Organizer {
            uri: "sip:carol@x".into(),
            display_text: Some("Carol".into()),
        });
        c.schedule.time_zone = Some("America/New_York".into());
        c.schedule.recurrence = Some("FREQ=DAILY".into());
        c.revision = Some("7".into());
        let v = notify_json(
            "active;expires=60",
            Some(&doc(
                0,
                DocumentState::Full,
                vec![
                    Entry::Full(c),
                    Entry::Deleted {
                        entity: "sip:b@x".into(),
                        reason: Some(DeleteReason::OutOfWindow),
                    },
                ],
                false,
            )),
        );
        assert_eq!(v["document"]["complete"], false, "{v}");
        let a = &v["document"]["conferences"][0];
        assert_eq!(a["status"], "active", "{v}");
        assert_eq!(a["response"], "accepted", "{v}");
        assert_eq!(a["passcode_required"], false, "{v}");
        assert_eq!(a["organizer"]["uri"], "sip:carol@x", "{v}");
        assert_eq!(a["organizer"]["display_text"], "Carol", "{v}");
        assert_eq!(a["time_zone"], "America/New_York", "{v}");
        assert_eq!(a["recurrence"], "FREQ=DAILY", "{v}");
        assert_eq!(a["revision"], "7", "{v}");
        assert_eq!(
            v["document"]["conferences"][1]["reason"], "out-of-window",
            "{v}"
        );
        let plain = notify_json(
            "active",
            Some(&doc(
                1,
                DocumentState::Partial,
                vec![Entry::Full(conf("sip:a@x", "S", "2026-12-01T09:00:00Z"))],
                true,
            )),
        );
        let a = &plain["document"]["conferences"][0];
        assert!(
            a["status"].is_null() && a["organizer"].is_null() && a["passcode_required"].is_null(),
            "{plain}"
        );
        assert_eq!(plain["document"]["complete"], true);
    }
}
