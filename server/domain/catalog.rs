//! The catalog: what qistatus knows about each webhook kind, as data.
//!
//! Why data and not code: QI Tech adds statuses and kinds without notice. A deployment that
//! meets a new one extends the catalog with `--catalog FILE` (TOML, the shape of the built-in
//! `catalog.toml`) and runs `qistatus-server rebuild`; no new release is needed.
//!
//! Guarantees: a loaded catalog is valid. No status is both a stage and an end status, no
//! status is both a success and a failure, and supersession only relates end statuses and has
//! no cycles. Kinds are stored under their canonical name (see [`canonical_kind`]).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

const BUILTIN: &str = include_str!("catalog.toml");

/// An error in a catalog file.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The file could not be read.
    #[error("cannot read catalog file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not TOML of the catalog's shape.
    #[error("catalog is not valid TOML of the catalog's shape: {0}")]
    Syntax(#[from] toml::de::Error),
    /// The file is well-formed but contradicts itself.
    #[error("catalog is inconsistent: {0}")]
    Inconsistent(String),
}

/// The effective catalog: the built-in one, optionally extended by a file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Catalog {
    /// Offset from UTC, in minutes, at which event times without an offset are read.
    pub naive_time_offset_minutes: i32,
    /// How far past its receipt a webhook's event time is believed, in seconds. Beyond it
    /// (a clock gone wrong, or a forged date), the webhook is ordered at its receive time,
    /// so that it cannot pin a status; its given time is still shown. In the catalog, not a
    /// flag, so that every node of a cluster orders alike.
    #[serde(default = "default_event_time_ahead")]
    pub max_event_time_ahead_seconds: u32,
    /// Texts of `data.cancel_reason_enumerator` values, used when the webhook carries no text
    /// of its own.
    #[serde(default)]
    pub cancel_reasons: BTreeMap<String, String>,
    /// Other names of kinds: a webhook of an alias is an operation of the kind it names (QI
    /// Tech sends a payroll loan's updates as `laas.credit_operation.status_change`, and an
    /// account's opening steps as `account_request.status_change`, with the key of the
    /// account they become).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub aliases: BTreeMap<String, String>,
    /// Names of fields that hold personal data, anywhere in a payload (`*` matches any run):
    /// masked in the console until a person reveals them ([`crate::domain::personal`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub personal_fields: Vec<String>,
    /// Facts that are free texts QI may fill with a person's data (names included, which no
    /// shape finds): masked whole in the console until a person reveals the payload.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub personal_facts: Vec<String>,
    /// The kinds QI DTVM sends: a request signed with a QI DTVM key may carry only these
    /// (that signature binds no body, so it must not vouch for a debt's `settled`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub qi_dtvm_kinds: Vec<String>,
    /// The kinds QI CaaS sends: a request signed with a QI CaaS key may carry only these
    /// (the key is QI CaaS's: it vouches for a card order's fraud status, not for a debt).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub qi_caas_kinds: Vec<String>,
    /// Kind families: webhooks whose operation is another kind's (see [`JoinSpec`]), tried
    /// in order, the first that matches wins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub joins: Vec<JoinSpec>,
    /// The known kinds, by canonical name.
    #[serde(default)]
    pub kinds: BTreeMap<String, KindSpec>,
}

fn default_event_time_ahead() -> u32 {
    300
}

