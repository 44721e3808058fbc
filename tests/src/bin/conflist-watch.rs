//! `conflist-watch WS_URL USER [PASSWORD]`: subscribes to USER's conference list (domain
//! example.com), signing in with digest (PASSWORD) or a bearer token (`CONFLIST_TOKEN`), and
//! prints every NOTIFY's state and document until Ctrl-C.

use anyhow::{Context, Result};
use conflist_tests::{Auth, SipWsClient};
use sip::HeaderName;

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "ws://127.0.0.1:8080".to_owned());
    let user = args.next().unwrap_or_else(|| "alice".to_owned());
    let password = args.next();
    let mut client = SipWsClient::connect(&url).await?;
    client.auth = match (password, std::env::var("CONFLIST_TOKEN")) {
        (Some(p), _) => Auth::sha256(&user, &p),
        (None, Ok(token)) => Auth::Bearer(token),
        (None, Err(_)) => Auth::None,
    };
    let sub = client.subscribe(&user, 3600).await?;
    println!(
        "subscribed: 200 OK, Expires {}",
        sub.response
            .headers
            .get(&HeaderName::EXPIRES)
            .unwrap_or("?")
    );
    loop {
        let notify = match client.recv_notify().await {
            Ok(n) => n,
            Err(e) if e.to_string().contains("within the timeout") => continue,
            Err(e) => return Err(e),
        };
        let state = notify
            .headers
            .get(&HeaderName::SUBSCRIPTION_STATE)
            .unwrap_or("?");
        println!("\nNOTIFY  Subscription-State: {state}");
        println!("{}", String::from_utf8_lossy(&notify.body));
        client
            .respond(&notify, 200)
            .await
            .context("answer NOTIFY")?;
        if state.starts_with("terminated") {
            return Ok(());
        }
    }
}
