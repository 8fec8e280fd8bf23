//! ES512 (ECDSA P-521 over SHA-512) JSON Web Tokens, the way QI Tech signs every message of
//! its own and asks its integrators to sign theirs (QI's "Key exchange" and "Authentication
//! test" pages): one signer for both of qistatus's signatures, the acknowledgements it signs
//! ([`super::response_signing`]) and the requests it sends QI's API (`qitech_api`). The other
//! direction, checking such a token, is [`super::webhook::WebhookVerifier`]'s.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use md5::{Digest, Md5};
use p521::ecdsa::SigningKey;
use p521::ecdsa::signature::Signer;

use super::webhook::KeyError;

/// Signs ES512 tokens with one P-521 private key. Its `Debug` never shows the key.
#[derive(Clone)]
pub(crate) struct Es512Signer {
    key: SigningKey,
}

impl std::fmt::Debug for Es512Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Es512Signer(..)")
    }
}

impl Es512Signer {
    /// A signer with a P-521 private key in PEM (PKCS#8 `PRIVATE KEY` or SEC1 `EC PRIVATE
    /// KEY`, as QI's `ssh-keygen -t ecdsa -b 521 -m PEM` writes it); `what` names the key in
    /// the error (the flag it came from).
    pub(crate) fn from_pem(pem: &str, what: &str) -> Result<Self, KeyError> {
        use p521::pkcs8::DecodePrivateKey;
        let secret = p521::SecretKey::from_pkcs8_pem(pem)
            .or_else(|_| p521::SecretKey::from_sec1_pem(pem))
            .map_err(|e| KeyError {
                what: what.into(),
                reason: format!("not a P-521 private key in PEM: {e}"),
            })?;
        let key = SigningKey::from_slice(&secret.to_bytes()).map_err(|e| KeyError {
            what: what.into(),
            reason: format!("not a usable P-521 signing key: {e}"),
        })?;
        Ok(Es512Signer { key })
    }

    /// A compact ES512 JWT of `payload` (the claims' JSON, as given).
    pub(crate) fn jwt(&self, payload: &[u8]) -> String {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"ES512","typ":"JWT"}"#);
        let signed = format!("{header}.{}", URL_SAFE_NO_PAD.encode(payload));
        let signature: p521::ecdsa::Signature = self.key.sign(signed.as_bytes());
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()))
    }

    /// The `AUTHORIZATION` token of a message: the claims `payload_md5` (MD5 of `body`, hex),
    /// `timestamp` (as given), `method` and `uri`.
    pub(crate) fn authorization(
        &self,
        body: &[u8],
        method: &str,
        uri: &str,
        timestamp: &str,
    ) -> String {
        let claims = serde_json::json!({
            "payload_md5": hex::encode(Md5::digest(body)),
            "timestamp": timestamp,
            "method": method,
            "uri": uri,
        });
        self.jwt(&serde_json::to_vec(&claims).expect("a JSON object of strings serializes"))
    }
}
