//! Real library code from crates.io on generated data: deflate/inflate with
//! miniz_oxide, JSON with serde_json, regex matching and SHA-256.
//!
//! Usage: libs [SCALE]

use std::env;

use miniz_oxide::deflate::compress_to_vec;
use miniz_oxide::inflate::decompress_to_vec;
use regex::Regex;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

const WORDS: [&str; 24] = [
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet",
    "kilo", "lima", "mike", "november", "oscar", "papa", "quebec", "romeo", "sierra", "tango",
    "uniform", "victor", "whiskey", "xray",
];

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn word(&mut self) -> &'static str {
        WORDS[self.below(WORDS.len())]
    }
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Order {
    id: u64,
    customer: String,
    email: String,
    items: Vec<Item>,
    shipped: bool,
    note: Option<String>,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Item {
    sku: String,
    quantity: u32,
    price: f64,
}

fn generate_text(rng: &mut Rng, lines: usize) -> String {
    let mut text = String::new();
    for i in 0..lines {
        let words = 6 + rng.below(10);
        for w in 0..words {
            if w > 0 {
                text.push(' ');
            }
            match rng.below(12) {
                0 => text.push_str(&format!("{}@{}.example.org", rng.word(), rng.word())),
                1 => text.push_str(&format!(
                    "{}-{:04}",
                    rng.word().to_uppercase(),
                    rng.below(10_000)
                )),
                2 => text.push_str(&format!(
                    "2024-{:02}-{:02}",
                    1 + rng.below(12),
                    1 + rng.below(28)
                )),
                _ => text.push_str(rng.word()),
            }
        }
        text.push_str(&format!(" (line {i})\n"));
    }
    text
}

fn generate_orders(rng: &mut Rng, count: usize) -> Vec<Order> {
    (0..count)
        .map(|id| {
            let customer = format!("{} {}", rng.word(), rng.word());
            let email = format!("{}.{}@example.com", rng.word(), id);
            let items = (0..1 + rng.below(5))
                .map(|_| Item {
                    sku: format!("{}-{}", rng.word().to_uppercase(), rng.below(1000)),
                    quantity: 1 + rng.below(9) as u32,
                    price: rng.below(100_000) as f64 / 100.0,
                })
                .collect();
            Order {
                id: id as u64,
                customer,
                email,
                items,
                shipped: rng.below(2) == 0,
                note: if rng.below(4) == 0 {
                    Some(format!("deliver to {} \"{}\"\n", rng.word(), rng.word()))
                } else {
                    None
                },
            }
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn main() {
    let scale: usize = env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(1);
    let mut rng = Rng(7);

    // deflate + inflate
    let text = generate_text(&mut rng, 10_000 * scale);
    let compressed = compress_to_vec(text.as_bytes(), 6);
    let restored = decompress_to_vec(&compressed).expect("inflate failed");
    assert_eq!(restored, text.as_bytes());
    println!(
        "deflate: {} -> {} bytes, sha256 of stream {}",
        text.len(),
        compressed.len(),
        &hex(&Sha256::digest(&compressed))[..16]
    );

    // serde_json
    let orders = generate_orders(&mut rng, 5_000 * scale);
    let json = serde_json::to_string(&orders).expect("serialize");
    let parsed: Vec<Order> = serde_json::from_str(&json).expect("parse");
    assert_eq!(parsed, orders);
    let value: serde_json::Value = serde_json::from_str(&json).expect("parse value");
    let pretty = serde_json::to_string_pretty(&value).expect("pretty");
    let total: f64 = parsed
        .iter()
        .flat_map(|o| &o.items)
        .map(|i| i.price * i.quantity as f64)
        .sum();
    println!(
        "json: {} orders, {} bytes compact, {} bytes pretty, total {:.2}",
        parsed.len(),
        json.len(),
        pretty.len(),
        total
    );

    // regex
    let email = Regex::new(r"\b([a-z]+)@([a-z]+)\.example\.org\b").unwrap();
    let code = Regex::new(r"\b[A-Z]{4,8}-(\d{4})\b").unwrap();
    let date = Regex::new(r"(\d{4})-(\d{2})-(\d{2})").unwrap();
    let emails = email.captures_iter(&text).filter(|c| c[1] == c[2]).count();
    let code_sum: u64 = code
        .captures_iter(&text)
        .map(|c| c[1].parse::<u64>().unwrap())
        .sum();
    let mut months = [0usize; 13];
    for c in date.captures_iter(&text) {
        months[c[2].parse::<usize>().unwrap()] += 1;
    }
    let replaced = date.replace_all(&text, "$3/$2/$1");
    println!(
        "regex: {} same-name emails, code sum {}, dates per month {:?}, replaced len {}",
        emails,
        code_sum,
        &months[1..],
        replaced.len()
    );

    // sha2
    let mut data = Vec::with_capacity((8 << 20) * scale);
    while data.len() < (8 << 20) * scale {
        data.extend_from_slice(&rng.next().to_le_bytes());
    }
    let mut hasher = Sha256::new();
    for chunk in data.chunks(4096) {
        hasher.update(chunk);
    }
    println!("sha256: {}", hex(&hasher.finalize()));
}
