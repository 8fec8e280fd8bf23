//! Personal data in webhooks (names, CPF/CNPJ numbers, e-mails, phone numbers), masked
//! before a person sees a payload in the console, unless they ask, on the record.
//!
//! Two nets, because QI Tech's payloads are large and their fields grow:
//! - **by field name**, anywhere in the document: the catalog's `personal_fields` patterns
//!   (`*` matches any run; `name`, `*_name`, `document_number`, `email`, `*_email`,
//!   `phone_number`, `address`, ...). A matching field's whole value is masked, objects
//!   included (an `address` object).
//! - **by shape**, in every other string, and in keys: an e-mail address, and any run of
//!   digits and separators (`. - / ( ) +` and single spaces) inside a text, whatever
//!   surrounds it (`CPF:081.411.637-01`), holding 10 to 14 digits: a CPF (11), a CNPJ (14),
//!   a Brazilian phone number (10 to 13 with the country code). A run that starts as a date
//!   (`2024-01-01`) is kept, and so is a longer one (a 44-digit barcode);
//! - **numbers** of 10 to 14 digits that are a valid CPF or CNPJ once zero-padded (their
//!   check digits hold): a CPF stored as a number has lost its leading zeros and its
//!   formatting, not its check digits.
//!
//! Field names are matched as written and in snake case (`nomeComprador` is also
//! `nome_comprador`, `birthDate` is `birth_date`): QI's families spell them both ways. A
//! vehicle's chassis number (a VIN: 17 letters and digits) is masked by shape too.
//!
//! What a person sees of an operation outside its payloads (its detail, its facts, each
//! timeline entry's detail) goes through the same nets ([`mask_operation`]): a fact whose
//! name is personal is masked whole, and so is every fact the catalog lists in
//! `personal_facts` (free texts QI fills with a buyer's data, names included, which no shape
//! can find), and a detail that is such a fact's text; the others by shape. A name inside
//! any other free text (a debt's rejection reason) is not found: no shape tells a name from
//! the words around it.
//!
//! What is masked becomes [`MASK`]; everything else (statuses, keys, amounts, dates) is
//! kept, so a person can still read what happened.

use serde_json::Value;

use super::catalog::glob_matches;
use super::reconcile::Operation;
use super::webhook::FactValue;

/// What a masked value shows.
pub const MASK: &str = "••••••";

/// Masks `value` in place; returns how many values were masked.
pub fn mask(value: &mut Value, personal_fields: &[String]) -> usize {
    match value {
        Value::Object(fields) => {
            let mut masked = 0;
            // An e-mail used as a key: the key is masked too (numbered, keys stay unique).
            let personal_keys: Vec<String> = fields
                .keys()
                .filter(|k| mask_text(k).is_some())
                .cloned()
                .collect();
            for (n, key) in personal_keys.into_iter().enumerate() {
                if let Some(v) = fields.remove(&key) {
                    fields.insert(format!("{MASK}{}", n + 1), v);
                    masked += 1;
                }
            }
            masked
                + fields
                    .iter_mut()
                    .map(|(name, v)| {
                        if is_personal_field(name, personal_fields) && !is_empty(v) {
                            *v = Value::String(MASK.to_owned());
                            1
                        } else {
                            mask(v, personal_fields)
                        }
                    })
                    .sum::<usize>()
        }
        Value::Array(items) => items.iter_mut().map(|v| mask(v, personal_fields)).sum(),
        Value::String(text) => match mask_text(text) {
            Some(masked) => {
                *text = masked;
                1
            }
            None => 0,
        },
        Value::Number(n) if n.as_u64().is_some_and(is_document_number) => {
            *value = Value::String(MASK.to_owned());
            1
        }
        _ => 0,
    }
}

/// Whether a field called `name` holds personal data: `name` lower-cased, or in snake case
/// (`fullName` is `full_name`), matches one of the catalog's patterns.
pub fn is_personal_field(name: &str, personal_fields: &[String]) -> bool {
    let lower = name.to_ascii_lowercase();
    let mut snake = String::with_capacity(name.len() + 4);
    let mut previous_lower = false;
    for c in name.chars() {
        if c.is_ascii_uppercase() && previous_lower {
            snake.push('_');
        }
        previous_lower = c.is_ascii_lowercase() || c.is_ascii_digit();
        snake.push(c.to_ascii_lowercase());
    }
    personal_fields
        .iter()
        .any(|p| glob_matches(p, &lower) || glob_matches(p, &snake))
}

