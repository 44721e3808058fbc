//! Documents shared by the integration tests.

use conflist_document::{
    Conference, ConferenceDescription, MediaEntry, Organizer, Response, Schedule, Status, UriEntry,
};

/// The conference of the format's reference example.
pub(crate) fn weekly_sync() -> Conference {
    Conference {
        entity: "sip:1001@conf.example.com".into(),
        description: ConferenceDescription {
            display_text: Some("Weekly sync".into()),
            subject: Some("Roadmap".into()),
            free_text: Some("Bring your notes".into()),
            keywords: vec!["a".into(), "b".into(), "c".into()],
            conf_uris: vec![UriEntry {
                uri: "sip:1001@conf.example.com".into(),
                display_text: Some("Dial-in".into()),
                purpose: Some("participation".into()),
            }],
            service_uris: vec![UriEntry {
                uri: "https://meet.example.com/1001".into(),
                display_text: None,
                purpose: Some("web-page".into()),
            }],
            maximum_user_count: Some(50),
            available_media: vec![
                MediaEntry {
                    label: "1".into(),
                    media_type: "audio".into(),
                    display_text: None,
                },
                MediaEntry {
                    label: "2".into(),
                    media_type: "video".into(),
                    display_text: None,
                },
            ],
        },
        schedule: Schedule {
            start: Some("2026-11-24T09:00:00Z".into()),
            end: Some("2026-11-24T10:00:00Z".into()),
            ..Schedule::default()
        },
        role: Some("organizer".into()),
        ..Conference::default()
    }
}

/// A conference with only an entity.
pub(crate) fn bare(entity: &str) -> Conference {
    Conference {
        entity: entity.into(),
        ..Conference::default()
    }
}

/// A conference with every optional element and attribute present.
pub(crate) fn maximal() -> Conference {
    let mut c = weekly_sync();
    c.entity = "sip:max@conf.example.com".into();
    c.description.service_uris[0].display_text = Some("Web".into());
    c.description.available_media[0].display_text = Some("Main audio".into());
    c.schedule.time_zone = Some("Europe/Berlin".into());
    c.schedule.recurrence = Some("FREQ=WEEKLY;BYDAY=TU".into());
    c.response = Some(Response::Accepted);
    c.status = Some(Status::Scheduled);
    c.organizer = Some(Organizer {
        uri: "sip:carol@example.com".into(),
        display_text: Some("Carol".into()),
    });
    c.passcode_required = Some(true);
    c.revision = Some("2026-11-20T08:15:00.123456Z".into());
    c
}
