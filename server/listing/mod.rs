//! Lists: the one list query that the gRPC API (`ListByStatus`) and the console (`/ui/list`,
//! `/ui/overdue`) ask of the status index, validated once ([`ListQuery`]), and read a page at
//! a time after one cursor, a page token ([`page_token`]).
//!
//! Why one: the two edges used to check kinds, statuses, phases and "status and phase
//! together" each with its own rules, and page with cursors of their own (a signed token on
//! the API, the last kind and key in the console's links); a rule added to one was missing in
//! the other. Here the rules are written once, in domain terms; an edge turns its request into
//! a [`ListAsk`] and a [`ListError`] into its own answer (`INVALID_ARGUMENT`, `400`).
//!
//! Guarantees: a page token is opaque, tamper-evident and bound to the query it was issued
//! for, on either edge; pages are read off the async runtime (a page reads sled, and, for an
//! operation that may be overdue, its history), so a cold read never holds up the requests
//! that share a runtime worker with it.

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::domain::catalog::{Catalog, canonical_status};
use crate::domain::overdue::{Overdue, can_be_overdue, overdue};
use crate::domain::reconcile::{Operation, Phase};
use crate::domain::webhook::check_name;
use crate::store::{Expectation, Selection, StatusIndex, Store, StoreError};

pub(crate) mod page_token;

use page_token::{PageTokenError, PageTokens};

/// Operations per page when a request does not say.
pub(crate) const DEFAULT_PAGE_SIZE: usize = 100;
/// Most operations per page.
pub(crate) const MAX_PAGE_SIZE: usize = 1000;
/// Most values a filter field (statuses, kinds, milestones) may list.
pub(crate) const MAX_FILTER_VALUES: usize = 64;

/// What a reader asks for, as an edge received it: not yet checked.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ListAsk<'a> {
    /// A kind or one of its aliases; empty for every kind.
    pub(crate) kind: &'a str,
    /// Statuses to list, in any spelling.
    pub(crate) statuses: &'a [String],
    /// A phase to list, instead of statuses.
    pub(crate) phase: Option<Phase>,
    /// Only the overdue operations (of `statuses`, or all), most overdue first.
    pub(crate) overdue: bool,
    /// Operations per page; 0 for [`DEFAULT_PAGE_SIZE`].
    pub(crate) page_size: usize,
}

/// Why a list cannot be read as asked.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ListError {
    /// Neither statuses, nor a phase, nor the overdue ones: there is nothing to list.
    #[error("give statuses or a phase to list by (or ask for the overdue ones)")]
    NothingToList,
    /// The ask is malformed; the message names the field.
    #[error("{0}")]
    Invalid(String),
    /// The page token was not issued for this query.
    #[error(transparent)]
    PageToken(#[from] PageTokenError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A checked list query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ListQuery {
    /// The canonical kind, or every kind.
    pub(crate) kind: Option<String>,
    /// The statuses or the phase listed (for an overdue list, its statuses, maybe none).
    pub(crate) selection: Selection,
    /// Only the overdue ones.
    pub(crate) overdue: bool,
    /// Operations per page.
    pub(crate) page_size: usize,
}

/// Each of `values` made canonical by `canonical` and checked, named `field` in errors; at
/// most [`MAX_FILTER_VALUES`] of them.
pub(crate) fn canonical_names(
    values: &[String],
    field: &str,
    canonical: impl Fn(&str) -> String,
) -> Result<BTreeSet<String>, String> {
    if values.len() > MAX_FILTER_VALUES {
        return Err(format!(
            "{field} has {} values; at most {MAX_FILTER_VALUES}",
            values.len()
        ));
    }
    values
        .iter()
        .map(|v| {
            let c = canonical(v);
            check_name("a value", &c).map_err(|e| format!("{field}: {e}"))?;
            Ok(c)
        })
        .collect()
}

