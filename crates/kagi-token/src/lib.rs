//! Format-preserving tokens: which characters of a value FF1 changes, which it keeps, and how
//! a token stays valid for downstream checks (Luhn for card numbers, the check digit of a
//! Japanese My Number). Pure: the key service supplies the FF1 key.
//!
//! | template | input | token |
//! |---|---|---|
//! | `pan` | 12-19 digits, spaces or dashes kept in place, Luhn-valid | first 6 and last 4 kept (or as [`PanKeep`] says; at least 6 must change); the token passes Luhn |
//! | `mynumber` | 12 digits with a valid check digit | 11 digits change; the check digit is recomputed |
//! | `phone` | digits with `+ - ( ) . ` and spaces | every digit changes (at least 6), formatting kept |
//! | `email` | `local@domain` | letters and digits of the local part change (at least 4), the rest kept |
//! | `digits` | at least 6 digits | all change |
//! | `alnum` | at least 4 of `0-9A-Za-z` | all change, within that alphabet |
//!
//! Every template checks that the part FF1 works on has at least 1,000,000 values. The FF1 tweak
//! is the caller's tweak (e.g. `table.column` or a tenant), the template name and, for `pan`, the
//! kept digits, so equal middles of different cards give unrelated tokens.

#![forbid(unsafe_code)]

use kagi_crypto::ff1::Ff1;
use kagi_crypto::SecretKey32;

/// Why a value cannot be tokenized or detokenized. One sentence each.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// Unknown template name.
    #[error("unknown template {0:?}: use pan, mynumber, phone, email, digits, alnum or custom")]
    UnknownTemplate(String),
    /// The value does not have the template's form.
    #[error("{0}")]
    Format(String),
    /// FF1 refused (should not happen after the template's own checks).
    #[error("{0}")]
    Crypto(String),
}

/// A template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Template {
    /// Card numbers.
    Pan,
    /// Japanese individual numbers.
    MyNumber,
    /// Phone numbers.
    Phone,
    /// E-mail addresses (local part).
    Email,
    /// Digit strings.
    Digits,
    /// Letters and digits.
    Alnum,
    /// Characters of an alphabet the caller gives ([`Alphabet`]).
    Custom,
}

impl std::str::FromStr for Template {
    type Err = TokenError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "pan" => Self::Pan,
            "mynumber" => Self::MyNumber,
            "phone" => Self::Phone,
            "email" => Self::Email,
            "digits" => Self::Digits,
            "alnum" => Self::Alnum,
            "custom" => Self::Custom,
            _ => return Err(TokenError::UnknownTemplate(s.to_string())),
        })
    }
}

impl Template {
    /// The template's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pan => "pan",
            Self::MyNumber => "mynumber",
            Self::Phone => "phone",
            Self::Email => "email",
            Self::Digits => "digits",
            Self::Alnum => "alnum",
            Self::Custom => "custom",
        }
    }
}

const ALNUM: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

fn bad(m: impl Into<String>) -> TokenError {
    TokenError::Format(m.into())
}

fn crypto(e: kagi_crypto::CryptoError) -> TokenError {
    TokenError::Crypto(e.to_string())
}

/// Direction of the transform.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    Encrypt,
    Decrypt,
}

/// A value split into the characters FF1 changes (as numerals) and everything else.
struct Split {
    chars: Vec<char>,
    /// Indexes into `chars` that FF1 works on.
    slots: Vec<usize>,
}

impl Split {
    fn numerals(&self, radix: u32) -> Vec<u16> {
        self.slots
            .iter()
            .map(|&i| numeral(self.chars[i], radix))
            .collect()
    }
    fn put(&mut self, numerals: &[u16], radix: u32) {
        for (&i, &n) in self.slots.iter().zip(numerals) {
            self.chars[i] = character(n, radix);
        }
    }
    fn text(&self) -> String {
        self.chars.iter().collect()
    }
}

fn numeral(c: char, radix: u32) -> u16 {
    if radix == 10 {
        c.to_digit(10).map_or(0, |d| d as u16)
    } else {
        ALNUM
            .iter()
            .position(|&a| a as char == c)
            .map_or(0, |p| p as u16)
    }
}

fn character(n: u16, radix: u32) -> char {
    if radix == 10 {
        char::from(b'0' + n as u8)
    } else {
        ALNUM[usize::from(n)] as char
    }
}

