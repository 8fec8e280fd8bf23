//! Only QI Tech gets in, only token holders read, and TLS works on both listeners.

use std::time::Duration;

use crate::test_server::{TestServer, fixture};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use md5::Digest;
use p521::ecdsa::SigningKey;
use p521::ecdsa::signature::Signer;
use p521::pkcs8::{EncodePublicKey, LineEnding};
use qistatus::BearerTokens;
use qistatus::WebhookVerifier;
use qistatus::pb;
use qistatus::{Settings, TlsIdentity};
use tonic::Code;

fn new_key() -> (SigningKey, String) {
    let key = SigningKey::random(&mut p521::elliptic_curve::rand_core::OsRng);
    let verifying = p521::ecdsa::VerifyingKey::from(&key);
    let public = p521::PublicKey::from_affine(*verifying.as_affine()).unwrap();
    let pem = public.to_public_key_pem(LineEnding::LF).unwrap();
    (key, pem)
}

/// An ES512 JWT over `claims`, signed with `key`.
fn jwt(key: &SigningKey, claims: &serde_json::Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"ES512","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap());
    let signed = format!("{header}.{payload}");
    let signature: p521::ecdsa::Signature = key.sign(signed.as_bytes());
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()))
}

fn claims(
    body: &[u8],
    timestamp: chrono::DateTime<chrono::Utc>,
    method: &str,
    uri: &str,
) -> serde_json::Value {
    serde_json::json!({
        "payload_md5": hex::encode(md5::Md5::digest(body)),
        "timestamp": timestamp.to_rfc3339(),
        "method": method,
        "uri": uri,
    })
}

async fn start_verified(verifier: WebhookVerifier) -> TestServer {
    TestServer::start_configured(|s| s.webhook_verifier = verifier).await
}

