//! Format-preserving vault tokens for ASCII values (the token vault's hot path; the Python
//! `trustzones.dlp.vault` module is the reference and keeps every other case).

use pyo3::prelude::*;

use crate::validators::luhn_valid;

const DIGITS: &[u8; 10] = b"0123456789";
const LOWER: &[u8; 26] = b"abcdefghijklmnopqrstuvwxyz";
const UPPER: &[u8; 26] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ";
/// A random byte at or above these is skipped, so that `byte % 10` (`% 26`) is uniform.
const DIGIT_LIMIT: u8 = 250;
const LETTER_LIMIT: u8 = 234;

/// A random token shaped like the ASCII `value`: each of its first letters and digits
/// (all but the last `keep_last` of them, or all when `keep_last` is 0) replaced by a random
/// one of its kind, every other character kept. When every letter and digit is a digit and
/// there are 13 to 19 of them, the token fails the Luhn check (its last random digit is
/// moved on by one if needed), so a token is never mistaken for a card number.
///
/// The characters come from `random` (bytes of the OS CSPRNG), one byte each, skipping the
/// bytes that would bias it. None when `value` is not ASCII, has fewer than `min_random`
/// random positions, or `random` runs out: the caller then takes its own path.
#[pyfunction]
pub fn preserving_token(
    value: &str,
    keep_last: usize,
    min_random: usize,
    random: &[u8],
) -> Option<String> {
    if !value.is_ascii() {
        return None;
    }
    let bytes = value.as_bytes();
    let alnum = bytes.iter().filter(|b| b.is_ascii_alphanumeric()).count();
    let n_random = if keep_last > 0 { alnum.checked_sub(keep_last)? } else { alnum };
    if n_random < min_random {
        return None;
    }
    let mut out = bytes.to_vec();
    let mut pool = random.iter();
    let mut left = n_random;
    let mut last_random = None;
    for (i, &b) in bytes.iter().enumerate() {
        if left == 0 {
            break;
        }
        let (alphabet, limit): (&[u8], u8) = if b.is_ascii_digit() {
            (DIGITS, DIGIT_LIMIT)
        } else if b.is_ascii_lowercase() {
            (LOWER, LETTER_LIMIT)
        } else if b.is_ascii_uppercase() {
            (UPPER, LETTER_LIMIT)
        } else {
            continue;
        };
        let r = loop {
            let r = *pool.next()?;
            if r < limit {
                break r;
            }
        };
        out[i] = alphabet[usize::from(r) % alphabet.len()];
        last_random = Some(i);
        left -= 1;
    }
    let all_digits = bytes.iter().filter(|b| b.is_ascii_digit()).count() == alnum;
    if all_digits && (13..=19).contains(&alnum) {
        let digits: Vec<u8> = out.iter().copied().filter(u8::is_ascii_digit).collect();
        if luhn_valid(&digits) {
            let i = last_random?;
            out[i] = b'0' + (out[i] - b'0' + 1) % 10;
        }
    }
    // Only ASCII bytes were replaced by ASCII bytes.
    String::from_utf8(out).ok()
}