/// Luhn (ISO/IEC 7812-1): true when the digits pass.
pub fn luhn_valid(digits: &[u16]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            let d = u32::from(d);
            if i % 2 == 1 {
                let x = d * 2;
                if x > 9 {
                    x - 9
                } else {
                    x
                }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// The My Number check digit of the first 11 digits (Ministerial Ordinance formula:
/// Σ P_n·Q_n over n = 1..11 from the right, Q_n = n+1 for n ≤ 6 and n−5 above; the digit is 0
/// when the sum mod 11 is 0 or 1, else 11 − (sum mod 11)).
pub fn mynumber_check_digit(first11: &[u16]) -> u16 {
    let sum: u32 = first11
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &p)| {
            let n = i as u32 + 1;
            let q = if n <= 6 { n + 1 } else { n - 5 };
            u32::from(p) * q
        })
        .sum();
    let r = sum % 11;
    if r <= 1 {
        0
    } else {
        (11 - r) as u16
    }
}

/// How many leading and trailing digits of a card number a `pan` token keeps (default 6 and 4:
/// the issuer's BIN and the digits receipts show).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PanKeep {
    /// Leading digits kept.
    pub first: usize,
    /// Trailing digits kept.
    pub last: usize,
}

impl Default for PanKeep {
    fn default() -> Self {
        Self { first: 6, last: 4 }
    }
}

/// The characters of a `custom` template, in numeral order: 2 to 65,536 distinct characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alphabet(Vec<char>);

impl Alphabet {
    /// Parses an alphabet given as a string of its characters.
    pub fn parse(s: &str) -> Result<Self, TokenError> {
        let chars: Vec<char> = s.chars().collect();
        if !(2..=65_536).contains(&chars.len()) {
            return Err(bad("an alphabet has 2 to 65,536 characters"));
        }
        let mut seen = std::collections::HashSet::new();
        if let Some(c) = chars.iter().find(|c| !seen.insert(**c)) {
            return Err(bad(format!("the alphabet repeats {c:?}")));
        }
        Ok(Self(chars))
    }

    fn radix(&self) -> u32 {
        self.0.len() as u32
    }
}

/// Per-field settings beside the template: the card digits kept (`pan`) and the alphabet
/// (`custom`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldOptions {
    /// `pan`: digits kept.
    pub keep: PanKeep,
    /// `custom`: the alphabet.
    pub alphabet: Option<Alphabet>,
}

/// FF1 under `key` for one field.
#[derive(Debug)]
pub struct Tokenizer {
    decimal: Ff1,
    alnum: Ff1,
    /// For custom alphabets, whose radix is only known per request.
    key: SecretKey32,
}

impl Tokenizer {
    /// Prepares FF1 (radix 10 and 62) under `key`.
    pub fn new(key: &SecretKey32) -> Result<Self, TokenError> {
        Ok(Self {
            decimal: Ff1::new(key, 10).map_err(crypto)?,
            alnum: Ff1::new(key, 62).map_err(crypto)?,
            key: SecretKey32::from_bytes(*key.expose()),
        })
    }

    /// A token for `value`.
    pub fn tokenize(&self, t: Template, tweak: &[u8], value: &str) -> Result<String, TokenError> {
        self.transform(t, &FieldOptions::default(), tweak, value, Dir::Encrypt)
    }

    /// The value behind `token` (made with the same key version, template and tweak).
    pub fn detokenize(&self, t: Template, tweak: &[u8], token: &str) -> Result<String, TokenError> {
        self.transform(t, &FieldOptions::default(), tweak, token, Dir::Decrypt)
    }

    /// [`tokenize`](Self::tokenize) with per-field settings.
    pub fn tokenize_with(
        &self,
        t: Template,
        opts: &FieldOptions,
        tweak: &[u8],
        value: &str,
    ) -> Result<String, TokenError> {
        self.transform(t, opts, tweak, value, Dir::Encrypt)
    }

    /// [`detokenize`](Self::detokenize) with the per-field settings the token was made with.
    pub fn detokenize_with(
        &self,
        t: Template,
        opts: &FieldOptions,
        tweak: &[u8],
        token: &str,
    ) -> Result<String, TokenError> {
        self.transform(t, opts, tweak, token, Dir::Decrypt)
    }

    fn ff1(&self, radix: u32) -> &Ff1 {
        if radix == 10 {
            &self.decimal
        } else {
            &self.alnum
        }
    }

