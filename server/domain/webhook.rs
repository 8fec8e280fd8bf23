//! Normalizing a QI Tech webhook: raw bytes in, a [`WebhookEnvelope`] out. Pure: no I/O.
//!
//! QI Tech's webhooks do not share one shape (see `../shared/seeds/`): the debt failure
//! webhook has `debt_key` and no `webhook_type`; the card-settlement kind is spelled with `-`
//! or `_`; event times come as `2019-11-04 16:52:49` or `2022-05-18T20:57:00`; a status may
//! carry a trailing space. This module reads every such shape into one envelope, and says
//! precisely why when it cannot.
//!
//! Guarantees:
//! - the result depends only on the bytes and the catalog;
//! - two bodies that are the same JSON value (whatever their whitespace, key order or
//!   spelling of numbers) get the same [`EventId`]: the SHA-256 of [`canonical_json`];
//! - a body that is not a JSON object is [`MalformedWebhook`] (the sender's mistake, `400`);
//!   a JSON object from which no kind, key or status can be read is
//!   [`Normalized::Quarantine`] (kept, not lost); anything else is an event;
//! - reasons name fields and types, never field values, so they are safe to log.

use std::fmt;
use std::sync::LazyLock;

use chrono::format::{self, Item, Parsed, StrftimeItems};
use chrono::{DateTime, FixedOffset};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::catalog::{Catalog, JoinSpec, canonical_kind, canonical_status};
use super::json::Json;

/// Longest accepted operation key, in bytes.
pub const MAX_KEY_LEN: usize = 256;
/// Longest accepted kind or status, in bytes.
pub const MAX_NAME_LEN: usize = 128;
/// Longest `detail` kept on an operation, in bytes; longer texts are cut with a marker. The
/// raw webhook keeps the whole text.
pub const MAX_DETAIL_LEN: usize = 1024;

/// `text` cut to at most [`MAX_DETAIL_LEN`] bytes (at a character boundary), ending with a
/// marker that says how long it was; unchanged when it fits.
pub fn bounded_detail(text: &str) -> std::borrow::Cow<'_, str> {
    if text.len() <= MAX_DETAIL_LEN {
        return std::borrow::Cow::Borrowed(text);
    }
    let marker = format!("… [cut: {} bytes in all]", text.len());
    let mut end = MAX_DETAIL_LEN.saturating_sub(marker.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    std::borrow::Cow::Owned(format!("{}{marker}", &text[..end]))
}

/// Content identifier of a webhook: SHA-256 of its canonical JSON.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EventId(pub [u8; 32]);

impl EventId {
    /// The identifier of a JSON value, independent of whitespace, key order and the spelling
    /// of numbers: the SHA-256 of [`canonical_json`].
    pub fn of(value: &Json<'_>) -> EventId {
        let mut canonical = Vec::with_capacity(1024);
        canonical_json(value, &mut canonical);
        EventId(Sha256::digest(&canonical).into())
    }

    /// The identifier of the webhook `raw`, read as `value`: [`EventId::of`], and, when the
    /// body has numbers a double cannot hold (which the canonical form writes as the doubles
    /// they round to), their exact values too ([`super::json::inexact_numbers`]), so that two
    /// bodies differing only in the 23rd digit of an integer are two webhooks. Bodies without
    /// such numbers (nearly all) keep the identifier they always had.
    pub fn of_body(value: &Json<'_>, raw: &[u8]) -> EventId {
        let inexact = super::json::inexact_numbers(raw);
        if inexact.is_empty() {
            return EventId::of(value);
        }
        let mut canonical = Vec::with_capacity(1024);
        canonical_json(value, &mut canonical);
        // A canonical form never holds a raw NUL (strings escape it), so nothing written
        // after one can make it look like another webhook's.
        canonical.push(0);
        for number in inexact {
            canonical.extend_from_slice(number.as_bytes());
            canonical.push(b',');
        }
        EventId(Sha256::digest(&canonical).into())
    }
}

/// Writes `value` in a canonical form: no whitespace, object keys sorted, strings escaped as
/// serde_json does, and numbers written so that equal numbers are written alike, after RFC
/// 8785 (JSON Canonicalization Scheme): `1`, `1.0`, `1e0` and `10e-1` all become `1`
/// ([`super::json::write_canonical_number`]).
///
/// For everything but integral doubles (`1.0`) this is byte for byte what qistatus wrote
/// before numbers were canonicalized (serde_json's compact form of a `Value`), so
/// identifiers of stored webhooks stay valid.
pub fn canonical_json(value: &Json<'_>, out: &mut Vec<u8>) {
    value.write_canonical(out);
}

/// Whether `raw` is still the body whose identifier is `id`: what every read of a stored body
/// checks, beyond its frame's checksum (which whoever edits the bytes can recompute; this
/// they cannot, without changing what the operation keeps).
pub fn body_matches(raw: &[u8], id: &EventId) -> bool {
    Json::parse(raw).is_ok_and(|value| EventId::of_body(&value, raw) == *id)
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EventId({})", &hex::encode(self.0)[..12])
    }
}

/// A webhook read into the fields qistatus reconciles on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookEnvelope {
    /// Content identifier, for deduplication.
    pub event_id: EventId,
    /// Canonical kind (`debt`, `historic_card_settlement`, ...).
    pub kind: String,
    /// QI Tech's operation key, as sent.
    pub key: String,
    /// The status, trimmed and lower-cased.
    pub status: String,
    /// The value of the kind's outcome field, when the catalog says the status defers to it.
    pub outcome: Option<String>,
    /// When QI Tech says it happened, in milliseconds since the Unix epoch.
    pub event_time: Option<i64>,
    /// A reason or outcome text carried by the webhook; empty when none.
    pub detail: String,
}

/// What a well-formed JSON object normalizes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Normalized {
    /// A webhook of an operation.
    Event(WebhookEnvelope),
    /// A JSON object qistatus cannot attribute to an operation: stored raw with the reason.
    Quarantine {
        /// Content identifier, for deduplication.
        event_id: EventId,
        /// Why it could not be read, naming the field.
        reason: String,
    },
}

impl Normalized {
    /// The content identifier, whatever the webhook normalized to.
    pub fn event_id(&self) -> EventId {
        match self {
            Normalized::Event(e) => e.event_id,
            Normalized::Quarantine { event_id, .. } => *event_id,
        }
    }
}

/// A body that is not a webhook at all: the sender's mistake.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MalformedWebhook {
    /// Not JSON, or JSON beyond the parser's limits.
    #[error("body is not valid JSON: {0}")]
    NotJson(String),
    /// JSON, but not an object.
    #[error("a webhook must be a JSON object, but the body is {0}")]
    NotObject(&'static str),
}

/// Normalizes raw webhook bytes under `catalog`.
pub fn normalize(catalog: &Catalog, raw: &[u8]) -> Result<Normalized, MalformedWebhook> {
    let value = parse_object(raw)?;
    Ok(read(catalog, &value, raw))
}

/// [`normalize`], and the catalog's [`facts`] of an event, read from the one parse of the
/// body (empty for a quarantined webhook).
pub fn normalize_with_facts(
    catalog: &Catalog,
    raw: &[u8],
) -> Result<(Normalized, Vec<(String, FactValue)>), MalformedWebhook> {
    let value = parse_object(raw)?;
    let normalized = read(catalog, &value, raw);
    let facts = match &normalized {
        Normalized::Event(envelope) => facts_in(catalog, &envelope.kind, unwrapped(&value)),
        Normalized::Quarantine { .. } => Vec::new(),
    };
    Ok((normalized, facts))
}

fn parse_object(raw: &[u8]) -> Result<Json<'_>, MalformedWebhook> {
    let value = Json::parse(raw).map_err(|e| MalformedWebhook::NotJson(e.to_string()))?;
    if !matches!(value, Json::Object(_)) {
        return Err(MalformedWebhook::NotObject(value.type_name()));
    }
    Ok(value)
}

