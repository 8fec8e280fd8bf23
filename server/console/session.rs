//! Console sessions: when gRPC tokens are configured, a person signs in with one (a login
//! form), and gets a random session id in an `HttpOnly`, `SameSite=Strict` cookie scoped to
//! `/ui`. The token itself never goes into the cookie, and the session says only which token
//! it was (a digest prefix), which is what the reveal audit log names.
//!
//! Bounded: at most [`MAX_SESSIONS`] live sessions (the oldest is dropped for a new one),
//! at most [`MAX_SESSIONS_PER_TOKEN`] of them per token (a token's own oldest goes first, so
//! one holder signing in again and again cannot sign the others out), each for
//! [`SESSION_LIFETIME`].
//!
//! Throttled: after [`FREE_FAILURES`] wrong tokens from one client address, that address
//! may try again only once per [`RETRY_EVERY`] (answered `429` meanwhile, the token not even
//! checked), until [`FAILURE_MEMORY`] passes without a failure. Every failure is logged with
//! the client's address, never the token.
//!
//! A guesser must not lock out a colleague behind the same address (an office's NAT, a
//! proxy): a browser that once signed in with a right token keeps a device cookie (a random
//! id, [`DEVICE_COOKIE`], for [`DEVICE_LIFETIME`]), and a sign-in from a trusted device is
//! throttled on that device's own failures, never on its address's (OWASP's "device
//! cookies"). A guesser who never signed in has no trusted device and stays throttled by
//! address. Left: a person signing in for the first time from a browser with no device
//! cookie, at an address a guesser is hammering, waits as the guesser does. Devices are kept
//! in memory ([`MAX_DEVICES`] at most), as failures are: a restart forgets both.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::auth::grpc::BearerTokens;

/// Sessions kept at once.
pub(crate) const MAX_SESSIONS: usize = 1024;
/// How long a session lasts.
pub(crate) const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Live sessions one token may hold.
pub(crate) const MAX_SESSIONS_PER_TOKEN: usize = 16;
/// Wrong tokens one client address may send before it is slowed down.
pub(crate) const FREE_FAILURES: u32 = 5;
/// How often a slowed-down address may try.
pub(crate) const RETRY_EVERY: Duration = Duration::from_secs(2);
/// How long an address's failures are remembered after its last one.
const FAILURE_MEMORY: Duration = Duration::from_secs(15 * 60);
/// Client addresses whose failures are remembered at once (the stalest forgotten first).
const MAX_REMEMBERED_ADDRESSES: usize = 4096;
/// The session cookie's name.
pub(crate) const COOKIE: &str = "qistatus_console";
/// The device cookie's name.
pub(crate) const DEVICE_COOKIE: &str = "qistatus_device";
/// How long a device that signed in stays trusted.
pub(crate) const DEVICE_LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);
/// Trusted devices remembered at once (the stalest forgotten first).
pub(crate) const MAX_DEVICES: usize = 4096;

/// Who is looking: what the audit log says of a person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Viewer {
    /// `token:<8 hex digits of its SHA-256>`, or `anonymous` when the console is open.
    pub(crate) who: String,
    /// The token a signed-in person's forms carry, derived from the session id (which no
    /// other site can read): a form that changes something without it is refused. `None`
    /// when the console is open (no session, nothing to sign out of).
    pub(crate) csrf: Option<String>,
}

/// The live sessions.
#[derive(Debug)]
pub(crate) struct Sessions {
    tokens: BearerTokens,
    live: Mutex<HashMap<String, (Viewer, Instant)>>,
    failures: Mutex<HashMap<IpAddr, Failures>>,
    /// Devices that signed in with a right token: their own failures, until when trusted.
    devices: Mutex<HashMap<String, (Failures, Instant)>>,
}

/// A sign-in that opened a session: its id, and the device id to keep in the browser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SignedIn {
    /// The session id (the session cookie).
    pub(crate) session: String,
    /// The device id (the device cookie).
    pub(crate) device: String,
}

/// One client address's wrong tokens.
#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
}

/// Why a sign-in opened no session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SignInRefused {
    /// The token is not one of the configured ones.
    BadToken,
    /// This address sent too many wrong tokens: it may try again after this long.
    Throttled(Duration),
}