async fn post_with(
    server: &TestServer,
    body: Vec<u8>,
    headers: &[(&str, String)],
) -> (u16, serde_json::Value) {
    let mut request = reqwest::Client::new()
        .post(server.webhooks_url())
        .body(body);
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

#[tokio::test]
async fn qitech_signed_requests_are_verified_and_failures_are_401_with_the_reason() {
    let (old_key, old_pem) = new_key();
    let (key, pem) = new_key();
    let (stranger, _) = new_key();
    let verifier = WebhookVerifier::new(
        &[old_pem, pem],
        vec!["client-key-1".into()],
        &[],
        Duration::from_secs(300),
    )
    .unwrap();
    let server = start_verified(verifier).await;
    let body = fixture("004_debt_disbursed.json");
    let now = chrono::Utc::now();
    let headers = |token: String, client: &str| {
        vec![
            ("AUTHORIZATION", token),
            ("API-CLIENT-KEY", client.to_owned()),
        ]
    };
    let good = claims(&body, now, "POST", "/webhooks");

    type Headers = Vec<(&'static str, String)>;
    let refused: Vec<(&str, Vec<u8>, Headers, &str)> = vec![
        ("no signature", body.clone(), vec![], "missing signature"),
        (
            "signed by someone else",
            body.clone(),
            headers(jwt(&stranger, &good), "client-key-1"),
            "bad signature",
        ),
        (
            "tampered body",
            fixture("004_debt_settled.json"),
            headers(jwt(&key, &good), "client-key-1"),
            "body hash mismatch",
        ),
        (
            "stale timestamp",
            body.clone(),
            headers(
                jwt(
                    &key,
                    &claims(
                        &body,
                        now - chrono::Duration::minutes(10),
                        "POST",
                        "/webhooks",
                    ),
                ),
                "client-key-1",
            ),
            "stale timestamp",
        ),
        (
            "future timestamp",
            body.clone(),
            headers(
                jwt(
                    &key,
                    &claims(
                        &body,
                        now + chrono::Duration::minutes(10),
                        "POST",
                        "/webhooks",
                    ),
                ),
                "client-key-1",
            ),
            "stale timestamp",
        ),
        (
            "other method",
            body.clone(),
            headers(
                jwt(&key, &claims(&body, now, "PUT", "/webhooks")),
                "client-key-1",
            ),
            "signed method",
        ),
        (
            "other path",
            body.clone(),
            headers(
                jwt(&key, &claims(&body, now, "POST", "/other")),
                "client-key-1",
            ),
            "signed uri",
        ),
        (
            "unknown client key",
            body.clone(),
            headers(jwt(&key, &good), "client-key-2"),
            "unknown client key",
        ),
        (
            "no client key",
            body.clone(),
            vec![("AUTHORIZATION", jwt(&key, &good))],
            "unknown client key",
        ),
        (
            "not a JWT",
            body.clone(),
            headers("abc".into(), "client-key-1"),
            "malformed",
        ),
        (
            "alg none",
            body.clone(),
            headers(
                format!(
                    "{}.{}.",
                    URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#),
                    URL_SAFE_NO_PAD.encode(serde_json::to_vec(&good).unwrap())
                ),
                "client-key-1",
            ),
            "ES512",
        ),
    ];
    for (what, body, headers, reason) in refused {
        let (code, answer) = post_with(&server, body, &headers).await;
        assert_eq!(code, 401, "{what}: {answer}");
        let message = answer["error"].as_str().unwrap();
        assert!(message.contains(reason), "{what}: {message}");
    }
    let err = server
        .get("871059bd-4014-41ad-82b4-28275ff0e67b", "")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "nothing refused was stored");

    // Signed with either configured key (rotation), with an absolute uri, with "Bearer ".
    let (code, answer) = post_with(
        &server,
        body.clone(),
        &headers(jwt(&key, &good), "client-key-1"),
    )
    .await;
    assert_eq!(
        (code, answer["result"].as_str()),
        (200, Some("accepted")),
        "{answer}"
    );
    let settled = fixture("004_debt_settled.json");
    let absolute = claims(
        &settled,
        now,
        "post",
        "https://qistatus.example.com/webhooks",
    );
    let (code, answer) = post_with(
        &server,
        settled,
        &headers(
            format!("Bearer {}", jwt(&old_key, &absolute)),
            "client-key-1",
        ),
    )
    .await;
    assert_eq!(code, 200, "{answer}");
    server.stop().await;
}

#[tokio::test]
async fn qitech_encoded_bodies_are_verified_and_decoded() {
    let (key, pem) = new_key();
    let (stranger, _) = new_key();
    let server = start_verified(
        WebhookVerifier::new(&[pem], vec![], &[], Duration::from_secs(300)).unwrap(),
    )
    .await;
    let webhook: serde_json::Value =
        serde_json::from_slice(&fixture("004_debt_canceled.json")).unwrap();

    let forged = serde_json::json!({"encoded_body": jwt(&stranger, &webhook)});
    let (code, answer) = post_with(&server, serde_json::to_vec(&forged).unwrap(), &[]).await;
    assert_eq!(code, 401, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("bad signature"));

    let encoded = serde_json::json!({"encoded_body": jwt(&key, &webhook)});
    let (code, answer) = post_with(&server, serde_json::to_vec(&encoded).unwrap(), &[]).await;
    assert_eq!(code, 200, "{answer}");
    let op = server
        .get("27a099df-4688-43cb-87fa-515b1cf343a5", "debt")
        .await
        .unwrap();
    assert_eq!(op.status, "canceled");
    assert_eq!(op.detail, "manual: Operacao cancelada manualmente");
    server.stop().await;
}

#[tokio::test]
async fn encoded_bodies_need_the_client_key_too_and_a_replay_is_only_a_duplicate() {
    let (key, pem) = new_key();
    let server = start_verified(
        WebhookVerifier::new(
            &[pem],
            vec!["client-key-1".into()],
            &[],
            Duration::from_secs(300),
        )
        .unwrap(),
    )
    .await;
    let webhook: serde_json::Value =
        serde_json::from_slice(&fixture("004_debt_canceled.json")).unwrap();
    let encoded =
        serde_json::to_vec(&serde_json::json!({"encoded_body": jwt(&key, &webhook)})).unwrap();

    for headers in [vec![], vec![("api-client-key", "someone-else".to_owned())]] {
        let (code, answer) = post_with(&server, encoded.clone(), &headers).await;
        assert_eq!(code, 401, "{answer}");
        assert!(
            answer["error"].as_str().unwrap().contains("API-CLIENT-KEY"),
            "{answer}"
        );
    }
    let client_key = [("api-client-key", "client-key-1".to_owned())];
    let (code, answer) = post_with(&server, encoded.clone(), &client_key).await;
    assert_eq!(
        (code, answer["result"].as_str()),
        (200, Some("accepted")),
        "{answer}"
    );
    // The scheme signs no timestamp: a captured request sent again is the same webhook.
    let (code, answer) = post_with(&server, encoded, &client_key).await;
    assert_eq!(
        (code, answer["result"].as_str()),
        (200, Some("duplicate")),
        "{answer}"
    );
    server.stop().await;
}

/// Computed here, independently of `qistatus::standard_webhooks`, so that one mistake in
/// both signing and verifying cannot pass.
fn standard_signature(secret: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).unwrap();
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

#[tokio::test]
async fn standard_webhooks_hmac_is_verified_with_any_of_several_secrets() {
    let secret_a = b"first secret bytes".to_vec();
    let secret_b = b"second secret bytes".to_vec();
    let secrets = [
        format!("whsec_{}", STANDARD.encode(&secret_a)),
        format!("whsec_{}", STANDARD.encode(&secret_b)),
    ];
    let server = start_verified(
        WebhookVerifier::new(&[], vec![], &secrets, Duration::from_secs(300)).unwrap(),
    )
    .await;
    let body = fixture("001_account_opened.json");
    let now = chrono::Utc::now().timestamp();
    let headers = |id: &str, ts: i64, sig: String| {
        vec![
            ("webhook-id", id.to_owned()),
            ("webhook-timestamp", ts.to_string()),
            ("webhook-signature", sig),
        ]
    };

    let wrong = standard_signature(b"not configured", "msg_1", now, &body);
    for (what, headers, reason) in [
        (
            "wrong secret",
            headers("msg_1", now, wrong.clone()),
            "bad signature",
        ),
        (
            "other id",
            headers(
                "msg_2",
                now,
                standard_signature(&secret_a, "msg_1", now, &body),
            ),
            "bad signature",
        ),
        (
            "stale",
            headers(
                "msg_1",
                now - 3600,
                standard_signature(&secret_a, "msg_1", now - 3600, &body),
            ),
            "stale timestamp",
        ),
        ("no v1", headers("msg_1", now, "v2,abc".into()), "malformed"),
        (
            "no id",
            vec![
                ("webhook-timestamp", now.to_string()),
                ("webhook-signature", wrong.clone()),
            ],
            "webhook-id",
        ),
    ] {
        let (code, answer) = post_with(&server, body.clone(), &headers).await;
        assert_eq!(code, 401, "{what}: {answer}");
        assert!(
            answer["error"].as_str().unwrap().contains(reason),
            "{what}: {answer}"
        );
    }
    // Several signatures in one header (secret rotation at the sender): one valid is enough.
    let both = format!(
        "{wrong} {}",
        standard_signature(&secret_b, "msg_1", now, &body)
    );
    let (code, answer) = post_with(&server, body, &headers("msg_1", now, both)).await;
    assert_eq!(code, 200, "{answer}");
    server.stop().await;
}

#[tokio::test]
async fn grpc_needs_a_bearer_token_but_health_stays_open() {
    let tokens = BearerTokens::from_files_text(["# readers\nreader-token\n"]);
    let server = TestServer::start_configured(|s| s.grpc_tokens = tokens).await;
    server.post_ok(fixture("004_debt_disbursed.json")).await;
    let key = "871059bd-4014-41ad-82b4-28275ff0e67b";

    let err = server.get(key, "").await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(
        err.message().contains("missing bearer token"),
        "{}",
        err.message()
    );

    let address = format!("http://{}", server.grpc);
    let with_token = |token: &str| qistatus::client::ConnectOptions {
        token: Some(token.into()),
        ca_pem: None,
        timeout: None,
    };
    let mut wrong = qistatus::client::Client::connect_with(&address, with_token("guess"))
        .await
        .unwrap();
    assert_eq!(
        wrong.get(key, None).await.unwrap_err().code(),
        Some(Code::Unauthenticated)
    );
    let mut right = qistatus::client::Client::connect_with(&address, with_token("reader-token"))
        .await
        .unwrap();
    assert_eq!(right.get(key, None).await.unwrap().status, "disbursed");

    let channel = tonic::transport::Endpoint::from_shared(address.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let health = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await;
    assert!(health.is_ok(), "health needs no token: {health:?}");

    // The scheme name is case-insensitive, as HTTP says.
    for scheme in ["bearer", "BEARER"] {
        let mut request = tonic::Request::new(pb::GetOperationRequest {
            key: key.into(),
            ..Default::default()
        });
        request.metadata_mut().insert(
            "authorization",
            format!("{scheme} reader-token").parse().unwrap(),
        );
        let answer = server.grpc().await.get_operation(request).await;
        assert!(answer.is_ok(), "{scheme}: {answer:?}");
    }

    let cli = tokio::process::Command::new(crate::process::CLI_BIN)
        .args(["--server", &address, "get", key])
        .env("QISTATUS_TOKEN", "reader-token")
        .output()
        .await
        .unwrap();
    assert!(
        cli.status.success(),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    server.stop().await;
}

#[tokio::test]
async fn tls_serves_both_listeners() {
    let certified =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    let cert_pem = certified.cert.pem();
    let dir = tempfile::tempdir().unwrap();
    let mut settings = Settings::new(dir.path());
    settings.tls = Some(TlsIdentity {
        cert_pem: cert_pem.clone().into_bytes(),
        key_pem: certified.signing_key.serialize_pem().into_bytes(),
    });
    let server = TestServer::start_with(settings).await;

    let https = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert_pem.as_bytes()).unwrap())
        .build()
        .unwrap();
    let answer = https
        .post(format!("https://{}/webhooks", server.http))
        .body(fixture("002_scr_rejected.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    // Plain HTTP is not served on a TLS listener.
    assert!(
        reqwest::Client::new()
            .post(server.webhooks_url())
            .body("{}")
            .send()
            .await
            .is_err()
    );

    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &cert_pem).unwrap();
    let cli = tokio::process::Command::new(crate::process::CLI_BIN)
        .args(["--server", &format!("https://{}", server.grpc), "--ca"])
        .arg(&ca)
        .args(["get", "3c1e5d2a-7b4f-4e6a-9c8d-000000000007", "--json"])
        .output()
        .await
        .unwrap();
    assert!(
        cli.status.success(),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    let op: serde_json::Value = serde_json::from_slice(&cli.stdout).unwrap();
    assert_eq!(op["status"], "rejected");

    let options = qistatus::client::ConnectOptions {
        token: None,
        ca_pem: Some(cert_pem.into_bytes()),
        timeout: None,
    };
    let mut client =
        qistatus::client::Client::connect_with(&format!("https://{}", server.grpc), options)
            .await
            .unwrap();
    let listed = client
        .raw()
        .list_by_status(pb::ListByStatusRequest {
            statuses: vec!["rejected".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.operations.len(), 1);
    server.stop().await;
}

#[tokio::test]
async fn the_binary_refuses_to_expose_an_unauthenticated_server() {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_qistatus-server"))
        .args(["--data-dir"])
        .arg(tempfile::tempdir().unwrap().path())
        .args(["--http-addr", "0.0.0.0:0", "--grpc-addr", "127.0.0.1:0"])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refusing to start") && err.contains("--allow-unauthenticated"),
        "{err}"
    );
}

/// An HS256 JWT of `claims` under `key`, computed here independently of the server.
fn hs256(key: &[u8], claims: &serde_json::Value) -> String {
    use hmac::Mac;
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap());
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
    mac.update(format!("{header}.{payload}").as_bytes());
    let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{header}.{payload}.{signature}")
}

#[tokio::test]
async fn qi_dtvm_signatures_are_verified_with_any_of_several_shared_keys() {
    let verifier = WebhookVerifier::new(&[], vec![], &[], Duration::from_secs(300))
        .unwrap()
        .with_dtvm_keys(&["old-dtvm-key".into(), "new-dtvm-key".into()])
        .unwrap();
    let server = start_verified(verifier).await;
    let now = chrono::Utc::now().timestamp();
    let body = fixture("008_dtvm_issuer_approved.json");
    let issuer = "18c4d162-1b1b-4c3a-b7a7-5f1200723c43";
    let kind = "issuer_management.issuer_status_change";
    let claims = serde_json::json!({"iat": now, "exp": now + 60});
    let a_year_ago = now - 365 * 24 * 3600;
    let debt = crate::test_server::webhook("debt", "dtvm-debt", "settled", "2024-01-01 10:00:00");

    let (code, answer) = post_with(&server, body.clone(), &[]).await;
    assert_eq!(code, 401, "{answer}");
    let key = b"new-dtvm-key";
    for (token, body, reason) in [
        (hs256(b"someone-else", &claims), &body, "bad signature"),
        (
            hs256(key, &serde_json::json!({"iat": now, "exp": now - 3600})),
            &body,
            "stale",
        ),
        ("not.a.jwt.at.all".to_owned(), &body, "malformed"),
        (
            format!(
                "{}.{}.",
                URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#),
                URL_SAFE_NO_PAD.encode(b"{}")
            ),
            &body,
            "not HS256",
        ),
        // A valid token says nothing of when it was signed: good for ever once captured.
        (hs256(key, &serde_json::json!({})), &body, "no `iat`"),
        // Times in any JSON form are times.
        (
            hs256(key, &serde_json::json!({"iat": 1.7e9})),
            &body,
            "stale",
        ),
        (
            hs256(
                key,
                &serde_json::json!({"iat": now, "exp": a_year_ago as f64}),
            ),
            &body,
            "stale",
        ),
        (
            hs256(
                key,
                &serde_json::json!({"iat": now, "exp": a_year_ago.to_string()}),
            ),
            &body,
            "stale",
        ),
        (
            hs256(key, &serde_json::json!({"iat": "soon"})),
            &body,
            "not a time",
        ),
        // QI DTVM's signature binds no body: it cannot vouch for a debt's `settled`.
        (
            hs256(key, &claims),
            &debt,
            "vouches only for QI DTVM's webhooks",
        ),
    ] {
        let (code, answer) = post_with(&server, body.clone(), &[("signature", token)]).await;
        assert_eq!(code, 401, "{reason}: {answer}");
        assert!(
            answer["error"].as_str().unwrap().contains(reason),
            "{reason}: {answer}"
        );
    }
    for (key, kind) in [(issuer, kind), ("dtvm-debt", "debt")] {
        let err = server.get(key, kind).await.unwrap_err();
        assert_eq!(err.code(), Code::NotFound, "nothing refused was stored");
    }

    for key in ["old-dtvm-key", "new-dtvm-key"] {
        // `iat` as a float is a time too.
        let claims = serde_json::json!({"iat": now as f64, "exp": now + 60});
        let (code, answer) = post_with(
            &server,
            body.clone(),
            &[("SIGNATURE", hs256(key.as_bytes(), &claims))],
        )
        .await;
        assert_eq!(code, 200, "{key}: {answer}");
    }
    assert_eq!(server.get(issuer, kind).await.unwrap().status, "approved");
    server.stop().await;
}

/// A QI DTVM sender that never sends `iat`: accepted when the operator says so
/// (`--qitech-dtvm-without-iat`); refused otherwise (above).
#[tokio::test]
async fn dtvm_tokens_without_iat_are_accepted_when_configured() {
    let verifier = WebhookVerifier::new(&[], vec![], &[], Duration::from_secs(300))
        .unwrap()
        .with_dtvm_keys(&["k".into()])
        .unwrap()
        .with_dtvm_tokens_without_iat(true);
    let server = start_verified(verifier).await;
    let token = hs256(b"k", &serde_json::json!({}));
    let (code, answer) = post_with(
        &server,
        fixture("008_dtvm_issuer_approved.json"),
        &[("signature", token)],
    )
    .await;
    assert_eq!(code, 200, "{answer}");
    server.stop().await;
}

/// The payload of a compact ES512 JWT, if `public` verifies its signature.
fn verified_payload(token: &str, public: &p521::ecdsa::VerifyingKey) -> serde_json::Value {
    use p521::ecdsa::signature::Verifier;
    let (signed, signature) = token.rsplit_once('.').expect("three parts");
    let signature =
        p521::ecdsa::Signature::from_slice(&URL_SAFE_NO_PAD.decode(signature).unwrap()).unwrap();
    public
        .verify(signed.as_bytes(), &signature)
        .expect("signed with the configured key");
    let payload = signed.split_once('.').unwrap().1;
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

#[tokio::test]
async fn acknowledgements_are_signed_when_a_response_key_is_configured() {
    use p521::pkcs8::EncodePrivateKey;
    let key = SigningKey::random(&mut p521::elliptic_curve::rand_core::OsRng);
    let public = p521::ecdsa::VerifyingKey::from(&key);
    let pem = p521::SecretKey::from_bytes(&key.to_bytes())
        .unwrap()
        .to_pkcs8_pem(LineEnding::LF)
        .unwrap();
    let signer = qistatus::ResponseSigner::from_pem(&pem, Some("our-client-key".into())).unwrap();
    let server = TestServer::start_configured(|s| s.response_signer = Some(signer)).await;
    let body = fixture("000_debt_1_waiting_signature.json");
    for expected in ["accepted", "duplicate"] {
        let response = reqwest::Client::new()
            .post(server.webhooks_url())
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200);
        let headers = response.headers().clone();
        let sent = response.bytes().await.unwrap();
        assert_eq!(headers["api-client-key"], "our-client-key");
        // The Authorization JWT binds the body sent, the method and the path.
        let claims = verified_payload(headers["authorization"].to_str().unwrap(), &public);
        assert_eq!(claims["payload_md5"], hex::encode(md5::Md5::digest(&sent)));
        assert_eq!(
            (&claims["method"], &claims["uri"]),
            (&"POST".into(), &"/webhooks".into())
        );
        let signed_at =
            chrono::DateTime::parse_from_rfc3339(claims["timestamp"].as_str().unwrap()).unwrap();
        assert!((chrono::Utc::now().timestamp() - signed_at.timestamp()).abs() < 60);
        // The body's encoded_body is the usual answer, signed.
        let sent: serde_json::Value = serde_json::from_slice(&sent).unwrap();
        let answer = verified_payload(sent["encoded_body"].as_str().unwrap(), &public);
        assert_eq!(answer["result"], expected, "{answer}");
        assert_eq!(answer["sequence"], 1);
    }
    // Refusals are plain: QI Tech retries them either way.
    let (code, answer) = server.post(b"not json".to_vec()).await;
    assert_eq!(code, 400);
    assert!(answer["error"].is_string(), "{answer}");
    server.stop().await;
}

#[test]
fn a_response_key_that_is_not_a_p521_private_key_is_refused_by_name() {
    let err = qistatus::ResponseSigner::from_pem(
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        None,
    )
    .unwrap_err();
    assert!(err.to_string().contains("--response-signing-key"), "{err}");
}

/// The admin listener's door: TLS when the server has a certificate (and `Secure` cookies),
/// state changes only with a token or session and never from another site's page, reloads
/// rate-limited, and sign-in attempts throttled per address without one holder signing
/// the others out.
#[tokio::test]
async fn the_admin_listener_is_closed_to_other_sites_guessers_and_plain_http() {
    let certified =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    let cert_pem = certified.cert.pem();
    let dir = tempfile::tempdir().unwrap();
    let mut settings = Settings::new(dir.path());
    settings.tls = Some(TlsIdentity {
        cert_pem: cert_pem.clone().into_bytes(),
        key_pem: certified.signing_key.serialize_pem().into_bytes(),
    });
    settings.grpc_tokens = BearerTokens::from_files_text(["admin-token\nother-token\n"]);
    let server = TestServer::start_with(settings).await;
    let https = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert_pem.as_bytes()).unwrap())
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let admin = |path: &str| format!("https://{}{path}", server.admin);

    // TLS, and nothing in clear.
    let live = https.get(admin("/livez")).send().await.unwrap();
    assert_eq!(live.status(), 200);
    assert!(
        reqwest::Client::new()
            .get(format!("http://{}/livez", server.admin))
            .send()
            .await
            .is_err(),
        "plain HTTP is not served on a TLS admin listener"
    );

    // Reload: a token (or a session) first.
    let reload = || https.post(admin("/catalog/reload"));
    let answer = reload().send().await.unwrap();
    assert_eq!(answer.status(), 401);
    assert!(answer.text().await.unwrap().contains("bearer token"));
    // From another site's page, even with a token.
    for (name, value) in [
        ("origin", "https://evil.example"),
        ("sec-fetch-site", "cross-site"),
    ] {
        let answer = reload()
            .bearer_auth("admin-token")
            .header(name, value)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 403, "{name}: {value}");
    }
    let answer = reload().bearer_auth("admin-token").send().await.unwrap();
    assert_eq!(answer.status(), 200);
    // And not again at once.
    let answer = reload().bearer_auth("admin-token").send().await.unwrap();
    assert_eq!(answer.status(), 429);
    assert!(answer.headers().contains_key("retry-after"));

    // Sign-in: a session cookie marked Secure.
    let sign_in = |token: &str| {
        https
            .post(admin("/ui/login"))
            .form(&[("token", token.to_owned())])
            .send()
    };
    let answer = sign_in("admin-token").await.unwrap();
    assert_eq!(answer.status(), 303);
    let cookie = answer.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(cookie.contains("; Secure"), "{cookie}");
    // One holder signing in again and again signs out only its own oldest sessions.
    let other = sign_in("other-token").await.unwrap().headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_owned();
    let mut latest = String::new();
    for _ in 0..40 {
        let answer = sign_in("admin-token").await.unwrap();
        assert_eq!(answer.status(), 303);
        latest = answer.headers()["set-cookie"].to_str().unwrap().to_owned();
    }
    let first = https
        .get(admin("/ui/"))
        .header("cookie", cookie.split(';').next().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 303, "its own oldest session was signed out");
    let other = other.split(';').next().unwrap();
    let page = https
        .get(admin("/ui/"))
        .header("cookie", other)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200, "the other holder is still signed in");
    // Wrong tokens: a few are answered, then the address waits.
    let mut codes = Vec::new();
    for i in 0..8 {
        codes.push(
            sign_in(&format!("guess-{i}"))
                .await
                .unwrap()
                .status()
                .as_u16(),
        );
    }
    assert_eq!(&codes[..5], &[401; 5], "{codes:?}");
    assert!(codes[5..].iter().all(|c| *c == 429), "{codes:?}");
    let session = latest.split(';').next().unwrap();
    // A form that changes something without the session's form token: refused, even
    // same-site (a stale page, or a page elsewhere that got the cookie sent).
    for (path, form) in [
        (
            "/ui/operations/x/webhooks/1/reveal",
            vec![("csrf", "forged")],
        ),
        ("/ui/logout", vec![]),
    ] {
        let answer = https
            .post(admin(path))
            .header("cookie", session)
            .form(&form)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 403, "{path}");
    }
    // The other holder's session is still good after all that.
    let page = https
        .get(admin("/ui/"))
        .header("cookie", other)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
}

