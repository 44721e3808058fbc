//! The JSON admin API on the admin port, next to `/livez`, `/readyz` and `/metrics`:
//!
//! * `GET /admin/subscriptions[?user=sip:…]`: the live subscriptions of this instance;
//! * `GET /admin/counts`: subscriptions, proxy sessions and distinct users;
//! * `POST /admin/resend?user=sip:…`: a full NOTIFY to every subscription of that user
//!   (Kamailio's `refreshWatchers`).
//!
//! Every request needs `Authorization: Bearer <token>` (`--admin-token-file`, compared in
//! constant time), else 401. Without the flag the routes are not mounted (404).
//!
//! The subscriptions live in the session tasks ([`crate::api`]), not here: the [`Hub`] holds
//! one bounded command channel per session, and a request asks every session and waits, at
//! most [`ASK_TIMEOUT`], for its answer. A session that does not answer in time is left out
//! (and counted in the answer as `sessions_unanswered`).

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use subtle::ConstantTimeEq as _;
use tokio::sync::{mpsc, oneshot};

/// Commands waiting per session; a session whose queue is full is skipped for that request.
const SESSION_COMMANDS: usize = 4;
/// How long a request waits for each session's answer.
pub const ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// One live subscription as the admin API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SubscriptionInfo {
    /// The subscription id (the proxy's).
    pub id: String,
    /// The subscriber's address of record.
    pub user: String,
    /// The proxy session's peer address.
    pub proxy: String,
    /// When it was admitted, Unix seconds.
    pub since: u64,
    /// Seconds until it expires unless refreshed.
    pub expires: u32,
    /// The version of the last Notification sent (`None` before the first).
    pub version: Option<u64>,
    /// The last version the subscriber accepted (`None` before the first answer).
    pub last_delivered: Option<u64>,
}

/// What the admin API asks a session task.
#[derive(Debug)]
pub enum Command {
    /// Its live subscriptions, of one user (same address of record) or all.
    List {
        /// Only this user's.
        user: Option<String>,
        /// The answer.
        reply: oneshot::Sender<Vec<SubscriptionInfo>>,
    },
    /// Send full state to every subscription of `user`; answers how many.
    Resend {
        /// The address of record.
        user: String,
        /// The answer.
        reply: oneshot::Sender<usize>,
    },
}

/// The sessions of this instance, each with its command channel.
#[derive(Debug, Default)]
pub struct Hub {
    sessions: Mutex<HashMap<u64, mpsc::Sender<Command>>>,
    next: Mutex<u64>,
}

/// A session's place in the [`Hub`]; removed on drop.
#[derive(Debug)]
pub struct Registration {
    hub: Arc<Hub>,
    key: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.hub
            .sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.key);
    }
}

impl Hub {
    /// Registers a session; it must read the returned receiver.
    pub fn register(self: &Arc<Self>) -> (Registration, mpsc::Receiver<Command>) {
        let (tx, rx) = mpsc::channel(SESSION_COMMANDS);
        let key = {
            let mut next = self.next.lock().unwrap_or_else(PoisonError::into_inner);
            *next += 1;
            *next
        };
        self.sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, tx);
        (
            Registration {
                hub: self.clone(),
                key,
            },
            rx,
        )
    }

    /// Registered sessions.
    pub fn sessions(&self) -> usize {
        self.sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Asks every session; returns the answers and how many sessions gave none in time.
    async fn ask_all<T>(&self, make: impl Fn(oneshot::Sender<T>) -> Command) -> (Vec<T>, usize) {
        let senders: Vec<_> = self
            .sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        let asks = senders.into_iter().map(|tx| {
            let (reply, answer) = oneshot::channel();
            let sent = tx.try_send(make(reply)).is_ok();
            async move {
                if !sent {
                    return None;
                }
                tokio::time::timeout(ASK_TIMEOUT, answer).await.ok()?.ok()
            }
        });
        let answers = futures_util::future::join_all(asks).await;
        let missing = answers.iter().filter(|a| a.is_none()).count();
        (answers.into_iter().flatten().collect(), missing)
    }

    /// The live subscriptions of every session (of `user` only, when given), by id.
    pub async fn subscriptions(&self, user: Option<&str>) -> (Vec<SubscriptionInfo>, usize) {
        let (lists, missing) = self
            .ask_all(|reply| Command::List {
                user: user.map(str::to_owned),
                reply,
            })
            .await;
        let mut all: Vec<_> = lists.into_iter().flatten().collect();
        all.sort_by(|a, b| (&a.user, &a.id).cmp(&(&b.user, &b.id)));
        (all, missing)
    }

    /// Forces full state to every subscription of `user`; how many were sent one.
    pub async fn resend(&self, user: &str) -> (usize, usize) {
        let (counts, missing) = self
            .ask_all(|reply| Command::Resend {
                user: user.to_owned(),
                reply,
            })
            .await;
        (counts.into_iter().sum(), missing)
    }
}

