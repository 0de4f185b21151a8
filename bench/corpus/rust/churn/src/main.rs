//! Allocation churn: string keys in a BTreeMap and a HashMap, a vector of
//! boxed trait objects, and a lot of short-lived formatted strings.
//!
//! Usage: alloc [ROUNDS]

use std::collections::{BTreeMap, HashMap};
use std::env;
use std::fmt;

const SYLLABLES: [&str; 16] = [
    "ka", "lo", "mi", "nu", "pe", "ra", "si", "to", "va", "ze", "qu", "an", "el", "or", "ix", "um",
];

struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn random_word(rng: &mut Lcg) -> String {
    let syllables = 1 + rng.below(3);
    let mut word = String::new();
    for _ in 0..syllables {
        word.push_str(SYLLABLES[rng.below(SYLLABLES.len() as u64) as usize]);
    }
    word
}

trait Shape: fmt::Display {
    fn area(&self) -> f64;
    fn perimeter(&self) -> f64;
    fn scale(&mut self, factor: f64);
}

struct Circle {
    radius: f64,
}

struct Rect {
    width: f64,
    height: f64,
}

struct Triangle {
    a: f64,
    b: f64,
    c: f64,
}

impl Shape for Circle {
    fn area(&self) -> f64 {
        std::f64::consts::PI * self.radius * self.radius
    }
    fn perimeter(&self) -> f64 {
        2.0 * std::f64::consts::PI * self.radius
    }
    fn scale(&mut self, factor: f64) {
        self.radius *= factor;
    }
}

impl Shape for Rect {
    fn area(&self) -> f64 {
        self.width * self.height
    }
    fn perimeter(&self) -> f64 {
        2.0 * (self.width + self.height)
    }
    fn scale(&mut self, factor: f64) {
        self.width *= factor;
        self.height *= factor;
    }
}

impl Shape for Triangle {
    fn area(&self) -> f64 {
        // Heron's formula
        let s = self.perimeter() / 2.0;
        (s * (s - self.a) * (s - self.b) * (s - self.c)).sqrt()
    }
    fn perimeter(&self) -> f64 {
        self.a + self.b + self.c
    }
    fn scale(&mut self, factor: f64) {
        self.a *= factor;
        self.b *= factor;
        self.c *= factor;
    }
}

impl fmt::Display for Circle {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "circle(r={:.2})", self.radius)
    }
}

impl fmt::Display for Rect {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "rect({:.2}x{:.2})", self.width, self.height)
    }
}

impl fmt::Display for Triangle {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "triangle({:.2}, {:.2}, {:.2})", self.a, self.b, self.c)
    }
}

fn random_shape(rng: &mut Lcg) -> Box<dyn Shape> {
    let x = 1.0 + rng.below(1000) as f64 / 100.0;
    let y = 1.0 + rng.below(1000) as f64 / 100.0;
    match rng.below(3) {
        0 => Box::new(Circle { radius: x }),
        1 => Box::new(Rect {
            width: x,
            height: y,
        }),
        _ => {
            let (a, b) = (x.max(y), x.min(y));
            Box::new(Triangle {
                a,
                b,
                c: a - b / 2.0 + 0.5,
            })
        }
    }
}

/// FNV-1a, to fold strings into one number for the output.
fn fnv1a(hash: u64, bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(hash, |h, &b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3))
}

fn main() {
    let rounds: usize = env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);

    let mut rng = Lcg(42);
    let mut frequencies: BTreeMap<String, usize> = BTreeMap::new();
    let mut positions: HashMap<String, Vec<usize>> = HashMap::new();
    let mut text_hash = 0xcbf2_9ce4_8422_2325u64;
    let mut total_area = 0.0;
    let mut total_perimeter = 0.0;

    for round in 0..rounds {
        // Word statistics over a fresh batch of words.
        for i in 0..20_000 {
            let word = random_word(&mut rng);
            *frequencies.entry(word.clone()).or_insert(0) += 1;
            positions.entry(word).or_default().push(round * 20_000 + i);
        }
        // Forget the rare words now and then, so the maps keep changing.
        if round % 3 == 2 {
            frequencies.retain(|_, count| *count > round);
            positions.retain(|word, _| frequencies.contains_key(word));
        }

        // Shapes behind trait objects.
        let mut shapes: Vec<Box<dyn Shape>> = (0..5_000).map(|_| random_shape(&mut rng)).collect();
        for shape in shapes.iter_mut() {
            shape.scale(1.5);
        }
        for shape in &shapes {
            total_area += shape.area();
            total_perimeter += shape.perimeter();
        }
        let descriptions: Vec<String> = shapes.iter().map(|s| s.to_string()).collect();
        let line = descriptions.join("; ");
        text_hash = fnv1a(text_hash, line.as_bytes());

        // A report line per round, built from the maps.
        let mut top: Vec<(&String, &usize)> = frequencies.iter().collect();
        top.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let report = top
            .iter()
            .take(10)
            .map(|(word, count)| format!("{word}={count}"))
            .collect::<Vec<_>>()
            .join(",");
        text_hash = fnv1a(text_hash, report.as_bytes());
    }

    let mut top: Vec<(&String, &usize)> = frequencies.iter().collect();
    top.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    println!("distinct words kept: {}", frequencies.len());
    for (word, count) in top.iter().take(5) {
        let first = positions[*word].first().copied().unwrap_or(0);
        println!("  {word:<8} {count:>6} (first at {first})");
    }
    let longest = positions.values().map(Vec::len).max().unwrap_or(0);
    println!("longest position list: {longest}");
    println!("total area {total_area:.3}, perimeter {total_perimeter:.3}");
    println!("text hash {text_hash:016x}");
}
