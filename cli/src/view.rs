//! What `watch` and `list` print: the list as a table, a change as one line per conference
//! (what changed, not the whole list), a NOTIFY as one JSON object.

use document::{Conference, ConferenceList, DocumentState, Entry};
use serde_json::{Value, json};
use std::fmt::Write as _;

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
    let cells: Vec<[String; 5]> = rows
        .iter()
        .map(|c| {
            [
                c.schedule.start.clone().unwrap_or_default(),
                c.schedule.end.clone().unwrap_or_default(),
                subject(c).to_owned(),
                c.role.clone().unwrap_or_default(),
                join(c).to_owned(),
            ]
        })
        .collect();
    let header = ["START", "END", "SUBJECT", "ROLE", "JOIN"];
    let mut widths = header.map(str::len);
    for row in &cells {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[&str]| {
        let mut l = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
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
        line(&row.each_ref().map(String::as_str));
    }
    let _ = write!(out, "({} conferences)", conferences.len());
    out
}

/// One line per added, changed or removed conference between `old` and `new`.
pub(crate) fn changes(old: &[Conference], new: &[Conference]) -> Vec<String> {
    let mut lines = Vec::new();
    for c in new {
        match old.iter().find(|o| o.entity == c.entity) {
            None => lines.push(format!(
                "+ {}  {:?}  start {}  role {}",
                c.entity,
                subject(c),
                c.schedule.start.as_deref().unwrap_or("-"),
                c.role.as_deref().unwrap_or("-"),
            )),
            Some(o) if o != c => {
                let mut what = Vec::new();
                let mut field = |name: &str, a: &str, b: &str| {
                    if a != b {
                        what.push(format!("{name} {a:?} -> {b:?}"));
                    }
                };
                field("subject", subject(o), subject(c));
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
                field(
                    "role",
                    o.role.as_deref().unwrap_or(""),
                    c.role.as_deref().unwrap_or(""),
                );
                field("join", join(o), join(c));
                if what.is_empty() {
                    what.push("details".to_owned());
                }
                lines.push(format!("~ {}  {}", c.entity, what.join(", ")));
            }
            Some(_) => {}
        }
    }
    for o in old {
        if !new.iter().any(|c| c.entity == o.entity) {
            lines.push(format!("- {}  {:?}", o.entity, subject(o)));
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
        "role": c.role,
        "join": c.description.conf_uris.first().map(|u| &u.uri),
    })
}

/// One NOTIFY as a JSON object: its Subscription-State and, if it had one, its document.
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
            "conferences": entries,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let lines = changes(&[a, b], &[a2, c]);
        assert_eq!(
            lines,
            vec![
                "~ sip:a@x  subject \"Standup\" -> \"Standup (moved)\"".to_owned(),
                "+ sip:c@x  \"Retro\"  start 2026-12-02T10:00:00Z  role participant".to_owned(),
                "- sip:b@x  \"Review\"".to_owned(),
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
}
