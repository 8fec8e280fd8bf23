//! Page tokens of `ListByStatus`: opaque to clients, and tamper-evident.
//!
//! A token carries the (kind, key) the next page starts after, and an HMAC over it and the
//! query it belongs to, keyed by a secret kept in the store. A token that was edited, forged,
//! truncated, or used with another query fails the check and is answered `INVALID_ARGUMENT`;
//! tokens survive restarts because the secret does.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::store::{Cursor, OverdueCursor};

const VERSION: u8 = 1;
/// A token of an overdue list: the due time of the last operation comes first.
const OVERDUE_VERSION: u8 = 2;
const MAC_LEN: usize = 16;

/// Why a page token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PageTokenError {
    /// Not a token this service could have issued.
    #[error("page_token is malformed")]
    Malformed,
    /// Well-formed, but not issued by this service for this query.
    #[error("page_token was not issued for this query (was the filter changed?)")]
    Forged,
}

/// Issues and opens page tokens with one secret.
#[derive(Clone)]
pub struct PageTokens {
    secret: [u8; 32],
}

impl std::fmt::Debug for PageTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PageTokens { .. }")
    }
}

impl PageTokens {
    /// Tokens signed with `secret`.
    pub fn new(secret: [u8; 32]) -> Self {
        PageTokens { secret }
    }

    /// A token for the page after `cursor` of the query described by `query`.
    pub fn issue(&self, query: &str, cursor: &Cursor) -> String {
        self.issue_with(query, VERSION, &[], cursor)
    }

    /// A token for the page of an overdue list after `cursor` (due time, kind, key).
    pub fn issue_overdue(&self, query: &str, cursor: &OverdueCursor) -> String {
        let (due, kind, key) = cursor;
        self.issue_with(
            query,
            OVERDUE_VERSION,
            &due.to_be_bytes(),
            &(kind.clone(), key.clone()),
        )
    }

    /// The cursor in `token`, if this service issued it for `query`.
    pub fn open(&self, query: &str, token: &str) -> Result<Cursor, PageTokenError> {
        self.open_with(query, token, VERSION, 0)
            .map(|(_, cursor)| cursor)
    }

    /// The cursor in an overdue list's `token`, if this service issued it for `query`.
    pub fn open_overdue(&self, query: &str, token: &str) -> Result<OverdueCursor, PageTokenError> {
        let (head, (kind, key)) = self.open_with(query, token, OVERDUE_VERSION, 8)?;
        let due = i64::from_be_bytes(head.try_into().map_err(|_| PageTokenError::Malformed)?);
        Ok((due, kind, key))
    }

    fn issue_with(&self, query: &str, version: u8, head: &[u8], cursor: &Cursor) -> String {
        let (kind, key) = cursor;
        let mut bytes = Vec::with_capacity(3 + head.len() + kind.len() + key.len() + MAC_LEN);
        bytes.push(version);
        bytes.extend_from_slice(head);
        bytes.extend_from_slice(&(kind.len() as u16).to_be_bytes());
        bytes.extend_from_slice(kind.as_bytes());
        bytes.extend_from_slice(key.as_bytes());
        let mac = self.mac(query, &bytes);
        bytes.extend_from_slice(&mac);
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// The `head_len` bytes after the version, and the cursor, of a token of `version`.
    fn open_with(
        &self,
        query: &str,
        token: &str,
        version: u8,
        head_len: usize,
    ) -> Result<(Vec<u8>, Cursor), PageTokenError> {
        let bytes = URL_SAFE_NO_PAD
            .decode(token)
            .map_err(|_| PageTokenError::Malformed)?;
        if bytes.len() < 3 + head_len + MAC_LEN || bytes[0] != version {
            return Err(PageTokenError::Malformed);
        }
        let (payload, mac) = bytes.split_at(bytes.len() - MAC_LEN);
        let mut check = self.hmac(query);
        check.update(payload);
        check
            .verify_truncated_left(mac)
            .map_err(|_| PageTokenError::Forged)?;
        let (head, payload) = payload[1..].split_at(head_len);
        let kind_len = u16::from_be_bytes([payload[0], payload[1]]) as usize;
        let rest = &payload[2..];
        if kind_len > rest.len() {
            return Err(PageTokenError::Malformed);
        }
        let (kind, key) = rest.split_at(kind_len);
        let text = |b: &[u8]| String::from_utf8(b.to_vec()).map_err(|_| PageTokenError::Malformed);
        Ok((head.to_vec(), (text(kind)?, text(key)?)))
    }

    fn hmac(&self, query: &str) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.secret)
            .expect("HMAC takes keys of any length");
        mac.update(query.as_bytes());
        mac.update(&[0]);
        mac
    }

    fn mac(&self, query: &str, payload: &[u8]) -> [u8; MAC_LEN] {
        let mut mac = self.hmac(query);
        mac.update(payload);
        let full = mac.finalize().into_bytes();
        let mut out = [0; MAC_LEN];
        out.copy_from_slice(&full[..MAC_LEN]);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_opens_for_its_query_only() {
        let tokens = PageTokens::new([7; 32]);
        let cursor = ("debt".to_owned(), "k-\u{e9}-1".to_owned());
        let token = tokens.issue("statuses=disbursed", &cursor);
        assert_eq!(
            tokens.open("statuses=disbursed", &token),
            Ok(cursor.clone())
        );
        assert_eq!(
            tokens.open("statuses=canceled", &token),
            Err(PageTokenError::Forged)
        );
        let other_secret = PageTokens::new([8; 32]);
        assert_eq!(
            other_secret.open("statuses=disbursed", &token),
            Err(PageTokenError::Forged)
        );
    }

    #[test]
    fn edited_and_garbage_tokens_are_refused() {
        let tokens = PageTokens::new([7; 32]);
        let token = tokens.issue("q", &("debt".into(), "k".into()));
        let mut bytes = URL_SAFE_NO_PAD.decode(&token).unwrap();
        bytes[4] ^= 1;
        let edited = URL_SAFE_NO_PAD.encode(&bytes);
        assert_eq!(tokens.open("q", &edited), Err(PageTokenError::Forged));
        for garbage in ["", "!!!", "AAAA", &token[..token.len() - 3]] {
            assert!(tokens.open("q", garbage).is_err(), "{garbage:?}");
        }
    }
}
