//! Validators: the checks that confirm a candidate span, ported one for one from
//! `trustzones/dlp/_rules.py` and `_validators.py` (the reference). Every function works
//! on the normalised ASCII text of one field; offsets are byte offsets, which equal
//! character offsets there.

use regex::bytes::Regex;
use std::sync::OnceLock;

/// An accepted span: start, end (exclusive), confidence.
pub type Span = (usize, usize, f64);

/// What a validator may look at besides the text: the keyword expressions of the rules.
pub struct Keywords {
    pub ssn: Option<Regex>,
    pub phone: Option<Regex>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Validator {
    Card,
    SsnSep,
    SsnBare,
    IbanCompact,
    IbanSpaced,
    Email,
    PhoneIntl,
    PhoneNanp,
    PhoneLoose,
    Ipv4,
    Ipv6,
    Accept90,
    Accept95,
    Accept99,
    Jwt,
    Google,
    Slack,
}

impl Validator {
    /// The validator of a rule of `_rules.RULES`, by the rule's name.
    pub fn for_rule(name: &str) -> Option<Validator> {
        Some(match name {
            "card" => Validator::Card,
            "ssn" => Validator::SsnSep,
            "ssn_bare" => Validator::SsnBare,
            "iban" => Validator::IbanCompact,
            "iban_spaced" => Validator::IbanSpaced,
            "email" => Validator::Email,
            "phone_intl" => Validator::PhoneIntl,
            "phone_nanp" => Validator::PhoneNanp,
            "phone_loose" => Validator::PhoneLoose,
            "ipv4" => Validator::Ipv4,
            "ipv6" => Validator::Ipv6,
            "aws_key" => Validator::Accept90,
            "github_token" => Validator::Accept95,
            "jwt" => Validator::Jwt,
            "private_key" => Validator::Accept99,
            "google_api_key" => Validator::Google,
            "slack_token" => Validator::Slack,
            "stripe_key" => Validator::Accept95,
            _ => return None,
        })
    }