    fn run(&self, radix: u32, tweak: &[u8], n: Vec<u16>, dir: Dir) -> Result<Vec<u16>, TokenError> {
        let ff = self.ff1(radix);
        match dir {
            Dir::Encrypt => ff.encrypt(tweak, n),
            Dir::Decrypt => ff.decrypt(tweak, n),
        }
        .map_err(crypto)
    }

    fn transform(
        &self,
        t: Template,
        opts: &FieldOptions,
        user_tweak: &[u8],
        value: &str,
        dir: Dir,
    ) -> Result<String, TokenError> {
        if value.len() > 256 {
            return Err(bad("the value is longer than 256 bytes"));
        }
        let mut tweak = Vec::with_capacity(user_tweak.len() + 16);
        tweak.extend_from_slice(user_tweak);
        tweak.push(0);
        tweak.extend_from_slice(t.as_str().as_bytes());
        if t == Template::Digits {
            // The common bulk case, on bytes.
            let b = value.as_bytes();
            if !b.iter().all(u8::is_ascii_digit) {
                return Err(bad("a digits value has only the digits 0-9"));
            }
            if b.len() < 6 {
                return Err(bad(format!(
                    "{} digits make fewer than 1,000,000 values: at least 6 are needed",
                    b.len()
                )));
            }
            let n: Vec<u16> = b.iter().map(|&c| u16::from(c - b'0')).collect();
            let out = self.run(10, &tweak, n, dir)?;
            return Ok(out.iter().map(|&d| char::from(b'0' + d as u8)).collect());
        }
        let chars: Vec<char> = value.chars().collect();
        match t {
            Template::Digits | Template::Phone => {
                let formatting = |c: char| matches!(c, '+' | '-' | '(' | ')' | '.' | ' ');
                if t == Template::Digits && !chars.iter().all(char::is_ascii_digit) {
                    return Err(bad("a digits value has only the digits 0-9"));
                }
                if !chars.iter().all(|&c| c.is_ascii_digit() || formatting(c)) {
                    return Err(bad("a phone number has only digits, spaces and + - ( ) ."));
                }
                let slots: Vec<usize> = (0..chars.len())
                    .filter(|&i| chars[i].is_ascii_digit())
                    .collect();
                if slots.len() < 6 {
                    return Err(bad(format!(
                        "{} digits make fewer than 1,000,000 values: at least 6 are needed",
                        slots.len()
                    )));
                }
                let mut s = Split { chars, slots };
                let out = self.run(10, &tweak, s.numerals(10), dir)?;
                s.put(&out, 10);
                Ok(s.text())
            }
            Template::Alnum | Template::Email => {
                let (local_end, ok) = if t == Template::Email {
                    let at = chars.iter().rposition(|&c| c == '@');
                    match at {
                        Some(a) if a > 0 && a + 1 < chars.len() => (a, true),
                        _ => (0, false),
                    }
                } else {
                    (chars.len(), chars.iter().all(char::is_ascii_alphanumeric))
                };
                if !ok {
                    return Err(bad(if t == Template::Email {
                        "an e-mail address is LOCAL@DOMAIN"
                    } else {
                        "an alnum value has only the letters A-Z, a-z and the digits 0-9"
                    }));
                }
                let slots: Vec<usize> = (0..local_end)
                    .filter(|&i| chars[i].is_ascii_alphanumeric())
                    .collect();
                if slots.len() < 4 {
                    return Err(bad(format!(
                        "{} letters and digits make fewer than 1,000,000 values: at least 4 are needed",
                        slots.len()
                    )));
                }
                let mut s = Split { chars, slots };
                let out = self.run(62, &tweak, s.numerals(62), dir)?;
                s.put(&out, 62);
                Ok(s.text())
            }
            Template::MyNumber => {
                if chars.len() != 12 || !chars.iter().all(char::is_ascii_digit) {
                    return Err(bad("a My Number is 12 digits"));
                }
                let mut s = Split {
                    chars,
                    slots: (0..11).collect(),
                };
                let all: Vec<u16> = s.chars.iter().map(|&c| numeral(c, 10)).collect();
                if mynumber_check_digit(&all[..11]) != all[11] {
                    return Err(bad("the My Number's check digit is wrong"));
                }
                let out = self.run(10, &tweak, all[..11].to_vec(), dir)?;
                s.put(&out, 10);
                s.chars[11] = character(mynumber_check_digit(&out), 10);
                Ok(s.text())
            }
            Template::Pan => self.pan(&mut tweak, opts.keep, chars, dir),
            Template::Custom => {
                let a = opts
                    .alphabet
                    .as_ref()
                    .ok_or_else(|| bad("the custom template needs an alphabet"))?;
                let n: Vec<u16> = chars
                    .iter()
                    .map(|c| a.0.iter().position(|x| x == c).map(|p| p as u16))
                    .collect::<Option<_>>()
                    .ok_or_else(|| bad("the value has a character outside the alphabet"))?;
                let domain =
                    (0..n.len()).try_fold(1u64, |d, _| d.checked_mul(u64::from(a.radix())));
                if domain.is_some_and(|d| d < kagi_crypto::ff1::MIN_DOMAIN) {
                    return Err(bad(format!(
                        "{} characters of a {}-character alphabet make fewer than 1,000,000 values",
                        n.len(),
                        a.radix()
                    )));
                }
                tweak.push(0);
                tweak.extend(a.0.iter().collect::<String>().bytes());
                let ff = Ff1::new(&self.key, a.radix()).map_err(crypto)?;
                let out = match dir {
                    Dir::Encrypt => ff.encrypt(&tweak, n),
                    Dir::Decrypt => ff.decrypt(&tweak, n),
                }
                .map_err(crypto)?;
                Ok(out.iter().map(|&i| a.0[usize::from(i)]).collect())
            }
        }
    }