impl Sessions {
    pub(crate) fn new(tokens: BearerTokens) -> Sessions {
        Sessions {
            tokens,
            live: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            devices: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `authorization` (an HTTP `Authorization` value) carries a configured token.
    pub(crate) fn accepts_bearer(&self, authorization: Option<&str>) -> bool {
        self.tokens.accepts(authorization)
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
                csrf: None,
            });
        }
        let id = session_id(cookie_header)?;
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        match live.get(id) {
            Some((viewer, expires)) if *expires > Instant::now() => Some(Viewer {
                csrf: Some(csrf_token(id)),
                ..viewer.clone()
            }),
            Some(_) => {
                live.remove(id);
                None
            }
            None => None,
        }
    }

    /// Signs in with `token` from `client`, whose browser presented `device` (its device
    /// cookie, if any): a new session, or why not.
    pub(crate) fn sign_in(
        &self,
        token: &str,
        client: IpAddr,
        device: Option<&str>,
    ) -> Result<SignedIn, SignInRefused> {
        let now = Instant::now();
        let trusted = device.filter(|d| self.trusted(d, now));
        let throttled = match trusted {
            Some(device) => self.device_throttled(device, now),
            None => self.throttled(client, now),
        };
        if let Some(wait) = throttled {
            tracing::warn!(%client, trusted_device = trusted.is_some(), "console sign-in refused: too many wrong tokens");
            return Err(SignInRefused::Throttled(wait));
        }
        let token = token.trim();
        if token.is_empty() || !self.tokens.accepts(Some(&format!("Bearer {token}"))) {
            let count = match trusted {
                Some(device) => self.note_device_failure(device, now),
                None => self.note_failure(client, now),
            };
            tracing::warn!(%client, failures = count, trusted_device = trusted.is_some(), "console sign-in with a wrong token");
            return Err(SignInRefused::BadToken);
        }
        let device = match trusted {
            Some(device) => device.to_owned(),
            None => random_id().ok_or(SignInRefused::BadToken)?,
        };
        self.trust(&device, now);
        let digest = Sha256::digest(token.as_bytes());
        let viewer = Viewer {
            who: format!("token:{}", hex::encode(&digest[..4])),
            csrf: None,
        };
        let id = random_id().ok_or(SignInRefused::BadToken)?;
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        live.retain(|_, (_, expires)| *expires > now);
        let oldest = |live: &HashMap<String, (Viewer, Instant)>, same: Option<&Viewer>| {
            live.iter()
                .filter(|(_, (v, _))| same.is_none_or(|same| v == same))
                .min_by_key(|(_, (_, expires))| *expires)
                .map(|(id, _)| id.clone())
        };
        let own = live.values().filter(|(v, _)| *v == viewer).count();
        if own >= MAX_SESSIONS_PER_TOKEN {
            if let Some(oldest) = oldest(&live, Some(&viewer)) {
                live.remove(&oldest);
            }
        } else if live.len() >= MAX_SESSIONS
            && let Some(oldest) = oldest(&live, None)
        {
            live.remove(&oldest);
        }
        live.insert(id.clone(), (viewer, now + SESSION_LIFETIME));
        Ok(SignedIn {
            session: id,
            device,
        })
    }

    /// Whether `device` signed in with a right token within [`DEVICE_LIFETIME`].
    fn trusted(&self, device: &str, now: Instant) -> bool {
        let devices = self.devices.lock().unwrap_or_else(|e| e.into_inner());
        devices.get(device).is_some_and(|(_, until)| *until > now)
    }

    /// Trusts `device` for [`DEVICE_LIFETIME`] from `now`, its failures forgotten.
    fn trust(&self, device: &str, now: Instant) {
        let mut devices = self.devices.lock().unwrap_or_else(|e| e.into_inner());
        devices.retain(|_, (_, until)| *until > now);
        if devices.len() >= MAX_DEVICES
            && !devices.contains_key(device)
            && let Some(stalest) = devices
                .iter()
                .min_by_key(|(_, (_, until))| *until)
                .map(|(d, _)| d.clone())
        {
            devices.remove(&stalest);
        }
        devices.insert(
            device.to_owned(),
            (
                Failures {
                    count: 0,
                    last: now,
                },
                now + DEVICE_LIFETIME,
            ),
        );
    }

    /// How long a trusted `device` must wait before its next try, if it must.
    fn device_throttled(&self, device: &str, now: Instant) -> Option<Duration> {
        let devices = self.devices.lock().unwrap_or_else(|e| e.into_inner());
        let (f, _) = devices.get(device)?;
        let since = now.duration_since(f.last);
        (f.count >= FREE_FAILURES && since < RETRY_EVERY).then(|| RETRY_EVERY - since)
    }

    /// Counts a wrong token from a trusted `device`; how many it has sent.
    fn note_device_failure(&self, device: &str, now: Instant) -> u32 {
        let mut devices = self.devices.lock().unwrap_or_else(|e| e.into_inner());
        match devices.get_mut(device) {
            Some((f, _)) => {
                if now.duration_since(f.last) >= FAILURE_MEMORY {
                    f.count = 0;
                }
                f.count += 1;
                f.last = now;
                f.count
            }
            None => 0,
        }
    }

    /// How long `client` must wait before its next try, if it must.
    fn throttled(&self, client: IpAddr, now: Instant) -> Option<Duration> {
        let failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let f = failures.get(&client)?;
        let since = now.duration_since(f.last);
        (f.count >= FREE_FAILURES && since < RETRY_EVERY).then(|| RETRY_EVERY - since)
    }

    /// Counts a wrong token from `client`; how many it has sent.
    fn note_failure(&self, client: IpAddr, now: Instant) -> u32 {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        failures.retain(|_, f| now.duration_since(f.last) < FAILURE_MEMORY);
        if failures.len() >= MAX_REMEMBERED_ADDRESSES
            && !failures.contains_key(&client)
            && let Some(stalest) = failures.iter().min_by_key(|(_, f)| f.last).map(|(a, _)| *a)
        {
            failures.remove(&stalest);
        }
        let f = failures.entry(client).or_insert(Failures {
            count: 0,
            last: now,
        });
        f.count += 1;
        f.last = now;
        f.count
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

/// The form token of session `id`.
fn csrf_token(id: &str) -> String {
    let digest = Sha256::digest(format!("qistatus console form\0{id}").as_bytes());
    hex::encode(&digest[..16])
}

/// The session id in a `Cookie` header, if it carries one.
fn session_id(cookie_header: Option<&str>) -> Option<&str> {
    cookie_value(cookie_header, COOKIE)
}

/// The device cookie a browser presented, if any.
pub(crate) fn device_id(cookie_header: Option<&str>) -> Option<&str> {
    cookie_value(cookie_header, DEVICE_COOKIE)
}

fn cookie_value<'h>(cookie_header: Option<&'h str>, name: &str) -> Option<&'h str> {
    cookie::Cookie::split_parse(cookie_header?)
        .filter_map(Result::ok)
        .find(|c| c.name() == name)
        .and_then(|c| c.value_raw())
}