/// What the catalog knows about one kind.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KindSpec {
    /// The non-final statuses, in the order the flow goes through them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stages: Vec<String>,
    /// Stages the flow goes back and forth between (a request sent back to the requester,
    /// then sent again): each group ranks as its first member in `stages`, so between its
    /// members the later event time wins, not the later stage.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub loops: Vec<Vec<String>>,
    /// The stages in which an operation is live and running (phase `Active`), e.g. a debt
    /// from `disbursed` on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub active: Vec<String>,
    /// Statuses that end the flow in success.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub success: Vec<String>,
    /// Statuses that end the flow in failure.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failure: Vec<String>,
    /// Patterns (`*` matches any run of characters) of statuses that end the flow in failure
    /// though no list names them: QI Tech sends "the rejection of the current stage" for
    /// accounts (seed 001), whose name depends on the stage. Tried after the lists above.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failure_patterns: Vec<String>,
    /// End status -> the end statuses it supersedes whatever their event times (and only
    /// those).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub supersedes: BTreeMap<String, Vec<String>>,
    /// Facts: name -> the dotted path (numeric parts index arrays) of a value the operation
    /// carries, from its latest webhook that has it, without anyone parsing `data`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub facts: BTreeMap<String, String>,
    /// Facts (named in `facts`) that add up: each is the sum of the values of every distinct
    /// webhook that carries one, not the latest (a Pix transfer's refunds, each of part of
    /// it). Summed exactly in decimal, so no order of arrival changes the total.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sums: Vec<String>,
    /// Milestones: name -> the statuses (or `*` patterns) that reach it. A milestone, once
    /// reached, stays reached, so a watcher can be told exactly once.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub milestones: BTreeMap<String, Vec<String>>,
    /// Which end status wins when two disagree at the same event time: the first listed.
    /// End statuses not listed come after, in content-hash order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub end_precedence: Vec<String>,
    /// Extra dotted paths where the operation key may be found (after the generic ones).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub key_paths: Vec<String>,
    /// Dotted paths that name the operation, read *before* the generic ones: for kinds whose
    /// `key` is each webhook's own id (QI's vehicle collateral), not the operation's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub operation_key_paths: Vec<String>,
    /// Extra dotted paths where the status may be found (after the generic ones).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub status_paths: Vec<String>,
    /// Dotted path of the step a status belongs to, for kinds whose statuses mean different
    /// things at different steps (QI's vehicle order: `Registered` is the lien's at `Lien
    /// Inclusion` and the contract's at `Contract Registration`): the status is read as
    /// `<step> <status>`, lower-cased (`lien inclusion registered`); without the field, as
    /// it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_path: Option<String>,
    /// Dotted path of a field that carries the real outcome when the status does not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome_path: Option<String>,
    /// The statuses for which `outcome_path` is read instead of the status.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outcome_statuses: Vec<String>,
    /// Where the kind's meanings come from: the QI Tech document or seed, in a sentence
    /// (the truth table, `docs/statuses.md`, prints it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Fields whose presence, all together, names this kind in a webhook that has no
    /// `webhook_type` or `event_type` (QI's vehicle order status and card-order fraud
    /// webhooks name none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub implied_by: Vec<String>,
    /// Dotted paths of the event time, read before `event_datetime` and `webhook_datetime`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub event_time_paths: Vec<String>,
    /// What each status means, in a sentence, where QI's documents say it (the truth
    /// table prints it beside the status); where they are silent, the sentence says so.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub meanings: BTreeMap<String, String>,
    /// The operation each of this kind's operations is a part of: its kind, and the fact
    /// that holds its key (an installment is part of the debt its fact `debt_key` names).
    /// The whole lists its parts ([`crate::domain::reconcile::Operation::part_of`]); a part
    /// never moves the whole's status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub part_of: Option<PartOf>,
    /// Stage -> how long an operation is expected to stay in it (`90s`, `30m`, `4h`, `5d`):
    /// longer, and it is overdue ([`crate::domain::overdue`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub expect: BTreeMap<String, String>,
}

/// Which operation a kind's operations are parts of ([`KindSpec::part_of`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartOf {
    /// The whole's kind.
    pub kind: String,
    /// The part's fact that holds the whole's key.
    pub fact: String,
}

/// A kind family: a webhook whose operation is another kind's. QI Tech sends the steps of
/// one operation under several `webhook_type`s: an escrow account ends with an `escrow`
/// webhook after `account_request.status_change` steps, a private payroll loan's margin
/// reservation reports under the debt's key, and a refund of an outgoing Pix arrives as an
/// *incoming* Pix naming the outgoing one. A join says which operation such a webhook
/// belongs to and what it says there.
///
/// Guarantee: a join never makes one webhook two operations' (each webhook still belongs to
/// exactly one), so reconciliation stays a function of each operation's set of webhooks.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinSpec {
    /// The kind the webhook names (`webhook_type` or `event_type`).
    pub webhook_type: String,
    /// Conditions that must all hold: dotted path -> the text found there (compared trimmed
    /// and lower-cased). With none, every webhook of `webhook_type` joins.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub when: BTreeMap<String, String>,
    /// The kind of the operation it joins.
    pub kind: String,
    /// Dotted paths of the joined operation's key, read before the generic places.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub key_paths: Vec<String>,
    /// The status it has in that operation, whatever its own says (a Pix refund is the
    /// outgoing Pix's `refunded`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Written before its own status: another flow's steps (`reservation_reserved`) move the
    /// operation only where its kind names the prefixed status (a status it does not know
    /// never beats one it knows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_prefix: Option<String>,
    /// The status of its kind it is classified as, whatever its own (which is still what it
    /// shows): a BNPL debt canceled because the borrower paid back the reversal's Pix is the
    /// debt's `reversal_canceled`, shown `canceled`, as QI sends it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    /// Facts it reads from its own body, beside its kind's: name -> dotted path (an
    /// installment's payment carries its debt's key in `key`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub fact_paths: BTreeMap<String, String>,
    /// Facts it sets on the operation, whatever its body (`account_type = "escrow"`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub facts: BTreeMap<String, String>,
    /// Where the join comes from: the QI Tech document, in a sentence (the truth table
    /// prints it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// A file that extends or overrides the built-in catalog: every field is optional, and a
