//! Property tests: print → parse roundtrip, and no panics on arbitrary or mutated input.

use conflist_sip as sip;
use proptest::prelude::*;
use sip::{
    HeaderName, Headers, Message, Method, NameAddr, Request, Uri, Via, check_request, framing,
    parse_message,
};

fn method() -> impl Strategy<Value = Method> {
    let known = prop_oneof![
        Just(Method::Invite),
        Just(Method::Ack),
        Just(Method::Bye),
        Just(Method::Cancel),
        Just(Method::Options),
        Just(Method::Register),
        Just(Method::Subscribe),
        Just(Method::Notify),
        Just(Method::Refer),
        Just(Method::Message),
        Just(Method::Info),
        Just(Method::Update),
        Just(Method::Prack),
        Just(Method::Publish),
    ];
    let other = "[A-Za-z][A-Za-z0-9.!%*_+`'~-]{0,11}"
        .prop_map(|s| Method::parse(&s).unwrap())
        .prop_filter("extension method", |m| matches!(m, Method::Other(_)));
    prop_oneof![3 => known, 1 => other]
}

fn host() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z][a-z0-9-]{0,8}(\\.[a-z]{2,5}){1,2}",
        (0u8..=255, 0u8..=255, 0u8..=255, 1u8..=254)
            .prop_map(|(a, b, c, d)| format!("{a}.{b}.{c}.{d}")),
        Just("[2001:db8::1]".to_owned()),
    ]
}

fn param() -> impl Strategy<Value = String> {
    (
        "[a-z][a-z0-9-]{0,6}",
        proptest::option::of("[a-zA-Z0-9.-]{1,8}"),
    )
        .prop_map(|(n, v)| match v {
            Some(v) => format!(";{n}={v}"),
            None => format!(";{n}"),
        })
}

fn sip_uri() -> impl Strategy<Value = String> {
    (
        prop_oneof![Just("sip"), Just("sips")],
        proptest::option::of("[a-zA-Z0-9_.!~*'()&=+$,;?/-]{1,10}|[a-z]{1,4}%[0-9A-F]{2}"),
        host(),
        proptest::option::of(1u16..),
        proptest::collection::vec(param(), 0..3),
    )
        .prop_map(|(scheme, user, host, port, params)| {
            let user = user.map(|u| format!("{u}@")).unwrap_or_default();
            let port = port.map(|p| format!(":{p}")).unwrap_or_default();
            format!("{scheme}:{user}{host}{port}{}", params.concat())
        })
}

fn token() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9.!%*_+`'~-]{1,12}"
}

fn request() -> impl Strategy<Value = Request> {
    (
        (method(), sip_uri(), host(), token(), sip_uri(), token()),
        (
            sip_uri(),
            token(),
            any::<u32>(),
            proptest::option::of(token()),
            proptest::option::of(any::<u32>()),
            proptest::collection::vec(any::<u8>(), 0..64),
        ),
        prop_oneof![Just("UDP"), Just("TCP"), Just("WS"), Just("WSS")],
    )
        .prop_map(
            |(
                (method, ruri, via_host, branch, from, tag),
                (to, call_id, seq, event, exp, body),
                transport,
            )| {
                let mut headers = Headers::new();
                headers.push(
                    HeaderName::VIA,
                    format!("SIP/2.0/{transport} {via_host};branch=z9hG4bK{branch};rport"),
                );
                headers.push(
                    HeaderName::FROM,
                    format!("\"A \\\"q\\\"\" <{from}>;tag={tag}"),
                );
                headers.push(HeaderName::TO, format!("<{to}>"));
                headers.push(HeaderName::CALL_ID, format!("{call_id}@{via_host}"));
                headers.push(HeaderName::CSEQ, format!("{seq} {method}"));
                headers.push(HeaderName::MAX_FORWARDS, "70");
                if let Some(e) = event {
                    headers.push(HeaderName::EVENT, format!("{e};id=1"));
                }
                if let Some(e) = exp {
                    headers.push(HeaderName::EXPIRES, e.to_string());
                }
                headers.push(HeaderName::CONTENT_LENGTH, body.len().to_string());
                Request {
                    method,
                    uri: Uri::parse(&ruri).unwrap(),
                    headers,
                    body,
                }
            },
        )
}

proptest! {
    #[test]
    fn request_roundtrip(req in request()) {
        let bytes = req.to_bytes();
        prop_assert_eq!(parse_message(&bytes), Ok(Message::Request(req.clone())));
        prop_assert_eq!(check_request(&req), Ok(()));
        let via = Via::parse_all(&req.headers).unwrap();
        prop_assert_eq!(via.len(), 1);
        prop_assert_eq!(Via::parse(&via[0].to_string()), Ok(via[0].clone()));
        let from = NameAddr::parse(req.headers.get(&HeaderName::FROM).unwrap()).unwrap();
        prop_assert_eq!(NameAddr::parse(&from.to_string()), Ok(from));
        prop_assert_eq!(Uri::parse(&req.uri.to_string()), Ok(req.uri.clone()));
        let streamed = framing::parse_stream(&bytes, 1 << 16).unwrap();
        prop_assert_eq!(streamed, Some((Message::Request(req), bytes.len())));
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        exercise(&bytes);
    }

    #[test]
    fn mutated_messages_never_panic(
        req in request(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = req.to_bytes();
        for (at, byte, op) in edits {
            let i = at.index(bytes.len());
            match op {
                0 => bytes[i] = byte,
                1 => bytes.insert(i, byte),
                _ => { bytes.remove(i); }
            }
            if bytes.is_empty() { break; }
        }
        exercise(&bytes);
        if !bytes.is_empty() {
            exercise(&bytes[..cut.index(bytes.len())]);
        }
    }
}

/// Anything we accept, we can print and accept again, unchanged but for Content-Length.
fn reprint_is_stable(msg: &Message) {
    if msg.headers().len() >= sip::MAX_HEADERS {
        return; // printing may add a Content-Length line beyond the limit
    }
    let printed = msg.to_bytes();
    let mut again = parse_message(&printed).expect("reprinted message must parse");
    let mut orig = msg.clone();
    again.headers_mut().remove(&HeaderName::CONTENT_LENGTH);
    orig.headers_mut().remove(&HeaderName::CONTENT_LENGTH);
    assert_eq!(again, orig);
}

fn exercise(bytes: &[u8]) {
    if let Ok(m @ Message::Response(_)) = parse_message(bytes) {
        reprint_is_stable(&m);
    }
    if let Ok(Message::Request(r)) = parse_message(bytes) {
        let _ = check_request(&r);
        let _ = Via::parse_all(&r.headers);
        let _ = sip::parse_contacts(&r.headers);
        let _ = sip::parse_accept(&r.headers);
        reprint_is_stable(&Message::Request(r));
    }
    let _ = framing::parse_stream(bytes, 1024);
}