impl ListQuery {
    /// `ask` checked under `catalog` (which resolves kind aliases).
    pub(crate) fn new(catalog: &Catalog, ask: ListAsk<'_>) -> Result<ListQuery, ListError> {
        let statuses = canonical_names(ask.statuses, "statuses", canonical_status)
            .map_err(ListError::Invalid)?;
        let selection = match (statuses.is_empty(), ask.phase) {
            (_, Some(_)) if ask.overdue => {
                return Err(ListError::Invalid(
                    "an overdue list is narrowed by statuses, not a phase: leave phase unset"
                        .into(),
                ));
            }
            (_, None) if ask.overdue => Selection::Statuses(statuses.into_iter().collect()),
            (false, None) => Selection::Statuses(statuses.into_iter().collect()),
            (true, Some(phase)) => Selection::Phase(phase),
            (true, None) => return Err(ListError::NothingToList),
            (false, Some(_)) => {
                return Err(ListError::Invalid(
                    "give statuses or a phase, not both".into(),
                ));
            }
        };
        let page_size = match ask.page_size {
            0 => DEFAULT_PAGE_SIZE,
            n if n > MAX_PAGE_SIZE => {
                return Err(ListError::Invalid(format!(
                    "page_size {n} is larger than the maximum, {MAX_PAGE_SIZE}"
                )));
            }
            n => n,
        };
        let kind = Some(ask.kind.trim())
            .filter(|k| !k.is_empty())
            .map(|k| catalog.resolve_kind(k));
        if let Some(kind) = &kind {
            check_name("kind", kind).map_err(ListError::Invalid)?;
        }
        Ok(ListQuery {
            kind,
            selection,
            overdue: ask.overdue,
            page_size,
        })
    }

    /// The catalog's expectations this overdue list covers: its kind's, in its statuses.
    pub(crate) fn expectations<'c>(&self, catalog: &'c Catalog) -> Vec<Expectation<'c>> {
        let statuses = match &self.selection {
            Selection::Statuses(statuses) => statuses.as_slice(),
            Selection::Phase(_) => &[],
        };
        catalog
            .expectations()
            .into_iter()
            .filter(|(kind, status, _)| {
                self.kind.as_deref().is_none_or(|k| k == *kind)
                    && (statuses.is_empty() || statuses.iter().any(|s| s == status))
            })
            .collect()
    }

    /// A description of the query (not the page), which page tokens are bound to.
    fn fingerprint(&self) -> String {
        let selection = match &self.selection {
            Selection::Statuses(s) => format!("statuses={}", s.join("\u{0}")),
            Selection::Phase(p) => format!("phase={}", p.as_str()),
        };
        let overdue = if self.overdue { "|overdue" } else { "" };
        format!(
            "kind={}|{selection}{overdue}",
            self.kind.as_deref().unwrap_or("")
        )
    }
}

/// A page of a list.
#[derive(Debug)]
pub(crate) struct ListPage {
    /// The operations, each with how overdue it is at the time asked (when it is).
    pub(crate) operations: Vec<(Operation, Option<Overdue>)>,
    /// The token of the next page, when there is one.
    pub(crate) next_page_token: Option<String>,
}

/// A page to read: the query, its fingerprint, the page token, and the catalog and time it
/// is read under.
struct PageRead {
    query: ListQuery,
    fingerprint: String,
    page_token: String,
    catalog: Arc<Catalog>,
    now: i64,
}

impl PageRead {
    /// Where the page starts: after the cursor `open` reads from the page token, if one was
    /// given.
    fn after<T>(
        &self,
        open: impl FnOnce(&str) -> Result<T, PageTokenError>,
    ) -> Result<Option<T>, ListError> {
        if self.page_token.is_empty() {
            return Ok(None);
        }
        Ok(Some(open(&self.page_token)?))
    }
}

/// Reads lists; cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Lists {
    store: Store,
    tokens: PageTokens,
}

impl Lists {
    /// Lists of `store`, with page tokens signed by its secret (so they survive restarts).
    pub(crate) fn new(store: Store) -> Result<Lists, StoreError> {
        Ok(Lists {
            tokens: PageTokens::new(store.page_token_secret()?),
            store,
        })
    }

    /// The page of `query` after `page_token` (empty: the first), as `catalog` and `now`
    /// (ms since the epoch) make it: an overdue list most overdue first, any other in the
    /// index's order, each operation said overdue when it is.
    pub(crate) async fn page(
        &self,
        query: &ListQuery,
        catalog: Arc<Catalog>,
        page_token: &str,
        now: i64,
    ) -> Result<ListPage, ListError> {
        let read = PageRead {
            fingerprint: query.fingerprint(),
            query: query.clone(),
            page_token: page_token.to_owned(),
            catalog,
            now,
        };
        let lists = self.clone();
        self.store
            .read_async(move |_| {
                if read.query.overdue {
                    lists.overdue_page(&read)
                } else {
                    lists.status_page(&read)
                }
            })
            .await
    }

