//! JSON logs (`--log-format json`, issue 11): every standard-error line of the server and the
//! proxy is one JSON object, and every line about one subscription carries its
//! `subscription.id`, in the event's fields or in a span.

use crate::live_updates::exec;
use conflist_tests::{
    ListView, Log, ServerOptions, SipWsClient, TestDb, spawn_proxy_logged, spawn_server,
};
use serde_json::Value;
use sip::HeaderName;
use std::collections::BTreeSet;

const ALICE: &str = "sip:alice@example.com";
/// Debug for the conflist crates, info for the libraries.
const FILTER: &str = "info,conflist_proxy=debug,conflist_server=debug,conflist_service=debug";

/// The `subscription.id` of a line: in its own fields, in its span or in an enclosing one.
fn subscription_id(line: &Value) -> Option<&str> {
    const KEY: &str = "subscription.id";
    line["fields"][KEY]
        .as_str()
        .or_else(|| line["span"][KEY].as_str())
        .or_else(|| {
            line["spans"]
                .as_array()?
                .iter()
                .find_map(|s| s[KEY].as_str())
        })
}

fn message(line: &Value) -> &str {
    line["fields"]["message"].as_str().unwrap_or("")
}

/// Every line of `log`, each parsed as one JSON object.
fn parsed(process: &str, log: &Log) -> Vec<Value> {
    log.lines()
        .iter()
        .map(|l| match serde_json::from_str::<Value>(l) {
            Ok(v) if v.is_object() => v,
            _ => panic!("{process}: a log line that is not one JSON object: {l}"),
        })
        .collect()
}

/// Checks one process's lines: each that names the subscription (its id, or its subscriber,
/// the only one in this test) carries `subscription.id = id`, and so does every line with one
/// of the `known` messages, each of which occurs. Returns how many lines carry `id`.
fn check(process: &str, lines: &[Value], id: &str, known: &[&str]) -> usize {
    for line in lines {
        let text = line.to_string();
        if text.contains(ALICE) || text.contains(id) {
            assert_eq!(
                subscription_id(line),
                Some(id),
                "{process}: a line about the subscription without its subscription.id: {text}"
            );
        }
    }
    for known in known {
        let with: Vec<&Value> = lines.iter().filter(|l| message(l) == *known).collect();
        assert!(!with.is_empty(), "{process}: no {known:?} line");
        for line in with {
            assert_eq!(
                subscription_id(line),
                Some(id),
                "{process}: a {known:?} line without the subscription's id: {line}"
            );
        }
    }
    lines
        .iter()
        .filter(|l| subscription_id(l) == Some(id))
        .count()
}

#[tokio::test]
async fn json_logs_carry_the_subscription_id_on_every_line_about_it() {
    let db = TestDb::create().await.expect("test database");
    let server = spawn_server(
        &db.url,
        &ServerOptions {
            capture_log: true,
            extra_args: vec!["--log-format".into(), "json".into()],
            env: vec![("RUST_LOG".into(), FILTER.into())],
            ..ServerOptions::default()
        },
    )
    .await
    .expect("server");
    let proxy = spawn_proxy_logged(&server, &["--log-format", "json"], &[("RUST_LOG", FILTER)])
        .await
        .expect("proxy");

    // SUBSCRIBE → NOTIFY, a database change → NOTIFY, unsubscribe → the final NOTIFY.
    let mut c = SipWsClient::connect(&proxy.ws_url).await.unwrap();
    let mut dialog = c.subscribe("alice", 600).await.unwrap().dialog;
    let mut view = ListView::default();
    assert_eq!(view.next(&mut c).await.unwrap().1.unwrap().version, 0);
    let mut conn = db.connect().await.unwrap();
    exec(&mut conn, "UPDATE conflist_conferences SET subject = 'Logged' WHERE conference_uri = 'sip:1001@conf.example.com'").await;
    assert_eq!(view.next(&mut c).await.unwrap().1.unwrap().version, 1);
    c.resubscribe(&mut dialog, 0).await.unwrap();
    assert_eq!(c.recv_response().await.unwrap().status.as_u16(), 200);
    let (last, _) = view.next(&mut c).await.unwrap();
    let state = last.headers.get(&HeaderName::SUBSCRIPTION_STATE).unwrap();
    assert!(state.starts_with("terminated"), "{state}");
    drop(c);

    // The last lines of the flow: the server's final Notification, the proxy's closed flow.
    server
        .log
        .wait_until("with the final notification", |l| {
            l.contains(r#""message":"notification""#) && l.contains(r#""state":"Terminated""#)
        })
        .await
        .unwrap();
    proxy.log.wait_for("connection closed").await.unwrap();

    let server_lines = parsed("server", &server.log);
    let proxy_lines = parsed("proxy", &proxy.log);
    // One subscription, so one id in both logs.
    let ids: BTreeSet<&str> = server_lines
        .iter()
        .chain(&proxy_lines)
        .filter_map(subscription_id)
        .collect();
    assert_eq!(ids.len(), 1, "subscription ids in the logs: {ids:?}");
    let id = ids.first().unwrap().to_string();

    let on_server = check(
        "server",
        &server_lines,
        &id,
        &["subscription accepted", "notification"],
    );
    let on_proxy = check(
        "proxy",
        &proxy_lines,
        &id,
        &[
            "dialog routed",
            "to the server",
            "answer from the server",
            "notification from the server",
            "dialog gone: unrouted",
        ],
    );
    assert!(
        on_server >= 3 && on_proxy >= 3,
        "lines with the subscription's id: server {on_server}, proxy {on_proxy}"
    );

    // The proxy's lines about the flow carry its conn.id, the prefix of the subscription id.
    let routed = proxy_lines
        .iter()
        .find(|l| message(l) == "dialog routed")
        .unwrap();
    let conn_id = routed["span"]["conn.id"]
        .as_str()
        .unwrap_or_else(|| panic!("\"dialog routed\" outside a span with conn.id: {routed}"));
    assert!(
        id.starts_with(&format!("{conn_id}-")),
        "conn.id {conn_id} is not the prefix of {id}"
    );
    let closed = proxy_lines
        .iter()
        .find(|l| message(l) == "connection closed")
        .unwrap();
    assert_eq!(
        closed["span"]["conn.id"].as_str(),
        Some(conn_id),
        "{closed}"
    );
}