/// The admin API's routes, to merge with the service's admin router; `None` without a
/// token (the routes then answer 404).
pub fn router(hub: Arc<Hub>, token: Option<Vec<u8>>) -> Router {
    let Some(token) = token else {
        return Router::new();
    };
    let state = AdminState {
        hub,
        token: Arc::new(token),
    };
    Router::new()
        .route("/admin/subscriptions", get(subscriptions))
        .route("/admin/counts", get(counts))
        .route("/admin/resend", post(resend))
        // One check for every route: no token, no answer.
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_token,
        ))
        .with_state(state)
}

/// Answers 401 unless the request carries the admin token.
async fn require_token(
    State(state): State<AdminState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if authorized(&state, request.headers()) {
        next.run(request).await
    } else {
        unauthorized()
    }
}

#[derive(Debug, Clone)]
struct AdminState {
    hub: Arc<Hub>,
    token: Arc<Vec<u8>>,
}

#[derive(Debug, Deserialize)]
struct UserQuery {
    user: Option<String>,
}

/// Whether the request carries the token (constant time in the token's content).
fn authorized(state: &AdminState, headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return false;
    };
    let Some(given) = value.as_bytes().strip_prefix(b"Bearer ") else {
        return false;
    };
    bool::from(given.ct_eq(state.token.as_slice()))
}

/// A JSON response (axum's `json` feature is not enabled; this is all it would do here).
fn json(status: StatusCode, value: &serde_json::Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        format!("{value}\n"),
    )
        .into_response()
}

fn unauthorized() -> Response {
    let mut response = json(
        StatusCode::UNAUTHORIZED,
        &serde_json::json!({ "error": "admin token required" }),
    );
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
    );
    response
}

async fn subscriptions(State(state): State<AdminState>, Query(q): Query<UserQuery>) -> Response {
    let (subs, missing) = state.hub.subscriptions(q.user.as_deref()).await;
    json(
        StatusCode::OK,
        &serde_json::json!({
        "subscriptions": subs,
        "sessions_unanswered": missing,
        }),
    )
}

async fn counts(State(state): State<AdminState>) -> Response {
    let sessions = state.hub.sessions();
    let (subs, missing) = state.hub.subscriptions(None).await;
    let users: BTreeSet<&str> = subs.iter().map(|s| s.user.as_str()).collect();
    json(
        StatusCode::OK,
        &serde_json::json!({
        "subscriptions": subs.len(),
        "sessions": sessions,
        "users": users.len(),
        "sessions_unanswered": missing,
        }),
    )
}

async fn resend(State(state): State<AdminState>, Query(q): Query<UserQuery>) -> Response {
    let Some(user) = q.user.filter(|u| !u.is_empty()) else {
        return json(
            StatusCode::BAD_REQUEST,
            &serde_json::json!({ "error": "user=sip:… is required" }),
        );
    };
    let (resent, missing) = state.hub.resend(&user).await;
    json(
        StatusCode::OK,
        &serde_json::json!({
        "user": user,
        "resent": resent,
        "sessions_unanswered": missing,
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(token: &str) -> AdminState {
        AdminState {
            hub: Arc::default(),
            token: Arc::new(token.as_bytes().to_vec()),
        }
    }

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, value.parse().unwrap());
        h
    }

    #[test]
    fn only_the_exact_bearer_token_is_authorized() {
        let s = state("s3cret");
        assert!(authorized(&s, &headers("Bearer s3cret")));
        assert!(!authorized(&s, &HeaderMap::new()));
        assert!(!authorized(&s, &headers("Bearer s3cre")));
        assert!(!authorized(&s, &headers("Bearer s3cret2")));
        assert!(!authorized(&s, &headers("Basic s3cret")));
        assert!(!authorized(&s, &headers("s3cret")));
    }

    #[tokio::test]
    async fn a_session_that_never_answers_is_left_out_in_time() {
        let hub = Arc::new(Hub::default());
        let (registration, _rx) = hub.register();
        assert_eq!(hub.sessions(), 1);
        let (subs, missing) = hub.subscriptions(None).await;
        assert_eq!((subs.len(), missing), (0, 1));
        drop(registration);
        assert_eq!(hub.sessions(), 0);
    }
}
