//! Verifying that a webhook comes from QI Tech (or from a trusted relay).
//!
//! Three schemes, any of which can be configured; when at least one is, every webhook must
//! pass one of them, and one that fails is answered `401` with the reason and not stored:
//!
//! - **QI Tech's signed request** (current): header `AUTHORIZATION` holds an ES512 JWT
//!   (ECDSA P-521, SHA-512) signed with QI Tech's private key, whose claims are
//!   `payload_md5` (MD5 of the raw body, hex), `timestamp`, `method` and `uri` (or, in the
//!   shape QI's webhook-validation guide also shows, one claim `signature` holding
//!   `METHOD\nURI\nMD5`, which signs no time: a replay is then answered `duplicate`); header
//!   `API-CLIENT-KEY` holds the client's key. The signature is checked against the configured
//!   public keys (several, for rotation), then the body hash, the method, the path, the
//!   client key (when keys are configured) and the timestamp against the allowed clock skew.
//! - **QI Tech's encoded body** (older): the body is `{"encoded_body": "<JWT>"}`; the JWT is
//!   verified with the same keys and its payload *is* the webhook; `API-CLIENT-KEY` is checked
//!   as for the signed request. This scheme signs no timestamp, so a captured request can be
//!   sent again: qistatus then answers `duplicate` (the same content is the same webhook),
//!   which is why the replay cannot change any status.
//! - **QI DTVM** (securities services): header `SIGNATURE` holds an HS256 JWT signed with a
//!   key QI DTVM and the partner share (several, for rotation). Its documentation names no
//!   claim that binds the body, so it proves who sent the request, not what it carries: such
//!   a request may carry only the catalog's `qi_dtvm_kinds` (the intake checks). Its `iat`
//!   (required unless configured otherwise) and `exp` are checked in any JSON form. A
//!   replayed request is answered `duplicate`.
//! - **QI CaaS** (card-order fraud analysis): header `Signature` holds the hex HMAC-SHA1,
//!   under a key QI CaaS and the partner share, of the URL QI was given, the method and the
//!   body, concatenated (QI's card order webhook document); QI sends these with `PUT`. It
//!   binds the body, the method and the URL, and no time: a replay is answered `duplicate`. Told from QI DTVM's `SIGNATURE` (the same
//!   header name) by its shape: 40 hex digits, not a JWT.
//! - **Standard Webhooks HMAC** (for deployments behind a relay): headers `webhook-id`,
//!   `webhook-timestamp` and `webhook-signature` (`v1,<base64 HMAC-SHA256 of
//!   id.timestamp.body>`, several allowed), compared in constant time against every secret.
//!
//! Everything here is a pure function of the request, the keys and the current time.

use std::borrow::Cow;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use md5::{Digest, Md5};
use p521::ecdsa::signature::Verifier;
use p521::ecdsa::{Signature, VerifyingKey};
use p521::pkcs8::DecodePublicKey;
use serde::Deserialize;

use crate::standard_webhooks;
use subtle::ConstantTimeEq;

/// Why a webhook was refused. The text is the reason sent back with the `401`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No scheme's headers were present.
    #[error(
        "missing signature: expected an AUTHORIZATION JWT, an encoded_body, a SIGNATURE JWT (QI DTVM), a Signature HMAC (QI CaaS), or webhook-signature headers"
    )]
    Missing,
    /// The token or header could not be parsed.
    #[error("malformed signature: {0}")]
    Malformed(String),
    /// The signature does not verify with any configured key.
    #[error("bad signature")]
    BadSignature,
    /// The body is not the one that was signed.
    #[error("body hash mismatch: payload_md5 does not match the body")]
    BodyHashMismatch,
    /// The signed method or path is not this request's.
    #[error("signed {claim} {signed:?} does not match the request's {actual:?}")]
    RequestMismatch {
        /// `method` or `uri`.
        claim: &'static str,
        /// What was signed.
        signed: String,
        /// What the request has.
        actual: String,
    },
    /// The signed timestamp is too far from now.
    #[error(
        "stale timestamp: signed {skew_seconds} s away from now, more than the allowed {allowed_seconds} s"
    )]
    StaleTimestamp {
        /// How far, in seconds.
        skew_seconds: i64,
        /// The allowed skew, in seconds.
        allowed_seconds: i64,
    },
    /// The API-CLIENT-KEY header is absent or not a configured key.
    #[error("unknown client key in API-CLIENT-KEY")]
    UnknownClientKey,
    /// A QI DTVM or QI CaaS signature on a webhook that is not one of that sender's kinds.
    #[error(
        "a {sender} signature vouches only for {sender}'s webhooks (the catalog's {list}), not \
         for {what}"
    )]
    NotTheSendersKind {
        /// Who signed: `QI DTVM` or `QI CaaS`.
        sender: &'static str,
        /// The catalog's list of that sender's kinds.
        list: &'static str,
        /// What the webhook was.
        what: String,
    },
}

