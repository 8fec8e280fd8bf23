//! Signed acknowledgements: for QI Tech accounts that count a BaaS/LaaS notification as
//! delivered only when the `200` itself is signed, so that a proxy cannot acknowledge in
//! qistatus's name.
//!
//! With `--response-signing-key` (the integrator's ECDSA P-521 private key, PEM; QI Tech holds
//! its public key), every `2xx` of the intake is answered in the same shape QI Tech uses for
//! its own signed requests ([`crate::auth::webhook`] verifies that shape on the way in):
//!
//! - the body is `{"encoded_body": "<ES512 JWT>"}`, whose payload is the usual JSON answer
//!   (`{"result": "accepted", "sequence": N}`, ...);
//! - header `Authorization` holds an ES512 JWT with the claims `payload_md5` (MD5 of the
//!   body sent, hex), `timestamp` (RFC 3339), `method` and `uri` (those of the request it
//!   answers);
//! - header `API-CLIENT-KEY` carries `--response-api-client-key` when given.
//!
//! Error answers (`4xx`, `5xx`) are not signed: QI Tech retries them either way. A signed
//! answer can be checked with the public key by the same code that checks QI Tech's
//! requests; the tests do exactly that.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use md5::{Digest, Md5};
use p521::ecdsa::SigningKey;
use p521::ecdsa::signature::Signer;

use super::webhook::KeyError;

/// Signs the intake's acknowledgements.
#[derive(Clone)]
pub struct ResponseSigner {
    key: SigningKey,
    api_client_key: Option<String>,
}

impl std::fmt::Debug for ResponseSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("ResponseSigner")
            .field("api_client_key", &self.api_client_key.is_some())
            .finish_non_exhaustive()
    }
}

/// A signed acknowledgement: its body and headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedResponse {
    /// `{"encoded_body": "<JWT>"}`.
    pub body: Vec<u8>,
    /// The `Authorization` header.
    pub authorization: String,
    /// The `API-CLIENT-KEY` header, when configured.
    pub api_client_key: Option<String>,
}

impl ResponseSigner {
    /// A signer with a P-521 private key in PEM (PKCS#8 `PRIVATE KEY` or SEC1 `EC PRIVATE
    /// KEY`).
    pub fn from_pem(pem: &str, api_client_key: Option<String>) -> Result<Self, KeyError> {
        use p521::pkcs8::DecodePrivateKey;
        let secret = p521::SecretKey::from_pkcs8_pem(pem)
            .or_else(|_| p521::SecretKey::from_sec1_pem(pem))
            .map_err(|e| KeyError {
                what: "--response-signing-key".into(),
                reason: format!("not a P-521 private key in PEM: {e}"),
            })?;
        let key = SigningKey::from_slice(&secret.to_bytes()).map_err(|e| KeyError {
            what: "--response-signing-key".into(),
            reason: format!("not a usable P-521 signing key: {e}"),
        })?;
        Ok(ResponseSigner {
            key,
            api_client_key,
        })
    }

    /// Signs `reply` (the JSON answer) for a request of `method` on `uri`, at `now` (seconds
    /// since the epoch).
    pub fn sign(&self, reply: &[u8], method: &str, uri: &str, now: i64) -> SignedResponse {
        let encoded = self.jwt(reply);
        let body = serde_json::to_vec(&serde_json::json!({ "encoded_body": encoded }))
            .expect("a JSON object of one string serializes");
        let timestamp = chrono::DateTime::from_timestamp(now, 0)
            .unwrap_or_default()
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let claims = serde_json::json!({
            "payload_md5": hex::encode(Md5::digest(&body)),
            "timestamp": timestamp,
            "method": method,
            "uri": uri,
        });
        let authorization =
            self.jwt(&serde_json::to_vec(&claims).expect("a JSON object of strings serializes"));
        SignedResponse {
            body,
            authorization,
            api_client_key: self.api_client_key.clone(),
        }
    }

    /// A compact ES512 JWT of `payload`.
    fn jwt(&self, payload: &[u8]) -> String {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"ES512","typ":"JWT"}"#);
        let signed = format!("{header}.{}", URL_SAFE_NO_PAD.encode(payload));
        let signature: p521::ecdsa::Signature = self.key.sign(signed.as_bytes());
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()))
    }
}