/// QI's webhook-validation guide also shows claims `{"signature": "METHOD\nURI\nMD5"}`:
/// verified the same way (body hash, method, path, client key); it signs no time, so a
/// replay is only a duplicate.
#[tokio::test]
async fn the_compact_signature_claim_is_verified_too() {
    let (key, pem) = new_key();
    let verifier = WebhookVerifier::new(
        &[pem],
        vec!["client-key-1".into()],
        &[],
        Duration::from_secs(300),
    )
    .unwrap();
    let server = start_verified(verifier).await;
    let body = fixture("004_debt_disbursed.json");
    let md5 = hex::encode(md5::Md5::digest(&body));
    let compact = |method: &str, uri: &str, md5: &str| {
        let token = jwt(
            &key,
            &serde_json::json!({"signature": format!("{method}\n{uri}\n{md5}")}),
        );
        vec![
            ("AUTHORIZATION", token),
            ("API-CLIENT-KEY", "client-key-1".to_owned()),
        ]
    };
    for (headers, reason) in [
        (
            compact("POST", "/webhooks", &"0".repeat(32)),
            "body hash mismatch",
        ),
        (compact("PUT", "/webhooks", &md5), "signed method"),
        (compact("POST", "/elsewhere", &md5), "signed uri"),
        (
            vec![(
                "AUTHORIZATION",
                jwt(&key, &serde_json::json!({"signature": "POST /webhooks"})),
            )],
            "METHOD",
        ),
    ] {
        let (code, answer) = post_with(&server, body.clone(), &headers).await;
        assert_eq!(code, 401, "{reason}: {answer}");
        assert!(
            answer["error"].as_str().unwrap().contains(reason),
            "{reason}: {answer}"
        );
    }
    let good = compact("POST", "/webhooks", &md5);
    let (code, answer) = post_with(&server, body.clone(), &good).await;
    assert_eq!(
        (code, answer["result"].as_str()),
        (200, Some("accepted")),
        "{answer}"
    );
    let (code, answer) = post_with(&server, body, &good).await;
    assert_eq!(
        (code, answer["result"].as_str()),
        (200, Some("duplicate")),
        "{answer}"
    );
    server.stop().await;
}

