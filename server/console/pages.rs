//! The console's HTML, server-rendered with maud: every value from a webhook goes through
//! maud's escaping (`(value)`), never `PreEscaped`. Pages work without JavaScript; the
//! dashboard's live list is the one thing `console.js` adds.

use maud::{DOCTYPE, Markup, html};

use crate::domain::overdue::Overdue;
use crate::domain::reconcile::{Operation, Phase};
use crate::domain::webhook::FactValue;
use crate::recovery::ledger::GivenUp;
use crate::store::{OperationCount, QuarantineEntry};

/// A page: title, the viewer's sign-out button when signed in, and `body`.
/// A page: `csrf` is the signed-in person's form token (`None`: not signed in, or an open
/// console).
pub(crate) fn layout(title: &str, csrf: Option<&str>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · qistatus" }
                link rel="stylesheet" href="/ui/assets/console.css";
            }
            body {
                header {
                    a.brand href="/ui/" { "qistatus" }
                    nav {
                        a href="/ui/" { "Overview" }
                        a href="/ui/list" { "Lists" }
                        a href="/ui/overdue" { "Overdue" }
                        a href="/ui/quarantine" { "Quarantine" }
                    }
                    form.search method="get" action="/ui/operations" {
                        input type="search" name="key" placeholder="Operation key" aria-label="Operation key" required;
                        button type="submit" { "Find" }
                    }
                    @if let Some(csrf) = csrf {
                        form method="post" action="/ui/logout" {
                            input type="hidden" name="csrf" value=(csrf);
                            button.link type="submit" { "Sign out" }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

/// A time in ms since the epoch, as UTC text.
pub(crate) fn time(ms: Option<i64>) -> String {
    ms.map(crate::domain::webhook::shown_millis)
        .and_then(chrono::DateTime::from_timestamp_millis)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| "—".into())
}

fn phase_badge(phase: Phase) -> Markup {
    html! { span class={"phase phase-" (phase.as_str())} { (phase.as_str()) } }
}

/// What a query value or a path segment keeps as it is: RFC 3986's unreserved characters.
const UNRESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// `text` percent-encoded for a query value or a path segment.
pub(crate) fn encode(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, UNRESERVED).to_string()
}

/// The link to an operation's page.
pub(crate) fn operation_href(kind: &str, key: &str) -> String {
    format!("/ui/operations/{}?kind={}", encode(key), encode(kind))
}

/// `GET /ui/`: `recovery` is what recovery follows and gave up on, when QI's API is
/// configured.
pub(crate) fn overview(
    counts: &[OperationCount],
    head: u64,
    quarantined: usize,
    recovery: Option<&(u64, u64, Vec<GivenUp>)>,
) -> Markup {
    let total: u64 = counts.iter().map(|c| c.operations).sum();
    html! {
        h1 { "Overview" }
        p.summary {
            (total) " operations · last change " (head) " · "
            a href="/ui/quarantine" { (quarantined) " in quarantine" }
        }
        section {
            h2 { "By kind, status and phase" }
            @if counts.is_empty() {
                p { "No operations yet." }
            } @else {
                div.scroll { table {
                    thead { tr { th { "Kind" } th { "Status" } th { "Phase" } th.num { "Operations" } } }
                    tbody {
                        @for c in counts {
                            tr {
                                td { (c.kind) }
                                td { a href={"/ui/list?kind=" (encode(&c.kind)) "&status=" (encode(&c.status))} { (c.status) } }
                                td { (phase_badge(c.phase)) }
                                td.num { (c.operations) }
                            }
                        }
                    }
                } }
            }
        }
        @if let Some((pending, given_up, recent)) = recovery {
            section.recovery {
                h2 { "Missed webhooks" }
                p.summary {
                    (pending) " asked of QI again and awaited · " (given_up) " given up on"
                }
                @if !recent.is_empty() {
                    p.hint { "QI still lists these as failed after every resend: ask QI Tech about them." }
                    div.scroll { table {
                        thead { tr { th { "Given up" } th { "Operation" } th { "Event" } th { "Callback" } } }
                        tbody {
                            @for g in recent {
                                tr {
                                    td { (time(Some(g.at))) }
                                    td { @match &g.origin_key {
                                        Some(key) => a href={"/ui/operations/" (encode(key))} { (key) },
                                        None => "unknown",
                                    } }
                                    td { code { (g.event_key) } }
                                    td { code { (g.callback_key) } }
                                }
                            }
                        }
                    } }
                }
            }
        }
        section {
            h2 { "Live changes" }
            p.hint { "Status changes appear here as they happen (needs JavaScript)." }
            div.scroll { table #live data-source="/ui/live" {
                thead { tr { th { "Seq" } th { "Kind" } th { "Key" } th { "Status" } th { "Phase" } } }
                tbody {}
            } }
        }
        script src="/ui/assets/console.js" {}
    }
}

/// `GET /ui/operations/{key}`.
/// `resend`: `Some(csrf)` when QI's API is configured (the form token, empty on an open
/// console), which offers "ask QI to resend".
/// `masked`: how many of its values were masked ([`crate::domain::personal::mask_operation`]).
pub(crate) fn operation(op: &Operation, masked: usize, resend: Option<&str>) -> Markup {
    html! {
        h1 { (op.kind) " " code { (op.key) } }
        @if masked > 0 {
            p.hint { (masked) " personal values are masked; a webhook's page can reveal them (logged)." }
        }
        @if let Some(csrf) = resend {
            form.resend method="post" action={"/ui/operations/" (encode(&op.key)) "/resend?kind=" (encode(&op.kind))} {
                @if !csrf.is_empty() {
                    input type="hidden" name="csrf" value=(csrf);
                }
                button type="submit" { "Ask QI to resend what qistatus does not hold" }
            }
        }
        dl.facts {
            dt { "Status" } dd { strong { (op.status) } " " (phase_badge(op.phase)) }
            @if !op.detail.is_empty() { dt { "Detail" } dd { (op.detail) } }
            @if !op.conflict.is_empty() {
                dt { "Conflict" } dd.warn { "end statuses disagree at the same time: " (op.conflict.join(", ")) }
            }
            dt { "Event time" } dd { (time(op.event_time)) }
            dt { "First received" } dd { (time(Some(op.first_received_at))) }
            dt { "Last update" } dd { (time(Some(op.updated_at))) }
            dt { "Webhooks" } dd { (op.version) " distinct · last sequence " (op.last_sequence) }
        }
        @if !op.milestones.is_empty() {
            section {
                h2 { "Milestones" }
                ul.milestones {
                    @for m in &op.milestones { li { strong { (m.name) } " · " (time(m.reached_at)) } }
                }
            }
        }
        @if !op.facts.is_empty() {
            section {
                h2 { "Facts" }
                dl.facts {
                    @for (name, value) in &op.facts {
                        dt { (name) }
                        dd { @match value {
                            FactValue::Text(t) => (t),
                            FactValue::Number(n) => (n),
                            FactValue::Bool(b) => (b),
                        } }
                    }
                }
            }
        }
        section {
            h2 { "Timeline" }
            div.scroll { table.timeline {
                thead { tr { th { "Event time" } th { "Received" } th { "Status" } th { "Detail" } th { "Seq" } th { "Payload" } } }
                tbody {
                    @for e in &op.history {
                        tr {
                            td { (time(e.event_time)) }
                            td { (time(Some(e.received_at))) }
                            td { (e.status) @if let Some(o) = &e.outcome { " (" (o) ")" } }
                            td.detail { (e.detail) }
                            td.num { (e.sequence) }
                            td { a href={"/ui/operations/" (encode(&op.key)) "/webhooks/" (e.sequence) "?kind=" (encode(&op.kind))} { "view" } }
                        }
                    }
                }
            } }
        }
    }
}

/// `POST /ui/operations/{key}/resend`: what QI was asked.
pub(crate) fn resent(op: &Operation, events: usize, held: usize, resent: usize) -> Markup {
    let back = operation_href(&op.kind, &op.key);
    html! {
        p { a href=(back) { "← " (op.kind) " " (op.key) } }
        h1 { "Asked QI to resend" }
        p.summary {
            "QI listed " (events) " event(s) of this operation; qistatus holds " (held)
            "; QI accepted to resend " (resent) " callback(s)."
        }
        @if resent > 0 {
            p.hint { "They arrive as webhooks, like any other: the operation's page shows them once they have." }
        } @else {
            p.hint { "QI has nothing more for this operation." }
        }
    }
}

/// A key that names operations of several kinds: which one?
pub(crate) fn choose_kind(key: &str, kinds: &[String]) -> Markup {
    html! {
        h1 { "Several operations have key " code { (key) } }
        ul { @for kind in kinds { li { a href=(operation_href(kind, key)) { (kind) } } } }
    }
}

/// `GET /ui/operations/{key}/webhooks/{sequence}`: a raw payload, masked unless revealed.
pub(crate) fn payload(
    op: &Operation,
    sequence: u64,
    pretty: &str,
    masked: Option<usize>,
    csrf: Option<&str>,
) -> Markup {
    let back = operation_href(&op.kind, &op.key);
    html! {
        p { a href=(back) { "← " (op.kind) " " (op.key) } }
        h1 { "Webhook " (sequence) }
        @match masked {
            Some(n) => {
                p.hint { (n) " personal values are masked." }
                form method="post" action={"/ui/operations/" (encode(&op.key)) "/webhooks/" (sequence) "/reveal?kind=" (encode(&op.kind))} {
                    @if let Some(csrf) = csrf {
                        input type="hidden" name="csrf" value=(csrf);
                    }
                    button type="submit" { "Reveal personal data (logged)" }
                }
            }
            None => p.warn { "Personal data revealed: this view was logged." },
        }
        pre.payload { (pretty) }
    }
}

/// `GET /ui/list`: the form, and a page of operations.
pub(crate) fn list(
    kinds: &[String],
    filter: &ListForm,
    operations: &[Operation],
    next: Option<String>,
) -> Markup {
    html! {
        h1 { "Lists" }
        form.filters method="get" action="/ui/list" {
            label { "Kind " select name="kind" {
                option value="" { "any" }
                @for k in kinds { option value=(k) selected[filter.kind.as_deref() == Some(k)] { (k) } }
            } }
            label { "Status " input type="text" name="status" value=[filter.status.as_deref()] placeholder="e.g. disbursed"; }
            label { "Phase " select name="phase" {
                option value="" { "any" }
                @for p in Phase::ALL { option value=(p.as_str()) selected[filter.phase == Some(p)] { (p.as_str()) } }
            } }
            button type="submit" { "List" }
        }
        @if filter.status.is_none() && filter.phase.is_none() {
            p.hint { "Choose a status or a phase." }
        } @else if operations.is_empty() {
            p { "No operations match." }
        } @else {
            div.scroll { table {
                thead { tr { th { "Kind" } th { "Key" } th { "Status" } th { "Phase" } th { "Last update" } } }
                tbody {
                    @for op in operations {
                        tr {
                            td { (op.kind) }
                            td { a href=(operation_href(&op.kind, &op.key)) { code { (op.key) } } }
                            td { (op.status) }
                            td { (phase_badge(op.phase)) }
                            td { (time(Some(op.updated_at))) }
                        }
                    }
                }
            } }
            @if let Some(next) = next { p { a.next href=(next) { "Next page →" } } }
        }
    }
}

/// `GET /ui/overdue`: the operations that should have moved by now, most overdue first.
pub(crate) fn overdue(
    kinds: &[String],
    kind: Option<&str>,
    expectations: usize,
    operations: &[(Operation, Overdue)],
    now: i64,
    next: Option<String>,
) -> Markup {
    html! {
        h1 { "Overdue" }
        p.hint { "Operations that have held a status longer than the catalog expects (its "
            code { "expect" } "), most overdue first. A webhook may have been lost: ask QI Tech to resend it, or check the operation with QI Tech." }
        form.filters method="get" action="/ui/overdue" {
            label { "Kind " select name="kind" {
                option value="" { "any" }
                @for k in kinds { option value=(k) selected[kind == Some(k.as_str())] { (k) } }
            } }
            button type="submit" { "List" }
        }
        @if expectations == 0 {
            p { "The catalog expects nothing of any status" @if kind.is_some() { " of this kind" } ": nothing can be overdue. Set "
                code { "[kinds.K.expect]" } " in the catalog file." }
        } @else if operations.is_empty() {
            p { "Nothing is overdue." }
        } @else {
            div.scroll { table {
                thead { tr { th { "Kind" } th { "Key" } th { "Status" } th { "Since" } th { "Expected within" } th { "Overdue for" } } }
                tbody {
                    @for (op, late) in operations {
                        tr {
                            td { (op.kind) }
                            td { a href=(operation_href(&op.kind, &op.key)) { code { (op.key) } } }
                            td { (op.status) }
                            td { (time(Some(late.since))) }
                            td { (duration(late.expected_within)) }
                            td { (duration(now.saturating_sub(late.due))) }
                        }
                    }
                }
            } }
            @if let Some(next) = next { p { a.next href=(next) { "Next page →" } } }
        }
    }
}

/// A duration in ms as people read it, to the minute (`3d 4h`, `5m`, `under a minute`).
fn duration(ms: i64) -> String {
    let minutes = ms.max(0) / 60_000;
    let (days, hours, minutes) = (minutes / 1440, minutes / 60 % 24, minutes % 60);
    let parts: Vec<String> = [(days, "d"), (hours, "h"), (minutes, "m")]
        .into_iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, unit)| format!("{n}{unit}"))
        .collect();
    if parts.is_empty() {
        "under a minute".into()
    } else {
        parts.join(" ")
    }
}

