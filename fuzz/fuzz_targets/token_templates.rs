//! Token templates on arbitrary values: every template either refuses with a reason or makes
//! a token of the same length that detokenizes to the value; never a panic.
#![no_main]

use kagi_crypto::SecretKey32;
use kagi_token::{mask, Alphabet, FieldOptions, PanKeep, Template, Tokenizer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = std::str::from_utf8(data) else { return };
    let t = Tokenizer::new(&SecretKey32::from_bytes([3; 32])).unwrap();
    // The value's own characters as a custom alphabet, when they are distinct.
    if let Ok(a) = Alphabet::parse(value) {
        let o = FieldOptions { keep: PanKeep::default(), alphabet: Some(a) };
        let rev: String = value.chars().rev().collect();
        if let Ok(tok) = t.tokenize_with(Template::Custom, &o, b"fuzz", &rev) {
            assert_eq!(t.detokenize_with(Template::Custom, &o, b"fuzz", &tok).unwrap(), rev);
        }
    }
    for tpl in ["pan", "mynumber", "phone", "email", "digits", "alnum"] {
        let tpl: Template = tpl.parse().unwrap();
        let _ = mask(tpl, value);
        if let Ok(tok) = t.tokenize(tpl, b"fuzz", value) {
            assert_eq!(tok.chars().count(), value.chars().count());
            assert_eq!(t.detokenize(tpl, b"fuzz", &tok).unwrap(), value);
        }
    }
});