/// Who vouched for a verified request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sender {
    /// No scheme is configured: nobody was asked.
    Unverified,
    /// QI Tech's ES512 signature (signed request or encoded body).
    QiTech,
    /// QI DTVM's HS256 `SIGNATURE`: it binds no body, so only QI DTVM's own kinds may come
    /// with it (the intake checks, once it knows the kind).
    QiDtvm,
    /// QI CaaS's HMAC-SHA1 `Signature` (URL, method and body).
    QiCaas,
    /// A relay's Standard Webhooks HMAC.
    Relay,
}

/// A verified request: the webhook body, and who vouched for it.
#[derive(Debug)]
pub struct Verified<'b> {
    /// The request body, or the payload of an `encoded_body`.
    pub body: Cow<'b, [u8]>,
    /// Who vouched for it.
    pub sender: Sender,
}

/// Shared secrets as given (trimmed), each refused by its position (`what #n`) when empty.
fn shared_keys(keys: &[String], what: &str) -> Result<Vec<Vec<u8>>, KeyError> {
    keys.iter()
        .enumerate()
        .map(|(i, k)| {
            let k = k.trim();
            if k.is_empty() {
                Err(KeyError {
                    what: format!("{what} #{}", i + 1),
                    reason: "empty".into(),
                })
            } else {
                Ok(k.as_bytes().to_vec())
            }
        })
        .collect()
}

/// Whether a `Signature` header has the shape of QI CaaS's HMAC-SHA1: 40 hex digits (a QI
/// DTVM JWT has dots and base64url).
fn is_hex_sha1(signature: &str) -> bool {
    let s = signature.trim();
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A key or secret file that could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {reason}")]
pub struct KeyError {
    pub(crate) what: String,
    pub(crate) reason: String,
}

/// The request facts a verifier needs.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    /// HTTP method.
    pub method: &'a str,
    /// Path and query of the request.
    pub path_and_query: &'a str,
    /// `AUTHORIZATION` header.
    pub authorization: Option<&'a str>,
    /// `API-CLIENT-KEY` header.
    pub api_client_key: Option<&'a str>,
    /// `webhook-id` header.
    pub webhook_id: Option<&'a str>,
    /// `webhook-timestamp` header.
    pub webhook_timestamp: Option<&'a str>,
    /// `webhook-signature` header.
    pub webhook_signature: Option<&'a str>,
    /// `SIGNATURE` header (QI DTVM's JWT, or QI CaaS's hex HMAC).
    pub signature: Option<&'a str>,
    /// `Host` header (HTTP/2's `:authority`): the URL QI CaaS signed, when no base URL is
    /// configured.
    pub host: Option<&'a str>,
}

/// The largest accepted difference between a signature's timestamp and now, by default.
pub const DEFAULT_MAX_CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

/// The configured schemes. With none configured, every webhook is accepted as is.
#[derive(Clone, Default)]
pub struct WebhookVerifier {
    qitech_keys: Vec<VerifyingKey>,
    client_keys: Vec<String>,
    hmac_secrets: Vec<Vec<u8>>,
    dtvm_keys: Vec<Vec<u8>>,
    /// Whether QI DTVM tokens without `iat` are accepted.
    dtvm_without_iat: bool,
    caas_keys: Vec<Vec<u8>>,
    /// The scheme and host QI CaaS was given for this intake (`https://hooks.example.com`);
    /// `None`: `https://` and the request's `Host`.
    caas_url_base: Option<String>,
    max_clock_skew: Duration,
}

impl std::fmt::Debug for WebhookVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookVerifier")
            .field("qitech_keys", &self.qitech_keys.len())
            .field("client_keys", &self.client_keys.len())
            .field("hmac_secrets", &self.hmac_secrets.len())
            .field("dtvm_keys", &self.dtvm_keys.len())
            .field("caas_keys", &self.caas_keys.len())
            .field("caas_url_base", &self.caas_url_base)
            .field("max_clock_skew", &self.max_clock_skew)
            .finish()
    }
}