/// field given for a kind replaces that field of the built-in kind.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogOverlay {
    naive_time_offset_minutes: Option<i32>,
    max_event_time_ahead_seconds: Option<u32>,
    #[serde(default)]
    cancel_reasons: BTreeMap<String, String>,
    #[serde(default)]
    aliases: BTreeMap<String, String>,
    #[serde(default)]
    personal_fields: Vec<String>,
    #[serde(default)]
    personal_facts: Vec<String>,
    #[serde(default)]
    qi_dtvm_kinds: Vec<String>,
    #[serde(default)]
    qi_caas_kinds: Vec<String>,
    #[serde(default)]
    joins: Vec<JoinSpec>,
    #[serde(default)]
    kinds: BTreeMap<String, KindOverlay>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct KindOverlay {
    stages: Option<Vec<String>>,
    loops: Option<Vec<Vec<String>>>,
    active: Option<Vec<String>>,
    success: Option<Vec<String>>,
    failure: Option<Vec<String>>,
    failure_patterns: Option<Vec<String>>,
    milestones: Option<BTreeMap<String, Vec<String>>>,
    facts: Option<BTreeMap<String, String>>,
    sums: Option<Vec<String>>,
    supersedes: Option<BTreeMap<String, Vec<String>>>,
    end_precedence: Option<Vec<String>>,
    key_paths: Option<Vec<String>>,
    operation_key_paths: Option<Vec<String>>,
    source: Option<String>,
    status_paths: Option<Vec<String>>,
    outcome_path: Option<String>,
    step_path: Option<String>,
    outcome_statuses: Option<Vec<String>>,
    implied_by: Option<Vec<String>>,
    event_time_paths: Option<Vec<String>>,
    meanings: Option<BTreeMap<String, String>>,
    expect: Option<BTreeMap<String, String>>,
    part_of: Option<PartOf>,
}

/// How the catalog classifies a status of a kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusClass {
    /// Not in the catalog.
    Unknown,
    /// A stage, with its position in the flow (0 is the first stage).
    Stage(u32),
    /// An end status.
    End {
        /// Success or failure.
        outcome: EndOutcome,
        /// Its place in the kind's `end_precedence`: between end statuses at the same event
        /// time, the greater rank wins (0 when not listed).
        rank: u32,
    },
}

/// How a flow ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndOutcome {
    /// The operation succeeded.
    Success,
    /// The operation failed.
    Failure,
}

/// The canonical name of a kind: trimmed, lower-cased, with `-` written as `_`.
///
/// `historic-card-settlement` and `Historic_Card_Settlement` are both
/// `historic_card_settlement`; dots are kept (`installment.status_change`).
pub fn canonical_kind(raw: &str) -> String {
    raw.trim().to_lowercase().replace('-', "_")
}

/// The canonical form of a status: trimmed and lower-cased (seed 004 sends `"canceled "`).
pub fn canonical_status(raw: &str) -> String {
    raw.trim().to_lowercase()
}

impl Catalog {
    /// The catalog built into this release (`server/domain/catalog.toml`).
    pub fn builtin() -> Catalog {
        let catalog: Catalog =
            toml::from_str(BUILTIN).expect("the built-in catalog parses: checked by a unit test");
        catalog
            .validated()
            .expect("the built-in catalog is consistent: checked by a unit test")
    }

