//! RFC 4575 `application/conference-info+xml` documents rendered from the same conferences
//! a conference-list NOTIFY carries: what a client would receive if it subscribed to each
//! conference's `conference` event package instead (RFC 4575 §5, one document per
//! conference, `state="full"`), with `participants` users in each, every user with one
//! endpoint and one media stream, as a small live meeting has. The benchmark compares the
//! bytes.

use document::Conference;
use std::fmt::Write as _;

/// XML-escapes text content and attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            _ => out.push(c),
        }
    }
    out
}

/// The full RFC 4575 document of `c` with `participants` users.
pub fn render(c: &Conference, participants: usize) -> String {
    let d = &c.description;
    let mut x = String::new();
    let _ = write!(
        x,
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<conference-info xmlns=\"urn:ietf:params:xml:ns:conference-info\" entity=\"{}\" state=\"full\" version=\"1\">\n<conference-description>\n",
        esc(&c.entity)
    );
    if let Some(t) = &d.display_text {
        let _ = writeln!(x, "<display-text>{}</display-text>", esc(t));
    }
    if let Some(t) = &d.subject {
        let _ = writeln!(x, "<subject>{}</subject>", esc(t));
    }
    if let Some(t) = &d.free_text {
        let _ = writeln!(x, "<free-text>{}</free-text>", esc(t));
    }
    if !d.keywords.is_empty() {
        let _ = writeln!(x, "<keywords>{}</keywords>", esc(&d.keywords.join(" ")));
    }
    for (tag, uris) in [
        ("conf-uris", &d.conf_uris),
        ("service-uris", &d.service_uris),
    ] {
        if uris.is_empty() {
            continue;
        }
        let _ = writeln!(x, "<{tag}>");
        for u in uris {
            let _ = write!(x, "<entry><uri>{}</uri>", esc(&u.uri));
            if let Some(t) = &u.display_text {
                let _ = write!(x, "<display-text>{}</display-text>", esc(t));
            }
            if let Some(p) = &u.purpose {
                let _ = write!(x, "<purpose>{}</purpose>", esc(p));
            }
            let _ = writeln!(x, "</entry>");
        }
        let _ = writeln!(x, "</{tag}>");
    }
    if let Some(m) = d.maximum_user_count {
        let _ = writeln!(x, "<maximum-user-count>{m}</maximum-user-count>");
    }
    if !d.available_media.is_empty() {
        let _ = writeln!(x, "<available-media>");
        for m in &d.available_media {
            let _ = writeln!(
                x,
                "<entry label=\"{}\"><type>{}</type><status>sendrecv</status></entry>",
                esc(&m.label),
                esc(&m.media_type)
            );
        }
        let _ = writeln!(x, "</available-media>");
    }
    let _ = writeln!(x, "</conference-description>");
    let _ = writeln!(
        x,
        "<host-info><web-page>https://meet.example.com/</web-page></host-info>\n<conference-state><user-count>{participants}</user-count><active>true</active><locked>false</locked></conference-state>\n<users>"
    );
    for i in 1..=participants {
        let _ = writeln!(
            x,
            "<user entity=\"sip:participant{i}@example.com\" state=\"full\"><display-text>Participant {i}</display-text><roles><entry>participant</entry></roles><endpoint entity=\"sip:participant{i}@pc{i}.example.com\"><status>connected</status><joining-method>dialed-in</joining-method><joining-info><when>2026-12-01T09:00:00Z</when></joining-info><media id=\"{i}\"><type>audio</type><label>1</label><src-id>{i}</src-id><status>sendrecv</status></media></endpoint></user>"
        );
    }
    let _ = writeln!(x, "</users>\n</conference-info>");
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_one_user_element_per_participant_and_escapes_text() {
        let mut c = Conference {
            entity: "sip:a@conf.example.com".into(),
            ..Conference::default()
        };
        c.description.subject = Some("A & <B>".into());
        let x = render(&c, 10);
        assert_eq!(x.matches("<user entity=").count(), 10);
        assert!(x.contains("<subject>A &amp; &lt;B&gt;</subject>"));
        assert!(x.contains("<user-count>10</user-count>"));
    }
}