    pub fn run(self, kw: &Keywords, text: &[u8], s: usize, e: usize, ctx: bool, out: &mut Vec<Span>) {
        match self {
            Validator::Card => card(text, s, e, ctx, out),
            Validator::SsnSep => ssn_sep(kw, text, s, e, ctx, out),
            Validator::SsnBare => ssn_bare(kw, text, s, e, ctx, out),
            Validator::IbanCompact => {
                let mut upper = Stack::<u8, 64>::new();
                upper.extend(text[s..e].iter().map(u8::to_ascii_uppercase));
                if iban_valid(upper.as_slice()) {
                    out.push((s, e, 0.95));
                }
            }
            Validator::IbanSpaced => iban_spaced(text, s, e, out),
            Validator::Email => email(text, s, e, ctx, out),
            Validator::PhoneIntl => phone_intl(text, s, e, ctx, out),
            Validator::PhoneNanp => phone_nanp(kw, text, s, e, ctx, out),
            Validator::PhoneLoose => phone_loose(text, s, e, ctx, out),
            Validator::Ipv4 => ipv4(text, s, e, ctx, out),
            Validator::Ipv6 => {
                let before = prev(text, s);
                let after = next(text, e);
                let bad = matches!(before, Some(c) if c.is_ascii_alphanumeric() || c == b':' || c == b'.')
                    || matches!(after, Some(c) if c.is_ascii_alphanumeric() || c == b':');
                if !bad && ipv6_valid(&text[s..e]) {
                    out.push((s, e, 0.9));
                }
            }
            Validator::Accept90 => out.push((s, e, 0.9)),
            Validator::Accept95 => out.push((s, e, 0.95)),
            Validator::Accept99 => out.push((s, e, 0.99)),
            Validator::Jwt => {
                if jwt_valid(&text[s..e]) {
                    out.push((s, e, 0.95));
                }
            }
            Validator::Google => {
                let after = next(text, e);
                let b64url = matches!(after, Some(c) if c.is_ascii_alphanumeric() || c == b'-' || c == b'_');
                if !b64url {
                    out.push((s, e, 0.9));
                }
            }
            Validator::Slack => {
                if matches!(next(text, e), Some(c) if c.is_ascii_alphanumeric()) {
                    return;
                }
                let (mut parts, mut digits) = (0, false);
                for p in text[s..e].split(|&c| c == b'-') {
                    parts += 1;
                    digits |= is_digits(p);
                }
                if parts >= 3 && digits {
                    out.push((s, e, 0.9));
                }
            }
        }
    }
}

// -- helpers ---------------------------------------------------------------------------

fn prev(text: &[u8], i: usize) -> Option<u8> {
    if i >= 1 {
        Some(text[i - 1])
    } else {
        None
    }
}

fn next(text: &[u8], i: usize) -> Option<u8> {
    text.get(i).copied()
}

/// Python's `str.isdigit` on ASCII: non-empty and all digits.
fn is_digits(b: &[u8]) -> bool {
    !b.is_empty() && b.iter().all(u8::is_ascii_digit)
}

fn in_longer_number(text: &[u8], s: usize, e: usize, seps: &[u8]) -> bool {
    if s >= 2 && seps.contains(&text[s - 1]) && text[s - 2].is_ascii_digit() {
        return true;
    }
    e + 1 < text.len() && seps.contains(&text[e]) && text[e + 1].is_ascii_digit()
}

/// `keyword_near`: a keyword in the `window` characters before `start` (lower-cased; the
/// slice's ends are the string's ends for `\b`, as in Python).
fn keyword_near(rx: &Option<Regex>, text: &[u8], start: usize, window: usize) -> bool {
    match rx {
        None => false,
        Some(rx) => {
            let lo = start.saturating_sub(window);
            let mut buf = [0u8; 64];
            match buf.get_mut(..start - lo) {
                Some(lower) => {
                    lower.copy_from_slice(&text[lo..start]);
                    lower.make_ascii_lowercase();
                    rx.is_match(lower)
                }
                None => rx.is_match(&text[lo..start].to_ascii_lowercase()),
            }
        }
    }
}

/// A vector that holds up to `N` items in place and moves to the heap past that: the
/// validators' working lists, sized for what their rules' matches hold (so the heap is
/// only for other expressions).
struct Stack<T: Copy + Default, const N: usize> {
    items: [T; N],
    len: usize,
    spill: Vec<T>,
}

impl<T: Copy + Default, const N: usize> Stack<T, N> {
    fn new() -> Self {
        Stack { items: [T::default(); N], len: 0, spill: Vec::new() }
    }

    fn push(&mut self, x: T) {
        if self.spill.is_empty() && self.len < N {
            self.items[self.len] = x;
            self.len += 1;
        } else {
            if self.spill.is_empty() {
                self.spill.extend_from_slice(&self.items[..self.len]);
            }
            self.spill.push(x);
        }
    }

    fn extend(&mut self, xs: impl IntoIterator<Item = T>) {
        for x in xs {
            self.push(x);
        }
    }