    /// This catalog extended or overridden by the TOML text of a catalog file.
    pub fn extended_with(mut self, toml_text: &str) -> Result<Catalog, CatalogError> {
        let overlay: CatalogOverlay = toml::from_str(toml_text)?;
        if let Some(offset) = overlay.naive_time_offset_minutes {
            self.naive_time_offset_minutes = offset;
        }
        if let Some(ahead) = overlay.max_event_time_ahead_seconds {
            self.max_event_time_ahead_seconds = ahead;
        }
        self.cancel_reasons.extend(overlay.cancel_reasons);
        // Added to the built-in ones: a file can hide more, never show what they hide.
        for (list, more) in [
            (&mut self.personal_fields, overlay.personal_fields),
            (&mut self.personal_facts, overlay.personal_facts),
        ] {
            for field in more {
                let field = field.to_ascii_lowercase();
                if !list.contains(&field) {
                    list.push(field);
                }
            }
        }
        for (kinds, more) in [
            (&mut self.qi_dtvm_kinds, overlay.qi_dtvm_kinds),
            (&mut self.qi_caas_kinds, overlay.qi_caas_kinds),
        ] {
            for kind in more {
                let kind = canonical_kind(&kind);
                if !kinds.contains(&kind) {
                    kinds.push(kind);
                }
            }
        }
        self.aliases.extend(
            overlay
                .aliases
                .into_iter()
                .map(|(alias, kind)| (canonical_kind(&alias), canonical_kind(&kind))),
        );
        // A file's joins are tried first: the first that matches wins, so a file can
        // override a built-in one.
        let mut joins = overlay.joins;
        joins.append(&mut self.joins);
        self.joins = joins;
        for (name, o) in overlay.kinds {
            let spec = self.kinds.entry(canonical_kind(&name)).or_default();
            let set = |target: &mut Vec<String>, value: Option<Vec<String>>| {
                if let Some(v) = value {
                    *target = v;
                }
            };
            let stages_replaced = o.stages.is_some();
            set(&mut spec.stages, o.stages);
            if o.active.is_none() && stages_replaced {
                // A file written before `active` existed replaces the stages: keep the
                // built-in active stages that are still stages.
                let stages = spec.stages.clone();
                spec.active
                    .retain(|a| stages.iter().any(|s| canonical_status(s) == *a));
            }
            set(&mut spec.active, o.active);
            if o.loops.is_none() && stages_replaced {
                // The same for the loops: those whose stages all remain.
                let stages = spec.stages.clone();
                spec.loops.retain(|group| {
                    group
                        .iter()
                        .all(|l| stages.iter().any(|s| canonical_status(s) == *l))
                });
            }
            if let Some(loops) = o.loops {
                spec.loops = loops;
            }
            set(&mut spec.success, o.success);
            set(&mut spec.failure, o.failure);
            set(&mut spec.failure_patterns, o.failure_patterns);
            set(&mut spec.key_paths, o.key_paths);
            set(&mut spec.operation_key_paths, o.operation_key_paths);
            if o.source.is_some() {
                spec.source = o.source;
            }
            set(&mut spec.status_paths, o.status_paths);
            set(&mut spec.outcome_statuses, o.outcome_statuses);
            set(&mut spec.end_precedence, o.end_precedence);
            if let Some(s) = o.supersedes {
                spec.supersedes = s;
            }
            if let Some(m) = o.milestones {
                spec.milestones = m;
            }
            if let Some(f) = o.facts {
                spec.facts = f;
            }
            set(&mut spec.sums, o.sums);
            if o.outcome_path.is_some() {
                spec.outcome_path = o.outcome_path;
            }
            if o.step_path.is_some() {
                spec.step_path = o.step_path;
            }
            set(&mut spec.implied_by, o.implied_by);
            set(&mut spec.event_time_paths, o.event_time_paths);
            // Added to (or overriding) the built-in ones, status by status: an operator
            // sets the expectations QI's documents do not state.
            spec.expect.extend(o.expect.unwrap_or_default());
            if o.part_of.is_some() {
                spec.part_of = o.part_of;
            }
            match o.meanings {
                Some(m) => spec.meanings = m,
                None => {
                    // A file that renames statuses keeps the built-in sentences of those
                    // still named, as with `active`.
                    let named: BTreeSet<String> = spec
                        .stages
                        .iter()
                        .chain(&spec.success)
                        .chain(&spec.failure)
                        .chain(&spec.outcome_statuses)
                        .chain(spec.milestones.values().flatten())
                        .map(|s| canonical_status(s))
                        .collect();
                    spec.meanings.retain(|status, _| named.contains(status));
                }
            }
        }
        self.validated()
    }

    /// What tells two catalogs apart: the SHA-256 of [`Catalog::to_toml`]. Equal catalogs
    /// have equal fingerprints, however their files were written.
    pub fn fingerprint(&self) -> [u8; 32] {
        use sha2::Digest;
        sha2::Sha256::digest(self.to_toml().as_bytes()).into()
    }