/// What `/ui/list` was asked, checked.
#[derive(Debug, Clone, Default)]
pub(crate) struct ListForm {
    pub(crate) kind: Option<String>,
    pub(crate) status: Option<String>,
    pub(crate) phase: Option<Phase>,
}

/// `GET /ui/quarantine`.
pub(crate) fn quarantine(entries: &[(u64, QuarantineEntry)], next: Option<String>) -> Markup {
    html! {
        h1 { "Quarantine" }
        p.hint { "JSON objects that could not be attributed to an operation, kept with the reason. Teach the catalog and reload it to move them into their operations." }
        @if entries.is_empty() {
            p { "The quarantine is empty." }
        } @else {
            div.scroll { table {
                thead { tr { th { "Id" } th { "Received" } th { "Reason" } th.num { "Bytes" } } }
                tbody {
                    @for (id, e) in entries {
                        tr { td.num { (id) } td { (time(Some(e.received_at))) } td.detail { (e.reason) } td.num { (e.raw.len()) } }
                    }
                }
            } }
            @if let Some(next) = next { p { a.next href=(next) { "Next page →" } } }
        }
    }
}

/// The sign-in form.
pub(crate) fn login(error: Option<&str>) -> Markup {
    html! {
        h1 { "Sign in" }
        @if let Some(error) = error { p.warn { (error) } }
        form.login method="post" action="/ui/login" {
            label { "Access token " input type="password" name="token" autocomplete="current-password" required autofocus; }
            button type="submit" { "Sign in" }
        }
        p.hint { "Use a token of the gRPC API (the server's --grpc-token-file)." }
    }
}

/// An error page.
pub(crate) fn error(status: u16, message: &str) -> Markup {
    html! {
        h1 { (status) }
        p { (message) }
        p { a href="/ui/" { "Back to the overview" } }
    }
}
