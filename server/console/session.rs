//! Console sessions: when gRPC tokens are configured, a person signs in with one (a login
//! form), and gets a random session id in an `HttpOnly`, `SameSite=Strict` cookie scoped to
//! `/ui`. The token itself never goes into the cookie, and the session says only which token
//! it was (a digest prefix), which is what the reveal audit log names.
//!
//! Bounded: at most [`MAX_SESSIONS`] live sessions (the oldest is dropped for a new one),
//! each for [`SESSION_LIFETIME`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::auth::grpc::BearerTokens;

/// Sessions kept at once.
pub(crate) const MAX_SESSIONS: usize = 1024;
/// How long a session lasts.
pub(crate) const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// The session cookie's name.
pub(crate) const COOKIE: &str = "qistatus_console";

/// Who is looking: what the audit log says of a person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Viewer {
    /// `token:<8 hex digits of its SHA-256>`, or `anonymous` when the console is open.
    pub(crate) who: String,
}

/// The live sessions.
#[derive(Debug)]
pub(crate) struct Sessions {
    tokens: BearerTokens,
    live: Mutex<HashMap<String, (Viewer, Instant)>>,
}

impl Sessions {
    pub(crate) fn new(tokens: BearerTokens) -> Sessions {
        Sessions {
            tokens,
            live: Mutex::new(HashMap::new()),
        }
    }

    /// Whether the console asks who is looking.
    pub(crate) fn required(&self) -> bool {
        self.tokens.is_enabled()
    }

    /// The viewer of a request carrying `cookie_header` (`None`: sign in first).
    pub(crate) fn viewer(&self, cookie_header: Option<&str>) -> Option<Viewer> {
        if !self.required() {
            return Some(Viewer {
                who: "anonymous".into(),
            });
        }
        let id = session_id(cookie_header)?;
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        match live.get(id) {
            Some((viewer, expires)) if *expires > Instant::now() => Some(viewer.clone()),
            Some(_) => {
                live.remove(id);
                None
            }
            None => None,
        }
    }

    /// Signs in with `token`: a new session id, or `None` for a token that is not accepted.
    pub(crate) fn sign_in(&self, token: &str) -> Option<String> {
        let token = token.trim();
        if token.is_empty() || !self.tokens.accepts(Some(&format!("Bearer {token}"))) {
            return None;
        }
        let digest = Sha256::digest(token.as_bytes());
        let viewer = Viewer {
            who: format!("token:{}", hex::encode(&digest[..4])),
        };
        let mut id = [0u8; 32];
        getrandom::fill(&mut id).ok()?;
        let id = hex::encode(id);
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        live.retain(|_, (_, expires)| *expires > now);
        if live.len() >= MAX_SESSIONS
            && let Some(oldest) = live
                .iter()
                .min_by_key(|(_, (_, expires))| *expires)
                .map(|(id, _)| id.clone())
        {
            live.remove(&oldest);
        }
        live.insert(id.clone(), (viewer, now + SESSION_LIFETIME));
        Some(id)
    }

    /// Ends the session of `cookie_header`, if any.
    pub(crate) fn sign_out(&self, cookie_header: Option<&str>) {
        let Some(id) = session_id(cookie_header) else {
            return;
        };
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }
}

/// The session id in a `Cookie` header, if it carries one.
fn session_id(cookie_header: Option<&str>) -> Option<&str> {
    cookie_header?
        .split(';')
        .filter_map(|c| c.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, id)| id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_configured_token_opens_a_session_and_the_cookie_names_it() {
        let sessions = Sessions::new(BearerTokens::from_files_text(["s3cret\n"]));
        assert!(sessions.required());
        assert_eq!(sessions.viewer(None), None);
        assert_eq!(sessions.sign_in("wrong"), None);
        assert_eq!(sessions.sign_in(""), None);
        let id = sessions.sign_in("s3cret").expect("a session");
        let cookie = format!("other=1; {COOKIE}={id}");
        let viewer = sessions.viewer(Some(&cookie)).expect("signed in");
        assert!(viewer.who.starts_with("token:"), "{viewer:?}");
        assert!(!viewer.who.contains("s3cret"));
        assert_eq!(sessions.viewer(Some(&format!("{COOKIE}=forged"))), None);
        sessions.sign_out(Some(&cookie));
        assert_eq!(sessions.viewer(Some(&cookie)), None);
    }

    #[test]
    fn an_open_console_needs_no_session() {
        let sessions = Sessions::new(BearerTokens::default());
        assert_eq!(sessions.viewer(None).unwrap().who, "anonymous");
    }
}