/// The webhook inside a body that is nothing but a `callback` object naming a kind: QI wraps
/// its overpayment refund so on one of its pages (the `callback` object of its
/// "indevidos" webhook). Any other body is its own webhook: a field called `callback` beside
/// others is data.
fn unwrapped<'v, 'a>(value: &'v Json<'a>) -> &'v Json<'a> {
    match value {
        Json::Object(object) if object.keys().eq(["callback"]) => match object.get("callback") {
            Some(inner @ Json::Object(o))
                if o.contains_key("webhook_type") || o.contains_key("event_type") =>
            {
                inner
            }
            _ => value,
        },
        _ => value,
    }
}

fn read(catalog: &Catalog, value: &Json<'_>, raw: &[u8]) -> Normalized {
    // The identity is the whole body's, as it came.
    let event_id = EventId::of_body(value, raw);
    let value = unwrapped(value);
    match read_envelope(catalog, value, event_id) {
        Ok(envelope) => Normalized::Event(envelope),
        Err(reason) => Normalized::Quarantine { event_id, reason },
    }
}

/// The `data` member of a raw webhook, read as `T` (how it is shown is the caller's choice:
/// the gRPC API reads it straight into protobuf values). `None` when the body is not JSON,
/// has no `data`, or `data` is not a `T`. Used to serve history entries.
pub fn data_field<T: serde::de::DeserializeOwned>(raw: &[u8]) -> Option<T> {
    #[derive(Deserialize)]
    struct OnlyData<T> {
        data: Option<T>,
    }
    serde_json::from_slice::<OnlyData<T>>(raw).ok()?.data
}

fn read_envelope(
    catalog: &Catalog,
    v: &Json<'_>,
    event_id: EventId,
) -> Result<WebhookEnvelope, String> {
    let named = named_kind(v)?;
    let join = join_of(catalog, named, v);
    let kind = match (named, join) {
        (_, Some(join)) => join.kind.clone(),
        (Some(raw), None) => catalog.resolve_kind(raw),
        (None, None) if present(v, "debt_key") => "debt".to_owned(),
        (None, None) if present(v, "credit_operation_key") && present(v, "reversal") => {
            return read_reversal(catalog, v, event_id);
        }
        (None, None) => match implied_kind(catalog, v) {
            Some(kind) => kind.to_owned(),
            None => {
                return Err(
                    "no webhook_type or event_type, and no debt_key to imply a debt".to_owned(),
                );
            }
        },
    };
    check_name("webhook_type", &kind)?;
    if !kind
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
    {
        return Err("webhook_type has characters other than letters, digits, '_', '-', '.'".into());
    }
    let spec = catalog.kind(&kind);
    let base = kind.split('.').next().unwrap_or(&kind);

    let generic_key = format!("data.{base}_key");
    // The generic rule is worked out only when the documented fields are missing: most
    // webhooks never need it.
    let pair = std::cell::OnceCell::new();
    let pair = || pair.get_or_init(|| keyed_pair(v)).as_ref();
    let key_paths = join
        .iter()
        .flat_map(|j| j.key_paths.iter().map(String::as_str))
        .chain(
            spec.iter()
                .flat_map(|s| s.operation_key_paths.iter().map(String::as_str)),
        )
        .chain(["key", "debt_key", generic_key.as_str()])
        .chain(
            spec.iter()
                .flat_map(|s| s.key_paths.iter().map(String::as_str)),
        )
        .chain(std::iter::once_with(|| pair().map(|(key, _)| key.as_str())).flatten())
        .chain(["origin_key"]);
    let key = first_text(v, key_paths)?
        .ok_or_else(|| {
            format!(
                "no operation key: none of key, debt_key, {generic_key}, origin_key, nor one \
                 <x>_key beside its <x>_status in data or event_data"
            )
        })?
        .to_owned();
    check_key(&key)?;

    let generic_status = format!("data.{base}_status");
    let status_paths = ["status", "data.status", generic_status.as_str()]
        .into_iter()
        .chain(
            spec.iter()
                .flat_map(|s| s.status_paths.iter().map(String::as_str)),
        )
        .chain(std::iter::once_with(|| pair().map(|(_, status)| status.as_str())).flatten());
    let status = match join.and_then(|j| j.status.as_ref()) {
        Some(fixed) => fixed.clone(),
        None => first_text(v, status_paths)?
            .map(canonical_status)
            .ok_or_else(|| {
                format!(
                    "no status: none of status, data.status, {generic_status}, nor an <x>_status \
                     beside its <x>_key in data or event_data"
                )
            })?,
    };
    let step = match spec.and_then(|s| s.step_path.as_deref()) {
        Some(path) => text_field(v, path)?
            .map(canonical_status)
            .filter(|step| !step.is_empty()),
        None => None,
    };
    let status = match step {
        Some(step) => format!("{step} {status}"),
        None => status,
    };
    let status = match join.and_then(|j| j.status_prefix.as_deref()) {
        Some(prefix) => format!("{prefix}{status}"),
        None => status,
    };
    check_name("status", &status)?;
    if !status
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ' '))
    {
        // QI Tech's statuses are ASCII snake_case: anything else is a look-alike or garbage,
        // which must not slip into an operation as a "new status".
        return Err(
            "status has characters other than ASCII letters, digits, '_', '-', '.', ' '".into(),
        );
    }

    // A join that says what its webhooks are classified as (a BNPL refund's `canceled` is a
    // reversal's) overrides the kind's own outcome field.
    let outcome = join.and_then(|j| j.outcome.clone()).or_else(|| {
        spec.filter(|s| s.outcome_statuses.contains(&status))
            .and_then(|s| s.outcome_path.as_deref())
            .and_then(|path| lookup(v, path))
            .and_then(Json::as_str)
            .map(canonical_status)
            .filter(|o| !o.is_empty() && o.len() <= MAX_NAME_LEN)
    });

    let event_time = spec
        .iter()
        .flat_map(|s| s.event_time_paths.iter().map(String::as_str))
        .chain(["event_datetime", "webhook_datetime"])
        .filter_map(|path| lookup(v, path).and_then(Json::as_str))
        .find_map(|t| parse_event_time(t, catalog.naive_time_offset_minutes));

    Ok(WebhookEnvelope {
        event_id,
        kind,
        key,
        detail: detail(catalog, v, &status),
        status,
        outcome,
        event_time,
    })
}

/// The catalog's join ([`crate::domain::catalog::JoinSpec`]) that `v` matches, if any: the
/// first whose `webhook_type` is the kind `v` names, whose conditions all hold, and, when it
/// names where the other operation's key is, that has one there. A webhook that names no
/// such operation stays what it says it is: a Pix refund without
/// `original_outgoing_pix_transfer` is an incoming Pix, never an outgoing one under its own
/// key (an outgoing transfer that never existed).
/// `named` is the kind `v` names (`webhook_type`, else `event_type`), as read by the caller.
fn join_of<'c>(catalog: &'c Catalog, named: Option<&str>, v: &Json<'_>) -> Option<&'c JoinSpec> {
    let named = canonical_kind(named.filter(|_| !catalog.joins.is_empty())?);
    catalog.joins.iter().find(|join| {
        join.webhook_type == named
            && join.when.iter().all(|(path, value)| {
                lookup(v, path)
                    .and_then(Json::as_str)
                    .is_some_and(|found| canonical_status(found) == *value)
            })
            && (join.key_paths.is_empty()
                || join.key_paths.iter().any(|path| {
                    lookup(v, path)
                        .and_then(Json::as_str)
                        .is_some_and(|key| !key.trim().is_empty())
                }))
    })
}

/// The kind a webhook names: `webhook_type` (BaaS, LaaS, the seeds), else `event_type`
/// (automatic Pix, QI DTVM); `Err` naming the field when it is not a string.
fn named_kind<'a>(v: &'a Json<'_>) -> Result<Option<&'a str>, String> {
    Ok(text_field(v, "webhook_type")?.or(text_field(v, "event_type")?))
}