    fn as_slice(&self) -> &[T] {
        if self.spill.is_empty() {
            &self.items[..self.len]
        } else {
            &self.spill
        }
    }
}

fn digit_runs(text: &[u8], s: usize, e: usize) -> Stack<(usize, usize), 64> {
    let mut out = Stack::new();
    let mut i = s;
    while i < e {
        if text[i].is_ascii_digit() {
            let a = i;
            while i < e && text[i].is_ascii_digit() {
                i += 1;
            }
            out.push((a, i));
        } else {
            i += 1;
        }
    }
    out
}

fn strip_separators(span: &[u8]) -> Stack<u8, 32> {
    let mut out = Stack::new();
    out.extend(span.iter().copied().filter(|c| !is_separator(*c)));
    out
}

fn is_separator(c: u8) -> bool {
    b" -.()+".contains(&c)
}

fn count(span: &[u8], ch: u8) -> usize {
    span.iter().filter(|&&c| c == ch).count()
}

// -- checksums -------------------------------------------------------------------------

pub fn luhn_valid(digits: &[u8]) -> bool {
    let mut sum = 0u32;
    for (i, &c) in digits.iter().rev().enumerate() {
        let d = u32::from(c - b'0');
        sum += if i % 2 == 1 { [0, 2, 4, 6, 8, 1, 3, 5, 7, 9][d as usize] } else { d };
    }
    sum % 10 == 0
}

pub fn card_brand(d: &[u8]) -> bool {
    let n = d.len();
    if !(13..=19).contains(&n) {
        return false;
    }
    let p4 = &d[..4];
    let p3 = &d[..3];
    let p2 = &d[..2];
    match d[0] {
        b'4' => matches!(n, 13 | 16 | 19),
        b'5' => (b'1'..=b'5').contains(&d[1]) && n == 16,
        b'2' => n == 16 && ((b"2221".as_slice()..=b"2720".as_slice()).contains(&p4) || (b"2200".as_slice()..=b"2204".as_slice()).contains(&p4)),
        b'3' => {
            if p2 == b"34" || p2 == b"37" {
                n == 15
            } else if (b"3528".as_slice()..=b"3589".as_slice()).contains(&p4) {
                n >= 16
            } else if (b"300".as_slice()..=b"305".as_slice()).contains(&p3) || p4 == b"3095" || p2 == b"36" || p2 == b"38" || p2 == b"39" {
                n >= 14
            } else {
                false
            }
        }
        // Discover (6011, 644-649, 65, 622126-622925) and UnionPay (62): any 6x prefix
        // of those is a brand, so only whether one matches matters here.
        b'6' => n >= 16 && (p4 == b"6011" || (b"644".as_slice()..=b"649".as_slice()).contains(&p3) || p2 == b"65" || p2 == b"62"),
        _ => false,
    }
}

pub fn ssn_valid(d: &[u8]) -> bool {
    if d.len() != 9 {
        return false;
    }
    let area = &d[..3];
    if area == b"000" || area == b"666" || area[0] == b'9' {
        return false;
    }
    if &d[3..5] == b"00" || &d[5..] == b"0000" {
        return false;
    }
    d != b"078051120" && d != b"219099999"
}

const IBAN_BBAN: &str = "AD:4n4n12c AE:3n16n AL:8n16c AT:5n11n AZ:4a20c BA:3n3n8n2n BE:3n7n2n BG:4a4n2n8c \
BH:4a14c BI:5n5n11n2n BR:8n5n10n1a1c BY:4c4n16c CH:5n12c CR:4n14n CY:3n5n16c CZ:4n16n \
DE:8n10n DJ:5n5n11n2n DK:4n9n1n DO:4c20n EE:2n14n EG:4n4n17n ES:4n4n1n1n10n FI:3n11n \
FK:2a12n FO:4n9n1n FR:5n5n11c2n GB:4a6n8n GE:2a16n GI:4a15c GL:4n9n1n GR:3n4n16c \
GT:4c20c HN:4a20n HR:7n10n HU:3n4n1n15n1n IE:4a6n8n IL:3n3n13n IQ:4a3n12n \
IS:4n2n6n10n IT:1a5n5n12c JO:4a4n18c KW:4a22c KZ:3n13c LB:4n20c LC:4a24c LI:5n12c \
LT:5n11n LU:3n13c LV:4a13c LY:3n3n15n MC:5n5n11c2n MD:2c18c ME:3n13n2n MK:3n10c2n \
MN:4n12n MR:5n5n11n2n MT:4a5n18c MU:4a2n2n12n3n3a NI:4a20n NL:4a10n NO:4n6n1n \
OM:3n16c PK:4a16c PL:8n16n PS:4a21c PT:4n4n11n2n QA:4a21c RO:4a16c RS:3n13n2n \
RU:9n5n15c SA:2n18c SC:4a2n2n16n3a SD:2n12n SE:3n16n1n SI:5n8n2n SK:4n6n10n \
SM:1a5n5n12c SO:4n3n12n ST:4n4n11n2n SV:4a20n TL:3n14n2n TN:2n3n13n2n TR:5n1n16c \
UA:6n19c VA:3n15n VG:4a16n XK:4n10n2n YE:4a4n18c";

/// Per country: the BBAN as one class letter (`n`, `a`, `c`) per position.
fn bban_table() -> &'static rustc_hash::FxHashMap<[u8; 2], Vec<u8>> {
    static TABLE: OnceLock<rustc_hash::FxHashMap<[u8; 2], Vec<u8>>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut table = rustc_hash::FxHashMap::default();
        for entry in IBAN_BBAN.split_whitespace() {
            let (country, spec) = entry.split_once(':').expect("table entry");
            let mut classes = Vec::new();
            let mut n = 0usize;
            for c in spec.bytes() {
                if c.is_ascii_digit() {
                    n = n * 10 + usize::from(c - b'0');
                } else {
                    classes.extend(std::iter::repeat(c).take(n));
                    n = 0;
                }
            }
            let cb = country.as_bytes();
            table.insert([cb[0], cb[1]], classes);
        }
        table
    })
}