/// Masks what a person sees of `op` outside its payloads (see the module docs): its detail,
/// its facts, its timeline's details. Returns how many values were masked.
pub fn mask_operation(
    op: &mut Operation,
    personal_fields: &[String],
    personal_facts: &[String],
) -> usize {
    let mut masked = 0;
    // A detail read from a personal fact (a Pix transfer's detail is its
    // `error_description`) is masked as that fact is: whole.
    let personal_texts: Vec<String> = op
        .facts
        .iter()
        .chain(op.history.iter().flat_map(|e| e.facts.iter()))
        .filter(|(name, _)| {
            is_personal_field(name, personal_fields)
                || personal_facts.iter().any(|p| glob_matches(p, name))
        })
        .filter_map(|(_, value)| match value {
            FactValue::Text(t) if !t.trim().is_empty() => Some(t.clone()),
            _ => None,
        })
        .collect();
    let mut text = |t: &mut String| {
        if personal_texts.iter().any(|p| p == t) {
            *t = MASK.to_owned();
            masked += 1;
        } else if let Some(m) = mask_text(t) {
            *t = m;
            masked += 1;
        }
    };
    text(&mut op.detail);
    for entry in &mut op.history {
        text(&mut entry.detail);
        if let Some(outcome) = &mut entry.outcome {
            text(outcome);
        }
    }
    let mut facts = |facts: &mut Vec<(String, FactValue)>| {
        for (name, value) in facts.iter_mut() {
            let whole = is_personal_field(name, personal_fields)
                || personal_facts.iter().any(|p| glob_matches(p, name));
            match value {
                FactValue::Text(t) if whole && !t.trim().is_empty() => {
                    *t = MASK.to_owned();
                    masked += 1;
                }
                FactValue::Text(t) => {
                    if let Some(m) = mask_text(t) {
                        *t = m;
                        masked += 1;
                    }
                }
                FactValue::Number(n)
                    if whole
                        || (n.fract() == 0.0 && *n >= 0.0 && is_document_number(*n as u64)) =>
                {
                    *value = FactValue::Text(MASK.to_owned());
                    masked += 1;
                }
                _ => {}
            }
        }
    };
    facts(&mut op.facts);
    for entry in &mut op.history {
        facts(&mut entry.facts);
    }
    masked
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.trim().is_empty(),
        _ => false,
    }
}

/// `text` with its e-mails and document or phone numbers masked; `None` when it has none.
fn mask_text(text: &str) -> Option<String> {
    let mut out = String::with_capacity(text.len());
    let mut changed = false;
    for (i, word) in text.split(' ').enumerate() {
        if i > 0 {
            out.push(' ');
        }
        if is_email(word) || is_vin(word) {
            out.push_str(MASK);
            changed = true;
        } else {
            out.push_str(word);
        }
    }
    let masked = mask_number_runs(&out);
    changed |= masked.is_some();
    changed.then(|| masked.unwrap_or(out))
}

fn is_email(word: &str) -> bool {
    let word = word.trim_matches(|c: char| !c.is_alphanumeric());
    word.split_once('@').is_some_and(|(user, domain)| {
        !user.is_empty() && domain.contains('.') && !domain.starts_with('.')
    })
}

/// Whether `word` (punctuation around it aside) is a vehicle identification number, as a
/// chassis (`chassi`) is written: 17 letters and digits, no I, O or Q, with both.
fn is_vin(word: &str) -> bool {
    let word = word.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    word.len() == 17
        && word
            .bytes()
            .all(|b| b.is_ascii_digit() || (b.is_ascii_uppercase() && !b"IOQ".contains(&b)))
        && word.bytes().any(|b| b.is_ascii_digit())
        && word.bytes().any(|b| b.is_ascii_uppercase())
}

/// Masks every run of digits and separators holding 10 to 14 digits.
fn mask_number_runs(text: &str) -> Option<String> {
    let chars: Vec<char> = text.chars().collect();
    let is_part = |c: char| c.is_ascii_digit() || matches!(c, '.' | '-' | '/' | '(' | ')' | '+');
    let mut out = String::with_capacity(text.len());
    let mut changed = false;
    let mut i = 0;
    while i < chars.len() {
        if !(chars[i].is_ascii_digit() || chars[i] == '(' || chars[i] == '+') {
            out.push(chars[i]);
            i += 1;
            continue;
        }
        // A run: parts, and single spaces between parts.
        let mut end = i;
        while end < chars.len()
            && (is_part(chars[end])
                || (chars[end] == ' ' && end + 1 < chars.len() && is_part(chars[end + 1])))
        {
            end += 1;
        }
        let run: String = chars[i..end].iter().collect();
        let run = run.trim_end_matches(['.', '-', '/', ' ']);
        let digits = run.chars().filter(char::is_ascii_digit).count();
        let date = run.len() >= 10
            && run.as_bytes()[4] == b'-'
            && run.as_bytes()[7] == b'-'
            && run[..4].chars().all(|c| c.is_ascii_digit());
        let run_len = run.chars().count();
        if (10..=14).contains(&digits) && !date {
            out.push_str(MASK);
            changed = true;
        } else {
            out.push_str(run);
        }
        i += run_len.max(1);
    }
    changed.then_some(out)
}