/// QI CaaS's hex HMAC-SHA1 of URL + method + body under `key`.
fn caas_signature(key: &[u8], url: &str, method: &str, body: &[u8]) -> String {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(key).unwrap();
    mac.update(url.as_bytes());
    mac.update(method.as_bytes());
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// QI CaaS's card-order fraud webhook: sent with PUT, signed with HMAC-SHA1 of the URL QI
/// was given, the method and the body. Each is bound: another body, method, URL or key is
/// `401`; a QI DTVM token in the same header is still
/// read as one; a replay is a duplicate.
#[tokio::test]
async fn qi_caas_put_webhooks_are_verified_by_their_hmac_sha1() {
    let verifier = WebhookVerifier::new(&[], vec![], &[], Duration::from_secs(300))
        .unwrap()
        .with_dtvm_keys(&["dtvm-key".into()])
        .unwrap()
        .with_caas_keys(
            &["old-caas-key".into(), "caas-key".into()],
            Some("https://hooks.example.com/".into()),
        )
        .unwrap();
    let server = start_verified(verifier).await;
    let body = fixture("009_card_order_fraud_approved.json");
    let url = server.webhooks_url();
    let signed_url = "https://hooks.example.com/webhooks";
    let put = |body: Vec<u8>, url: String, method: reqwest::Method, signature: String| async move {
        let response = reqwest::Client::new()
            .request(method, url)
            .header("Signature", signature)
            .body(body)
            .send()
            .await
            .unwrap();
        let code = response.status().as_u16();
        (code, response.json::<serde_json::Value>().await.unwrap())
    };
    let good = caas_signature(b"caas-key", signed_url, "PUT", &body);

    // Another body, method, path or key: refused, and nothing stored.
    let other_body = br#"{"order_id": "123456", "fraud_status": "automatically_rejected"}"#;
    let (code, answer) = put(
        other_body.to_vec(),
        url.clone(),
        reqwest::Method::PUT,
        good.clone(),
    )
    .await;
    assert_eq!(
        (code, answer["error"].as_str()),
        (401, Some("bad signature"))
    );
    let (code, _) = put(
        body.clone(),
        url.clone(),
        reqwest::Method::POST,
        good.clone(),
    )
    .await;
    assert_eq!(code, 401, "the method is signed");
    let elsewhere = caas_signature(
        b"caas-key",
        "https://other.example.com/webhooks",
        "PUT",
        &body,
    );
    let (code, _) = put(body.clone(), url.clone(), reqwest::Method::PUT, elsewhere).await;
    assert_eq!(code, 401, "the URL is signed");
    let stranger = caas_signature(b"stranger", signed_url, "PUT", &body);
    let (code, _) = put(body.clone(), url.clone(), reqwest::Method::PUT, stranger).await;
    assert_eq!(code, 401);
    assert!(
        server
            .get("123456", "caas.card_order.fraud_status")
            .await
            .is_err()
    );

    // The signed one, under either key of the rotation; then its replay.
    let (code, answer) = put(body.clone(), url.clone(), reqwest::Method::PUT, good).await;
    assert_eq!(
        (code, answer["result"].as_str()),
        (200, Some("accepted")),
        "{answer}"
    );
    let old = caas_signature(b"old-caas-key", signed_url, "PUT", &body);
    let (code, answer) = put(body.clone(), url.clone(), reqwest::Method::PUT, old).await;
    assert_eq!(
        (code, answer["result"].as_str()),
        (200, Some("duplicate")),
        "{answer}"
    );
    let op = server
        .get("123456", "caas.card_order.fraud_status")
        .await
        .unwrap();
    assert_eq!(op.status, "automatically_approved");

    // A QI DTVM token in the same header is still a QI DTVM token.
    let token = hs256(
        b"dtvm-key",
        &serde_json::json!({"iat": chrono::Utc::now().timestamp()}),
    );
    let (code, answer) = post_with(
        &server,
        fixture("008_dtvm_issuer_approved.json"),
        &[("signature", token)],
    )
    .await;
    assert_eq!(code, 200, "{answer}");
    server.stop().await;
}

#[tokio::test]
async fn a_qi_caas_signature_vouches_only_for_qi_caas_kinds_and_works_over_http2() {
    // No base URL: the signed URL is `https://` and the request's host, which HTTP/2 carries
    // in `:authority`.
    let verifier = WebhookVerifier::new(&[], vec![], &[], Duration::from_secs(300))
        .unwrap()
        .with_caas_keys(&["caas-key".into()], None)
        .unwrap();
    let server = start_verified(verifier).await;
    let signed_url = format!("https://{}/webhooks", server.http);
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let put = |body: Vec<u8>| {
        let signature = caas_signature(b"caas-key", &signed_url, "PUT", &body);
        h2.put(server.webhooks_url())
            .header("Signature", signature)
            .body(body)
            .send()
    };
    let response = put(fixture("009_card_order_fraud_approved.json"))
        .await
        .unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    let (code, answer) = (
        response.status().as_u16(),
        response.json::<serde_json::Value>().await.unwrap(),
    );
    assert_eq!(
        (code, answer["result"].as_str()),
        (200, Some("accepted")),
        "{answer}"
    );

    // The same key on a debt: refused, and nothing stored.
    let debt = br#"{"webhook_type": "debt", "key": "caas-debt", "status": "disbursed"}"#;
    let response = put(debt.to_vec()).await.unwrap();
    let (code, answer) = (
        response.status().as_u16(),
        response.json::<serde_json::Value>().await.unwrap(),
    );
    assert_eq!(code, 401, "{answer}");
    let error = answer["error"].as_str().unwrap();
    assert!(
        error.contains("QI CaaS signature vouches only for QI CaaS's webhooks"),
        "{error}"
    );
    assert!(error.contains("`debt`"), "{error}");
    assert!(server.get("caas-debt", "debt").await.is_err());
}

#[tokio::test]
async fn the_console_is_not_exposed_without_tokens_like_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let start = tokio::process::Command::new(env!("CARGO_BIN_EXE_qistatus-server"))
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--http-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0"])
        .args(["--admin-addr", "0.0.0.0:0"])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(20), start)
        .await
        .expect("it refuses at once, rather than serving")
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refusing to start")
            && err.contains("the console on 0.0.0.0:0")
            && err.contains("--grpc-token-file"),
        "{err}"
    );
}

