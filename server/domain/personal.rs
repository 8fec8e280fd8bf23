//! Personal data in webhooks (names, CPF/CNPJ numbers, e-mails, phone numbers), masked
//! before a person sees a payload in the console, unless they ask, on the record.
//!
//! Two nets, because QI Tech's payloads are large and their fields grow:
//! - **by field name**, anywhere in the document: the catalog's `personal_fields` patterns
//!   (`*` matches any run; `name`, `*_name`, `document_number`, `email`, `*_email`,
//!   `phone_number`, `address`, ...). A matching field's whole value is masked, objects
//!   included (an `address` object).
//! - **by shape**, word by word in every other string: an e-mail address, a formatted CPF
//!   (`000.000.000-00`) or CNPJ (`00.000.000/0000-00`), or a bare run of 11 or 14 digits (the
//!   length of a CPF or a CNPJ).
//!
//! What is masked becomes [`MASK`]; everything else (statuses, keys, amounts, dates) is
//! kept, so a person can still read what happened.

use serde_json::Value;

use super::catalog::glob_matches;

/// What a masked value shows.
pub const MASK: &str = "••••••";

/// Masks `value` in place; returns how many values were masked.
pub fn mask(value: &mut Value, personal_fields: &[String]) -> usize {
    match value {
        Value::Object(fields) => fields
            .iter_mut()
            .map(|(name, v)| {
                let name = name.to_ascii_lowercase();
                if personal_fields.iter().any(|p| glob_matches(p, &name)) && !is_empty(v) {
                    *v = Value::String(MASK.to_owned());
                    1
                } else {
                    mask(v, personal_fields)
                }
            })
            .sum(),
        Value::Array(items) => items.iter_mut().map(|v| mask(v, personal_fields)).sum(),
        Value::String(text) if text.split_whitespace().any(looks_personal) => {
            // Word by word, so that a sentence keeps its other words.
            let masked: Vec<&str> = text
                .split_whitespace()
                .map(|word| if looks_personal(word) { MASK } else { word })
                .collect();
            *text = masked.join(" ");
            1
        }
        _ => 0,
    }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.trim().is_empty(),
        _ => false,
    }
}

/// Whether a word has the shape of an e-mail, a CPF or a CNPJ.
fn looks_personal(word: &str) -> bool {
    let text = word.trim_matches(|c: char| matches!(c, ',' | ';' | ':' | '(' | ')' | '<' | '>'));
    let email = text
        .split_once('@')
        .is_some_and(|(user, domain)| !user.is_empty() && domain.contains('.'));
    let digits: String = text.chars().filter(char::is_ascii_digit).collect();
    let only_document_chars = text
        .chars()
        .all(|c| c.is_ascii_digit() || matches!(c, '.' | '-' | '/'));
    let document = only_document_chars && matches!(digits.len(), 11 | 14);
    email || document
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
}
