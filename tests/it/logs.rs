//! Personal data (names, CPF/CNPJ numbers, emails, phone numbers) never reaches the logs,
//! at the most verbose level, whatever the webhook's fate.

use crate::process::ServerCommand;

/// The personal values in the seed fixtures.
const PERSONAL: &[&str] = &[
    "Aurora Simone Catarina Nogueira",
    "08141163701",
    "marcos antonio",
    "33205493087",
    "75305593972",
    "teste@teste.com",
    "Joao Ninguem",
    "53441060091",
    "joao.ninguem@yopmail.com",
    "Sample Signer",
    "Sample Legal Person",
    "Sample Natural Person",
    "sample@gmail.com",
    "50727483161",
    "28001200",
    "34987654321",
];

/// The seed documents' examples (`000` to `004`), which carry the personal data above.
fn fixtures() -> Vec<Vec<u8>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().as_ref() < "005")
        })
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|p| std::fs::read(p).unwrap())
        .collect()
}

#[tokio::test]
async fn no_personal_data_in_the_logs() {
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("server.log");
    let server = ServerCommand::new(&dir.path().join("data"))
        .log("trace")
        .stderr_to(&log_path)
        .start()
        .await;
    let client = reqwest::Client::new();
    let url = format!("http://{}/webhooks", server.http);
    let grpc = server.grpc;

    let mut keys = Vec::new();
    for body in fixtures() {
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        keys.push(
            value["key"]
                .as_str()
                .or(value["debt_key"].as_str())
                .unwrap()
                .to_owned(),
        );
        // Stored, then a duplicate.
        for _ in 0..2 {
            let r = client.post(&url).body(body.clone()).send().await.unwrap();
            assert_eq!(r.status(), 200);
        }
        // Quarantined: the same personal data with an unreadable key.
        let mut unreadable = value.clone();
        unreadable["key"] = 12345.into();
        // An SCR query is named by `data.scr_key` before `key` (QI's SCR page).
        if unreadable["data"]["scr_key"].is_string() {
            unreadable["data"]["scr_key"] = 12345.into();
        }
        let r = client.post(&url).json(&unreadable).send().await.unwrap();
        assert_eq!(r.status(), 202);
        // Refused: the same personal data, truncated.
        let r = client
            .post(&url)
            .body(body[..body.len() / 2].to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        // Quarantined: a status with a look-alike character.
        let mut odd = value.clone();
        odd["status"] = "dіsbursed".into();
        let r = client.post(&url).json(&odd).send().await.unwrap();
        assert_eq!(r.status(), 202);
    }
    let mut grpc_client = qistatus::client::Client::connect(&format!("http://{grpc}"))
        .await
        .unwrap();
    for key in &keys {
        grpc_client.get(key, None).await.ok();
    }

    assert!(server.terminate().await.success());

    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(log.contains("webhook stored"), "the log is being captured");
    assert!(log.contains("TRACE"), "at the most verbose level");
    assert!(
        log.contains("webhook quarantined"),
        "quarantines are logged"
    );
    for value in PERSONAL {
        assert!(
            !log.contains(value),
            "personal value {value:?} found in the logs"
        );
    }
}
