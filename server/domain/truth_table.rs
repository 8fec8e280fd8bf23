//! The truth table: what every status of every kind means, generated from the catalog
//! (`qistatus-server catalog --markdown`), so that what a person reads is what the code does.
//! The built-in catalog's table is `docs/statuses.md`; a test fails when it is out of date.
//!
//! First the kind families (the catalog's joins: webhooks whose operation is another kind's)
//! and the other names of kinds. Then for each kind: where its meanings come from (the
//! catalog's `source`), then one row per status: what it means (the catalog's `meanings`, or
//! a sentence saying QI's documents give none), its phase, the milestones it reaches, and how
//! it fares against other end statuses (what supersedes it, what it supersedes, its place in
//! `end_precedence`).

use std::fmt::Write;

use super::catalog::{Catalog, EndOutcome, KindSpec, StatusClass, glob_matches};

/// The truth table of `catalog`, as Markdown.
pub fn markdown(catalog: &Catalog) -> String {
    let mut out = String::new();
    out.push_str(
        "# What each status means\n\n\
         Generated from the built-in catalog (`server/domain/catalog.toml`) by\n\
         `qistatus-server catalog --markdown`; a test fails when this file is out of date.\n\
         A deployment's `--catalog` file may extend it: run the command there for its table.\n\n\
         Phases: **PENDING** on its way; **ACTIVE** live and running; **SUCCEEDED** and\n\
         **FAILED** the flow ended. An end status beats every stage; between end statuses, one\n\
         that another present *supersedes* is out, then the later event time wins, then the\n\
         kind's precedence (1 first), then the content hash, and a tie is marked as a\n\
         conflict. A status no row names is PENDING and never moves an operation.\n",
    );
    if !catalog.joins.is_empty() {
        out.push_str(
            "\n## Kind families\n\n\
             Webhooks whose operation is another kind's (each still belongs to one operation).\n\n\
             | webhook kind | when | joins | there it is | from |\n|---|---|---|---|---|\n",
        );
        for join in &catalog.joins {
            let when = if join.when.is_empty() {
                "always".to_owned()
            } else {
                join.when
                    .iter()
                    .map(|(path, value)| format!("`{path}` = `{value}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let key = if join.key_paths.is_empty() {
                "same key".to_owned()
            } else {
                format!("key from `{}`", join.key_paths.join("`, then `"))
            };
            let mut there = match (&join.status, &join.status_prefix) {
                (Some(status), _) => vec![format!("status `{status}`")],
                (None, Some(prefix)) => vec![format!("status `{prefix}<its status>`")],
                (None, None) => vec!["its own status".to_owned()],
            };
            if let Some(outcome) = &join.outcome {
                there.push(format!("classified as `{outcome}`"));
            }
            there.extend(
                join.facts
                    .iter()
                    .map(|(fact, value)| format!("fact `{fact}` = `{value}`")),
            );
            there.extend(
                join.fact_paths
                    .iter()
                    .map(|(fact, path)| format!("fact `{fact}` from `{path}`")),
            );
            let _ = writeln!(
                out,
                "| `{}` | {when} | `{}` ({key}) | {} | {} |",
                join.webhook_type,
                join.kind,
                there.join("; "),
                join.source
                    .as_deref()
                    .unwrap_or("no source recorded")
                    .trim(),
            );
        }
    }
    coverage(catalog, &mut out);
    if !catalog.aliases.is_empty() {
        out.push_str("\n## Other names\n\n| webhook kind | is an operation of |\n|---|---|\n");
        for (alias, kind) in &catalog.aliases {
            let _ = writeln!(out, "| `{alias}` | `{kind}` |");
        }
    }
    for (name, spec) in &catalog.kinds {
        let _ = write!(out, "\n## `{name}`\n\n");
        match &spec.source {
            Some(source) => {
                let _ = writeln!(out, "{}\n", source.trim());
            }
            None => out.push_str("No source is recorded for this kind.\n\n"),
        }
        if !spec.implied_by.is_empty() {
            let _ = writeln!(
                out,
                "Its webhooks name no kind: a webhook with `{}` and no `webhook_type` is one.\n",
                spec.implied_by.join("` and `")
            );
        }
        if !spec.operation_key_paths.is_empty() {
            let _ = writeln!(
                out,
                "The operation is named by `{}` (read before `key`).\n",
                spec.operation_key_paths.join("`, then `")
            );
        }
        if let Some(part_of) = &spec.part_of {
            let _ = writeln!(
                out,
                "Each is a part of the `{}` its fact `{}` names: that operation lists it, and it \
                 never moves that operation's status.\n",
                part_of.kind, part_of.fact
            );
        }
        if let Some(path) = &spec.step_path {
            let _ = writeln!(
                out,
                "A status is read with its step, from `{path}`: `<step> <status>`.\n"
            );
        }
        for group in &spec.loops {
            let _ = writeln!(
                out,
                "The flow goes back and forth between `{}`: they share one stage, and the later \
                 event time says which the operation is in.\n",
                group.join("` and `")
            );
        }
        out.push_str(
            "| status | what it means | phase | milestones it reaches | against other end statuses |\n",
        );
        out.push_str("|---|---|---|---|---|\n");
        for status in statuses(spec) {
            // A milestone's pattern is no status of its own: its row says which statuses
            // reach the milestone, each classified by its own row (or as unknown).
            let pattern = status.contains('*') && !spec.failure_patterns.contains(&status);
            let meaning = match spec.meanings.get(&status) {
                Some(meaning) => meaning.as_str(),
                None if pattern => {
                    "Any status of this shape (`*` is any run of characters): a pattern that \
                     reaches milestones, not a status of its own."
                }
                None => "QI's documents name it and say no more; qistatus shows it as sent.",
            };
            let phase = if pattern {
                "each its own".to_owned()
            } else {
                phase(catalog, name, &status)
            };
            let _ = writeln!(
                out,
                "| `{status}` | {} | {} | {} | {} |",
                meaning.trim(),
                phase,
                milestones(spec, &status),
                ends(spec, &status),
            );
        }
        if !spec.expect.is_empty() {
            out.push_str("\nExpected to move within (longer, and the operation is overdue): ");
            let expect: Vec<String> = spec
                .expect
                .iter()
                .map(|(status, within)| format!("`{status}` {within}"))
                .collect();
            let _ = writeln!(out, "{}.", expect.join(", "));
        }
        if !spec.facts.is_empty() {
            out.push_str("\nFacts: ");
            let facts: Vec<String> = spec
                .facts
                .iter()
                .map(|(fact, path)| {
                    if spec.sums.contains(fact) {
                        format!("`{fact}` the sum of every `{path}`")
                    } else {
                        format!("`{fact}` from `{path}`")
                    }
                })
                .collect();
            let _ = writeln!(out, "{}.", facts.join(", "));
        }
    }
    out
}

/// The coverage section: each kind, where its webhook names its operation and its status,
/// and the QI pages it was read from (the addresses in its `source`).
fn coverage(catalog: &Catalog, out: &mut String) {
    out.push_str(
        "\n## Coverage\n\n\
         Each kind, where its webhooks name the operation and its status, and the QI pages \
         (or seeds) it comes from. Where a kind lists no place of its own, the generic ones \
         are read: `key`, `debt_key`, `data.<type>_key`, one `<x>_key` beside its \
         `<x>_status`, `origin_key`; `status`, `data.status`, `data.<type>_status`.\n\n\
         | kind | operation from | status from | QI's pages |\n|---|---|---|---|\n",
    );
    let listed = |paths: &[String]| format!("`{}`", paths.join("`, then `"));
    for (name, spec) in &catalog.kinds {
        let key = match (&spec.operation_key_paths[..], &spec.key_paths[..]) {
            ([], []) => "generic".to_owned(),
            ([], paths) => format!("{} (after the generic `key`)", listed(paths)),
            (paths, _) => format!("{} (before `key`)", listed(paths)),
        };
        let status = match (&spec.status_paths[..], &spec.outcome_path) {
            ([], None) => "generic".to_owned(),
            (paths, outcome) => {
                let mut said = Vec::new();
                if !paths.is_empty() {
                    said.push(listed(paths));
                }
                if let Some(outcome) = outcome {
                    said.push(format!("the outcome in `{outcome}`"));
                }
                said.join("; ")
            }
        };
        let source = spec.source.as_deref().unwrap_or("");
        let mut pages: Vec<String> = source
            .split_whitespace()
            .filter_map(|word| {
                let at = word.find("docs.qitech.com.br")?;
                let page = word[at..]
                    .trim_end_matches(|c: char| !(c.is_alphanumeric() || c == '/' || c == '_'));
                Some(format!("`{page}`"))
            })
            .collect();
        pages.dedup();
        let seeds: Vec<&str> = source
            .split(|c: char| !c.is_alphanumeric())
            .collect::<Vec<_>>()
            .windows(2)
            .filter(|w| w[0].eq_ignore_ascii_case("seed") && w[1].len() == 3)
            .map(|w| w[1])
            .collect();
        if !seeds.is_empty() {
            pages.push(format!("seed {}", seeds.join(", ")));
        }
        let pages = if pages.is_empty() {
            "no address in its source (see its section)".to_owned()
        } else {
            pages.join(", ")
        };
        let _ = writeln!(out, "| `{name}` | {key} | {status} | {pages} |");
    }
}

/// Every status a kind names, in flow order: stages, then success, then failure, then
/// failure patterns, then statuses only its milestones name.
fn statuses(spec: &KindSpec) -> Vec<String> {
    let mut all: Vec<String> = Vec::new();
    let named = spec
        .stages
        .iter()
        .chain(&spec.success)
        .chain(&spec.failure)
        .chain(&spec.failure_patterns)
        .chain(&spec.outcome_statuses)
        .chain(spec.milestones.values().flatten());
    for status in named {
        if !all.contains(status) {
            all.push(status.clone());
        }
    }
    all
}

fn phase(catalog: &Catalog, kind: &str, status: &str) -> String {
    let spec = catalog.kind(kind);
    if spec.is_some_and(|s| s.failure_patterns.iter().any(|p| p == status)) {
        return "FAILED (any status of this shape)".into();
    }
    match catalog.classify(kind, status) {
        StatusClass::End {
            outcome: EndOutcome::Success,
            ..
        } => "SUCCEEDED".into(),
        StatusClass::End {
            outcome: EndOutcome::Failure,
            ..
        } => "FAILED".into(),
        StatusClass::Stage(i) => {
            let of = spec.map_or(0, |s| s.stages.len());
            let phase = if catalog.is_active(kind, status) {
                "ACTIVE"
            } else {
                "PENDING"
            };
            format!("{phase} (stage {} of {of})", i + 1)
        }
        StatusClass::Unknown => "PENDING (not a stage: history only)".into(),
    }
}

fn milestones(spec: &KindSpec, status: &str) -> String {
    let reached: Vec<String> = spec
        .milestones
        .iter()
        .filter(|(_, patterns)| {
            patterns
                .iter()
                .any(|p| p == status || glob_matches(p, status))
        })
        .map(|(name, _)| format!("`{name}`"))
        .collect();
    if reached.is_empty() {
        "—".into()
    } else {
        reached.join(", ")
    }
}

fn ends(spec: &KindSpec, status: &str) -> String {
    let mut said = Vec::new();
    let superseded_by: Vec<String> = spec
        .supersedes
        .iter()
        .filter(|(_, losers)| losers.iter().any(|l| l == status))
        .map(|(winner, _)| format!("`{winner}`"))
        .collect();
    if !superseded_by.is_empty() {
        said.push(format!("superseded by {}", superseded_by.join(", ")));
    }
    if let Some(losers) = spec.supersedes.get(status) {
        let losers: Vec<String> = losers.iter().map(|l| format!("`{l}`")).collect();
        said.push(format!("supersedes {}", losers.join(", ")));
    }
    if let Some(i) = spec.end_precedence.iter().position(|s| s == status) {
        said.push(format!(
            "precedence {} of {}",
            i + 1,
            spec.end_precedence.len()
        ));
    }
    if said.is_empty() {
        "—".into()
    } else {
        said.join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table's status rows without their second column (the meaning, checked by
    /// [`every_status_row_says_what_it_means`]).
    fn rows_without_meanings(table: &str) -> String {
        table
            .lines()
            .filter(|line| line.starts_with("| `"))
            .map(|line| {
                let mut cells: Vec<&str> = line.split(" | ").collect();
                if cells.len() > 2 {
                    cells.remove(1);
                }
                cells.join(" | ")
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn every_status_row_says_what_it_means() {
        let catalog = Catalog::builtin();
        let table = markdown(&catalog);
        for (kind, spec) in &catalog.kinds {
            for meaning in spec.meanings.values() {
                assert!(!meaning.contains('|'), "{kind}: a meaning breaks the table");
            }
        }
        assert!(table.contains(
            "| `refunded` | The receiver sent money back: an incoming Pix of type `reversal` named this transfer"
        ));
        assert!(table.contains("| `baas.pix_transfer.incoming_pix` | `data.pix_transfer_type` = `reversal` | `baas.pix_transfer.outgoing_pix` (key from `data.original_outgoing_pix_transfer`) | status `refunded` |"));
        assert!(table.contains("| `escrow` | always | `account` (same key) | its own status; fact `account_type` = `escrow` |"));
        assert!(table.contains("| `debt` | `data.cancel_reason_enumerator` = `refund_after_payee_request` | `debt` (same key) | its own status; classified as `reversal_canceled` |"));
        assert!(table.contains("`refunded_amount` the sum of every `data.transfer_amount`"));
    }

    #[test]
    fn the_debt_rows_say_what_the_reconciler_does() {
        let table = rows_without_meanings(&markdown(&Catalog::builtin()));
        for row in [
            "| `settled` | SUCCEEDED | `disbursed`, `settled` | precedence 5 of 5 |",
            "| `debt_successfully_finished` | ACTIVE (stage 11 of 11) | `disbursed`, `issuance_finished` | — |",
            "| `canceled` | FAILED | `canceled` | superseded by `canceled_permanently`; precedence 2 of 5 |",
            "| `disbursed` | ACTIVE (stage 7 of 11) | `disbursed` |",
            "| `*_rejected` | FAILED (any status of this shape) |",
            "| `reversal_*` | each its own | `disbursed` |",
        ] {
            assert!(table.contains(row), "{row}\n{table}");
        }
    }
}