    /// Card numbers: the first and last digits `keep` names are kept (and in the tweak), the
    /// middle under FF1, cycle-walked until the whole number passes Luhn again. The middle is
    /// at least 6 digits, so the FF1 domain is at least 1,000,000.
    fn pan(
        &self,
        tweak: &mut Vec<u8>,
        keep: PanKeep,
        chars: Vec<char>,
        dir: Dir,
    ) -> Result<String, TokenError> {
        if !chars
            .iter()
            .all(|&c| c.is_ascii_digit() || c == ' ' || c == '-')
        {
            return Err(bad("a card number has only digits, spaces and dashes"));
        }
        let slots: Vec<usize> = (0..chars.len())
            .filter(|&i| chars[i].is_ascii_digit())
            .collect();
        let n = slots.len();
        if !(12..=19).contains(&n) {
            return Err(bad(format!("a card number has 12-19 digits (got {n})")));
        }
        let (first, last) = (keep.first, keep.last);
        if first + last + 6 > n {
            return Err(bad(format!(
                "keeping {first} + {last} of {n} digits leaves fewer than 6 to change (under 1,000,000 tokens): keep fewer"
            )));
        }
        let mut all: Vec<u16> = slots.iter().map(|&i| numeral(chars[i], 10)).collect();
        if !luhn_valid(&all) {
            return Err(bad("the card number fails the Luhn check"));
        }
        tweak.push(0);
        tweak.extend(format!("{first}.{last}.").bytes());
        tweak.extend(
            all[..first]
                .iter()
                .chain(&all[n - last..])
                .map(|&d| b'0' + d as u8),
        );
        let mut middle = all[first..n - last].to_vec();
        // A permutation of the middles restricted to Luhn-valid numbers: each step stays in
        // FF1's cycle, and the expected number of steps is 10.
        loop {
            middle = self.run(10, tweak, middle, dir)?;
            all[first..n - last].copy_from_slice(&middle);
            if luhn_valid(&all) {
                break;
            }
        }
        let mut s = Split { chars, slots };
        s.put(&all, 10);
        Ok(s.text())
    }
}