impl WebhookVerifier {
    /// A verifier with the given QI Tech public keys (PEM), API client keys and HMAC secrets
    /// (`whsec_<base64>` as Standard Webhooks prints them, or raw text).
    pub fn new(
        qitech_public_keys_pem: &[String],
        client_keys: Vec<String>,
        hmac_secrets: &[String],
        max_clock_skew: Duration,
    ) -> Result<Self, KeyError> {
        let qitech_keys = qitech_public_keys_pem
            .iter()
            .enumerate()
            .map(|(i, pem)| {
                let bad = |reason: String| KeyError {
                    what: format!("QI Tech public key #{}", i + 1),
                    reason,
                };
                let public = p521::PublicKey::from_public_key_pem(pem.trim())
                    .map_err(|e| bad(format!("not a P-521 public key in PEM: {e}")))?;
                VerifyingKey::from_affine(*public.as_affine())
                    .map_err(|e| bad(format!("not a usable P-521 key: {e}")))
            })
            .collect::<Result<_, _>>()?;
        let hmac_secrets = hmac_secrets
            .iter()
            .enumerate()
            .map(|(i, s)| {
                standard_webhooks::parse_secret(s).map_err(|reason| KeyError {
                    what: format!("webhook secret #{}", i + 1),
                    reason,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(WebhookVerifier {
            qitech_keys,
            client_keys,
            hmac_secrets,
            dtvm_keys: Vec::new(),
            dtvm_without_iat: false,
            caas_keys: Vec::new(),
            caas_url_base: None,
            max_clock_skew,
        })
    }

    /// This verifier also accepting QI CaaS's HMAC-SHA1 `Signature` under any of `keys`
    /// (several during a rotation). `url_base` is the scheme and host QI CaaS was given for
    /// this intake, as QI writes it (the signed URL is it followed by the request's path);
    /// without one, `https://` and the request's `Host`.
    pub fn with_caas_keys(
        mut self,
        keys: &[String],
        url_base: Option<String>,
    ) -> Result<Self, KeyError> {
        self.caas_keys = shared_keys(keys, "QI CaaS key")?;
        self.caas_url_base = url_base.map(|b| b.trim().trim_end_matches('/').to_owned());
        Ok(self)
    }

    /// This verifier accepting QI DTVM tokens that carry no `iat` (for a sender that never
    /// sends one: such a token, once captured, is good until its `exp`, or for ever).
    pub fn with_dtvm_tokens_without_iat(mut self, accept: bool) -> Self {
        self.dtvm_without_iat = accept;
        self
    }

    /// This verifier also accepting QI DTVM's HS256 `SIGNATURE` tokens signed with any of
    /// `keys` (as QI DTVM hands them out; several during a rotation).
    pub fn with_dtvm_keys(mut self, keys: &[String]) -> Result<Self, KeyError> {
        self.dtvm_keys = shared_keys(keys, "QI DTVM key")?;
        Ok(self)
    }

    /// Whether any scheme is configured.
    pub fn is_enabled(&self) -> bool {
        !self.qitech_keys.is_empty()
            || !self.hmac_secrets.is_empty()
            || !self.dtvm_keys.is_empty()
            || !self.caas_keys.is_empty()
    }

    /// Verifies a request; returns the webhook body (the request body, or the payload of an
    /// `encoded_body`) and who vouched for it. `now` is in seconds since the Unix epoch.
    pub fn verify<'b>(
        &self,
        request: &RequestFacts<'_>,
        body: &'b [u8],
        now: i64,
    ) -> Result<Verified<'b>, AuthError> {
        let verified = |body: Cow<'b, [u8]>, sender| Ok(Verified { body, sender });
        if !self.is_enabled() {
            return verified(Cow::Borrowed(body), Sender::Unverified);
        }
        if let (Some(token), false) = (request.authorization, self.qitech_keys.is_empty()) {
            self.verify_signed_request(request, token, body, now)?;
            return verified(Cow::Borrowed(body), Sender::QiTech);
        }
        if let (Some(signature), false) = (request.signature, self.caas_keys.is_empty())
            && is_hex_sha1(signature)
        {
            self.verify_caas(request, signature, body)?;
            return verified(Cow::Borrowed(body), Sender::QiCaas);
        }
        if let (Some(token), false) = (request.signature, self.dtvm_keys.is_empty()) {
            self.verify_dtvm(token, now)?;
            return verified(Cow::Borrowed(body), Sender::QiDtvm);
        }
        if let (Some(signature), false) = (request.webhook_signature, self.hmac_secrets.is_empty())
        {
            self.verify_hmac(request, signature, body, now)?;
            return verified(Cow::Borrowed(body), Sender::Relay);
        }
        if !self.qitech_keys.is_empty() {
            #[derive(Deserialize)]
            struct Encoded {
                encoded_body: String,
            }
            if let Ok(encoded) = serde_json::from_slice::<Encoded>(body) {
                let payload = self.verify_jwt(&encoded.encoded_body)?;
                self.check_client_key(request)?;
                return verified(Cow::Owned(payload), Sender::QiTech);
            }
        }
        Err(AuthError::Missing)
    }

    fn verify_signed_request(
        &self,
        request: &RequestFacts<'_>,
        token: &str,
        body: &[u8],
        now: i64,
    ) -> Result<(), AuthError> {
        let token = token.strip_prefix("Bearer ").unwrap_or(token).trim();
        let claims: SignedRequestClaims = match serde_json::from_slice(&self.verify_jwt(token)?)
            .map_err(|e| AuthError::Malformed(format!("JWT claims: {e}")))?
        {
            SignedClaims::Full(claims) => claims,
            // QI's other documented shape: `{"signature": "METHOD\nURI\nMD5"}`. It signs no
            // time, so (as with an encoded body) a replay is answered `duplicate`.
            SignedClaims::Compact { signature } => {
                let mut parts = signature.split('\n');
                let (Some(method), Some(uri), Some(md5), None) =
                    (parts.next(), parts.next(), parts.next(), parts.next())
                else {
                    return Err(AuthError::Malformed(
                        "the signature claim is not METHOD\\nURI\\nMD5".into(),
                    ));
                };
                let claims = SignedRequestClaims {
                    payload_md5: md5.trim().to_owned(),
                    timestamp: None,
                    method: method.trim().to_owned(),
                    uri: uri.trim().to_owned(),
                };
                self.check_request(request, &claims, body)?;
                return self.check_client_key(request);
            }
        };
        self.check_request(request, &claims, body)?;
        self.check_client_key(request)?;
        let signed_at = claims
            .timestamp
            .as_ref()
            .and_then(Timestamp::seconds)
            .ok_or_else(|| {
                AuthError::Malformed("timestamp claim is neither RFC 3339 nor epoch seconds".into())
            })?;
        self.check_skew(signed_at, now)
    }

    /// The claims of a signed request against the request: body hash, method, path.
    fn check_request(
        &self,
        request: &RequestFacts<'_>,
        claims: &SignedRequestClaims,
        body: &[u8],
    ) -> Result<(), AuthError> {
        let md5 = hex::encode(Md5::digest(body));
        if !claims.payload_md5.eq_ignore_ascii_case(&md5) {
            return Err(AuthError::BodyHashMismatch);
        }
        if !claims.method.eq_ignore_ascii_case(request.method) {
            return Err(AuthError::RequestMismatch {
                claim: "method",
                signed: claims.method.clone(),
                actual: request.method.to_owned(),
            });
        }
        let signed = uri_path(&claims.uri);
        if signed.is_none() || signed != uri_path(request.path_and_query) {
            return Err(AuthError::RequestMismatch {
                claim: "uri",
                signed: claims.uri.clone(),
                actual: request.path_and_query.to_owned(),
            });
        }
        Ok(())
    }

    /// The `API-CLIENT-KEY` header against the configured keys, when there are any.
    fn check_client_key(&self, request: &RequestFacts<'_>) -> Result<(), AuthError> {
        if self.client_keys.is_empty() {
            return Ok(());
        }
        let given = request.api_client_key.unwrap_or_default().trim();
        let known = self.client_keys.iter().fold(false, |found, k| {
            constant_time_eq(k.as_bytes(), given.as_bytes()) | found
        });
        if known {
            Ok(())
        } else {
            Err(AuthError::UnknownClientKey)
        }
    }

    fn verify_hmac(
        &self,
        request: &RequestFacts<'_>,
        signatures: &str,
        body: &[u8],
        now: i64,
    ) -> Result<(), AuthError> {
        let id = request
            .webhook_id
            .ok_or_else(|| AuthError::Malformed("webhook-id header missing".into()))?;
        let timestamp = request
            .webhook_timestamp
            .ok_or_else(|| AuthError::Malformed("webhook-timestamp header missing".into()))?;
        let signed_at: i64 = timestamp
            .trim()
            .parse()
            .map_err(|_| AuthError::Malformed("webhook-timestamp is not epoch seconds".into()))?;
        self.check_skew(signed_at, now)?;
        let candidates: Vec<Vec<u8>> = signatures
            .split_whitespace()
            .filter_map(|s| s.strip_prefix("v1,"))
            .filter_map(|b64| STANDARD.decode(b64).ok())
            .collect();
        if candidates.is_empty() {
            return Err(AuthError::Malformed(
                "webhook-signature has no v1 signature".into(),
            ));
        }
        for secret in &self.hmac_secrets {
            let expected = standard_webhooks::mac(secret, id, timestamp, body);
            if candidates.iter().any(|c| constant_time_eq(c, &expected)) {
                return Ok(());
            }
        }
        Err(AuthError::BadSignature)
    }

    /// QI CaaS's `Signature`: hex HMAC-SHA1 of URL + method + body under any configured key.
    fn verify_caas(
        &self,
        request: &RequestFacts<'_>,
        signature: &str,
        body: &[u8],
    ) -> Result<(), AuthError> {
        let given = hex::decode(signature.trim())
            .map_err(|_| AuthError::Malformed("Signature is not hex".into()))?;
        let base = match &self.caas_url_base {
            Some(base) => base.clone(),
            None => format!(
                "https://{}",
                request.host.ok_or_else(|| AuthError::Malformed(
                    "no Host header to rebuild the signed URL from".into()
                ))?
            ),
        };
        let known = self.caas_keys.iter().fold(false, |found, key| {
            let mut mac = <hmac::Hmac<sha1::Sha1> as hmac::Mac>::new_from_slice(key)
                .expect("HMAC takes keys of any length");
            hmac::Mac::update(&mut mac, base.as_bytes());
            hmac::Mac::update(&mut mac, request.path_and_query.as_bytes());
            hmac::Mac::update(&mut mac, request.method.as_bytes());
            hmac::Mac::update(&mut mac, body);
            constant_time_eq(&hmac::Mac::finalize(mac).into_bytes(), &given) | found
        });
        if known {
            Ok(())
        } else {
            Err(AuthError::BadSignature)
        }
    }

    /// Verifies an ES512 JWT with any configured key; returns its decoded payload.
    fn verify_jwt(&self, token: &str) -> Result<Vec<u8>, AuthError> {
        let jwt = Jwt::parse(token, "ES512")?;
        let signature = Signature::from_slice(&jwt.signature)
            .map_err(|_| AuthError::Malformed("JWT signature is not an ES512 signature".into()))?;
        if !self
            .qitech_keys
            .iter()
            .any(|key| key.verify(jwt.signed.as_bytes(), &signature).is_ok())
        {
            return Err(AuthError::BadSignature);
        }
        Ok(jwt.payload)
    }

    /// QI DTVM's `SIGNATURE`: an HS256 JWT under any configured key, whose claims are a
    /// JSON object; `exp` and `iat` are checked in whatever JSON form they come (an integer,
    /// `1.7e9`, `"1700000000"`); `iat` is required unless the verifier was told this sender
    /// sends none.
    fn verify_dtvm(&self, token: &str, now: i64) -> Result<(), AuthError> {
        let jwt = Jwt::parse(token.trim(), "HS256")?;
        let known = self.dtvm_keys.iter().fold(false, |found, key| {
            let mut mac = <hmac::Hmac<sha2::Sha256> as hmac::Mac>::new_from_slice(key)
                .expect("HMAC takes keys of any length");
            hmac::Mac::update(&mut mac, jwt.signed.as_bytes());
            constant_time_eq(&hmac::Mac::finalize(mac).into_bytes(), &jwt.signature) | found
        });
        if !known {
            return Err(AuthError::BadSignature);
        }
        let claims: serde_json::Value = serde_json::from_slice(&jwt.payload)
            .map_err(|_| AuthError::Malformed("the token's claims are not JSON".into()))?;
        let claims = claims.as_object().ok_or_else(|| {
            AuthError::Malformed("the token's claims are not a JSON object".into())
        })?;
        let time = |name: &str| claims.get(name).map(|v| claim_seconds(name, v)).transpose();
        let (exp, iat) = (time("exp")?, time("iat")?);
        let allowed = self.max_clock_skew.as_secs() as i64;
        if let Some(exp) = exp
            && now > exp.saturating_add(allowed)
        {
            return Err(AuthError::StaleTimestamp {
                skew_seconds: now.saturating_sub(exp),
                allowed_seconds: allowed,
            });
        }
        match iat {
            Some(iat) => self.check_skew(iat, now)?,
            // Without `iat` a captured token is good for ever (or until `exp`, if any).
            None if !self.dtvm_without_iat => {
                return Err(AuthError::Malformed(
                    "the QI DTVM token has no `iat`: a token must say when it was signed \
                     (--qitech-dtvm-without-iat accepts a sender that never does)"
                        .into(),
                ));
            }
            None => {}
        }
        Ok(())
    }

    fn check_skew(&self, signed_at: i64, now: i64) -> Result<(), AuthError> {
        let allowed = self.max_clock_skew.as_secs() as i64;
        let skew = (now - signed_at).abs();
        if skew > allowed {
            return Err(AuthError::StaleTimestamp {
                skew_seconds: skew,
                allowed_seconds: allowed,
            });
        }
        Ok(())
    }
}

/// A time claim in seconds since the epoch, from any JSON number or a string of one; any
/// other value is refused rather than ignored.
fn claim_seconds(name: &str, value: &serde_json::Value) -> Result<i64, AuthError> {
    let seconds = match value {
        serde_json::Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        serde_json::Value::String(s) => s
            .trim()
            .parse::<i64>()
            .ok()
            .or_else(|| s.trim().parse::<f64>().ok().map(|f| f as i64)),
        _ => None,
    };
    // JSON has no NaN or infinity, and `as` saturates: any number is some time.
    seconds
        .ok_or_else(|| AuthError::Malformed(format!("the token's `{name}` is not a time: {value}")))
}

/// A compact JWT taken apart, its algorithm checked; the signature is not verified yet.
struct Jwt<'t> {
    /// `header.payload`, what the signature covers.
    signed: &'t str,
    payload: Vec<u8>,
    signature: Vec<u8>,
}

impl<'t> Jwt<'t> {
    fn parse(token: &'t str, algorithm: &str) -> Result<Jwt<'t>, AuthError> {
        let malformed = || AuthError::Malformed("a JWT has three dot-separated parts".into());
        let (signed, signature) = token.rsplit_once('.').ok_or_else(malformed)?;
        let (header, payload) = signed.split_once('.').ok_or_else(malformed)?;
        if payload.contains('.') {
            return Err(malformed());
        }
        let decode = |part: &str, what: &str| {
            URL_SAFE_NO_PAD
                .decode(part.trim_end_matches('='))
                .map_err(|_| AuthError::Malformed(format!("JWT {what} is not base64url")))
        };
        #[derive(Deserialize)]
        struct Header {
            alg: String,
        }
        let alg = serde_json::from_slice::<Header>(&decode(header, "header")?)
            .map_err(|e| AuthError::Malformed(format!("JWT header: {e}")))?
            .alg;
        if alg != algorithm {
            return Err(AuthError::Malformed(format!(
                "JWT algorithm {alg:?} is not {algorithm}"
            )));
        }
        Ok(Jwt {
            signed,
            payload: decode(payload, "payload")?,
            signature: decode(signature, "signature")?,
        })
    }
}

/// The claims of QI Tech's signed request, in either documented shape.
#[derive(Deserialize)]
#[serde(untagged)]
enum SignedClaims {
    Full(SignedRequestClaims),
    Compact { signature: String },
}

#[derive(Deserialize)]
struct SignedRequestClaims {
    payload_md5: String,
    timestamp: Option<Timestamp>,
    method: String,
    uri: String,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Timestamp {
    Seconds(i64),
    Text(String),
}

impl Timestamp {
    fn seconds(&self) -> Option<i64> {
        match self {
            Timestamp::Seconds(s) => Some(*s),
            Timestamp::Text(t) => chrono::DateTime::parse_from_rfc3339(t.trim())
                .map(|t| t.timestamp())
                .ok()
                .or_else(|| {
                    chrono::NaiveDateTime::parse_from_str(t.trim(), "%Y-%m-%dT%H:%M:%S%.f")
                        .ok()
                        .map(|t| t.and_utc().timestamp())
                }),
        }
    }
}

/// The path and query of a URI that may be absolute (`https://host/webhooks`) or not, as
/// `http::Uri` reads them; `None` for what is no URI.
fn uri_path(uri: &str) -> Option<(String, Option<String>)> {
    let uri: http::Uri = uri.trim().parse().ok()?;
    Some((uri.path().to_owned(), uri.query().map(str::to_owned)))
}

/// Constant-time equality (lengths may leak, contents do not).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}