fn iban_length(country: &[u8]) -> Option<usize> {
    if country.len() < 2 {
        return None;
    }
    bban_table().get(&[country[0], country[1]]).map(|c| c.len() + 4)
}

/// `iban_valid` on an upper-case IBAN without spaces.
pub fn iban_valid(iban: &[u8]) -> bool {
    if iban.len() < 4 {
        return false;
    }
    let Some(classes) = bban_table().get(&[iban[0], iban[1]]) else {
        return false;
    };
    if iban.len() != classes.len() + 4 || !is_digits(&iban[2..4]) {
        return false;
    }
    for (&c, &k) in iban[4..].iter().zip(classes) {
        let ok = match k {
            b'n' => c.is_ascii_digit(),
            b'a' => c.is_ascii_uppercase(),
            _ => c.is_ascii_digit() || c.is_ascii_uppercase(),
        };
        if !ok {
            return false;
        }
    }
    // ISO 7064 mod 97-10 on BBAN || country || check digits, letters as 10..35.
    let mut r: u32 = 0;
    for &c in iban[4..].iter().chain(&iban[..4]) {
        r = if c.is_ascii_digit() {
            (r * 10 + u32::from(c - b'0')) % 97
        } else {
            (r * 100 + u32::from(c - b'A') + 10) % 97
        };
    }
    r == 1
}

// -- CREDIT_CARD -----------------------------------------------------------------------

fn card_conf(digits: &[u8], ctx: bool) -> f64 {
    if !luhn_valid(digits) || digits.iter().all(|&c| c == digits[0]) {
        return 0.0;
    }
    if card_brand(digits) {
        return if ctx { 0.99 } else { 0.9 };
    }
    if ctx {
        0.6
    } else {
        0.0
    }
}

const CARD_GROUPINGS: [&[usize]; 6] = [&[4, 4, 4, 4], &[4, 4, 4, 4, 3], &[4, 4, 4, 1], &[4, 4, 4, 3], &[4, 6, 5], &[4, 6, 4]];

/// Whether the lengths of `groups` are one of `CARD_GROUPINGS`.
fn is_grouping(groups: &[(usize, usize)]) -> bool {
    CARD_GROUPINGS.iter().any(|g| g.len() == groups.len() && g.iter().zip(groups).all(|(&n, &(a, b))| b - a == n))
}

/// The digits of `groups` joined, and `card_conf` of them when there are 13 to 19 (else
/// 0: no card has another length).
fn groups_conf(text: &[u8], groups: &[(usize, usize)], ctx: bool) -> f64 {
    let n: usize = groups.iter().map(|&(a, b)| b - a).sum();
    if !(13..=19).contains(&n) {
        return 0.0;
    }
    let mut d = [0u8; 19];
    let mut at = 0;
    for &(a, b) in groups {
        d[at..at + b - a].copy_from_slice(&text[a..b]);
        at += b - a;
    }
    card_conf(&d[..n], ctx)
}

fn iban_head(w: &[u8]) -> bool {
    // `[A-Za-z]{2}\d{2} ` as the five characters before the candidate.
    w.len() == 5 && w[0].is_ascii_alphabetic() && w[1].is_ascii_alphabetic() && w[2].is_ascii_digit() && w[3].is_ascii_digit() && w[4] == b' '
}

struct CardRun<'a> {
    text: &'a [u8],
    groups: &'a [(usize, usize)],
    last: usize,
    ctx: bool,
}