/// 32 random bytes in hex; `None` if the system has no randomness to give.
fn random_id() -> Option<String> {
    let mut id = [0u8; 32];
    getrandom::fill(&mut id).ok()?;
    Some(hex::encode(id))
}

/// The `Set-Cookie` value of device `id`: as the session's, for [`DEVICE_LIFETIME`].
pub(crate) fn device_cookie(id: &str, secure: bool) -> String {
    cookie::Cookie::build((DEVICE_COOKIE, id.to_owned()))
        .path("/ui")
        .http_only(true)
        .same_site(cookie::SameSite::Strict)
        .max_age(cookie::time::Duration::seconds(
            i64::try_from(DEVICE_LIFETIME.as_secs()).unwrap_or(i64::MAX),
        ))
        .secure(secure)
        .build()
        .to_string()
}

/// The `Set-Cookie` value of session `id`: only for the console's pages, never to scripts,
/// never sent from another site, for the session's lifetime; `Secure` over TLS.
pub(crate) fn session_cookie(id: &str, secure: bool) -> String {
    base_cookie(id.to_owned())
        .max_age(cookie::time::Duration::seconds(
            i64::try_from(SESSION_LIFETIME.as_secs()).unwrap_or(i64::MAX),
        ))
        .secure(secure)
        .build()
        .to_string()
}

/// The `Set-Cookie` value that ends the session in the browser.
pub(crate) fn cleared_cookie() -> String {
    base_cookie(String::new())
        .max_age(cookie::time::Duration::ZERO)
        .build()
        .to_string()
}

