//! [Standard Webhooks](https://www.standardwebhooks.com/) HMAC signatures: the one
//! definition of the secret's format and of what is signed, shared by the server, which
//! verifies them, and the CLI's `replay`, which signs.
//!
//! The signature is `v1,<base64 HMAC-SHA256 of "id.timestamp.body">`, sent in
//! `webhook-signature` with `webhook-id` and `webhook-timestamp` (epoch seconds).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The key bytes of a secret: `whsec_<base64>` as Standard Webhooks prints them, or raw text.
pub fn parse_secret(text: &str) -> Result<Vec<u8>, String> {
    let text = text.trim();
    match text.strip_prefix("whsec_") {
        Some(b64) => STANDARD
            .decode(b64)
            .map_err(|e| format!("whsec_ secret is not base64: {e}")),
        None if text.is_empty() => Err("empty".into()),
        None => Ok(text.as_bytes().to_vec()),
    }
}

/// The raw HMAC of a message, for comparing with a received signature's bytes.
pub fn mac(secret: &[u8], id: &str, timestamp: &str, body: &[u8]) -> [u8; 32] {
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize().into_bytes().into()
}

/// The `webhook-signature` header value for a message.
pub fn signature(secret: &[u8], id: &str, timestamp: &str, body: &[u8]) -> String {
    format!("v1,{}", STANDARD.encode(mac(secret, id, timestamp, body)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_in_both_spellings_and_the_documented_signature() {
        assert_eq!(parse_secret("whsec_c2VjcmV0").unwrap(), b"secret");
        assert_eq!(parse_secret(" plain ").unwrap(), b"plain");
        assert!(parse_secret("whsec_!!").is_err());
        assert!(parse_secret("  ").is_err());
        // The example of the Standard Webhooks specification.
        let secret = parse_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            signature(&secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", "1614265330", body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }
}