/// The irreversible mask of a value: what a support screen shows.
pub fn mask(t: Template, value: &str) -> Result<String, TokenError> {
    let chars: Vec<char> = value.chars().collect();
    let digit_positions: Vec<usize> = (0..chars.len())
        .filter(|&i| chars[i].is_ascii_alphanumeric())
        .collect();
    let keep: Box<dyn Fn(usize, usize) -> bool> = match t {
        Template::Pan => Box::new(|k, n| k < 6 || k + 4 >= n),
        Template::Email => {
            let at = chars
                .iter()
                .rposition(|&c| c == '@')
                .ok_or_else(|| bad("an e-mail address is LOCAL@DOMAIN"))?;
            let mut out: String = chars[..1].iter().collect();
            out.push_str("***");
            out.extend(&chars[at..]);
            return Ok(out);
        }
        _ => Box::new(|k, n| k + 4 >= n),
    };
    let n = digit_positions.len();
    let mut out = chars.clone();
    for (k, &i) in digit_positions.iter().enumerate() {
        if !keep(k, n) {
            out[i] = '*';
        }
    }
    Ok(out.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tk() -> Tokenizer {
        Tokenizer::new(&SecretKey32::from_bytes([7; 32])).unwrap()
    }

    fn digits(s: &str) -> Vec<u16> {
        s.chars()
            .filter(char::is_ascii_digit)
            .map(|c| c.to_digit(10).unwrap() as u16)
            .collect()
    }

    /// A pseudo-random generator for the property tests (deterministic, no dependency).
    fn rng(seed: &mut u64) -> u64 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed
    }

    fn luhn_fix(mut d: Vec<u16>) -> Vec<u16> {
        let last = d.len() - 1;
        for c in 0..10 {
            d[last] = c;
            if luhn_valid(&d) {
                break;
            }
        }
        d
    }

    #[test]
    fn every_template_round_trips() {
        let t = tk();
        let mut seed = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..300 {
            let mut r = || rng(&mut seed);
            let len = 16 + (r() % 4) as usize;
            let pan: Vec<u16> = luhn_fix((0..len).map(|_| (r() % 10) as u16).collect());
            let pan: String = pan.iter().map(|&d| character(d, 10)).collect();
            let mut mn: Vec<u16> = (0..11).map(|_| (r() % 10) as u16).collect();
            mn.push(mynumber_check_digit(&mn));
            let mn: String = mn.iter().map(|&d| character(d, 10)).collect();
            let phone = format!("+81 90-{:04}-{:04}", r() % 10000, r() % 10000);
            let local: String = (0..4 + r() % 8)
                .map(|_| ALNUM[(r() % 62) as usize] as char)
                .collect();
            let email = format!("{local}.x+tag@example.co.jp");
            let dig: String = (0..6 + r() % 10)
                .map(|_| char::from(b'0' + (r() % 10) as u8))
                .collect();
            let an: String = (0..4 + r() % 10)
                .map(|_| ALNUM[(r() % 62) as usize] as char)
                .collect();
            for (tpl, v) in [
                (Template::Pan, pan.as_str()),
                (Template::MyNumber, mn.as_str()),
                (Template::Phone, phone.as_str()),
                (Template::Email, email.as_str()),
                (Template::Digits, dig.as_str()),
                (Template::Alnum, an.as_str()),
            ] {
                let tok = t.tokenize(tpl, b"users.card", v).unwrap();
                assert_eq!(
                    tok.chars().count(),
                    v.chars().count(),
                    "{tpl:?} keeps the length"
                );
                assert_eq!(
                    t.detokenize(tpl, b"users.card", &tok).unwrap(),
                    v,
                    "{tpl:?} {v}"
                );
                if tpl == Template::Pan {
                    let (a, b) = (digits(v), digits(&tok));
                    assert!(luhn_valid(&b), "card tokens pass Luhn: {tok}");
                    assert_eq!(a[..6], b[..6]);
                    assert_eq!(a[a.len() - 4..], b[b.len() - 4..]);
                }
                if tpl == Template::MyNumber {
                    let b = digits(&tok);
                    assert_eq!(
                        mynumber_check_digit(&b[..11]),
                        b[11],
                        "My Number tokens carry a valid check digit"
                    );
                }
            }
        }
    }

    #[test]
    fn formats_are_kept_and_tweaks_matter() {
        let t = tk();
        let tok = t
            .tokenize(Template::Pan, b"", "4111 1111 1111 1111")
            .unwrap();
        assert!(tok.starts_with("4111 11") && tok.ends_with("1111") && tok.as_bytes()[4] == b' ');
        assert_ne!(tok, "4111 1111 1111 1111");
        let a = t.tokenize(Template::Digits, b"a", "1234567890").unwrap();
        let b = t.tokenize(Template::Digits, b"b", "1234567890").unwrap();
        assert_ne!(a, b);
        let e = t
            .tokenize(Template::Email, b"", "alice.smith@example.com")
            .unwrap();
        assert!(e.ends_with("@example.com") && e.as_bytes()[5] == b'.');
        let p = t
            .tokenize(Template::Phone, b"", "+1 (555) 010-9999")
            .unwrap();
        assert_eq!(
            p.replace(|c: char| c.is_ascii_digit(), "#"),
            "+# (###) ###-####"
        );
    }

    #[test]
    fn bad_values_are_refused_with_a_reason() {
        let t = tk();
        for (tpl, v) in [
            (Template::Pan, "4111111111111112"),
            (Template::Pan, "411111111111111"),
            (Template::Pan, "4111x11111111111"),
            (Template::MyNumber, "123456789012"),
            (Template::MyNumber, "12345"),
            (Template::Digits, "12345"),
            (Template::Digits, "12345a"),
            (Template::Alnum, "abc"),
            (Template::Alnum, "ab-cd"),
            (Template::Email, "bob@example.com"),
            (Template::Email, "no-at-sign"),
            (Template::Phone, "12345"),
        ] {
            let e = t.tokenize(tpl, b"", v).unwrap_err();
            assert!(matches!(e, TokenError::Format(_)), "{tpl:?} {v}: {e}");
        }
        assert!("card".parse::<Template>().is_err());
    }

    #[test]
    fn card_digits_kept_as_configured() {
        let t = tk();
        let keep = |first, last| FieldOptions {
            keep: PanKeep { first, last },
            alphabet: None,
        };
        let v = "4111111111111111";
        let tok = t.tokenize_with(Template::Pan, &keep(0, 4), b"", v).unwrap();
        assert!(tok.ends_with("1111") && luhn_valid(&digits(&tok)));
        assert_eq!(
            t.detokenize_with(Template::Pan, &keep(0, 4), b"", &tok)
                .unwrap(),
            v
        );
        assert_ne!(tok, t.tokenize(Template::Pan, b"", v).unwrap());
        // 15-digit cards work once fewer digits are kept.
        let amex = "378282246310005";
        assert!(t.tokenize(Template::Pan, b"", amex).is_err());
        let tok = t
            .tokenize_with(Template::Pan, &keep(4, 4), b"", amex)
            .unwrap();
        assert_eq!(
            t.detokenize_with(Template::Pan, &keep(4, 4), b"", &tok)
                .unwrap(),
            amex
        );
    }

    #[test]
    fn custom_alphabets() {
        let t = tk();
        let hex = FieldOptions {
            keep: PanKeep::default(),
            alphabet: Some(Alphabet::parse("0123456789abcdef").unwrap()),
        };
        let v = "deadbeef";
        let tok = t.tokenize_with(Template::Custom, &hex, b"", v).unwrap();
        assert!(tok.len() == 8 && tok.chars().all(|c| c.is_ascii_hexdigit()) && tok != v);
        assert_eq!(
            t.detokenize_with(Template::Custom, &hex, b"", &tok)
                .unwrap(),
            v
        );
        let kana = FieldOptions {
            keep: PanKeep::default(),
            alphabet: Some(Alphabet::parse("アイウエオカキクケコ").unwrap()),
        };
        let tok = t
            .tokenize_with(Template::Custom, &kana, b"", "アイウエオカ")
            .unwrap();
        assert_eq!(
            t.detokenize_with(Template::Custom, &kana, b"", &tok)
                .unwrap(),
            "アイウエオカ"
        );
        assert!(
            t.tokenize_with(Template::Custom, &hex, b"", "beef")
                .is_err(),
            "16^4 < 10^6"
        );
        assert!(t
            .tokenize_with(Template::Custom, &hex, b"", "deadbeeg")
            .is_err());
        assert!(
            t.tokenize(Template::Custom, b"", "deadbeef").is_err(),
            "no alphabet"
        );
        assert!(Alphabet::parse("aa").is_err() && Alphabet::parse("a").is_err());
    }

    #[test]
    fn check_digits_and_masks() {
        // A published My Number sample: 123456789018 (check digit 8).
        assert_eq!(mynumber_check_digit(&digits("12345678901")), 8);
        assert!(luhn_valid(&digits("4111111111111111")));
        assert!(!luhn_valid(&digits("4111111111111112")));
        assert_eq!(
            mask(Template::Pan, "4111-1111-1111-1111").unwrap(),
            "4111-11**-****-1111"
        );
        assert_eq!(
            mask(Template::Email, "alice@example.com").unwrap(),
            "a***@example.com"
        );
        assert_eq!(
            mask(Template::MyNumber, "123456789018").unwrap(),
            "********9018"
        );
    }
}