fn base_cookie(value: String) -> cookie::CookieBuilder<'static> {
    cookie::Cookie::build((COOKIE, value))
        .path("/ui")
        .http_only(true)
        .same_site(cookie::SameSite::Strict)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_configured_token_opens_a_session_and_the_cookie_names_it() {
        let sessions = Sessions::new(BearerTokens::from_files_text(["s3cret\n"]));
        assert!(sessions.required());
        assert_eq!(sessions.viewer(None), None);
        let client = IpAddr::from([127, 0, 0, 1]);
        assert_eq!(
            sessions.sign_in("wrong", client, None),
            Err(SignInRefused::BadToken)
        );
        assert_eq!(
            sessions.sign_in("", client, None),
            Err(SignInRefused::BadToken)
        );
        let id = sessions
            .sign_in("s3cret", client, None)
            .expect("a session")
            .session;
        let cookie = format!("other=1; {COOKIE}={id}");
        let viewer = sessions.viewer(Some(&cookie)).expect("signed in");
        assert!(viewer.who.starts_with("token:"), "{viewer:?}");
        assert!(!viewer.who.contains("s3cret"));
        let csrf = viewer
            .csrf
            .expect("a signed-in viewer's forms carry a token");
        assert!(!csrf.is_empty() && !cookie.contains(&csrf));
        assert_eq!(sessions.viewer(Some(&format!("{COOKIE}=forged"))), None);
        sessions.sign_out(Some(&cookie));
        assert_eq!(sessions.viewer(Some(&cookie)), None);
    }

    #[test]
    fn wrong_tokens_slow_their_address_down_and_not_others() {
        let sessions = Sessions::new(BearerTokens::from_files_text(["s3cret\n"]));
        let (guesser, other) = (IpAddr::from([10, 0, 0, 1]), IpAddr::from([10, 0, 0, 2]));
        // A colleague behind the guesser's address signed in before: a trusted device.
        let colleague = sessions.sign_in("s3cret", guesser, None).unwrap().device;
        for _ in 0..FREE_FAILURES {
            assert_eq!(
                sessions.sign_in("guess", guesser, None),
                Err(SignInRefused::BadToken)
            );
        }
        // Even the right token waits now: a guesser learns nothing from a throttled try.
        assert!(matches!(
            sessions.sign_in("s3cret", guesser, None),
            Err(SignInRefused::Throttled(wait)) if wait <= RETRY_EVERY
        ));
        // A forged device id is no trusted device.
        assert!(matches!(
            sessions.sign_in("s3cret", guesser, Some("forged")),
            Err(SignInRefused::Throttled(_))
        ));
        assert!(sessions.sign_in("s3cret", other, None).is_ok());
        // The colleague's browser is not locked out by the guesser, every time.
        for _ in 0..3 {
            let again = sessions
                .sign_in("s3cret", guesser, Some(&colleague))
                .unwrap();
            assert_eq!(again.device, colleague);
        }
        // A trusted device that guesses is throttled on its own failures.
        for _ in 0..FREE_FAILURES {
            assert_eq!(
                sessions.sign_in("guess", guesser, Some(&colleague)),
                Err(SignInRefused::BadToken)
            );
        }
        assert!(matches!(
            sessions.sign_in("s3cret", guesser, Some(&colleague)),
            Err(SignInRefused::Throttled(_))
        ));
    }

    #[test]
    fn one_holder_signing_in_again_and_again_signs_nobody_else_out() {
        let sessions = Sessions::new(BearerTokens::from_files_text(["alpha\nbeta\n"]));
        let client = IpAddr::from([127, 0, 0, 1]);
        let beta = sessions
            .sign_in("beta", client, None)
            .expect("a session")
            .session;
        let mut alpha = Vec::new();
        for _ in 0..MAX_SESSIONS + 10 {
            alpha.push(
                sessions
                    .sign_in("alpha", client, None)
                    .expect("a session")
                    .session,
            );
        }
        let cookie = |id: &str| format!("{COOKIE}={id}");
        assert!(
            sessions.viewer(Some(&cookie(&beta))).is_some(),
            "beta still in"
        );
        let alive = alpha
            .iter()
            .filter(|id| sessions.viewer(Some(&cookie(id))).is_some())
            .count();
        assert_eq!(alive, MAX_SESSIONS_PER_TOKEN);
        assert!(
            sessions
                .viewer(Some(&cookie(alpha.last().unwrap())))
                .is_some()
        );
    }

    #[test]
    fn an_open_console_needs_no_session() {
        let sessions = Sessions::new(BearerTokens::default());
        assert_eq!(sessions.viewer(None).unwrap().who, "anonymous");
    }
}