impl CardRun<'_> {
    fn try_window(&self, a: usize, b: usize, skip_whole_check: bool) -> f64 {
        if !self.ctx && !(skip_whole_check && (a, b) == (0, self.last)) && !is_grouping(&self.groups[a..=b]) {
            return 0.0;
        }
        groups_conf(self.text, &self.groups[a..=b], self.ctx)
    }

    /// `solve(i, j)` of `_card`: the whole of groups `i..=j`, else the longest window at
    /// its start or end, then the rest on either side.
    fn solve(&self, i: isize, j: isize, out: &mut Vec<Span>) {
        if j < i {
            return;
        }
        for k in 0..=(j - i) {
            let pairs: &[(isize, isize)] = if k == 0 { &[(i, j)] } else { &[(i, j - k), (i + k, j)] };
            for &(a, b) in pairs {
                let conf = self.try_window(a as usize, b as usize, true);
                if conf != 0.0 {
                    self.solve(i, a - 1, out);
                    out.push((self.groups[a as usize].0, self.groups[b as usize].1, conf));
                    self.solve(b + 1, j, out);
                    return;
                }
            }
        }
    }
}

fn card(text: &[u8], s: usize, e: usize, ctx: bool, out: &mut Vec<Span>) {
    if (s >= 2 && text[s - 1] == b'.' && text[s - 2].is_ascii_digit()) || (e + 1 < text.len() && text[e] == b'.' && text[e + 1].is_ascii_digit()) {
        return; // part of a longer dotted number
    }
    let span = &text[s..e];
    if is_digits(span) {
        let conf = if span.len() <= 19 { card_conf(span, ctx) } else { 0.0 };
        if conf != 0.0 {
            out.push((s, e, conf));
        }
        return;
    }
    if s >= 5 && iban_head(&text[s - 5..s]) {
        return;
    }
    let runs = digit_runs(text, s, e);
    let groups = runs.as_slice();
    let last = groups.len() - 1;
    let conf = groups_conf(text, groups, ctx);
    if conf != 0.0 {
        out.push((groups[0].0, groups[last].1, conf));
        return;
    }
    let size = |(a, b): (usize, usize)| b - a;
    let whole: usize = groups.iter().map(|&g| size(g)).sum();
    if whole - size(groups[0]).min(size(groups[last])) < 13 {
        return;
    }
    let run = CardRun { text, groups, last, ctx };
    for k in 1..=last {
        for (a, b) in [(0, last - k), (k, last)] {
            let conf = run.try_window(a, b, false);
            if conf != 0.0 {
                run.solve(0, a as isize - 1, out);
                out.push((run.groups[a].0, run.groups[b].1, conf));
                run.solve(b as isize + 1, last as isize, out);
                return;
            }
        }
    }
}

// -- US_SSN ----------------------------------------------------------------------------

fn ssn_sep(kw: &Keywords, text: &[u8], s: usize, e: usize, ctx: bool, out: &mut Vec<Span>) {
    let span = &text[s..e];
    let dash = span[3] == b'-';
    if in_longer_number(text, s, e, if dash { b"-." } else { b"- ." }) {
        return;
    }
    let mut digits = Stack::<u8, 16>::new();
    digits.extend([&span[..3], &span[4..6], &span[7..]].into_iter().flatten().copied());
    if !ssn_valid(digits.as_slice()) {
        return;
    }
    if ctx || keyword_near(&kw.ssn, text, s, 48) {
        out.push((s, e, 0.95));
    } else {
        out.push((s, e, if dash { 0.85 } else { 0.7 }));
    }
}

fn ssn_bare(kw: &Keywords, text: &[u8], s: usize, e: usize, ctx: bool, out: &mut Vec<Span>) {
    if in_longer_number(text, s, e, b".,-") {
        return;
    }
    if !(ctx || keyword_near(&kw.ssn, text, s, 24)) {
        return;
    }
    if ssn_valid(&text[s..e]) {
        out.push((s, e, 0.7));
    }
}

// -- IBAN ------------------------------------------------------------------------------

fn iban_spaced(text: &[u8], s: usize, e: usize, out: &mut Vec<Span>) {
    let span = &text[s..e];
    let Some(length) = span.get(..2).and_then(|c| iban_length(&[c[0].to_ascii_uppercase(), c[1].to_ascii_uppercase()])) else {
        return;
    };
    let mut chars = Stack::<u8, 64>::new();
    let mut end = s;
    for (i, &ch) in span.iter().enumerate() {
        if ch != b' ' {
            chars.push(ch.to_ascii_uppercase());
            if chars.as_slice().len() == length {
                end = s + i + 1;
                break;
            }
        }
    }
    let chars = chars.as_slice();
    if chars.len() != length || (end < e && text[end] != b' ') {
        return;
    }
    if iban_valid(chars) {
        out.push((s, end, 0.95));
    }
}

