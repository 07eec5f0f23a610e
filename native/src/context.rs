//! Field-name context: `_rules._key_context` for ASCII keys. A context is a bit set over
//! the entity types the scanner knows, plus `NOT_IP` (a field that holds versions).
//! Non-ASCII keys are handed to the Python function itself by the caller, so Unicode
//! case and character classes are Python's.

/// The bit of `_rules.NOT_IP` ("!IP_ADDRESS").
pub const NOT_IP: u32 = 1 << 31;

/// (type, whole words, substrings of the compact key): `_FIELD_WORDS`/`_FIELD_SUBSTRINGS`.
const VOCAB: [(&str, &[&str], &[&str]); 6] = [
    (
        "CREDIT_CARD",
        &["card", "cards", "cc", "ccn", "pan", "ccnum", "cardnumber", "cardno", "creditcard"],
        &["creditcard", "cardnum", "cardnumber"],
    ),
    ("US_SSN", &["ssn", "ssns", "social", "socialsecurity", "socialsecuritynumber"], &["socialsecurity"]),
    (
        "PHONE_NUMBER",
        &["phone", "phones", "tel", "telephone", "mobile", "cell", "fax", "msisdn", "phonenumber"],
        &["phone", "mobile", "telephone"],
    ),
    ("EMAIL_ADDRESS", &["email", "emails", "mail", "emailaddress"], &["email"]),
    ("IBAN", &["iban"], &["iban"]),
    ("IP_ADDRESS", &["ip", "ipv4", "ipv6", "ipaddr", "ipaddress"], &["ipaddr"]),
];
const NOT_IP_WORDS: [&str; 4] = ["version", "ver", "build", "release"];

/// The words of `_CAMEL` (`[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+`) on an ASCII key, lower-cased.
fn camel_words(key: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let n = key.len();
    let mut i = 0;
    let run = |mut j: usize, f: fn(&u8) -> bool| {
        while j < n && f(&key[j]) {
            j += 1;
        }
        j
    };
    while i < n {
        let c = key[i];
        let end = if c.is_ascii_uppercase() {
            let j = run(i, u8::is_ascii_uppercase);
            if j < n && key[j].is_ascii_lowercase() {
                if j - 1 > i {
                    j - 1 // the upper-case run without the letter that starts a word
                } else {
                    run(i + 1, u8::is_ascii_lowercase) // `[A-Z]?[a-z]+`
                }
            } else {
                j
            }
        } else if c.is_ascii_lowercase() {
            run(i, u8::is_ascii_lowercase)
        } else if c.is_ascii_digit() {
            run(i, u8::is_ascii_digit)
        } else {
            i += 1;
            continue;
        };
        out.push(key[i..end].to_ascii_lowercase());
        i = end;
    }
    out
}

/// The context of an ASCII key; `bit_of` gives the bit of a type name (None: not scanned).
pub fn key_context(key: &[u8], bit_of: &dyn Fn(&str) -> Option<u32>) -> u32 {
    let words = camel_words(key);
    let compact: Vec<u8> = key.iter().filter(|c| c.is_ascii_alphanumeric()).map(u8::to_ascii_lowercase).collect();
    let mut ctx = 0;
    for (type_, vocab, subs) in VOCAB {
        let hit = words.iter().any(|w| vocab.iter().any(|v| v.as_bytes() == w.as_slice()))
            || vocab.iter().any(|v| v.as_bytes() == compact.as_slice())
            || subs.iter().any(|s| compact.windows(s.len()).any(|w| w == s.as_bytes()));
        if hit {
            if let Some(bit) = bit_of(type_) {
                ctx |= bit;
            }
        }
    }
    if words.iter().any(|w| NOT_IP_WORDS.iter().any(|v| v.as_bytes() == w.as_slice())) {
        ctx |= NOT_IP;
    }
    ctx
}

#[cfg(test)]
mod tests {
    use super::camel_words;

    #[test]
    fn camel() {
        let w = |k: &str| camel_words(k.as_bytes()).into_iter().map(|v| String::from_utf8(v).unwrap()).collect::<Vec<_>>();
        assert_eq!(w("HTTPServer"), ["http", "server"]);
        assert_eq!(w("cardNumber2"), ["card", "number", "2"]);
        assert_eq!(w("ABc"), ["a", "bc"]);
        assert_eq!(w("customer_SSN"), ["customer", "ssn"]);
    }
}
