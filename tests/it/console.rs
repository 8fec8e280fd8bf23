//! The console, in a real browser: Debian's headless Chromium driven over WebDriver
//! (`chromedriver`, started by the test) against the real server. What a person sees:
//! the sign-in, the overview's counts and live list, an operation's status, milestones,
//! facts and timeline, a payload with its personal data masked until revealed, the flow
//! page's bars, table and charts, and a
//! `<script>` in a webhook shown as text.
//!
//! Needs Chromium and ChromeDriver, which [`crate::peers`] finds or installs: the browser
//! test fails, rather than passes quietly, without them. `QISTATUS_SCREENSHOTS=DIR`
//! also saves the pages the README shows.

use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use qistatus::BearerTokens;

use crate::process::ServerCommand;
use crate::test_server::{TestServer, fixture, webhook};

const TOKEN: &str = "console-test-token";
const ACCOUNT_KEY: &str = "f834af4d-ab4b-442f-96c9-f9940d8066d4";
const CPF: &str = "08141163701";
const SCRIPT: &str = "<script>document.body.innerHTML='PWNED'</script>";

/// A headless Chromium session through a chromedriver this test starts.
pub(crate) struct Browser {
    pub(crate) client: Client,
    _driver: tokio::process::Child,
}

impl Browser {
    pub(crate) async fn start() -> Browser {
        // fantoccini's TLS stack has two crypto providers compiled in: pick one (ignored if
        // another test already did; the WebDriver connection is plain HTTP anyway).
        let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
        let chromium = crate::peers::chromium();
        // On a port it picks, which it says: "ChromeDriver was started successfully on port
        // N."
        let mut driver = tokio::process::Command::new(&chromium.driver)
            .arg("--port=0")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start chromedriver");
        let port = {
            use tokio::io::AsyncBufReadExt;
            let stdout = driver.stdout.take().expect("piped");
            let mut lines = tokio::io::BufReader::new(stdout).lines();
            let said = async {
                while let Some(line) = lines.next_line().await.expect("chromedriver's output") {
                    if let Some(port) = line
                        .split_once("started successfully on port ")
                        .and_then(|(_, rest)| rest.trim_end_matches('.').parse::<u16>().ok())
                    {
                        return port;
                    }
                }
                panic!("chromedriver exited without saying its port");
            };
            let port = tokio::time::timeout(Duration::from_secs(10), said)
                .await
                .expect("chromedriver says its port within 10 s");
            // The rest of what it says is not read: dropped, not left to fill the pipe.
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            port
        };
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": chromium.browser,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1200,1000"],
            }),
        );
        let url = format!("http://127.0.0.1:{port}");
        let client = crate::wait::wait_until(
            "chromedriver accepts a session",
            Duration::from_secs(10),
            || {
                let (capabilities, url) = (capabilities.clone(), url.clone());
                async move {
                    ClientBuilder::rustls()
                        .expect("a rustls connector")
                        .capabilities(capabilities)
                        .connect(&url)
                        .await
                        .ok()
                }
            },
        )
        .await;
        Browser {
            client,
            _driver: driver,
        }
    }

    /// The visible text of the page, once `xpath` is on it (a form's answer loads after
    /// `submit` returns).
    pub(crate) async fn text_once(&self, xpath: &str) -> String {
        self.client
            .wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::XPath(xpath))
            .await
            .unwrap_or_else(|e| panic!("{xpath} on the page: {e}"));
        self.client
            .find(Locator::Css("body"))
            .await
            .expect("a body")
            .text()
            .await
            .expect("its text")
    }

    /// Clicks the element `locator` finds.
    pub(crate) async fn click(&self, locator: Locator<'_>) {
        self.client
            .find(locator)
            .await
            .expect("the element to click")
            .click()
            .await
            .expect("clicked");
    }

    /// Saves a screenshot as `name` under `QISTATUS_SCREENSHOTS`, when set.
    async fn screenshot(&self, name: &str) {
        if let Some(dir) = std::env::var_os("QISTATUS_SCREENSHOTS") {
            let png = self.client.screenshot().await.expect("a screenshot");
            std::fs::write(std::path::Path::new(&dir).join(name), png).expect("save it");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_signs_in_looks_up_an_operation_and_sees_what_happened() {
    let server = TestServer::start_configured(|s| {
        s.grpc_tokens = BearerTokens::from_files_text([TOKEN]);
    })
    .await;
    for name in [
        "001_account_opened.json",
        "004_debt_created_waiting_signature.json",
        "004_debt_disbursed.json",
    ] {
        server.post_ok(fixture(name)).await;
    }
    let hostile = serde_json::json!({
        "debt_key": "xss-1", "status": "rejected", "description": SCRIPT,
    });
    server.post_ok(serde_json::to_vec(&hostile).unwrap()).await;
    let base = format!("http://{}/ui", server.admin);
    let browser = Browser::start().await;
    let c = &browser.client;

    // Signed out: the sign-in form; a wrong token is refused.
    c.goto(&format!("{base}/")).await.unwrap();
    assert!(c.current_url().await.unwrap().path().ends_with("/ui/login"));
    let form = c.form(Locator::Css("form.login")).await.unwrap();
    form.set_by_name("token", "wrong").await.unwrap();
    form.submit().await.unwrap();
    browser
        .text_once("//p[contains(., 'that token is not accepted')]")
        .await;
    let form = c.form(Locator::Css("form.login")).await.unwrap();
    form.set_by_name("token", TOKEN).await.unwrap();
    form.submit().await.unwrap();

    // The overview: counts, and a live list that shows a webhook posted after it opened.
    let overview = browser.text_once("//h1[text()='Overview']").await;
    assert!(overview.contains("Overview"), "{overview}");
    assert!(overview.contains("account_opened"), "{overview}");
    assert!(overview.contains("disbursed"), "{overview}");
    server
        .post_ok(webhook(
            "debt",
            "live-1",
            "disbursed",
            "2024-01-01 10:00:00",
        ))
        .await;
    let row = c
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::XPath("//table[@id='live']//a[text()='live-1']"))
        .await
        .expect("the live list shows the new webhook");
    assert_eq!(row.text().await.unwrap(), "live-1");
    browser.screenshot("console-overview.png").await;

    // The search box finds a debt: status, phase, milestones, facts, timeline.
    let search = c.form(Locator::Css("form.search")).await.unwrap();
    search
        .set_by_name("key", "871059bd-4014-41ad-82b4-28275ff0e67b")
        .await
        .unwrap();
    search.submit().await.unwrap();
    let debt = browser
        .text_once("//table[contains(@class, 'timeline')]")
        .await;
    for expected in [
        "disbursed",
        "active",
        "Milestones",
        "disbursed_amount",
        "2022-09-28T13:00:47",
        "waiting_signature",
    ] {
        assert!(debt.contains(expected), "{expected} in {debt}");
    }
    let rows = c
        .find_all(Locator::Css("table.timeline tbody tr"))
        .await
        .unwrap();
    assert_eq!(rows.len(), 2, "one row per distinct webhook");
    browser.screenshot("console-operation.png").await;

    // Lists: the running debts.
    c.goto(&format!("{base}/list?kind=debt&phase=active"))
        .await
        .unwrap();
    let list = browser.text_once("//h1[text()='Lists']").await;
    assert!(
        list.contains("871059bd-4014-41ad-82b4-28275ff0e67b") && list.contains("live-1"),
        "{list}"
    );
    assert!(
        !list.contains("xss-1"),
        "a rejected debt is not active: {list}"
    );
    browser.screenshot("console-list.png").await;

    // A payload with personal data: masked until revealed.
    c.goto(&format!("{base}/operations/{ACCOUNT_KEY}"))
        .await
        .unwrap();
    browser.click(Locator::LinkText("view")).await;
    let masked = browser
        .text_once("//pre[contains(@class, 'payload')]")
        .await;
    assert!(!masked.contains(CPF), "{masked}");
    assert!(!masked.contains("Aurora"), "{masked}");
    assert!(masked.contains("personal values are masked"), "{masked}");
    browser.screenshot("console-payload.png").await;
    browser
        .click(Locator::Css("form[action*='/reveal'] button"))
        .await;
    let revealed = browser
        .text_once("//p[contains(., 'this view was logged')]")
        .await;
    assert!(revealed.contains(CPF), "{revealed}");
    assert!(revealed.contains("this view was logged"), "{revealed}");

    // A `<script>` in a webhook is text on the page, and does not run.
    c.goto(&format!("{base}/operations/xss-1")).await.unwrap();
    let page = browser.text_once("//h1").await;
    assert!(!page.starts_with("PWNED"), "{page}");
    assert!(page.contains(SCRIPT), "shown as text: {page}");
    assert!(page.contains("rejected"), "{page}");

    c.clone().close().await.unwrap();
    server.stop().await;
}

/// Status codes and headers a browser does not show: reqwest, against an open console.
#[tokio::test]
async fn bad_input_gets_a_page_with_the_reason_never_a_5xx() {
    let server = TestServer::start().await;
    server.post_ok(fixture("004_debt_disbursed.json")).await;
    let base = format!("http://{}/ui", server.admin);
    let get = |path: String| {
        let url = format!("{base}{path}");
        async move {
            let response = reqwest::get(url).await.unwrap();
            let status = response.status().as_u16();
            let csp = response
                .headers()
                .get("content-security-policy")
                .map(|v| v.to_str().unwrap().to_owned());
            (status, csp, response.text().await.unwrap())
        }
    };
    let (status, csp, page) = get("/operations/no-such-key".into()).await;
    assert_eq!(status, 404);
    assert!(page.contains("no operation with key"), "{page}");
    assert!(csp.unwrap().contains("script-src 'self'"));
    let (status, _, page) = get("/list?phase=sideways".into()).await;
    assert_eq!(status, 400);
    assert!(page.contains("unknown phase"), "{page}");
    let (status, _, page) = get("/list?status=a%0Ab".into()).await;
    assert_eq!(status, 400, "{page}");
    let (status, _, _) = get(format!("/operations/{}", "k".repeat(300))).await;
    assert_eq!(status, 400);
    let (status, _, _) =
        get("/operations/871059bd-4014-41ad-82b4-28275ff0e67b/webhooks/999".into()).await;
    assert_eq!(status, 404);
    let (status, _, _) = get("/nothing-here".into()).await;
    assert_eq!(status, 404);
    // Lists page through the status index.
    let (status, _, page) = get("/list?kind=debt&status=disbursed".into()).await;
    assert_eq!(status, 200);
    assert!(
        page.contains("871059bd-4014-41ad-82b4-28275ff0e67b"),
        "{page}"
    );
    let (status, _, page) = get("/quarantine".into()).await;
    assert_eq!(
        (status, page.contains("The quarantine is empty")),
        (200, true)
    );
    server.stop().await;
}

/// Revealing personal data is logged: who and which webhook, never the values.
#[tokio::test]
async fn a_reveal_is_logged_without_the_values() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("server.log");
    let server = ServerCommand::new(&dir.path().join("data"))
        .log("info")
        .stderr_to(&log)
        .start()
        .await;
    let client = reqwest::Client::new();
    let posted = client
        .post(format!("http://{}/webhooks", server.http))
        .body(fixture("001_account_opened.json"))
        .send()
        .await
        .unwrap();
    let sequence = posted.json::<serde_json::Value>().await.unwrap()["sequence"]
        .as_u64()
        .unwrap();
    let url = format!(
        "http://{}/ui/operations/{ACCOUNT_KEY}/webhooks/{sequence}",
        server.admin
    );
    let masked = client.get(&url).send().await.unwrap().text().await.unwrap();
    assert!(!masked.contains(CPF));
    let revealed = client
        .post(format!("{url}/reveal"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(revealed.contains(CPF));
    server.terminate().await;
    let log = std::fs::read_to_string(log).unwrap();
    let line = log
        .lines()
        .find(|l| l.contains("personal data revealed"))
        .unwrap_or_else(|| panic!("an audit line in {log}"));
    assert!(
        line.contains("who=anonymous") && line.contains(ACCOUNT_KEY),
        "{line}"
    );
    assert!(!log.contains(CPF) && !log.contains("Aurora"), "{log}");
}

/// QI Tech writes in Portuguese as often as English: the masked payload view hides names
/// and documents under Portuguese field names, inside free text, as numbers, and as keys.
#[tokio::test]
async fn portuguese_fields_and_documents_inside_text_are_masked() {
    let server = TestServer::start().await;
    let body = serde_json::json!({
        "webhook_type": "debt", "key": "pt-1", "status": "disbursed",
        "event_datetime": "2024-01-01 10:00:00",
        "data": {
            "nome_completo": "Aurora Nogueira",
            "telefone": "(34) 98765-4321",
            "endereco": {"logradouro": "Rua das Flores, 10"},
            "observacao": "CPF:081.411.637-01 ligar +55 34 98765-4321",
            "cpf_numero": 8141163701_u64,
            "contatos": {"aurora@example.com": "principal"},
            "valor": 1500.25,
        }
    });
    let sequence = server.post_ok(serde_json::to_vec(&body).unwrap()).await;
    let page = server
        .admin_page(&format!("/ui/operations/pt-1/webhooks/{sequence}"))
        .await;
    for personal in [
        "Aurora",
        "98765",
        "Rua das Flores",
        "081.411.637-01",
        "8141163701",
        "aurora@example.com",
    ] {
        assert!(!page.contains(personal), "{personal} shown:\n{page}");
    }
    assert!(
        page.contains("1500.25") && page.contains("disbursed"),
        "{page}"
    );
    server.stop().await;
}

/// The "next page" link of a console page, unescaped, if it has one.
fn next_link(page: &str) -> Option<String> {
    let at = page.find(r#"class="next" href=""#)? + r#"class="next" href=""#.len();
    let href = &page[at..at + page[at..].find('"')?];
    Some(href.replace("&amp;", "&"))
}

#[tokio::test]
async fn the_console_pages_a_list_with_the_apis_page_tokens() {
    let server = TestServer::start().await;
    server
        .post_debts("page-", 0..120, "waiting_signature")
        .await;
    let base = format!("http://{}", server.admin);
    // Kind by its alias, status in another spelling: the API's rules, and its pages.
    let mut href =
        "/ui/list?kind=laas.credit_operation.status_change&status=Waiting_Signature".to_owned();
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let response = reqwest::get(format!("{base}{href}")).await.unwrap();
        assert_eq!(response.status(), 200, "{href}");
        let page = response.text().await.unwrap();
        pages += 1;
        seen.extend(
            (0..120)
                .map(|i| format!("page-{i}"))
                .filter(|key| page.contains(&format!("/ui/operations/{key}?"))),
        );
        match next_link(&page) {
            Some(next) => {
                assert!(next.contains("&page="), "{next}");
                href = next;
            }
            None => break,
        }
        assert!(pages <= 3, "more pages than 120 operations make");
    }
    assert_eq!(pages, 3, "50, 50 and 20");
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 120, "each operation once");
    // A token is bound to its list: edited, or used with another status, it is refused.
    let token = href
        .rsplit_once("&page=")
        .map(|(_, t)| t.to_owned())
        .unwrap();
    for bad in [
        format!("/ui/list?kind=debt&status=waiting_signature&page={token}x"),
        format!("/ui/list?kind=debt&status=canceled&page={token}"),
    ] {
        let response = reqwest::get(format!("{base}{bad}")).await.unwrap();
        assert_eq!(response.status(), 400, "{bad}");
        let page = response.text().await.unwrap();
        assert!(page.contains("page_token"), "{page}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_are_answered_while_a_fleet_of_live_lists_is_held_open() {
    // The admin listener's defaults: 64 connections, of which live lists may hold 16.
    let server = TestServer::start().await;
    let live = format!("http://{}/ui/live", server.admin);
    // 64 pages open the live list at once, each on a connection of its own, and keep it.
    let opened: Vec<_> = (0..64)
        .map(|_| {
            let live = live.clone();
            tokio::spawn(async move {
                let client = reqwest::Client::builder()
                    .pool_max_idle_per_host(0)
                    .build()
                    .expect("a client");
                let response = client.get(live).send().await.expect("an answer");
                (response.status().as_u16(), response)
            })
        })
        .collect();
    let mut held = Vec::new();
    let mut refused = 0;
    for open in opened {
        let (status, response) = open.await.unwrap();
        match status {
            200 => held.push(response),
            503 => {
                assert!(
                    response.headers().contains_key("retry-after"),
                    "a refused live list says when to come back"
                );
                refused += 1;
            }
            other => panic!("a live list answered {other}"),
        }
    }
    assert_eq!(held.len(), 16, "a quarter of the listener's connections");
    assert_eq!(refused, 48);
    // While they are held, probes are answered, each on a new connection, as a kubelet's.
    for _ in 0..10 {
        for path in ["livez", "readyz"] {
            let answer = reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .build()
                .expect("a client")
                .get(format!("http://{}/{path}", server.admin))
                .timeout(Duration::from_secs(1))
                .send()
                .await
                .unwrap_or_else(|e| panic!("/{path} unanswered with live lists open: {e}"));
            assert_eq!(answer.status(), 200, "/{path}");
        }
    }
    // A closed live list makes room for another (once the server notices, at the latest at
    // the stream's next keep-alive, 15 s).
    drop(held.pop());
    let again = crate::wait::wait_until("a live list opens again", Duration::from_secs(30), || {
        let live = live.clone();
        async move {
            let response = reqwest::get(live).await.ok()?;
            (response.status() == 200).then_some(response)
        }
    })
    .await;
    drop(again);
    drop(held);
    server.stop().await;
}

#[tokio::test]
async fn personal_data_in_facts_details_and_camel_case_fields_is_masked_until_revealed() {
    let server = TestServer::start().await;
    let order = serde_json::json!({
        "transactionId": "3f1c9a52-8d4e-4b7a-9c21-6e5d8f0a1b2c",
        "status": "Denied",
        "msgRetornoPlataforma": format!("Comprador Maria da Silva CPF {CPF} chassi 9BWZZZ377VT004251 divergente"),
        "codigoQiTech": "QI-MASK-1",
        "etapaAtual": "Lien Inclusion",
        "timestamp": "2026-03-10T10:05:00Z",
        "chassi": "9BWZZZ377VT004251",
        "placa": "ABC1D23",
        "nomeComprador": "Maria da Silva",
        "birthDate": "1990-01-01",
    });
    server.post_ok(serde_json::to_vec(&order).unwrap()).await;
    let pix = serde_json::json!({
        "webhook_type": "baas.pix_transfer.outgoing_pix",
        "data": {
            "pix_transfer_key": "pix-mask-1",
            "pix_transfer_status": "rejected",
            "error_code": "PXT000132",
            "error_description": "Recebedor Joao Souza (joao@example.com, 11 98765-4321) recusou",
        },
    });
    server.post_ok(serde_json::to_vec(&pix).unwrap()).await;
    let page = |path: String| {
        let server = &server;
        async move { server.admin_page(&path).await }
    };
    for (key, kind) in [
        ("QI-MASK-1", "vehicle_collateral.order_status"),
        ("pix-mask-1", "baas.pix_transfer.outgoing_pix"),
    ] {
        let html = page(format!("/ui/operations/{key}?kind={kind}")).await;
        for secret in [
            CPF,
            "081.411",
            "Maria",
            "9BWZZZ377VT004251",
            "Joao",
            "joao@example.com",
            "98765",
        ] {
            assert!(!html.contains(secret), "{secret} on {key}'s page");
        }
        assert!(html.contains("personal values are masked"), "{html}");
    }
    let payload =
        page("/ui/operations/QI-MASK-1/webhooks/1?kind=vehicle_collateral.order_status".into())
            .await;
    for secret in ["Maria", "9BWZZZ377VT004251", "ABC1D23", "1990-01-01", CPF] {
        assert!(!payload.contains(secret), "{secret} in the payload view");
    }
    assert!(
        payload.contains("Lien Inclusion"),
        "what happened stays readable"
    );
}

#[tokio::test]
async fn a_guesser_next_door_never_locks_a_colleague_out() {
    let server = TestServer::start_configured(|s| {
        s.grpc_tokens = BearerTokens::from_files_text([TOKEN]);
    })
    .await;
    let login = format!("http://{}/ui/login", server.admin);
    let no_redirects = || {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap()
    };
    let sign_in = |client: reqwest::Client, token: &'static str, cookie: Option<String>| {
        let login = login.clone();
        async move {
            let mut request = client.post(login).form(&[("token", token)]);
            if let Some(cookie) = cookie {
                request = request.header("cookie", cookie);
            }
            request.send().await.unwrap()
        }
    };
    // The colleague signed in yesterday, from this browser: it keeps a device cookie.
    let first = sign_in(no_redirects(), TOKEN, None).await;
    assert_eq!(first.status(), 303);
    let device = first
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with("qistatus_device="))
        .expect("a device cookie")
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    // Someone at the same address guesses, again and again.
    let mut throttled = 0;
    for _ in 0..20 {
        let status = sign_in(no_redirects(), "guess", None).await.status();
        throttled += usize::from(status == 429);
    }
    assert!(
        throttled >= 10,
        "the guesser is throttled ({throttled} of 20)"
    );
    // The colleague signs in every time; a browser that never signed in waits, as the
    // guesser does.
    for _ in 0..5 {
        let again = sign_in(no_redirects(), TOKEN, Some(device.clone())).await;
        assert_eq!(again.status(), 303, "the colleague is let in");
    }
    assert_eq!(sign_in(no_redirects(), TOKEN, None).await.status(), 429);
}

/// The flow page (#37), in the browser: where a kind's operations are now (bars), how long
/// each stage took (a table and a chart by day), how late webhooks came, and each day's
/// cohort; on a clock the test drives, against figures computed here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_flow_page_shows_where_operations_are_and_how_long_their_stages_take() {
    use qistatus::domain::flow::{bucket_of, bucket_value};
    // 2024-03-10 10:00 UTC.
    const T0: i64 = 1_710_064_800_000;
    const MINUTE: i64 = 60_000;
    let at = |ms: i64| {
        chrono::DateTime::from_timestamp_millis(ms)
            .unwrap()
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    };
    // The clock at 12:00: every webhook is received then.
    let clock = qistatus::ManualClock::at_millis(T0 + 120 * MINUTE);
    let server = TestServer::start_configured(|s| s.clock = clock.clock()).await;
    // Four debts disbursed 10, 20, 30 and 40 minutes after creation; one canceled.
    for i in 0..4 {
        let key = format!("flow-{i}");
        server
            .post_ok(webhook("debt", &key, "waiting_signature", &at(T0)))
            .await;
        let disbursed = at(T0 + (i + 1) * 10 * MINUTE);
        server
            .post_ok(webhook("debt", &key, "disbursed", &disbursed))
            .await;
    }
    server
        .post_ok(webhook("debt", "flow-x", "waiting_signature", &at(T0)))
        .await;
    server
        .post_ok(webhook("debt", "flow-x", "canceled", &at(T0 + 5 * MINUTE)))
        .await;

    let browser = Browser::start().await;
    let c = &browser.client;
    c.goto(&format!("http://{}/ui/flow?kind=debt&days=7", server.admin))
        .await
        .unwrap();
    let text = browser.text_once("//h1[text()='Flow']").await;
    // Table cells come apart with tabs: read as words.
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(text.contains("debt · 2024-03-04 to 2024-03-10"), "{text}");

    // Where they are now: a bar per status, as long as its count.
    let bar = |status: &'static str| async move {
        let bar = c
            .find(Locator::Css(&format!(
                "section#now svg g.bar[data-label='{status}']"
            )))
            .await
            .unwrap_or_else(|e| panic!("a bar for {status}: {e}"));
        let value = bar.attr("data-value").await.unwrap().unwrap();
        let rect = bar.find(Locator::Css("rect")).await.unwrap();
        let width: f64 = rect.attr("width").await.unwrap().unwrap().parse().unwrap();
        (value, width)
    };
    let (disbursed, canceled) = (bar("disbursed").await, bar("canceled").await);
    assert_eq!((disbursed.0.as_str(), canceled.0.as_str()), ("4", "1"));
    assert!(
        (disbursed.1 / canceled.1 - 4.0).abs() < 0.01,
        "{disbursed:?} {canceled:?}"
    );

    // How long: creation to disbursement took 10, 20, 30, 40 min: the median is the 2nd
    // (20 min), p90 and p99 the 4th (40 min), each shown as its bucket's value.
    let shown =
        |minutes: i64| qistatus::client::span_text(bucket_value(bucket_of(minutes * MINUTE)));
    let row = format!(
        "waiting_signature disbursed 4 {} {} {}",
        shown(20),
        shown(40),
        shown(40)
    );
    assert!(text.contains(&row), "{row} in\n{text}");
    // A chart by day per stage, and the lag's: one day, so one point per line.
    let charts = c
        .find_all(Locator::Css("section#stages svg.lines"))
        .await
        .unwrap();
    assert_eq!(
        charts.len(),
        2,
        "waiting_signature → disbursed and → canceled"
    );
    let points = charts[0].find_all(Locator::Css("circle")).await.unwrap();
    assert_eq!(points.len(), 2, "p50 and p90 of the one day");
    assert!(
        c.find(Locator::Css("section#lag svg.lines")).await.is_ok(),
        "the lag's chart"
    );
    // Ten webhooks, all received at 12:00.
    assert!(
        text.contains("10 webhooks, received after their event time by"),
        "{text}"
    );

    // The day's cohort: four active, one failed, stopped at waiting_signature.
    assert!(
        text.contains("2024-03-10 5 0 4 0 1 waiting_signature 1"),
        "{text}"
    );
    browser.screenshot("console-flow.png").await;

    // A choice the form does not offer is a 400 that says which are.
    let response = reqwest::get(format!("http://{}/ui/flow?days=9999", server.admin))
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let page = response.text().await.unwrap();
    assert!(
        page.contains("days must be one of [1, 7, 30, 90]"),
        "{page}"
    );
    server.stop().await;
}