// -- EMAIL_ADDRESS ---------------------------------------------------------------------

const FILE_EXTENSIONS: [&[u8]; 12] = [b"png", b"jpg", b"jpeg", b"gif", b"svg", b"webp", b"bmp", b"ico", b"css", b"js", b"json", b"txt"];

fn email(text: &[u8], s: usize, e: usize, ctx: bool, out: &mut Vec<Span>) {
    let Some(dot) = text[s..e].iter().rposition(|&c| c == b'.') else {
        return;
    };
    let tld = &text[s + dot + 1..e];
    if FILE_EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(tld)) {
        return;
    }
    out.push((s, e, if ctx { 0.95 } else { 0.9 }));
}

// -- PHONE_NUMBER ----------------------------------------------------------------------

const CALLING_CODES: &str = "1 7 20 27 30 31 32 33 34 36 39 40 41 43 44 45 46 47 48 49 51 52 53 54 55 56 57 58 60 61 \
62 63 64 65 66 81 82 84 86 90 91 92 93 94 95 98 211 212 213 216 218 220 221 222 223 224 \
225 226 227 228 229 230 231 232 233 234 235 236 237 238 239 240 241 242 243 244 245 246 \
247 248 249 250 251 252 253 254 255 256 257 258 260 261 262 263 264 265 266 267 268 269 \
290 291 297 298 299 350 351 352 353 354 355 356 357 358 359 370 371 372 373 374 375 376 \
377 378 379 380 381 382 383 385 386 387 389 420 421 423 500 501 502 503 504 505 506 507 \
508 509 590 591 592 593 594 595 596 597 598 599 670 672 673 674 675 676 677 678 679 680 \
681 682 683 685 686 687 688 689 690 691 692 800 808 850 852 853 855 856 870 878 880 881 \
882 883 886 888 960 961 962 963 964 965 966 967 968 970 971 972 973 974 975 976 977 979 \
992 993 994 995 996 998";

fn is_calling_code(prefix: &[u8]) -> bool {
    static CODES: OnceLock<rustc_hash::FxHashSet<Vec<u8>>> = OnceLock::new();
    CODES
        .get_or_init(|| CALLING_CODES.split_whitespace().map(|c| c.as_bytes().to_vec()).collect())
        .contains(prefix)
}

fn phone_intl(text: &[u8], s: usize, e: usize, ctx: bool, out: &mut Vec<Span>) {
    if matches!(prev(text, s), Some(c) if c.is_ascii_alphanumeric()) || matches!(next(text, e), Some(c) if c.is_ascii_alphanumeric()) {
        return;
    }
    let runs = digit_runs(text, s, e);
    let digits = strip_separators(&text[s + 1..e]);
    let digits = digits.as_slice();
    let known = (1..=3).any(|k| digits.len() >= k && is_calling_code(&digits[..k]));
    if !known {
        return;
    }
    let want = if digits[0] == b'1' { 11 } else { 15 };
    let mut groups = runs.as_slice();
    let mut n: usize = groups.iter().map(|&(a, b)| b - a).sum();
    while let Some((&(a, b), rest)) = groups.split_last() {
        if n <= want {
            break;
        }
        groups = rest;
        n -= b - a;
    }
    let Some(&(_, end)) = groups.last() else {
        return;
    };
    if n < 8 || (digits[0] == b'1' && n != 11) {
        return;
    }
    if count(&text[s..end], b'(') != count(&text[s..end], b')') {
        return;
    }
    out.push((s, end, if ctx { 0.95 } else { 0.85 }));
}

fn phone_nanp(kw: &Keywords, text: &[u8], s: usize, e: usize, ctx: bool, out: &mut Vec<Span>) {
    if prev(text, s) == Some(b'+') || in_longer_number(text, s, e, b".-") {
        return;
    }
    let digits = strip_separators(&text[s..e]);
    let digits = digits.as_slice();
    if digits.len() == 11 && digits[0] != b'1' {
        return;
    }
    let n = digits.len();
    let area = &digits[n - 10..n - 7];
    let exchange = &digits[n - 7..n - 4];
    if area[0] == b'0' || area[0] == b'1' || exchange[0] == b'0' || exchange[0] == b'1' || &area[1..] == b"11" {
        return;
    }
    let ctx = ctx || keyword_near(&kw.phone, text, s, 48);
    out.push((s, e, if ctx { 0.9 } else { 0.75 }));
}