    /// The catalog as TOML, in the shape `--catalog` reads.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a catalog always serializes: plain strings and maps")
    }

    /// The spec of a kind, by canonical name.
    pub fn kind(&self, kind: &str) -> Option<&KindSpec> {
        self.kinds.get(kind)
    }

    /// The kind a webhook or a request names (`raw`, any spelling): canonical, and the kind
    /// it is an alias of when it is one.
    pub fn resolve_kind(&self, raw: &str) -> String {
        let kind = canonical_kind(raw);
        if let Some(target) = self.aliases.get(&kind) {
            return target.clone();
        }
        // A join without conditions names its kind too (`escrow` is an `account`).
        match self
            .joins
            .iter()
            .find(|j| j.when.is_empty() && j.webhook_type == kind)
        {
            Some(join) => join.kind.clone(),
            None => kind,
        }
    }

    /// How long an operation of `kind` is expected to stay in `status`, in ms (the kind's
    /// `expect`), if the catalog says.
    pub fn expectation(&self, kind: &str, status: &str) -> Option<i64> {
        let text = self.kinds.get(kind)?.expect.get(status)?;
        parse_duration(text).ok()
    }

    /// Every expectation: (kind, status, ms), in (kind, status) order.
    pub fn expectations(&self) -> Vec<(&str, &str, i64)> {
        self.kinds
            .iter()
            .flat_map(|(kind, spec)| {
                spec.expect.iter().filter_map(move |(status, text)| {
                    let ms = parse_duration(text).ok()?;
                    Some((kind.as_str(), status.as_str(), ms))
                })
            })
            .collect()
    }

    /// Whether a webhook in `status` reaches milestone `milestone` of `kind`.
    pub fn reaches(&self, kind: &str, milestone: &str, status: &str) -> bool {
        self.kinds
            .get(kind)
            .and_then(|spec| spec.milestones.get(milestone))
            .is_some_and(|statuses| statuses.iter().any(|p| glob_matches(p, status)))
    }

    /// Whether `status` is a stage in which an operation of `kind` is live (phase `Active`).
    pub fn is_active(&self, kind: &str, status: &str) -> bool {
        self.kinds
            .get(kind)
            .is_some_and(|spec| spec.active.iter().any(|s| s == status))
    }

    /// Whether, for `kind`, end status `winner` supersedes end status `loser` (directly or
    /// through a chain of supersessions).
    pub fn supersedes(&self, kind: &str, winner: &str, loser: &str) -> bool {
        self.kinds
            .get(kind)
            .is_some_and(|spec| supersedes_transitively(spec, winner, loser, 0))
    }

    /// Classifies a canonical status (or outcome) of a kind.
    pub fn classify(&self, kind: &str, status: &str) -> StatusClass {
        let Some(spec) = self.kinds.get(kind) else {
            return StatusClass::Unknown;
        };
        if let Some(i) = spec.stages.iter().position(|s| s == status) {
            // A loop's members rank as its first: the later event time decides between them.
            let rank = spec
                .loops
                .iter()
                .find(|group| group.iter().any(|s| s == status))
                .and_then(|group| {
                    group
                        .iter()
                        .filter_map(|s| spec.stages.iter().position(|stage| stage == s))
                        .min()
                })
                .unwrap_or(i);
            return StatusClass::Stage(rank as u32);
        }
        let outcome = if spec.success.iter().any(|s| s == status) {
            EndOutcome::Success
        } else if spec.failure.iter().any(|s| s == status)
            || spec
                .failure_patterns
                .iter()
                .any(|p| glob_matches(p, status))
        {
            EndOutcome::Failure
        } else {
            return StatusClass::Unknown;
        };
        let listed = spec.end_precedence.len();
        let rank = spec
            .end_precedence
            .iter()
            .position(|s| s == status)
            .map_or(0, |i| (listed - i) as u32);
        StatusClass::End { outcome, rank }
    }

    /// Canonicalizes every name and checks the guarantees stated in the module docs.
    fn validated(mut self) -> Result<Catalog, CatalogError> {
        let bad = |msg: String| Err(CatalogError::Inconsistent(msg));
        for (kind, spec) in &mut self.kinds {
            for list in [
                &mut spec.stages,
                &mut spec.success,
                &mut spec.failure,
                &mut spec.outcome_statuses,
                &mut spec.end_precedence,
                &mut spec.active,
                &mut spec.failure_patterns,
            ] {
                for s in list.iter_mut() {
                    *s = canonical_status(s);
                }
            }
            for group in &mut spec.loops {
                for s in group.iter_mut() {
                    *s = canonical_status(s);
                }
            }
            spec.milestones = std::mem::take(&mut spec.milestones)
                .into_iter()
                .map(|(k, v)| {
                    let v = v.iter().map(|s| canonical_status(s)).collect();
                    (canonical_status(&k), v)
                })
                .collect();
            if let Some(name) = spec.milestones.keys().find(|n| n.is_empty()) {
                return bad(format!(
                    "kind {kind}: a milestone has an empty name {name:?}"
                ));
            }
            spec.meanings = std::mem::take(&mut spec.meanings)
                .into_iter()
                .map(|(status, text)| (canonical_status(&status), text))
                .collect();
            spec.expect = std::mem::take(&mut spec.expect)
                .into_iter()
                .map(|(status, text)| (canonical_status(&status), text))
                .collect();
            spec.supersedes = std::mem::take(&mut spec.supersedes)
                .into_iter()
                .map(|(k, v)| {
                    let v = v.iter().map(|s| canonical_status(s)).collect();
                    (canonical_status(&k), v)
                })
                .collect();
            let stages: BTreeSet<&String> = spec.stages.iter().collect();
            let success: BTreeSet<&String> = spec.success.iter().collect();
            let failure: BTreeSet<&String> = spec.failure.iter().collect();
            if stages.len() != spec.stages.len() {
                return bad(format!("kind {kind}: a stage is listed twice"));
            }
            if let Some(s) = stages
                .intersection(&success)
                .chain(stages.intersection(&failure))
                .next()
            {
                return bad(format!(
                    "kind {kind}: status {s} is both a stage and an end"
                ));
            }
            if let Some(s) = success.intersection(&failure).next() {
                return bad(format!(
                    "kind {kind}: status {s} is both a success and a failure"
                ));
            }
            let is_end = |s: &String| success.contains(s) || failure.contains(s);
            for (winner, losers) in &spec.supersedes {
                if let Some(s) = std::iter::once(winner).chain(losers).find(|s| !is_end(s)) {
                    return bad(format!(
                        "kind {kind}: supersedes names {s}, which is not an end status"
                    ));
                }
            }
            for winner in spec.supersedes.keys() {
                if supersedes_transitively(spec, winner, winner, 0) {
                    return bad(format!("kind {kind}: {winner} supersedes itself"));
                }
            }
            if let Some(p) = spec
                .failure_patterns
                .iter()
                .find(|p| p.trim_matches('*').is_empty())
            {
                return bad(format!(
                    "kind {kind}: failure pattern {p:?} would match every status"
                ));
            }
            if let Some(s) = spec.loops.iter().flatten().find(|s| !stages.contains(s)) {
                return bad(format!(
                    "kind {kind}: loops names {s}, which is not a stage"
                ));
            }
            let looped: Vec<&String> = spec.loops.iter().flatten().collect();
            if looped.iter().collect::<BTreeSet<_>>().len() != looped.len() {
                return bad(format!(
                    "kind {kind}: a stage is in two loops, or twice in one"
                ));
            }
            if let Some(s) = spec.sums.iter().find(|s| !spec.facts.contains_key(*s)) {
                return bad(format!(
                    "kind {kind}: sums names {s}, which is not one of its facts"
                ));
            }
            if let Some(s) = spec.active.iter().find(|s| !stages.contains(s)) {
                return bad(format!(
                    "kind {kind}: active names {s}, which is not a stage"
                ));
            }
            if let Some(s) = spec.meanings.keys().find(|s| {
                !stages.contains(s)
                    && !is_end(s)
                    && !spec.outcome_statuses.contains(s)
                    && !spec.milestones.values().flatten().any(|m| m == *s)
            }) {
                return bad(format!(
                    "kind {kind}: meanings names {s}, which the kind does not (not a stage, an \
                     end status, an outcome status, nor a milestone's)"
                ));
            }
            for (status, within) in &spec.expect {
                if !stages.contains(status) {
                    return bad(format!(
                        "kind {kind}: expect names {status}, which is not a stage (only an \
                         operation on its way can be late)"
                    ));
                }
                if let Err(why) = parse_duration(within) {
                    return bad(format!("kind {kind}: expect {status}: {why}"));
                }
            }
            if let Some(s) = spec.end_precedence.iter().find(|s| !is_end(s)) {
                return bad(format!(
                    "kind {kind}: end_precedence names {s}, which is not an end status"
                ));
            }
        }
        self.aliases = std::mem::take(&mut self.aliases)
            .into_iter()
            .map(|(alias, kind)| (canonical_kind(&alias), canonical_kind(&kind)))
            .collect();
        for join in &mut self.joins {
            join.webhook_type = canonical_kind(&join.webhook_type);
            join.kind = canonical_kind(&join.kind);
            join.when = std::mem::take(&mut join.when)
                .into_iter()
                .map(|(path, value)| (path, canonical_status(&value)))
                .collect();
            if let Some(status) = &mut join.status {
                *status = canonical_status(status);
            }
            if let Some(prefix) = &mut join.status_prefix {
                *prefix = canonical_status(prefix);
            }
            if let Some(outcome) = &mut join.outcome {
                *outcome = canonical_status(outcome);
            }
        }
        for join in &self.joins {
            let from = &join.webhook_type;
            if !self.kinds.contains_key(&join.kind) {
                return bad(format!(
                    "join from {from} names kind {}, which is not in the catalog",
                    join.kind
                ));
            }
            if join.when.is_empty()
                && (self.kinds.contains_key(from) || self.aliases.contains_key(from))
            {
                return bad(format!(
                    "join from {from} has no condition, but {from} is a kind or an alias \
                     (which would never be read)"
                ));
            }
            if join.status.is_some() && join.status_prefix.is_some() {
                return bad(format!(
                    "join from {from} sets both a status and a status prefix"
                ));
            }
            if let (Some(outcome), Some(spec)) = (&join.outcome, self.kinds.get(&join.kind))
                && !spec.success.contains(outcome)
                && !spec.failure.contains(outcome)
            {
                return bad(format!(
                    "join from {from} is classified as {outcome}, which is not an end status \
                     of {}",
                    join.kind
                ));
            }
        }
        for (kind, spec) in &mut self.kinds {
            if let Some(part_of) = &mut spec.part_of {
                part_of.kind = canonical_kind(&part_of.kind);
                if part_of.kind == *kind {
                    return bad(format!("kind {kind} is part of itself"));
                }
            }
        }
        for (kind, spec) in &self.kinds {
            let Some(part_of) = &spec.part_of else {
                continue;
            };
            if !self.kinds.contains_key(&part_of.kind) {
                return bad(format!(
                    "kind {kind} is part of kind {}, which is not in the catalog",
                    part_of.kind
                ));
            }
            let read = spec.facts.contains_key(&part_of.fact)
                || self
                    .joins
                    .iter()
                    .any(|j| j.kind == *kind && j.fact_paths.contains_key(&part_of.fact));
            if !read {
                return bad(format!(
                    "kind {kind} is part of the {} its fact {} names, but neither the kind nor \
                     a join into it reads that fact",
                    part_of.kind, part_of.fact
                ));
            }
        }
        for (alias, kind) in &self.aliases {
            if !self.kinds.contains_key(kind) {
                return bad(format!(
                    "alias {alias} names kind {kind}, which is not in the catalog"
                ));
            }
            if self.kinds.contains_key(alias) {
                return bad(format!("{alias} is both a kind and an alias"));
            }
        }
        Ok(self)
    }
}

