//! Bearer tokens for the gRPC API, checked by a tower layer in front of every service but
//! health (load balancers and orchestrators probe health without credentials).
//!
//! An authenticated call (any call but health's when no tokens are configured) marks its
//! connection as proven: see [`crate::net::AtCapacity::EvictUnproven`].
//!
//! Tokens are compared by their SHA-256 digests in constant time, against every configured
//! token, so neither a token's contents nor which token matched leak through timing.

use std::sync::Arc;
use std::task::{Context, Poll};

use sha2::{Digest, Sha256};
use tower::{Layer, Service};

use super::webhook::constant_time_eq;
use crate::net::ConnectionInfo;

/// The accepted tokens. Empty: every call is allowed.
#[derive(Clone, Default)]
pub struct BearerTokens {
    digests: Arc<Vec<[u8; 32]>>,
}

impl std::fmt::Debug for BearerTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BearerTokens({} tokens)", self.digests.len())
    }
}

impl BearerTokens {
    /// Tokens from the text of token files: one per line; blank lines and `#` comments
    /// are skipped.
    pub fn from_files_text<'a>(texts: impl IntoIterator<Item = &'a str>) -> Self {
        let digests = texts
            .into_iter()
            .flat_map(str::lines)
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|t| Sha256::digest(t.as_bytes()).into())
            .collect();
        BearerTokens {
            digests: Arc::new(digests),
        }
    }

    /// Whether any token is configured.
    pub fn is_enabled(&self) -> bool {
        !self.digests.is_empty()
    }

    /// Whether an `authorization` header value carries an accepted token.
    pub fn accepts(&self, authorization: Option<&str>) -> bool {
        // The scheme name is case-insensitive (RFC 9110, section 11.1).
        let Some(token) = authorization
            .and_then(|a| a.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token)
        else {
            return false;
        };
        let digest: [u8; 32] = Sha256::digest(token.trim().as_bytes()).into();
        // Compare with every token, without stopping at the first match.
        self.digests
            .iter()
            .fold(false, |found, d| constant_time_eq(d, &digest) | found)
    }
}

/// The tower layer that enforces [`BearerTokens`].
#[derive(Debug, Clone)]
pub struct BearerAuthLayer {
    tokens: BearerTokens,
}

impl BearerAuthLayer {
    /// A layer checking `tokens` (a no-op when there are none).
    pub fn new(tokens: BearerTokens) -> Self {
        BearerAuthLayer { tokens }
    }
}

impl<S> Layer<S> for BearerAuthLayer {
    type Service = BearerAuth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BearerAuth {
            inner,
            tokens: self.tokens.clone(),
        }
    }
}

/// See [`BearerAuthLayer`].
#[derive(Debug, Clone)]
pub struct BearerAuth<S> {
    inner: S,
    tokens: BearerTokens,
}

const OPEN_PREFIX: &str = "/grpc.health.v1.Health/";

impl<S, B> Service<http::Request<B>> for BearerAuth<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures_util::future::Either<
        S::Future,
        std::future::Ready<Result<Self::Response, Self::Error>>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let health = request.uri().path().starts_with(OPEN_PREFIX);
        let authorization = request
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let authenticated = !self.tokens.is_enabled() || self.tokens.accepts(authorization);
        if authenticated && !health {
            // The connection has shown it serves a caller: at the connection bound it is
            // kept, while connections that never called are closed to make room.
            if let Some(info) = request.extensions().get::<ConnectionInfo>() {
                info.proof.prove();
            }
        }
        if health || authenticated {
            return futures_util::future::Either::Left(self.inner.call(request));
        }
        let reason = if authorization.is_none() {
            "missing bearer token: send `authorization: Bearer <token>`"
        } else {
            "invalid bearer token"
        };
        let response = tonic::Status::unauthenticated(reason).into_http();
        futures_util::future::Either::Right(std::future::ready(Ok(response)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_only_configured_tokens() {
        let tokens = BearerTokens::from_files_text(["# ops\nalpha\n\n  beta  \n", "gamma"]);
        assert!(tokens.is_enabled());
        for good in [
            "Bearer alpha",
            "Bearer beta",
            "Bearer gamma",
            "bearer alpha",
            "BEARER beta",
        ] {
            assert!(tokens.accepts(Some(good)), "{good}");
        }
        for bad in [
            None,
            Some("alpha"),
            Some("Bearer alph"),
            Some("Bearer # ops"),
            Some("Basic alpha"),
            Some("Bearer "),
        ] {
            assert!(!tokens.accepts(bad), "{bad:?}");
        }
        assert!(!BearerTokens::default().is_enabled());
    }
}
