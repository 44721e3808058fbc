//! The proxy ⇄ server hop: a shared secret every `Session` call must present as gRPC
//! metadata `authorization: Bearer <secret>` (the server trusts the proxy's `flow_identity`,
//! so only proxies may call it). Mutual TLS is configured on the listener instead.

use prometheus_client::metrics::counter::Counter;
use subtle::ConstantTimeEq as _;
use tonic::{Request, Status};

/// A tonic interceptor that checks the shared secret in constant time.
#[derive(Clone)]
pub struct ProxySecret {
    secret: std::sync::Arc<[u8]>,
    rejected: Counter,
}

impl std::fmt::Debug for ProxySecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxySecret").finish_non_exhaustive()
    }
}

impl ProxySecret {
    /// Requires `secret`; refusals are counted in `rejected`.
    pub fn new(secret: &[u8], rejected: Counter) -> Self {
        Self {
            secret: secret.into(),
            rejected,
        }
    }

    /// Whether `header` (the `authorization` value) carries the secret.
    pub fn accepts(&self, header: &[u8]) -> bool {
        let Some((scheme, token)) = header.split_at_checked(7) else {
            return false;
        };
        scheme.eq_ignore_ascii_case(b"bearer ") && bool::from(token.ct_eq(&self.secret))
    }
}

impl tonic::service::Interceptor for ProxySecret {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let ok = request
            .metadata()
            .get("authorization")
            .is_some_and(|v| self.accepts(v.as_bytes()));
        if ok {
            Ok(request)
        } else {
            self.rejected.inc();
            tracing::warn!(
                proxy.addr = ?request.remote_addr(),
                "gRPC call without the proxy secret refused"
            );
            Err(Status::unauthenticated("proxy credentials required"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::service::Interceptor as _;

    #[test]
    fn requires_the_exact_bearer_secret() {
        let mut s = ProxySecret::new(b"s3cret", Counter::default());
        assert!(s.accepts(b"Bearer s3cret"));
        assert!(s.accepts(b"bearer s3cret"));
        assert!(!s.accepts(b"Bearer s3cre"));
        assert!(!s.accepts(b"Bearer s3cret2"));
        assert!(!s.accepts(b"Basic s3cret"));
        assert!(!s.accepts(b""));

        let mut req = Request::new(());
        req.metadata_mut()
            .insert("authorization", "Bearer s3cret".parse().unwrap());
        assert!(s.call(req).is_ok());
        let err = s.call(Request::new(())).unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
        assert_eq!(s.rejected.get(), 1);
    }
}