/// Whether `text` matches `pattern`, where `*` matches any run of characters (none
/// included) and everything else matches itself.
pub(crate) fn glob_matches(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        // No `*`: the whole text must be the pattern.
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.ends_with(last)
}

fn supersedes_transitively(spec: &KindSpec, from: &str, target: &str, depth: u32) -> bool {
    if depth > 64 {
        return true;
    }
    spec.supersedes.get(from).is_some_and(|losers| {
        losers
            .iter()
            .any(|l| l == target || supersedes_transitively(spec, l, target, depth + 1))
    })
}

/// A duration as the catalog writes it, spelled as the server's flags spell theirs
/// (`humantime`: `90s`, `30m`, `4h`, `5d`, `1h 30m`, `2weeks`), in ms. Zero, more than ten
/// years and anything else are refused, naming the text.
fn parse_duration(text: &str) -> Result<i64, String> {
    let text = text.trim();
    let duration = humantime::parse_duration(text).map_err(|e| {
        format!("{text:?} is not a duration ({e}): write a number and a unit, as 90s, 4h or 5d")
    })?;
    if duration.is_zero() {
        return Err(format!(
            "{text:?} is zero: an operation would be overdue at once"
        ));
    }
    i64::try_from(duration.as_millis())
        .ok()
        .filter(|ms| *ms <= 3_650 * 86_400_000)
        .ok_or_else(|| format!("{text:?} is longer than ten years"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_spelled_as_the_flags_spell_theirs() {
        assert_eq!(parse_duration("90s"), Ok(90_000));
        assert_eq!(parse_duration(" 30m "), Ok(1_800_000));
        assert_eq!(parse_duration("4h"), Ok(4 * 3_600_000));
        assert_eq!(parse_duration("5d"), Ok(5 * 86_400_000));
        assert_eq!(parse_duration("1h 30m"), Ok(5_400_000));
        assert_eq!(parse_duration("2weeks"), Ok(14 * 86_400_000));
        assert_eq!(parse_duration("1.5h"), Ok(5_400_000));
        for bad in ["5", "d", "5x", "-1d", "0s", "99999999d", ""] {
            let refused = parse_duration(bad).expect_err(bad);
            assert!(refused.contains(&format!("{:?}", bad.trim())), "{refused}");
        }
    }

    #[test]
    fn builtin_catalog_parses_and_is_consistent() {
        let c = Catalog::builtin();
        assert_eq!(c.naive_time_offset_minutes, -180);
        assert!(c.kind("debt").is_some());
        assert!(c.kind("historic_card_settlement").is_some());
        assert!(c.kind("account_request.status_change").is_none());
        assert_eq!(c.resolve_kind("account_request.status_change"), "account");
        assert_eq!(
            c.resolve_kind("LAAS.credit-operation.status_change"),
            "debt"
        );
        assert_eq!(c.resolve_kind("debt"), "debt");
        assert_eq!(
            c.cancel_reasons.get("manual").map(String::as_str),
            Some("Operation cancelled manually")
        );
    }

    #[test]
    fn classifies_debt_statuses() {
        let c = Catalog::builtin();
        assert_eq!(
            c.classify("debt", "waiting_signature"),
            StatusClass::Stage(0)
        );
        assert_eq!(c.classify("debt", "disbursed"), StatusClass::Stage(6));
        // Ranks follow end_precedence: canceled_permanently, canceled, rejected, settled, ...
        let rank = |status| match c.classify("debt", status) {
            StatusClass::End { rank, .. } => rank,
            other => panic!("{status} is {other:?}"),
        };
        assert!(rank("canceled_permanently") > rank("canceled"));
        assert!(rank("canceled") > rank("settled"));
        assert!(matches!(
            c.classify("debt", "settled"),
            StatusClass::End {
                outcome: EndOutcome::Success,
                ..
            }
        ));
        assert!(c.supersedes("debt", "canceled_permanently", "canceled"));
        assert!(!c.supersedes("debt", "canceled_permanently", "settled"));
        assert!(!c.supersedes("debt", "canceled", "canceled_permanently"));
        assert_eq!(c.classify("debt", "brand_new"), StatusClass::Unknown);
        assert_eq!(c.classify("unheard_of", "done"), StatusClass::Unknown);
    }

    #[test]
    fn overlay_extends_and_overrides() {
        let c = Catalog::builtin()
            .extended_with(
                r#"
                naive_time_offset_minutes = 0
                [kinds.debt]
                stages = ["waiting_signature", "brand_new"]
                [kinds."Pix-Transfer"]
                success = ["Sent"]
                "#,
            )
            .unwrap();
        assert_eq!(c.naive_time_offset_minutes, 0);
        assert_eq!(c.classify("debt", "brand_new"), StatusClass::Stage(1));
        // Fields not given keep their built-in value.
        assert!(matches!(
            c.classify("debt", "settled"),
            StatusClass::End { .. }
        ));
        assert!(matches!(
            c.classify("pix_transfer", "sent"),
            StatusClass::End {
                outcome: EndOutcome::Success,
                ..
            }
        ));
    }

    #[test]
    fn effective_catalog_round_trips_through_toml() {
        let c = Catalog::builtin();
        let again: Catalog = toml::from_str(&c.to_toml()).unwrap();
        assert_eq!(again, c);
    }

    #[test]
    fn inconsistent_overlays_are_rejected_with_the_reason() {
        let cases = [
            (
                r#"[kinds.debt]
                stages = ["settled"]"#,
                "both a stage and an end",
            ),
            (
                r#"[kinds.x]
                success = ["a"]
                failure = ["a"]"#,
                "both a success and a failure",
            ),
            (
                r#"[kinds.x]
                failure = ["a", "b"]
                supersedes = { a = ["b"], b = ["a"] }"#,
                "supersedes itself",
            ),
            (
                r#"[kinds.x]
                failure = ["a"]
                supersedes = { a = ["zzz"] }"#,
                "not an end status",
            ),
            (
                r#"[kinds.x]
                colour = "red""#,
                "unknown field",
            ),
            (
                r#"[kinds.x]
                stages = ["a", "b"]
                loops = [["a", "zzz"]]"#,
                "loops names zzz, which is not a stage",
            ),
            (
                r#"[kinds.x]
                stages = ["a", "b", "c"]
                loops = [["a", "b"], ["b", "c"]]"#,
                "a stage is in two loops",
            ),
            (
                r#"[kinds.x]
                success = ["a"]
                facts = { amount = "data.amount" }
                sums = ["total"]"#,
                "sums names total, which is not one of its facts",
            ),
            (
                r#"[[joins]]
                webhook_type = "debt"
                when = { "data.x" = "y" }
                kind = "debt"
                outcome = "waiting_signature""#,
                "classified as waiting_signature, which is not an end status of debt",
            ),
            (
                r#"[kinds.x]
                facts = { whole = "data.w" }
                part_of = { kind = "nowhere", fact = "whole" }"#,
                "is part of kind nowhere, which is not in the catalog",
            ),
            (
                r#"[kinds.x]
                part_of = { kind = "debt", fact = "debt_key" }"#,
                "neither the kind nor a join into it reads that fact",
            ),
            (
                r#"[kinds.x]
                facts = { whole = "data.w" }
                part_of = { kind = "x", fact = "whole" }"#,
                "kind x is part of itself",
            ),
        ];
        for (text, expected) in cases {
            let err = Catalog::builtin()
                .extended_with(text)
                .unwrap_err()
                .to_string();
            assert!(err.contains(expected), "{text}: {err}");
        }
    }

    #[test]
    fn stages_of_a_loop_share_the_rank_of_the_first_and_the_others_keep_theirs() {
        let c = Catalog::builtin()
            .extended_with(
                r#"[kinds.x]
                stages = ["a", "b", "c", "d"]
                loops = [["c", "b"]]"#,
            )
            .unwrap();
        let ranks: Vec<StatusClass> = ["a", "b", "c", "d"]
            .iter()
            .map(|s| c.classify("x", s))
            .collect();
        assert_eq!(
            ranks,
            [
                StatusClass::Stage(0),
                StatusClass::Stage(1),
                StatusClass::Stage(1),
                StatusClass::Stage(3)
            ]
        );
    }

    #[test]
    fn failure_patterns_end_unnamed_rejections_and_match_like_globs() {
        let c = Catalog::builtin();
        for status in ["waiting_user_acceptance_rejected", "kyc_rejected"] {
            assert!(
                matches!(
                    c.classify("account", status),
                    StatusClass::End {
                        outcome: EndOutcome::Failure,
                        ..
                    }
                ),
                "{status}"
            );
        }
        assert_eq!(
            c.classify("account", "rejected_later"),
            StatusClass::Unknown
        );
        assert!(glob_matches("*_rejected", "a_rejected"));
        assert!(!glob_matches("*_rejected", "a_rejected_x"));
        assert!(glob_matches("a*b*c", "aXbYc"));
        assert!(glob_matches("a*b*c", "abc"));
        assert!(!glob_matches("a*b*c", "acb"));
        assert!(glob_matches("exact", "exact"));
        assert!(!glob_matches("exact", "exactly"));
        let err = Catalog::builtin()
            .extended_with("[kinds.debt]\nfailure_patterns = [\"**\"]\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("would match every status"), "{err}");
    }
}