fn phone_loose(text: &[u8], s: usize, e: usize, ctx: bool, out: &mut Vec<Span>) {
    if !ctx {
        return;
    }
    if matches!(prev(text, s), Some(c) if c.is_ascii_alphanumeric()) || in_longer_number(text, s, e, b".") {
        return;
    }
    let span = &text[s..e];
    let n = span.iter().filter(|&&c| !is_separator(c)).count();
    if !(7..=15).contains(&n) || count(span, b'(') != count(span, b')') {
        return;
    }
    out.push((s, e, 0.6));
}

// -- IP_ADDRESS ------------------------------------------------------------------------

/// `_rules._VERSION_WORDS` (`version|\bver\b|\bv\.?\s*$|release|build`, a `str` pattern:
/// `\s` includes the separators 0x1c-0x1f) searched in `window` lower-cased, as the
/// validator searches the 12 characters before a candidate; `\b` and `$` at the ends of
/// the window, as for a slice in Python.
fn version_word_before(window: &[u8]) -> bool {
    let lower = |c: u8| c.to_ascii_lowercase();
    let has = |word: &[u8]| window.windows(word.len()).any(|w| w.iter().zip(word).all(|(&a, &b)| lower(a) == b));
    if has(b"version") || has(b"release") || has(b"build") {
        return true;
    }
    let word = |i: usize| window.get(i).is_some_and(|&c| c.is_ascii_alphanumeric() || c == b'_');
    let space = |c: &u8| matches!(c, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c | 0x1c..=0x1f);
    (0..window.len()).any(|i| {
        if lower(window[i]) != b'v' || (i > 0 && word(i - 1)) {
            return false;
        }
        let rest = &window[i + 1..];
        let ver = rest.len() >= 2 && lower(rest[0]) == b'e' && lower(rest[1]) == b'r' && !word(i + 3);
        let rest = rest.strip_prefix(b".").unwrap_or(rest);
        ver || rest.iter().all(space)
    })
}

fn ipv4(text: &[u8], s: usize, e: usize, ctx: bool, out: &mut Vec<Span>) {
    if in_longer_number(text, s, e, b".") {
        return;
    }
    let lo = s.saturating_sub(12);
    if version_word_before(&text[lo..s]) {
        return;
    }
    out.push((s, e, if ctx { 0.9 } else { 0.85 }));
}

/// `ipaddress.IPv4Address` parsing: four decimal octets, no leading zeros, each <= 255.
fn ipv4_int(text: &[u8]) -> Option<u32> {
    let octets: Vec<&[u8]> = text.split(|&c| c == b'.').collect();
    if text.is_empty() || octets.len() != 4 {
        return None;
    }
    let mut ip = 0u32;
    for o in octets {
        if !is_digits(o) || o.len() > 3 || (o != b"0" && o[0] == b'0') {
            return None;
        }
        let v = o.iter().fold(0u32, |acc, &c| acc * 10 + u32::from(c - b'0'));
        if v > 255 {
            return None;
        }
        ip = (ip << 8) | v;
    }
    Some(ip)
}

fn hextet(p: &[u8]) -> bool {
    // `_parse_hextet`: hex digits only, at most 4, and `int("", 16)` fails.
    !p.is_empty() && p.len() <= 4 && p.iter().all(u8::is_ascii_hexdigit)
}

