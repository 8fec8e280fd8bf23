//! The console's HTML, server-rendered with maud: every value from a webhook goes through
//! maud's escaping (`(value)`), never `PreEscaped`. Pages work without JavaScript; the
//! dashboard's live list is the one thing `console.js` adds.

use maud::{DOCTYPE, Markup, html};

use super::charts::{Bar, Line, bars, lines_over_days};
use crate::domain::flow::{FlowReport, Percentiles};
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
                        a href="/ui/flow" { "Flow" }
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
/// `parts`: the operations that are parts of it (a debt's installments), and how many more
/// there are.
pub(crate) fn operation(
    op: &Operation,
    masked: usize,
    resend: Option<&str>,
    parts: (&[Operation], u64),
) -> Markup {
    let (parts, parts_omitted) = parts;
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
        @if !parts.is_empty() {
            section {
                h2 { "Parts" }
                div.scroll { table.parts {
                    thead { tr { th { "Kind" } th { "Key" } th { "Status" } th { "Last update" } } }
                    tbody {
                        @for part in parts {
                            tr {
                                td { (part.kind) }
                                td { a href=(operation_href(&part.kind, &part.key)) { code { (part.key) } } }
                                td { (part.status) " " (phase_badge(part.phase)) }
                                td { (time(Some(part.updated_at))) }
                            }
                        }
                    }
                } }
                @if parts_omitted > 0 {
                    p.hint { "… and " (parts_omitted) " more." }
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

/// A measured duration in seconds, as people read it (`42s`, `17m`, `5.2h`).
pub(crate) fn span(seconds: f64) -> String {
    crate::client::span_text(seconds)
}

/// What the flow page shows: a kind's window ([`crate::flow_window`]) and its figures.
pub(crate) struct FlowView<'a> {
    /// Every kind of the catalog, for the form.
    pub(crate) kinds: &'a [String],
    /// The kind shown.
    pub(crate) kind: &'a str,
    /// How many days the window spans (the form's choice).
    pub(crate) days: i32,
    /// The window's first and last UTC day.
    pub(crate) first_day: i32,
    pub(crate) last_day: i32,
    /// How many of the kind are in each status now, in the catalog's order of stages (then
    /// the end statuses), with the status's phase.
    pub(crate) now: &'a [(String, Phase, u64)],
    /// The window's figures.
    pub(crate) report: &'a FlowReport,
}

/// The day choices of the flow page's form.
pub(crate) const FLOW_DAYS: [i32; 4] = [1, 7, 30, 90];
/// How many stages get a chart of their own (the most counted).
const CHARTED_STAGES: usize = 4;

/// `GET /ui/flow`: where a kind's operations are now, how long each stage took, how late
/// webhooks arrived, and what became of each day's operations.
pub(crate) fn flow(view: &FlowView<'_>) -> Markup {
    let day = |d: i32| {
        chrono::DateTime::from_timestamp(i64::from(d) * 86_400, 0)
            .map(|t| t.format("%Y-%m-%d").to_string())
            .unwrap_or_default()
    };
    let report = view.report;
    let funnel: Vec<Bar> = view
        .now
        .iter()
        .map(|(status, phase, count)| Bar {
            label: status.clone(),
            value: *count,
            class: phase_class(*phase),
        })
        .collect();
    html! {
        h1 { "Flow" }
        p.hint { "How long each stage takes, measured between the event times QI Tech gives, in each operation's event-time order whatever order the webhooks came in; how late the webhooks arrive; and what became of the operations that started on each day. Days are UTC. Durations are within 9.1 % (fixed buckets)." }
        form.filters method="get" action="/ui/flow" {
            label { "Kind " select name="kind" {
                @for k in view.kinds { option value=(k) selected[k == view.kind] { (k) } }
            } }
            label { "Days " select name="days" {
                @for d in FLOW_DAYS { option value=(d) selected[d == view.days] { (d) } }
            } }
            button type="submit" { "Show" }
        }
        p.summary { (view.kind) " · " (day(view.first_day)) " to " (day(view.last_day)) }
        section #now {
            h2 { "Where they are now" }
            @if funnel.is_empty() {
                p { "No operation of this kind yet." }
            } @else {
                (bars(&format!("{} by status now", view.kind), &funnel))
            }
        }
        section #stages {
            h2 { "How long each stage takes" }
            @if report.stages.is_empty() {
                p { "No stage ended in these days." }
            } @else {
                div.scroll { table.stages {
                    thead { tr { th { "From" } th { "To" } th.num { "Count" } th.num { "p50" } th.num { "p90" } th.num { "p99" } } }
                    tbody {
                        @for stage in &report.stages {
                            tr {
                                td { (stage.from) }
                                td { @if stage.milestone { "milestone " } (stage.to) }
                                td.num { (stage.total.count) }
                                td.num { (span(stage.total.p50)) }
                                td.num { (span(stage.total.p90)) }
                                td.num { (span(stage.total.p99)) }
                            }
                        }
                    }
                } }
                @for stage in report.stages.iter().filter(|s| !s.milestone).take(CHARTED_STAGES) {
                    h3 { (stage.from) " → " (stage.to) ", day by day" }
                    (percentiles_chart(
                        view,
                        &format!("{} to {}: median and 90th percentile by day", stage.from, stage.to),
                        &stage.by_day,
                        ("p90", |p| p.p90),
                    ))
                }
            }
        }
        section #lag {
            h2 { "How late webhooks arrive" }
            @match &report.lag {
                None => p { "No webhook with an event time arrived in these days." },
                Some(lag) => {
                    p.summary { (lag.count) " webhooks, received after their event time by: p50 " (span(lag.p50)) " · p90 " (span(lag.p90)) " · p99 " (span(lag.p99)) }
                    (percentiles_chart(
                        view,
                        "Delivery lag: median and 99th percentile by day",
                        &report.lag_by_day,
                        ("p99", |p| p.p99),
                    ))
                }
            }
        }
        section #cohorts {
            h2 { "What became of each day's operations" }
            @if report.cohorts.is_empty() {
                p { "No operation started in these days." }
            } @else {
                div.scroll { table.cohorts {
                    thead { tr { th { "Started" } th.num { "Total" } @for p in Phase::ALL { th.num { (p.as_str()) } } th { "Failed ones stopped at" } } }
                    tbody {
                        @for cohort in &report.cohorts {
                            tr {
                                td { (day(cohort.day)) }
                                td.num { (cohort.phases.iter().map(|(_, n)| n).sum::<u64>()) }
                                @for p in Phase::ALL {
                                    td.num { (cohort.phases.iter().filter(|(q, _)| *q == p).map(|(_, n)| n).sum::<u64>()) }
                                }
                                td { @for (i, (status, n)) in cohort.stopped_at.iter().enumerate() {
                                    @if i > 0 { ", " } (status) " " (n)
                                } }
                            }
                        }
                    }
                } }
            }
        }
    }
}

/// A chart, over the view's days, of the median of `days` and of one higher percentile
/// (`upper`: its name, which is also its CSS class, and how to read it).
fn percentiles_chart(
    view: &FlowView<'_>,
    title: &str,
    days: &[(i32, Percentiles)],
    upper: (&'static str, fn(&Percentiles) -> f64),
) -> Markup {
    let line = |(name, pick): (&'static str, fn(&Percentiles) -> f64)| Line {
        name: name.to_owned(),
        class: name,
        points: days.iter().map(|(d, p)| (*d, pick(p))).collect(),
    };
    lines_over_days(
        title,
        view.first_day,
        view.last_day,
        &[line(("p50", |p| p.p50)), line(upper)],
    )
}

/// The CSS class of a phase's colour.
fn phase_class(phase: Phase) -> &'static str {
    match phase {
        Phase::Pending => "phase-pending",
        Phase::Active => "phase-active",
        Phase::Succeeded => "phase-succeeded",
        Phase::Failed => "phase-failed",
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
