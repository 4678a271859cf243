//! Tokens per second on one core for 16-digit card numbers: the `fpe` crate called directly
//! (the anchor) against kagi's `digits` template (the same FF1 call plus kagi's parsing and
//! checks) and `pan` template (first 6 and last 4 kept, Luhn-preserving cycle walk).
//! Run by `scripts/bench-tokenize`; `cargo run --release -p kagi-token --example ff1_speed [N]`.

use std::time::Instant;

use fpe::ff1::{FlexibleNumeralString, FF1};
use kagi_crypto::SecretKey32;
use kagi_token::{Template, Tokenizer};

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(200_000);
    let key = [7u8; 32];
    let cards: Vec<String> = (0..1000u64)
        .map(|i| {
            // Luhn-valid 16-digit numbers.
            let base = format!("411111{:09}", i * 7_919 % 1_000_000_000);
            (0..10)
                .map(|c| format!("{base}{c}"))
                .find(|s| {
                    let d: Vec<u16> = s.bytes().map(|b| u16::from(b - b'0')).collect();
                    kagi_token::luhn_valid(&d)
                })
                .unwrap_or(base)
        })
        .collect();
    let numerals: Vec<Vec<u16>> = cards
        .iter()
        .map(|s| s.bytes().map(|b| u16::from(b - b'0')).collect())
        .collect();

    let ff = FF1::<aes::Aes256>::new(&key, 10).expect("radix 10");
    let tk = Tokenizer::new(&SecretKey32::from_bytes(key)).expect("tokenizer");
    let mut sink = 0usize;
    let direct_run = |n: usize, sink: &mut usize| {
        let t = Instant::now();
        for i in 0..n {
            let ns = FlexibleNumeralString::from(numerals[i % numerals.len()].clone());
            let out: Vec<u16> = ff.encrypt(b"users.card", &ns).expect("ff1").into();
            *sink += usize::from(out[0]);
        }
        n as f64 / t.elapsed().as_secs_f64()
    };
    let rate = |tpl: Template, n: usize, sink: &mut usize| {
        let t = Instant::now();
        for i in 0..n {
            let tok = tk
                .tokenize(tpl, b"users.card", &cards[i % cards.len()])
                .expect("token");
            *sink += tok.len();
        }
        n as f64 / t.elapsed().as_secs_f64()
    };
    // Interleaved rounds, best of each: the machine is shared and noisy.
    let (mut direct, mut digits, mut pan) = (0f64, 0f64, 0f64);
    for _ in 0..5 {
        direct = direct.max(direct_run(n / 5, &mut sink));
        digits = digits.max(rate(Template::Digits, n / 5, &mut sink));
        pan = pan.max(rate(Template::Pan, n / 50, &mut sink));
    }
    println!(
        "one core, 16-digit card numbers, {n} tokens each (pan: {}), checksum {sink}",
        n / 10
    );
    println!("  fpe crate directly (anchor)   {direct:>10.0} tokens/s");
    println!("  kagi digits template          {digits:>10.0} tokens/s  = {:.2} x anchor (target >= 0.90)", digits / direct);
    println!(
        "  kagi pan template (Luhn walk) {pan:>10.0} tokens/s  = {:.2} x anchor",
        pan / direct
    );
}