/// The kind a webhook without `webhook_type` or `event_type` is, by the fields it has (the
/// catalog's `implied_by`): the first kind, in name order, whose fields are all present.
fn implied_kind<'c>(catalog: &'c Catalog, v: &Json<'_>) -> Option<&'c str> {
    catalog
        .kinds
        .iter()
        .find(|(_, spec)| {
            !spec.implied_by.is_empty() && spec.implied_by.iter().all(|path| present(v, path))
        })
        .map(|(kind, _)| kind.as_str())
}

/// The generic rule for QI Tech's other families (BaaS Pix, bill payment, automatic Pix, QI
/// DTVM): in `data` or `event_data`, the one `<x>_key` whose `<x>_status` is beside it
/// (`pix_transfer_key` and `pix_transfer_status`; `request_control_key` has no status, so it
/// is not the operation); failing that, the one `<x>_key` beside a plain `status` (QI DTVM's
/// `event_data.issuer_key`). Returns the key's and the status's paths. Ambiguous containers
/// (two such pairs) give nothing: better quarantined than attributed to the wrong key.
fn keyed_pair(v: &Json<'_>) -> Option<(String, String)> {
    for container in ["data", "event_data"] {
        let Some(Json::Object(fields)) = v.get(container) else {
            continue;
        };
        let mut pairs = fields
            .keys()
            .filter_map(|k| k.strip_suffix("_key"))
            .filter(|x| !x.is_empty() && fields.contains_key(&format!("{x}_status")));
        if let (Some(x), None) = (pairs.next(), pairs.next()) {
            return Some((
                format!("{container}.{x}_key"),
                format!("{container}.{x}_status"),
            ));
        }
        if fields.contains_key("status") {
            let mut keys = fields.keys().filter(|k| k.ends_with("_key"));
            if let (Some(key), None) = (keys.next(), keys.next()) {
                return Some((format!("{container}.{key}"), format!("{container}.status")));
            }
        }
    }
    None
}

/// A debt's cancellation after disbursement (QI Tech's reversal webhook): no `webhook_type`,
/// the debt's key in `credit_operation_key`, and a `reversal` object. It joins the debt's
/// history; its status is `canceled` once QI Tech says the operation is canceled
/// (`reversal.is_operation_canceled`), classified as the catalog's `reversal_canceled` (its
/// outcome: a cancellation that also says the debt was disbursed), and
/// `reversal_<reversal.status>` before (a status the catalog does not know, so it never
/// moves the debt). Its event time is `reversal.created_at`.
fn read_reversal(
    catalog: &Catalog,
    v: &Json<'_>,
    event_id: EventId,
) -> Result<WebhookEnvelope, String> {
    let key = text_field(v, "credit_operation_key")?
        .ok_or("credit_operation_key is empty")?
        .to_owned();
    check_key(&key)?;
    let reversal_status = text_field(v, "reversal.status")?
        .map(canonical_status)
        .unwrap_or_default();
    let canceled =
        lookup(v, "reversal.is_operation_canceled").and_then(Json::as_bool) == Some(true);
    let status = if canceled {
        "canceled".to_owned()
    } else {
        format!("reversal_{reversal_status}")
    };
    check_name("reversal.status", &status)?;
    if !status
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ' '))
    {
        return Err(
            "reversal.status has characters other than ASCII letters, digits, '_', '-', '.', ' '"
                .into(),
        );
    }
    let event_time = text_field(v, "reversal.created_at")?
        .and_then(|t| parse_event_time(t, catalog.naive_time_offset_minutes));
    let detail = if reversal_status.is_empty() {
        "reversal after disbursement".to_owned()
    } else {
        format!("reversal after disbursement: {reversal_status}")
    };
    Ok(WebhookEnvelope {
        event_id,
        kind: "debt".to_owned(),
        key,
        status,
        outcome: canceled.then(|| "reversal_canceled".to_owned()),
        event_time,
        detail,
    })
}

/// The first reason or outcome text the webhook carries, in the order the seeds document.
fn detail(catalog: &Catalog, v: &Json<'_>, status: &str) -> String {
    let text = |path: &str| {
        lookup(v, path)
            .and_then(Json::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
    };
    if let Some(d) = text("description") {
        return bounded_detail(d).into_owned();
    }
    if let Some(reason) = text("rejection_reason") {
        return bounded_detail(reason).into_owned();
    }
    if let Some(reason) = text("data.cancel_reason_enumerator") {
        let reason = canonical_status(reason);
        // QI Tech's own text first; the catalog's when the webhook has none.
        let explanation = [
            "data.cancel_reason",
            "data.reason_description",
            "reason_description",
        ]
        .into_iter()
        .find_map(text)
        .or_else(|| catalog.cancel_reasons.get(&reason).map(String::as_str));
        let detail = match explanation {
            Some(e) => format!("{reason}: {e}"),
            None => reason,
        };
        return bounded_detail(&detail).into_owned();
    }
    ["data.response_data.slc_status", "data.scr_status"]
        .into_iter()
        .filter_map(text)
        .map(canonical_status)
        .find(|d| d != status)
        .unwrap_or_default()
}

/// Whether `key` can name an operation: what the intake requires of a webhook's key, and
/// what the gRPC API requires of a key it is asked about (the same limits on both doors). The
/// message never repeats the key, which may be huge.
pub fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("key is empty".into());
    }
    if key.len() > MAX_KEY_LEN {
        return Err(format!(
            "key is {} bytes long; keys are at most {MAX_KEY_LEN} bytes",
            key.len()
        ));
    }
    if key.chars().any(char::is_control) {
        return Err("key contains control characters".into());
    }
    Ok(())
}