/// `ipv6_valid`: `ipaddress.IPv6Address` (CPython 3.11 `_ip_int_from_string`) accepts it.
pub fn ipv6_valid(text: &[u8]) -> bool {
    if count(text, b':') < 7 && !text.windows(2).any(|w| w == b"::") {
        return false;
    }
    if text.is_empty() || text.contains(&b'%') || text.contains(&b'/') {
        return false;
    }
    let mut parts: Vec<Vec<u8>> = text.split(|&c| c == b':').map(<[u8]>::to_vec).collect();
    if parts.len() < 3 {
        return false;
    }
    if parts.last().is_some_and(|p| p.contains(&b'.')) {
        let last = parts.pop().unwrap_or_default();
        let Some(v4) = ipv4_int(&last) else {
            return false;
        };
        parts.push(format!("{:x}", (v4 >> 16) & 0xFFFF).into_bytes());
        parts.push(format!("{:x}", v4 & 0xFFFF).into_bytes());
    }
    if parts.len() > 9 {
        return false;
    }
    let mut skip: Option<usize> = None;
    for (i, p) in parts.iter().enumerate().take(parts.len() - 1).skip(1) {
        if p.is_empty() {
            if skip.is_some() {
                return false;
            }
            skip = Some(i);
        }
    }
    let n = parts.len();
    let (hi, lo) = if let Some(si) = skip {
        let mut hi = si;
        let mut lo = n - si - 1;
        if parts[0].is_empty() {
            hi -= 1;
            if hi != 0 {
                return false;
            }
        }
        if parts[n - 1].is_empty() {
            lo -= 1;
            if lo != 0 {
                return false;
            }
        }
        if 8 < hi + lo + 1 {
            return false;
        }
        (hi, lo)
    } else {
        if n != 8 || parts[0].is_empty() || parts[n - 1].is_empty() {
            return false;
        }
        (n, 0)
    };
    parts[..hi].iter().all(|p| hextet(p)) && parts[n - lo..].iter().all(|p| hextet(p))
}

// -- JWT -------------------------------------------------------------------------------

/// `base64.urlsafe_b64decode` of a part made of URL-safe characters, padded as
/// `_b64url_json` pads it (unused trailing bits are ignored, as `binascii` does).
fn b64url_decode(part: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(part.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0u32;
    for &c in part {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            _ => 63,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

/// `jwt_valid` on a candidate `eyJ<part>.<part>.<part>` (URL-safe characters only).
pub fn jwt_valid(token: &[u8]) -> bool {
    let parts: Vec<&[u8]> = token.split(|&c| c == b'.').collect();
    if parts.len() != 3 || parts[0].len() % 4 == 1 || parts[1].len() % 4 == 1 {
        return false;
    }
    let header = b64url_decode(parts[0]);
    let payload = b64url_decode(parts[1]);
    matches!(crate::json::top_object(&header), Some(crate::json::TopObject { alg_is_str: true }))
        && crate::json::top_object(&payload).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_words() {
        for (w, want) in [
            (&b"Version "[..], true),
            (b"app ver ", true),
            (b"app ver", true),
            (b"over ", false),
            (b"vers ", false),
            (b"x v. ", true),
            (b"x v.\x1c", true),
            (b"x v.a", false),
            (b"xv ", false),
            (b"v", true),
            (b"_v ", false),
            (b"rebuild", true),
            (b"releas", false),
            (b"", false),
        ] {
            assert_eq!(version_word_before(w), want, "{:?}", String::from_utf8_lossy(w));
        }
    }

    #[test]
    fn stack_spills_to_the_heap_in_order() {
        let mut s = Stack::<u8, 4>::new();
        s.extend(0..4);
        assert_eq!(s.as_slice(), &[0, 1, 2, 3]);
        s.extend(4..9);
        assert_eq!(s.as_slice(), &[0, 1, 2, 3, 4, 5, 6, 7, 8]);
        let digits = strip_separators(&b"+44 1234 5678 9012 3456 7890 1234 5678 9012 34"[..]);
        assert_eq!(digits.as_slice(), &b"441234567890123456789012345678901234"[..]);
    }

    #[test]
    fn luhn_and_brands() {
        assert!(luhn_valid(b"4111111111111111"));
        assert!(!luhn_valid(b"4111111111111112"));
        assert!(card_brand(b"2221000000000009"));
        assert!(!card_brand(b"1234567890123"));
    }

    #[test]
    fn iban() {
        assert!(iban_valid(b"GB29NWBK60161331926819"));
        assert!(!iban_valid(b"GB28NWBK60161331926819"));
    }

    #[test]
    fn ipv6() {
        assert!(ipv6_valid(b"2001:db8::1"));
        assert!(ipv6_valid(b"::ffff:1.2.3.4"));
        assert!(!ipv6_valid(b"1:2:3:4:5:6:7:8:9"));
        assert!(!ipv6_valid(b"::01.2.3.4"));
    }
}