/// Whether `n`, zero-padded, is a CPF (11 digits) or a CNPJ (14) whose check digits hold.
fn is_document_number(n: u64) -> bool {
    let digits = |width: usize| -> Vec<u32> {
        format!("{n:0width$}")
            .chars()
            .filter_map(|c| c.to_digit(10))
            .collect()
    };
    let check = |body: &[u32], weights: &[u32]| {
        let sum: u32 = body.iter().zip(weights).map(|(d, w)| d * w).sum();
        match sum % 11 {
            0 | 1 => 0,
            r => 11 - r,
        }
    };
    // Numbers of fewer than 10 digits (a CPF with two leading zeros) are not taken for one:
    // small amounts and counts would pass the check one time in a hundred.
    let cpf = (1_000_000_000..100_000_000_000).contains(&n) && {
        let d = digits(11);
        let all_same = d.iter().all(|x| *x == d[0]);
        !all_same
            && check(&d[..9], &[10, 9, 8, 7, 6, 5, 4, 3, 2]) == d[9]
            && check(&d[..10], &[11, 10, 9, 8, 7, 6, 5, 4, 3, 2]) == d[10]
    };
    let cnpj = (1_000_000_000_000..100_000_000_000_000).contains(&n) && {
        let d = digits(14);
        check(&d[..12], &[5, 4, 3, 2, 9, 8, 7, 6, 5, 4, 3, 2]) == d[12]
            && check(&d[..13], &[6, 5, 4, 3, 2, 9, 8, 7, 6, 5, 4, 3, 2]) == d[13]
    };
    cpf || cnpj
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields() -> Vec<String> {
        [
            "name",
            "*_name",
            "document_number",
            "*_document_number",
            "email",
            "*_email",
            "phone_number",
            "address",
        ]
        .map(String::from)
        .to_vec()
    }

    #[test]
    fn named_fields_and_personal_shapes_are_masked_everything_else_kept() {
        let mut v = json!({
            "key": "871059bd-4014-41ad-82b4-28275ff0e67b",
            "status": "disbursed",
            "data": {
                "borrower": {"name": "Aurora Nogueira", "document_number": "08141163701",
                             "email": "a@b.com", "phone_number": "34987654321",
                             "address": {"street": "Rua X", "postal_code": "01000-000"}},
                "signers": [{"signer_name": "marcos antonio", "signer_email": "x@y.com.br"}],
                "note": "contact joao@example.com",
                "free_cpf": "081.411.637-01",
                "free_cnpj": "12.345.678/0001-95",
                "bare_cnpj": "12345678000195",
                "issue_amount": 299.02,
                "barcode": "00193967000009910000000003615574000000002417",
                "company_name": null
            }
        });
        let masked = mask(&mut v, &fields());
        let d = &v["data"];
        for path in [
            &d["borrower"]["name"],
            &d["borrower"]["document_number"],
            &d["borrower"]["email"],
            &d["borrower"]["phone_number"],
            &d["borrower"]["address"],
            &d["signers"][0]["signer_name"],
            &d["signers"][0]["signer_email"],
            &d["free_cpf"],
            &d["free_cnpj"],
            &d["bare_cnpj"],
        ] {
            assert_eq!(path, MASK, "{v}");
        }
        assert_eq!(masked, 11);
        // In a sentence, only the address goes.
        assert_eq!(d["note"], format!("contact {MASK}"));
        assert_eq!(v["key"], "871059bd-4014-41ad-82b4-28275ff0e67b");
        assert_eq!(v["status"], "disbursed");
        assert_eq!(d["issue_amount"], 299.02);
        assert_eq!(d["barcode"], "00193967000009910000000003615574000000002417");
        assert_eq!(d["company_name"], Value::Null, "nothing to hide");
    }

    #[test]
    fn documents_in_text_numbers_and_keys_and_portuguese_names_are_masked() {
        let portuguese = [
            "nome*",
            "*_nome",
            "cpf*",
            "telefone*",
            "endereco*",
            "email*",
        ]
        .map(String::from)
        .to_vec();
        let mut v = json!({
            "obs": "CPF:081.411.637-01, ligar (34) 98765-4321 ou +55 34 98765-4321",
            "cpf_as_number": 8141163701_u64,
            "cnpj_as_number": 12345678000195_u64,
            "contacts": {"joao@example.com": "primary"},
            "nome_completo": "Aurora Nogueira",
            "nome": "Aurora",
            "telefone_celular": "34987654321",
            "endereco": {"logradouro": "Rua X"},
            "email_contato": "a@b.com",
            "when": "2024-01-01 10:00:00",
            "amount": 1500000.5,
            "epoch_ms": 1700000000000_u64,
            "barcode": "00193967000009910000000003615574000000002417",
        });
        mask(&mut v, &portuguese);
        assert_eq!(
            v["obs"],
            format!("CPF:{MASK}, ligar {MASK} ou {MASK}"),
            "{v}"
        );
        assert_eq!(v["cpf_as_number"], MASK);
        assert_eq!(v["cnpj_as_number"], MASK);
        assert_eq!(v["contacts"], json!({format!("{MASK}1"): "primary"}));
        for field in [
            "nome_completo",
            "nome",
            "telefone_celular",
            "endereco",
            "email_contato",
        ] {
            assert_eq!(v[field], MASK, "{field}");
        }
        assert_eq!(v["when"], "2024-01-01 10:00:00");
        assert_eq!(v["amount"], 1500000.5);
        assert_eq!(
            v["epoch_ms"], 1700000000000_u64,
            "not a valid CPF/CNPJ: kept"
        );
        assert_eq!(v["barcode"], "00193967000009910000000003615574000000002417");
    }

    #[test]
    fn camel_case_names_vehicles_and_birth_dates_are_masked() {
        let fields: Vec<String> = [
            "name",
            "*_name",
            "nome_*",
            "birth_date",
            "data_nascimento",
            "chassi*",
            "placa*",
        ]
        .map(String::from)
        .to_vec();
        let mut v = json!({
            "nomeComprador": "Maria da Silva",
            "fullName": "João Souza",
            "birthDate": "1990-01-01",
            "dataNascimento": "1990-01-01",
            "chassi": "9BWZZZ377VT004251",
            "placa": "ABC1D23",
            "status": "Denied",
            "note": "vehicle 9BWZZZ377VT004251 not found",
        });
        assert_eq!(mask(&mut v, &fields), 7);
        for field in [
            "nomeComprador",
            "fullName",
            "birthDate",
            "dataNascimento",
            "chassi",
            "placa",
        ] {
            assert_eq!(v[field], MASK, "{field}");
        }
        assert_eq!(v["note"], format!("vehicle {MASK} not found"));
        assert_eq!(v["status"], "Denied");
        // A word of 17 letters alone, or of 17 digits alone, is no chassis number.
        assert_eq!(mask_text("ABCDEFGHJKLMNPRST"), None);
    }

    #[test]
    fn an_operations_facts_details_and_timeline_are_masked_as_its_payloads() {
        use crate::domain::reconcile::{EventSummary, Phase};
        use crate::domain::webhook::EventId;
        let secret = "Comprador Maria da Silva, CPF 081.411.637-01, maria@example.com".to_owned();
        let entry = |detail: &str| EventSummary {
            sequence: 1,
            event_id: EventId([0; 32]),
            status: "rejected".into(),
            outcome: None,
            detail: detail.into(),
            event_time: None,
            received_at: 0,
            facts: vec![("error_description".into(), FactValue::Text(secret.clone()))],
        };
        let mut op = Operation {
            detail: secret.clone(),
            version: 2,
            last_sequence: 2,
            history: vec![entry(&secret), entry("call (11) 98765-4321 back")],
            facts: vec![
                ("error_description".into(), FactValue::Text(secret.clone())),
                ("error_code".into(), FactValue::Text("PXT000132".into())),
                ("payer_document".into(), FactValue::Number(8141163701.0)),
            ],
            ..Operation::bare("pix", "k", "rejected", Phase::Failed)
        };
        let masked = mask_operation(&mut op, &["*_name".into()], &["error_description".into()]);
        assert_eq!(op.detail, MASK, "the detail read from a personal fact");
        assert_eq!(op.history[0].detail, MASK);
        assert_eq!(op.history[1].detail, format!("call {MASK} back"));
        assert_eq!(op.facts[0].1, FactValue::Text(MASK.into()));
        assert_eq!(
            op.facts[1].1,
            FactValue::Text("PXT000132".into()),
            "codes are kept"
        );
        assert_eq!(
            op.facts[2].1,
            FactValue::Text(MASK.into()),
            "a CPF as a number"
        );
        assert_eq!(op.history[0].facts[0].1, FactValue::Text(MASK.into()));
        assert_eq!(masked, 7);
    }
}