    fn status_page(&self, read: &PageRead) -> Result<ListPage, ListError> {
        let (query, fingerprint, catalog, now) =
            (&read.query, &read.fingerprint, &read.catalog, read.now);
        let after = read.after(|token| self.tokens.open(fingerprint, token))?;
        let index = StatusIndex::new(self.store.clone());
        let (found, more) = index.page(
            &query.selection,
            query.kind.as_deref(),
            after.as_ref(),
            query.page_size,
        )?;
        let next_page_token = match found.last() {
            Some(last) if more => Some(
                self.tokens
                    .issue(fingerprint, &(last.kind.clone(), last.key.clone())),
            ),
            _ => None,
        };
        let mut operations = Vec::with_capacity(found.len());
        for op in found {
            // Only an operation whose status has an expectation can be overdue: its history
            // (which the index entry leaves out) says since when.
            let late = if can_be_overdue(op.phase)
                && catalog.expectation(&op.kind, &op.status).is_some()
            {
                self.store
                    .operation(&op.kind, &op.key)?
                    .and_then(|full| overdue(catalog, &full, now))
            } else {
                None
            };
            operations.push((op, late));
        }
        Ok(ListPage {
            operations,
            next_page_token,
        })
    }

    fn overdue_page(&self, read: &PageRead) -> Result<ListPage, ListError> {
        let (query, fingerprint, catalog, now) =
            (&read.query, &read.fingerprint, &read.catalog, read.now);
        let after = read.after(|token| self.tokens.open_overdue(fingerprint, token))?;
        let index = StatusIndex::new(self.store.clone());
        let (hits, more) = index.overdue_page(
            &query.expectations(catalog),
            now,
            after.as_ref(),
            query.page_size,
        )?;
        let next_page_token = match hits.last() {
            Some((op, late)) if more => Some(
                self.tokens
                    .issue_overdue(fingerprint, &(late.due, op.kind.clone(), op.key.clone())),
            ),
            _ => None,
        };
        Ok(ListPage {
            operations: hits
                .into_iter()
                .map(|(op, late)| (op, Some(late)))
                .collect(),
            next_page_token,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(statuses: &[String], phase: Option<Phase>, overdue: bool) -> ListAsk<'_> {
        ListAsk {
            kind: "",
            statuses,
            phase,
            overdue,
            page_size: 0,
        }
    }

    #[test]
    fn one_set_of_rules_for_every_edge() {
        let catalog = Catalog::builtin();
        let waiting = ["Waiting_Signature".to_owned()];
        let query = ListQuery::new(&catalog, ask(&waiting, None, false)).unwrap();
        assert_eq!(
            query.selection,
            Selection::Statuses(vec!["waiting_signature".into()]),
            "statuses are canonical"
        );
        assert_eq!(query.page_size, DEFAULT_PAGE_SIZE);
        assert!(matches!(
            ListQuery::new(&catalog, ask(&[], None, false)),
            Err(ListError::NothingToList)
        ));
        let both = ListQuery::new(&catalog, ask(&waiting, Some(Phase::Pending), false));
        assert!(matches!(both, Err(ListError::Invalid(m)) if m.contains("not both")));
        let overdue_by_phase = ListQuery::new(&catalog, ask(&[], Some(Phase::Active), true));
        assert!(matches!(overdue_by_phase, Err(ListError::Invalid(m)) if m.contains("phase")));
        // Every overdue operation: no statuses needed.
        let overdue = ListQuery::new(&catalog, ask(&[], None, true)).unwrap();
        assert_eq!(overdue.selection, Selection::Statuses(Vec::new()));
        // Too large a page, and a kind that is no name, are refused by name.
        let big = ListQuery::new(
            &catalog,
            ListAsk {
                page_size: MAX_PAGE_SIZE + 1,
                ..ask(&waiting, None, false)
            },
        );
        assert!(matches!(big, Err(ListError::Invalid(m)) if m.contains("page_size")));
        let odd_kind = ListQuery::new(
            &catalog,
            ListAsk {
                kind: "a\u{0}b",
                ..ask(&waiting, None, false)
            },
        );
        assert!(matches!(odd_kind, Err(ListError::Invalid(m)) if m.contains("kind")));
        // An alias is its kind, and tokens of the two are the same query's.
        let alias = ListQuery::new(
            &catalog,
            ListAsk {
                kind: "laas.credit_operation.status_change",
                ..ask(&waiting, None, false)
            },
        )
        .unwrap();
        assert_eq!(alias.kind.as_deref(), Some("debt"));
        let debt = ListQuery::new(
            &catalog,
            ListAsk {
                kind: "debt",
                ..ask(&waiting, None, false)
            },
        )
        .unwrap();
        assert_eq!(alias.fingerprint(), debt.fingerprint());
        assert_ne!(query.fingerprint(), debt.fingerprint());
    }
}