/// Whether `name` can be a kind or status: not empty, at most [`MAX_NAME_LEN`] bytes, no
/// control characters. The message never repeats the name.
pub fn check_name(field: &str, name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err(format!("{field} is empty"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!(
            "{field} is {} bytes long; at most {MAX_NAME_LEN} bytes",
            name.len()
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(format!("{field} contains control characters"));
    }
    Ok(())
}

/// The latest instant a time can be shown as: 9999-12-31T23:59:59.999Z, the end of what RFC
/// 3339 and a protobuf `Timestamp` can hold. QI writes "never" as `9999-12-31 23:59:59`, at
/// São Paulo's offset, which is 10000-01-01T02:59:59Z: shown at this bound, it reads as the
/// date QI gave, instead of `+10000-01-01T02:59:59Z` (which no client can parse).
pub const LATEST_SHOWN_MILLIS: i64 = 253_402_300_799_999;

/// `millis` as shown to people and clients: within what RFC 3339 and a protobuf `Timestamp`
/// can hold (year 1 to 9999), the bound when beyond. Ordering uses the exact value.
pub fn shown_millis(millis: i64) -> i64 {
    const EARLIEST: i64 = -62_135_596_800_000; // 0001-01-01T00:00:00Z
    millis.clamp(EARLIEST, LATEST_SHOWN_MILLIS)
}

/// Parses QI Tech's event times: RFC 3339 (with `T` or a space, optional fraction, `Z` or an
/// offset), or a naive date-time read at the catalog's offset. `None` when unreadable.
pub fn parse_event_time(text: &str, naive_offset_minutes: i32) -> Option<i64> {
    /// The formats tried after RFC 3339, read once (chrono would otherwise read each format
    /// string again for every webhook): with an offset, then naive.
    static WITH_OFFSET: LazyLock<[Vec<Item<'static>>; 2]> =
        LazyLock::new(|| items(["%Y-%m-%d %H:%M:%S%.f%z", "%Y-%m-%dT%H:%M:%S%.f%z"]));
    static NAIVE: LazyLock<[Vec<Item<'static>>; 2]> =
        LazyLock::new(|| items(["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"]));
    fn items(formats: [&'static str; 2]) -> [Vec<Item<'static>>; 2] {
        formats.map(|format| StrftimeItems::new(format).collect())
    }
    let read = |items: &[Item<'static>]| {
        let mut parsed = Parsed::new();
        format::parse(&mut parsed, text, items.iter()).ok()?;
        Some(parsed)
    };
    let text = text.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(t.timestamp_millis());
    }
    if let Some(t) = WITH_OFFSET
        .iter()
        .find_map(|items| read(items)?.to_datetime().ok())
    {
        return Some(t.timestamp_millis());
    }
    let offset = FixedOffset::east_opt(naive_offset_minutes * 60)?;
    NAIVE
        .iter()
        .find_map(|items| read(items)?.to_naive_datetime_with_offset(0).ok())
        .and_then(|naive| naive.and_local_timezone(offset).single())
        .map(|t| t.timestamp_millis())
}

/// The value at a dotted path; a numeric part indexes an array (`data.list.0.amount`).
fn lookup<'a, 'j>(v: &'a Json<'j>, path: &str) -> Option<&'a Json<'j>> {
    path.split('.')
        .try_fold(v, |v, part| match (v, part.parse::<usize>()) {
            (Json::Array(items), Ok(i)) => items.get(i),
            _ => v.get(part),
        })
}

/// The catalog's facts of a `kind` webhook, read from its raw body: each declared fact
/// whose path holds a string, number or boolean. Texts are bounded like details.
pub fn facts(catalog: &Catalog, kind: &str, raw: &[u8]) -> Facts {
    if catalog.kind(kind).is_none_or(|s| s.facts.is_empty())
        && !catalog
            .joins
            .iter()
            .any(|j| j.kind == kind && !(j.facts.is_empty() && j.fact_paths.is_empty()))
    {
        return Vec::new();
    }
    match Json::parse(raw) {
        Ok(v) => facts_in(catalog, kind, &v),
        Err(_) => Vec::new(),
    }
}

/// [`facts`] of an already parsed body.
fn facts_in(catalog: &Catalog, kind: &str, v: &Json<'_>) -> Vec<(String, FactValue)> {
    let Some(spec) = catalog.kind(kind) else {
        return Vec::new();
    };
    let join = join_of(catalog, named_kind(v).ok().flatten(), v);
    let mut facts: Vec<(String, FactValue)> = spec
        .facts
        .iter()
        // A join's own path for a fact is where its webhooks carry it.
        .filter(|(name, _)| !join.is_some_and(|j| j.fact_paths.contains_key(*name)))
        .chain(join.iter().flat_map(|j| &j.fact_paths))
        .filter_map(|(name, path)| {
            let value = match lookup(v, path)? {
                Json::String(s) if !s.trim().is_empty() => {
                    FactValue::Text(bounded_detail(s.trim()).into_owned())
                }
                Json::Number(n) => FactValue::Number(n.as_f64()?),
                Json::Bool(b) => FactValue::Bool(*b),
                _ => return None,
            };
            Some((name.clone(), value))
        })
        .collect();
    // A join's facts are the webhook's whatever its body: an escrow account's last webhook
    // says it is one by its type alone.
    if let Some(join) = join {
        for (name, value) in &join.facts {
            facts.retain(|(n, _)| n != name);
            facts.push((name.clone(), FactValue::Text(value.clone())));
        }
    }
    facts
}

/// Facts read from a webhook body: (name, value) in the catalog's order ([`facts`]).
pub type Facts = Vec<(String, FactValue)>;

/// A fact's value, as the webhook typed it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum FactValue {
    /// A text.
    Text(String),
    /// A number.
    Number(f64),
    /// A boolean.
    Bool(bool),
}

// Facts compare by their bits: a NaN never comes from JSON, so equality is reflexive.
impl Eq for FactValue {}

fn present(v: &Json<'_>, path: &str) -> bool {
    lookup(v, path).is_some_and(|v| !v.is_null())
}

/// A string field; `Ok(None)` when absent or null, `Err` naming the type when not a string.
fn text_field<'a>(v: &'a Json<'_>, path: &str) -> Result<Option<&'a str>, String> {
    match lookup(v, path) {
        None | Some(Json::Null) => Ok(None),
        Some(Json::String(s)) => Ok(Some(s)),
        Some(other) => Err(format!(
            "{path} is {}, expected a string",
            other.type_name()
        )),
    }
}

fn first_text<'a, 'p>(
    v: &'a Json<'_>,
    paths: impl IntoIterator<Item = &'p str>,
) -> Result<Option<&'a str>, String> {
    for path in paths {
        if let Some(s) = text_field(v, path)? {
            return Ok(Some(s));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn event(value: Value) -> WebhookEnvelope {
        match normalize(&Catalog::builtin(), &serde_json::to_vec(&value).unwrap()) {
            Ok(Normalized::Event(e)) => e,
            other => panic!("{value}: expected an event, got {other:?}"),
        }
    }

    fn quarantine_reason(value: Value) -> String {
        match normalize(&Catalog::builtin(), &serde_json::to_vec(&value).unwrap()) {
            Ok(Normalized::Quarantine { reason, .. }) => reason,
            other => panic!("{value}: expected quarantine, got {other:?}"),
        }
    }

    /// Milliseconds of a UTC date-time written as RFC 3339.
    fn utc(text: &str) -> Option<i64> {
        Some(
            DateTime::parse_from_rfc3339(text)
                .unwrap()
                .timestamp_millis(),
        )
    }

    #[test]
    fn other_families_are_read_by_the_key_beside_its_status() {
        let cases = [
            // BaaS Pix: request_control_key has no status beside it.
            (
                json!({"webhook_type": "baas.pix_transfer.outgoing_pix", "webhook_datetime": "2021-10-22T20:30:23.459Z",
                       "data": {"request_control_key": "r", "pix_transfer_key": "p", "pix_transfer_status": "Sent"}}),
                ("baas.pix_transfer.outgoing_pix", "p", "sent"),
            ),
            // Automatic Pix: event_type, and origin_key beside the pair.
            (
                json!({"event_type": "baas.automatic_pix.outgoing_recurrence.status_change", "origin_key": "o",
                       "data": {"outgoing_recurrence_key": "o", "outgoing_recurrence_status": "approved"}}),
                (
                    "baas.automatic_pix.outgoing_recurrence.status_change",
                    "o",
                    "approved",
                ),
            ),
            // QI DTVM: event_data, one key beside a plain status.
            (
                json!({"event_type": "issuer_management.issuer_status_change",
                       "event_data": {"issuer_key": "i", "status": "approved"}}),
                ("issuer_management.issuer_status_change", "i", "approved"),
            ),
            // The documented fields come first when present.
            (
                json!({"webhook_type": "debt", "key": "k", "status": "signed",
                       "data": {"other_key": "o", "other_status": "x"}}),
                ("debt", "k", "signed"),
            ),
        ];
        for (value, (kind, key, status)) in cases {
            let e = event(value.clone());
            assert_eq!(
                (e.kind.as_str(), e.key.as_str(), e.status.as_str()),
                (kind, key, status),
                "{value}"
            );
        }
        let t = event(
            json!({"webhook_type": "baas.bill_payment.payment", "webhook_datetime": "2021-10-22T20:30:23.459Z",
                             "data": {"payment_key": "p", "payment_status": "executed"}}),
        );
        assert_eq!(t.event_time, utc("2021-10-22T20:30:23.459Z"));
        // Two pairs, or two keys beside a plain status: ambiguous, so quarantined.
        for value in [
            json!({"event_type": "x", "data": {"a_key": "1", "a_status": "s", "b_key": "2", "b_status": "t"}}),
            json!({"event_type": "x", "event_data": {"a_key": "1", "b_key": "2", "status": "s"}}),
        ] {
            assert!(
                quarantine_reason(value.clone()).contains("no operation key"),
                "{value}"
            );
        }
    }

    #[test]
    fn kind_is_read_in_every_shape() {
        let cases = [
            (
                json!({"webhook_type": "debt", "key": "k", "status": "x"}),
                "debt",
            ),
            (
                json!({"webhook_type": "DEBT", "key": "k", "status": "x"}),
                "debt",
            ),
            (
                // An escrow account is an account (a kind family, the catalog's joins).
                json!({"webhook_type": " Escrow ", "key": "k", "status": "x"}),
                "account",
            ),
            (
                json!({"webhook_type": "historic-card-settlement", "key": "k", "status": "x"}),
                "historic_card_settlement",
            ),
            (
                json!({"webhook_type": "historic_card_settlement", "key": "k", "status": "x"}),
                "historic_card_settlement",
            ),
            (
                json!({"webhook_type": "Historic-Card_Settlement", "key": "k", "status": "x"}),
                "historic_card_settlement",
            ),
            (
                json!({"webhook_type": "installment.status_change", "key": "k", "status": "x"}),
                "installment.status_change",
            ),
            (
                json!({"webhook_type": "bank_slip.status_change", "key": "k", "status": "x"}),
                "bank_slip.status_change",
            ),
            // Seed 000's failure shape: no webhook_type, debt_key instead of key.
            (
                json!({"debt_key": "k", "status": "rejected", "description": "d"}),
                "debt",
            ),
            (
                json!({"webhook_type": null, "debt_key": "k", "status": "rejected"}),
                "debt",
            ),
        ];
        for (value, kind) in cases {
            assert_eq!(event(value.clone()).kind, kind, "{value}");
        }
    }

    #[test]
    fn key_is_read_from_every_documented_place() {
        let cases = [
            (
                json!({"webhook_type": "debt", "key": "a", "status": "x"}),
                "a",
            ),
            (json!({"debt_key": "b", "status": "x"}), "b"),
            (
                json!({"webhook_type": "debt", "debt_key": "c", "status": "x"}),
                "c",
            ),
            (
                json!({"webhook_type": "scr", "status": "consulted", "data": {"scr_key": "d"}}),
                "d",
            ),
            (
                json!({"webhook_type": "historic-card-settlement", "status": "processed",
                    "data": {"historic_card_settlement_key": "e"}}),
                "e",
            ),
            (
                json!({"webhook_type": "installment.status_change", "status": "paid",
                    "data": {"installment_key": "f"}}),
                "f",
            ),
            // `key` wins over the others; keys are opaque (not always UUIDs), kept as sent.
            (
                json!({"webhook_type": "installment.status_change", "key": " Not-A-UUID ",
                    "status": "x", "data": {"installment_key": "g"}}),
                " Not-A-UUID ",
            ),
            // Unless the kind names its operation elsewhere first: an SCR query is
            // `data.scr_key`, its `key` the credit operation's (QI's SCR webhook page).
            (
                json!({"webhook_type": "scr", "key": "op", "status": "x", "data": {"scr_key": "q"}}),
                "q",
            ),
            (
                json!({"webhook_type": "debt", "key": null, "debt_key": "h", "status": "x"}),
                "h",
            ),
        ];
        for (value, key) in cases {
            assert_eq!(event(value.clone()).key, key, "{value}");
        }
    }

    #[test]
    fn status_is_read_trimmed_and_lower_cased_from_every_documented_place() {
        let cases = [
            (
                json!({"webhook_type": "debt", "key": "k", "status": "disbursed"}),
                "disbursed",
            ),
            (
                json!({"webhook_type": "debt", "key": "k", "status": "canceled "}),
                "canceled",
            ),
            (
                json!({"webhook_type": "debt", "key": "k", "status": " Waiting_Signature\t"}),
                "waiting_signature",
            ),
            (
                json!({"webhook_type": "scr", "key": "k", "data": {"status": "consulted"}}),
                "consulted",
            ),
            (
                json!({"webhook_type": "scr", "key": "k", "data": {"scr_status": "rejected"}}),
                "rejected",
            ),
            (
                json!({"webhook_type": "bank_slip.status_change", "key": "k",
                    "data": {"bank_slip_status": "Paid"}}),
                "paid",
            ),
            // A status the catalog does not know is kept as sent.
            (
                json!({"webhook_type": "debt", "key": "k", "status": "brand_new_status"}),
                "brand_new_status",
            ),
        ];
        for (value, status) in cases {
            assert_eq!(event(value.clone()).status, status, "{value}");
        }
    }

    #[test]
    fn event_time_is_read_in_every_documented_form() {
        let at = |t: Value| json!({"webhook_type": "debt", "key": "k", "status": "x", "event_datetime": t});
        let cases = [
            // Naive times are São Paulo time (UTC-3).
            (
                at(json!("2019-11-04 16:52:49")),
                utc("2019-11-04T19:52:49Z"),
            ),
            (
                at(json!("2022-05-18T20:57:00")),
                utc("2022-05-18T23:57:00Z"),
            ),
            (
                at(json!("2022-05-18T20:57:00.250")),
                utc("2022-05-18T23:57:00.250Z"),
            ),
            (
                at(json!("2022-05-18 20:57:00.5")),
                utc("2022-05-18T23:57:00.500Z"),
            ),
            (
                at(json!("2022-05-18T20:57:00Z")),
                utc("2022-05-18T20:57:00Z"),
            ),
            (
                at(json!("2022-05-18T20:57:00.123456Z")),
                utc("2022-05-18T20:57:00.123Z"),
            ),
            (
                at(json!("2022-05-18T20:57:00-03:00")),
                utc("2022-05-18T23:57:00Z"),
            ),
            (
                at(json!("2022-05-18 20:57:00+00:00")),
                utc("2022-05-18T20:57:00Z"),
            ),
            (
                at(json!("2022-05-18T20:57:00+0100")),
                utc("2022-05-18T19:57:00Z"),
            ),
            (
                at(json!(" 2022-05-18T20:57:00Z ")),
                utc("2022-05-18T20:57:00Z"),
            ),
            // Unreadable or absent times are allowed: the webhook still counts.
            (at(json!("yesterday")), None),
            (at(json!(1652907420)), None),
            (json!({"debt_key": "k", "status": "rejected"}), None),
            (
                json!({"webhook_type": "debt", "key": "k", "status": "x",
                    "webhook_datetime": "2022-05-18T20:57:00Z"}),
                utc("2022-05-18T20:57:00Z"),
            ),
        ];
        for (value, expected) in cases {
            assert_eq!(event(value.clone()).event_time, expected, "{value}");
        }
    }

    #[test]
    fn detail_is_read_from_every_documented_place() {
        let cases = [
            (
                json!({"debt_key": "k", "status": "rejected", "description": "Insufficient funds"}),
                "Insufficient funds",
            ),
            // QI Tech's own text is kept...
            (
                json!({"webhook_type": "debt", "key": "k", "status": "canceled ",
                    "data": {"cancel_reason": "Excesso de tentativas", "cancel_reason_enumerator": "pix_max_retry"}}),
                "pix_max_retry: Excesso de tentativas",
            ),
            // ...the catalog's text only stands in when there is none.
            (
                json!({"webhook_type": "debt", "key": "k", "status": "canceled ",
                    "data": {"cancel_reason_enumerator": "pix_max_retry"}}),
                "pix_max_retry: Operation cancelled due to too many disbursement errors",
            ),
            (
                json!({"webhook_type": "debt", "key": "k", "status": "canceled",
                    "data": {"reason_description": "Motivo novo", "cancel_reason_enumerator": "novo"}}),
                "novo: Motivo novo",
            ),
            (
                json!({"webhook_type": "account_request.status_change", "key": "k", "status": "rejected",
                    "rejection_reason": "Documento ilegível"}),
                "Documento ilegível",
            ),
            (
                json!({"webhook_type": "historic-card-settlement", "key": "k", "status": "processed",
                    "data": {"response_data": {"slc_status": "completed"}}}),
                "completed",
            ),
            // scr_status is a detail only when it says something the status does not.
            (
                json!({"webhook_type": "scr", "key": "k", "status": "consulted",
                    "data": {"scr_status": "consulted"}}),
                "",
            ),
            (
                json!({"webhook_type": "scr", "key": "k", "status": "pending_signature",
                    "data": {"scr_status": "waiting"}}),
                "waiting",
            ),
            (
                json!({"webhook_type": "debt", "key": "k", "status": "disbursed", "data": null}),
                "",
            ),
        ];
        for (value, detail) in cases {
            assert_eq!(event(value.clone()).detail, detail, "{value}");
        }
    }

    #[test]
    fn card_settlement_outcome_comes_from_slc_status() {
        let processed = |slc: &str| {
            json!({"webhook_type": "historic-card-settlement", "key": "k", "status": "processed",
                   "data": {"response_data": {"slc_status": slc}}})
        };
        assert_eq!(
            event(processed("completed")).outcome.as_deref(),
            Some("completed")
        );
        assert_eq!(
            event(processed(" NOT_FOUND")).outcome.as_deref(),
            Some("not_found")
        );
        // Only the statuses the catalog names defer to the outcome field.
        let other = json!({"webhook_type": "historic-card-settlement", "key": "k", "status": "queued",
                           "data": {"response_data": {"slc_status": "completed"}}});
        assert_eq!(event(other).outcome, None);
        // Other kinds have no outcome field.
        assert_eq!(
            event(json!({"webhook_type": "debt", "key": "k", "status": "x"})).outcome,
            None
        );
    }

    #[test]
    fn unreadable_objects_are_quarantined_with_a_reason_naming_the_field() {
        let cases = [
            (json!({}), "no webhook_type or event_type, and no debt_key"),
            (json!({"key": "k", "status": "x"}), "no webhook_type"),
            (
                json!({"webhook_type": "", "key": "k", "status": "x"}),
                "webhook_type is empty",
            ),
            (
                json!({"webhook_type": 7, "key": "k", "status": "x"}),
                "webhook_type is a number",
            ),
            (
                json!({"webhook_type": "dé bt", "key": "k", "status": "x"}),
                "webhook_type has characters",
            ),
            (
                json!({"webhook_type": "debt", "status": "x"}),
                "no operation key",
            ),
            (
                json!({"webhook_type": "debt", "key": "", "status": "x"}),
                "key is empty",
            ),
            (
                json!({"webhook_type": "debt", "key": 12, "status": "x"}),
                "key is a number",
            ),
            (
                json!({"webhook_type": "debt", "key": {"id": 1}, "status": "x"}),
                "key is an object",
            ),
            (
                json!({"webhook_type": "debt", "key": "a\nb", "status": "x"}),
                "key contains control",
            ),
            (
                json!({"webhook_type": "debt", "key": "k".repeat(300), "status": "x"}),
                "key is 300 bytes long; keys are at most 256",
            ),
            (json!({"webhook_type": "debt", "key": "k"}), "no status"),
            (
                json!({"webhook_type": "debt", "key": "k", "status": "   "}),
                "status is empty",
            ),
            (
                json!({"webhook_type": "debt", "key": "k", "status": true}),
                "status is a boolean",
            ),
            (
                json!({"webhook_type": "debt", "key": "k", "status": "dis\u{7}bursed"}),
                "status contains control",
            ),
            (
                json!({"webhook_type": "debt", "key": "k", "status": "s".repeat(200)}),
                "status is 200 bytes long; at most 128",
            ),
            // A Cyrillic "і" that looks like a Latin "i", and a zero-width space.
            (
                json!({"webhook_type": "debt", "key": "k", "status": "d\u{456}sbursed"}),
                "status has characters",
            ),
            (
                json!({"webhook_type": "debt", "key": "k", "status": "disbursed\u{200b}"}),
                "status has characters",
            ),
        ];
        for (value, expected) in cases {
            let reason = quarantine_reason(value.clone());
            assert!(reason.contains(expected), "{value}: {reason}");
        }
    }

    #[test]
    fn details_are_bounded_with_a_marker_at_a_character_boundary() {
        assert_eq!(bounded_detail("short"), "short");
        let long = "ç".repeat(2000);
        let cut = bounded_detail(&long);
        assert!(cut.len() <= MAX_DETAIL_LEN, "{}", cut.len());
        assert!(cut.ends_with("[cut: 4000 bytes in all]"), "{cut}");
        assert!(cut.starts_with("çç"));
        let e = event(
            json!({"webhook_type": "debt", "key": "k", "status": "canceled", "description": long}),
        );
        assert_eq!(e.detail, cut);
    }

    #[test]
    fn bodies_that_are_not_objects_are_malformed() {
        let catalog = Catalog::builtin();
        for (body, expected) in [
            (&b"{\"a\": "[..], "not valid JSON"),
            (b"{\"a\": 1,}", "not valid JSON"),
            (b"null", "is null"),
            (b"[]", "is an array"),
            (b"1e400", "not valid JSON"),
            (b"\"x\"", "is a string"),
        ] {
            let err = normalize(&catalog, body).unwrap_err().to_string();
            assert!(
                err.contains(expected),
                "{:?}: {err}",
                String::from_utf8_lossy(body)
            );
        }
        let deep = "[".repeat(10_000) + &"]".repeat(10_000);
        let err = normalize(&catalog, deep.as_bytes())
            .unwrap_err()
            .to_string();
        assert!(err.contains("recursion limit"), "{err}");
    }

    #[test]
    fn numbers_a_double_cannot_hold_are_told_apart_and_the_rest_keep_their_identifier() {
        let body_id =
            |json: &str| EventId::of_body(&Json::parse(json.as_bytes()).unwrap(), json.as_bytes());
        // Identical but for one 23-digit integer (or a decimal's 20th digit): two webhooks.
        let a = body_id(r#"{"key": "k", "n": 12345678901234567890123}"#);
        let b = body_id(r#"{"key": "k", "n": 12345678901234567890124}"#);
        assert_ne!(a, b);
        assert_ne!(
            body_id(r#"{"x": 0.10000000000000000001}"#),
            body_id(r#"{"x": 0.10000000000000000002}"#)
        );
        // The same webhook whatever its spelling: whitespace, key order, an equal number.
        assert_eq!(a, body_id(r#"{ "n":12345678901234567890123 , "key":"k" }"#));
        assert_eq!(
            a,
            body_id(r#"{"key": "k", "n": 1.2345678901234567890123e22}"#)
        );
        // A number inside a string is text, not a number.
        let quoted = r#"{"key": "k", "s": "12345678901234567890123 \" 9"}"#;
        assert_eq!(body_id(quoted), id(quoted));
        // Numbers a double holds: the identifier stored webhooks always had.
        for json in [
            r#"{"a": 1, "b": -2.5, "c": 1e3, "d": 18446744073709551615, "e": -9223372036854775808}"#,
            r#"{"amount": 8.9496686, "rate": 0.62, "big": 9007199254740992.0}"#,
        ] {
            assert_eq!(body_id(json), id(json), "{json}");
        }
    }

    #[test]
    fn a_pix_refund_naming_no_outgoing_transfer_stays_an_incoming_pix() {
        let catalog = Catalog::builtin();
        let raw = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/009_pix_refund_of_outgoing.json"
        ))
        .unwrap();
        let mut refund: serde_json::Value = serde_json::from_slice(&raw).unwrap();
        let envelope = |value: &serde_json::Value| match normalize(
            &catalog,
            &serde_json::to_vec(value).unwrap(),
        )
        .unwrap()
        {
            Normalized::Event(envelope) => envelope,
            other => panic!("{other:?}"),
        };
        let joined = envelope(&refund);
        assert_eq!(
            (
                joined.kind.as_str(),
                joined.key.as_str(),
                joined.status.as_str()
            ),
            (
                "baas.pix_transfer.outgoing_pix",
                "b56862c4-2b20-4057-8063-b8809866e494",
                "refunded"
            )
        );
        for missing in [
            serde_json::Value::Null,
            serde_json::json!(""),
            serde_json::json!(" "),
        ] {
            refund["data"]["original_outgoing_pix_transfer"] = missing;
            let alone = envelope(&refund);
            assert_eq!(
                (
                    alone.kind.as_str(),
                    alone.key.as_str(),
                    alone.status.as_str()
                ),
                (
                    "baas.pix_transfer.incoming_pix",
                    "8cb70dea-9fb0-4a68-9572-99a72849c8d6",
                    "received"
                ),
                "{refund}"
            );
        }
        refund["data"]
            .as_object_mut()
            .unwrap()
            .remove("original_outgoing_pix_transfer");
        assert_eq!(envelope(&refund).kind, "baas.pix_transfer.incoming_pix");
    }

    #[test]
    fn event_id_ignores_whitespace_and_key_order_but_not_values() {
        let a = id(r#"{"a": 1, "b": {"c": [1, 2]}}"#);
        assert_eq!(a, id(r#"{ "b":{"c":[1,2]},"a":1 }"#));
        assert_ne!(a, id(r#"{"a": 1, "b": {"c": [2, 1]}}"#));
    }

    fn id(json: &str) -> EventId {
        EventId::of(&Json::parse(json.as_bytes()).unwrap())
    }

    #[test]
    fn equal_numbers_are_one_webhook_however_they_are_spelled() {
        for same in [
            r#"{"v":1.0}"#,
            r#"{"v":1e0}"#,
            r#"{"v":10e-1}"#,
            r#"{"v":1.000}"#,
        ] {
            assert_eq!(id(r#"{"v":1}"#), id(same), "{same}");
        }
        assert_eq!(id(r#"{"v":-0.0}"#), id(r#"{"v":0}"#));
        assert_eq!(id(r#"{"v":1500.50}"#), id(r#"{"v":1.5005e3}"#));
        for different in [
            r#"{"v":1.5}"#,
            r#"{"v":"1"}"#,
            r#"{"v":-1}"#,
            r#"{"v":true}"#,
        ] {
            assert_ne!(id(r#"{"v":1}"#), id(different), "{different}");
        }
        // Integers that fit 64 bits are exact, even past a double's precision.
        assert_ne!(
            id(r#"{"v":9007199254740993}"#),
            id(r#"{"v":9007199254740992}"#)
        );
    }

    #[test]
    fn canonical_form_is_serde_jsons_except_for_integral_doubles() {
        // Identifiers of webhooks stored before canonical numbers stay valid: only `1.0`-like
        // numbers are written differently.
        let body = r#"{"s":"é \" \n \u0001","a":[null,true,false,-3,0.25,1e-7,1.5e300],"o":{"z":1,"b":{}}}"#;
        let value: Value = serde_json::from_str(body).unwrap();
        let mut ours = Vec::new();
        canonical_json(&Json::parse(body.as_bytes()).unwrap(), &mut ours);
        assert_eq!(ours, serde_json::to_vec(&value).unwrap());
    }

    #[test]
    fn a_status_path_from_the_catalog_is_read() {
        let catalog = Catalog::builtin()
            .extended_with("[kinds.pix_transfer]\nstatus_paths = [\"data.transfer_state\"]\n")
            .unwrap();
        let body =
            br#"{"webhook_type": "pix_transfer", "key": "k", "data": {"transfer_state": "Sent"}}"#;
        let Ok(Normalized::Event(e)) = normalize(&catalog, body) else {
            panic!("not an event");
        };
        assert_eq!(e.status, "sent");
        assert!(matches!(
            normalize(&Catalog::builtin(), body),
            Ok(Normalized::Quarantine { .. })
        ));
    }

    /// QI's documented examples of the families added with the truth table (fixtures 009):
    /// each a known kind, its operation the one QI's documents name, including the kind
    /// families (joins) and the webhooks that name no kind.
    #[test]
    fn documented_families_are_known_kinds_of_the_right_operation() {
        let catalog = Catalog::builtin();
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
        let cases = [
            (
                "009_pix_incoming_received.json",
                "baas.pix_transfer.incoming_pix",
                "8cb70dea-9fb0-4a68-9572-99a72849c8d6",
                "received",
            ),
            // A refund is news of the outgoing Pix it names.
            (
                "009_pix_refund_of_outgoing.json",
                "baas.pix_transfer.outgoing_pix",
                "b56862c4-2b20-4057-8063-b8809866e494",
                "refunded",
            ),
            (
                "009_automatic_pix_incoming_recurrence_pending.json",
                "baas.automatic_pix.incoming_recurrence",
                "12385acf-b0c3-4389-baf3-a58abbe92d58",
                "pending_confirmation",
            ),
            (
                "009_invoice_payment_waiting.json",
                "baas.invoice.invoice_payment_status_change",
                "a1b2c3d4-e5f6-7890-abcd-ef1234567890",
                "waiting_payment",
            ),
            (
                "009_payment_instrument_entry_concluded.json",
                "baas.invoice.payment_instrument_entry",
                "fd86d9b1-2a5e-4e03-9a59-a043c7632c97",
                "concluded",
            ),
            (
                "009_payroll_card_reservation_pending_onboarding.json",
                "laas.payroll_card_reservation.status_change",
                "a1b2c3d4-e5f6-7890-abcd-ef1234567890",
                "pending_onboarding",
            ),
            (
                "009_receivables_assignment_denied.json",
                "trade_receivables.assignment_status_change",
                "1caff47c-bd05-48b0-a6bc-9569f5070f6b",
                "denied",
            ),
            (
                "009_vehicle_order_status_denied.json",
                "vehicle_collateral.order_status",
                "QI-20260310-000123",
                "lien inclusion denied",
            ),
            (
                "009_caas_limit_event_approved.json",
                "caas.limits.analysis_status",
                "123456",
                "automatically_approved",
            ),
            (
                "009_pix_schedule_completed_sent.json",
                "baas.pix_schedule.completed",
                "0c9091ab-079b-4a43-8b3d-d4ba36a23883",
                "sent",
            ),
            (
                "009_pix_med_refund_request_open.json",
                "incoming.internal_refund_request",
                "9eb5f452-81fd-4f67-9f2a-49e14e53ef64",
                "open",
            ),
            (
                "009_receivables_asset_created.json",
                "trade_receivables.asset_status_change",
                "1caff47c-bd05-48b0-a6bc-9569f5070f6b",
                "pending_eligibility",
            ),
            (
                "009_receivables_asset_pre_approved.json",
                "trade_receivables.asset_status_change",
                "1caff47c-bd05-48b0-a6bc-9569f5070f6b",
                "pre_approved",
            ),
            (
                "009_receivables_assignment_pending_assets_wallet_inclusion.json",
                "trade_receivables.assignment_status_change",
                "1caff47c-bd05-48b0-a6bc-9569f5070f6c",
                "pending_assets_wallet_inclusion",
            ),
            (
                "009_card_order_fraud_approved.json",
                "caas.card_order.fraud_status",
                "123456",
                "automatically_approved",
            ),
            // The reservation's steps are the debt's, under a prefix.
            (
                "009_private_payroll_reservation_pending_authorization.json",
                "debt",
                "5d3a9e7c-1b2f-4c8d-9e0a-7f6b5c4d3e21",
                "reservation_pending_requester_authorization",
            ),
            (
                "009_escrow_account_request_pending_kyc.json",
                "account",
                "0b6f8e9a-3c2d-4e1f-8a7b-000000000003",
                "pending_kyc_analysis",
            ),
            (
                "001_escrow_opened.json",
                "account",
                "0b6f8e9a-3c2d-4e1f-8a7b-000000000003",
                "account_opened",
            ),
        ];
        for (name, kind, key, status) in cases {
            let raw = std::fs::read(format!("{dir}/{name}")).unwrap();
            let e = match normalize(&catalog, &raw).unwrap() {
                Normalized::Event(e) => e,
                other => panic!("{name}: {other:?}"),
            };
            assert_eq!(
                (e.kind.as_str(), e.key.as_str(), e.status.as_str()),
                (kind, key, status),
                "{name}"
            );
            assert!(
                catalog.kind(kind).is_some(),
                "{name}: {kind} is a known kind"
            );
        }
        // Times the kinds name: the card order's `event_date`, the vehicle order's
        // `timestamp`.
        let time_of = |name: &str| match normalize(
            &catalog,
            &std::fs::read(format!("{dir}/{name}")).unwrap(),
        )
        .unwrap()
        {
            Normalized::Event(e) => e.event_time,
            other => panic!("{name}: {other:?}"),
        };
        assert_eq!(
            time_of("009_card_order_fraud_approved.json"),
            utc("2019-10-01T13:37:25Z")
        );
        assert_eq!(
            time_of("009_vehicle_order_status_denied.json"),
            utc("2026-03-10T10:05:00Z")
        );
        // The escrow says so as a fact; its steps do not (they say nothing of it).
        let escrow = std::fs::read(format!("{dir}/001_escrow_opened.json")).unwrap();
        assert_eq!(
            facts(&catalog, "account", &escrow),
            vec![(
                "account_type".to_owned(),
                FactValue::Text("escrow".to_owned())
            )]
        );
        let step =
            std::fs::read(format!("{dir}/009_escrow_account_request_pending_kyc.json")).unwrap();
        assert!(facts(&catalog, "account", &step).is_empty());
        // An incoming Pix that is not a refund stays an incoming Pix, whatever else it has.
        assert_eq!(
            event(json!({"webhook_type": "baas.pix_transfer.incoming_pix",
                         "data": {"pix_transfer_key": "i", "pix_transfer_status": "received",
                                  "pix_transfer_type": "key", "original_outgoing_pix_transfer": "o"}}))
            .kind,
            "baas.pix_transfer.incoming_pix"
        );
        // Asking for an escrow finds the account.
        assert_eq!(catalog.resolve_kind("escrow"), "account");
    }

    #[test]
    fn qi_s_never_is_shown_as_the_last_day_of_9999() {
        // `9999-12-31 23:59:59` at São Paulo is past the end of year 9999 in UTC.
        let never = parse_event_time("9999-12-31 23:59:59", -180).unwrap();
        assert!(never > LATEST_SHOWN_MILLIS);
        let shown = chrono::DateTime::from_timestamp_millis(shown_millis(never)).unwrap();
        assert_eq!(
            shown.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "9999-12-31T23:59:59Z"
        );
        // Ordinary times are shown as they are.
        let t = utc("2024-06-01T12:00:00Z").unwrap();
        assert_eq!(shown_millis(t), t);
    }

    #[test]
    fn the_data_field_is_read_when_present_and_of_the_type_asked() {
        type Object = serde_json::Map<String, Value>;
        assert!(data_field::<Object>(br#"{"data": {"a": 1}, "x": [1]}"#).is_some());
        assert!(data_field::<Object>(br#"{"data": null}"#).is_none());
        assert!(data_field::<Object>(br#"{"data": [1]}"#).is_none());
        assert!(data_field::<Object>(br#"{"status": "x"}"#).is_none());
        assert!(data_field::<Object>(b"not json").is_none());
    }

    #[test]
    fn identifiers_of_stored_webhooks_do_not_change() {
        // Recorded from the fixtures by the build that read bodies into `serde_json::Value`:
        // a stored webhook's identifier is what a resent copy of it must hash to.
        let recorded = [
            ("000_debt_1_waiting_signature.json", "535e4185766180ea"),
            ("000_debt_2_waiting_balance_block.json", "b8aeadcd73a86fbe"),
            ("000_debt_3_waiting_disbursement.json", "8f76f2dbab23cdd8"),
            (
                "000_debt_4_waiting_assignment_term_signature.json",
                "512c0a60a7d038cf",
            ),
            (
                "000_debt_5_waiting_balance_release.json",
                "a2f87a13aeee5268",
            ),
            (
                "000_debt_6_debt_successfully_finished.json",
                "682851846baca8c9",
            ),
            ("000_debt_rejected.json", "975efb9dbb5da7e2"),
            ("001_account_opened.json", "ceda52583cd2a29b"),
            ("001_account_rejected.json", "a9c55cd0f8c6db82"),
            ("001_escrow_opened.json", "217f03a856a1b02a"),
            ("001_escrow_rejected.json", "8dd56621f91da735"),
            ("002_scr_consulted_complete.json", "92a80cb170aa8d14"),
            ("002_scr_consulted_pdf.json", "e0750a33f5888b35"),
            ("002_scr_rejected.json", "a5e29b176a4bfa54"),
            (
                "003_historic_card_settlement_completed.json",
                "9a4895972a8c94b4",
            ),
            (
                "003_historic_card_settlement_not_found.json",
                "35ccb9d03195ee0a",
            ),
            ("004_debt_canceled.json", "0e4ace35e450be22"),
            (
                "004_debt_created_waiting_signature.json",
                "283b7e2086bebe3d",
            ),
            ("004_debt_disbursed.json", "157d8e639c98dd42"),
            ("004_debt_settled.json", "1d50b6d613e3a6f5"),
            ("005_pix_outgoing_rejected.json", "52db483836a4dd89"),
            ("005_pix_outgoing_sent.json", "c76b01c830c1b9e8"),
            ("006_bill_payment_executed.json", "f16507b5bd227de9"),
            ("006_bill_payment_reverted.json", "99682111f97f0949"),
            (
                "007_automatic_pix_recurrence_approved.json",
                "684382448db2075c",
            ),
            ("008_dtvm_investor_reproved.json", "48d2c7a713dd0260"),
            ("008_dtvm_issuer_approved.json", "8568d39e3c945efa"),
            (
                "009_automatic_pix_incoming_recurrence_pending.json",
                "ede3f15142aaefa2",
            ),
            ("009_bank_slip_occurrence_paid.json", "de941972157a8516"),
            (
                "009_bank_slip_occurrence_payment_notice.json",
                "9c79733f6ecce751",
            ),
            (
                "009_bank_slip_ownership_exchange_approved.json",
                "804bc8ba62fbb464",
            ),
            (
                "009_bank_slip_ownership_exchange_sent.json",
                "f254aa9b95b8f968",
            ),
            ("009_bank_slip_registered.json", "3622f5fc6db5bf89"),
            ("009_caas_limit_event_approved.json", "cf7766dfb44f7456"),
            ("009_card_order_fraud_approved.json", "138f01a1572b8d37"),
            ("009_ccb_assignment_batch_settled.json", "1ee5344017a59e04"),
            (
                "009_escrow_account_request_pending_kyc.json",
                "f9b342008b6ca8f2",
            ),
            (
                "009_installment_payment_paid_early.json",
                "fd5a4a6212418e15",
            ),
            ("009_invoice_payment_waiting.json", "b21f9e7256ddad77"),
            (
                "009_payment_instrument_entry_concluded.json",
                "17ffc31a3a450da3",
            ),
            (
                "009_payroll_card_reservation_pending_onboarding.json",
                "8dc2a7e3bf9cde42",
            ),
            ("009_pix_incoming_received.json", "87f32ec97808b2ed"),
            ("009_pix_med_refund_request_open.json", "ef25018d80dbd9d7"),
            ("009_pix_refund_of_outgoing.json", "afb74d7dcc06f946"),
            ("009_pix_schedule_completed_sent.json", "b6a8d76e32488449"),
            (
                "009_private_payroll_reservation_pending_authorization.json",
                "f8c8c3778e2a852c",
            ),
            ("009_receivables_asset_created.json", "9e2059c861140fd4"),
            (
                "009_receivables_asset_pre_approved.json",
                "c36ab1724a9721bb",
            ),
            ("009_receivables_assignment_denied.json", "c81326fe735c080a"),
            (
                "009_receivables_assignment_pending_assets_wallet_inclusion.json",
                "c64e2a2f0bed70de",
            ),
            (
                "009_receivables_assignment_pending_payment.json",
                "920b57ff611180c6",
            ),
            ("009_vehicle_order_status_denied.json", "35540862a239a952"),
        ];
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        files.sort();
        let names: Vec<_> = recorded.iter().map(|(name, _)| name.to_string()).collect();
        assert_eq!(files, names, "every fixture has its recorded identifier");
        for (name, prefix) in recorded {
            let raw = std::fs::read(format!("{dir}/{name}")).unwrap();
            let id = normalize(&Catalog::builtin(), &raw).unwrap().event_id();
            assert_eq!(&id.to_string()[..16], prefix, "{name}");
        }
        // A key given twice: the last value counts, as it did.
        assert_eq!(
            id(r#"{"a":1,"a":2}"#).to_string(),
            "7e8059f495589fcd981232cc11d00b00da3802c01d688fa1cf1f6bed6e5bb33c"
        );
        assert_eq!(id(r#"{"a":1,"a":2}"#), id(r#"{"a":2}"#));
    }
}
