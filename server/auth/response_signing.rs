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

use super::es512::Es512Signer;
use super::webhook::KeyError;

/// Signs the intake's acknowledgements.
#[derive(Clone)]
pub struct ResponseSigner {
    signer: Es512Signer,
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
        Ok(ResponseSigner {
            signer: Es512Signer::from_pem(pem, "--response-signing-key")?,
            api_client_key,
        })
    }

    /// Signs `reply` (the JSON answer) for a request of `method` on `uri`, at `now` (seconds
    /// since the epoch).
    pub fn sign(&self, reply: &[u8], method: &str, uri: &str, now: i64) -> SignedResponse {
        let encoded = self.signer.jwt(reply);
        let body = serde_json::to_vec(&serde_json::json!({ "encoded_body": encoded }))
            .expect("a JSON object of one string serializes");
        let timestamp = chrono::DateTime::from_timestamp(now, 0)
            .unwrap_or_default()
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let authorization = self.signer.authorization(&body, method, uri, &timestamp);
        SignedResponse {
            body,
            authorization,
            api_client_key: self.api_client_key.clone(),
        }
    }
}