#[tokio::test]
async fn a_page_of_another_site_rebinding_its_name_to_the_admin_listener_gets_nothing() {
    let server =
        TestServer::start_configured(|s| s.admin_hosts = vec!["qistatus.internal".into()]).await;
    server.post_ok(fixture("004_debt_disbursed.json")).await;
    let port = server.admin.port();
    let client = reqwest::Client::new();
    let ask = |method: reqwest::Method, path: &str, host: String| {
        client
            .request(method, format!("http://{}{path}", server.admin))
            .header("host", host)
            .send()
    };
    let page = "/ui/operations/871059bd-4014-41ad-82b4-28275ff0e67b";
    // What a browser sends once attacker.example resolves to this address.
    for (method, path) in [
        (reqwest::Method::GET, page),
        (reqwest::Method::GET, "/metrics"),
        (reqwest::Method::POST, "/catalog/reload"),
    ] {
        let response = ask(
            method.clone(),
            path,
            format!("rebind.attacker.example:{port}"),
        )
        .await
        .unwrap();
        assert_eq!(response.status(), 421, "{method} {path}");
        let text = response.text().await.unwrap();
        assert!(text.contains("--admin-host"), "{text}");
    }
    // Its own names: loopback, IP addresses, and the configured one.
    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        format!("[::1]:{port}"),
        "10.1.2.3".to_owned(),
        format!("QISTATUS.internal:{port}"),
    ] {
        let response = ask(reqwest::Method::GET, page, host.clone()).await.unwrap();
        assert_eq!(response.status(), 200, "{host}");
    }
}
