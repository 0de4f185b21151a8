//! An in-memory page store: a 64 MiB buffer of 4 KiB pages that keeps being
//! rewritten at scattered places, with a running checksum of what was read
//! back, like a small key-value store or a cache under write load.
//!
//! Usage: writer [WRITES]   (page writes, default 20000)

use std::env;

const PAGE_SIZE: usize = 4096;
const STORE_SIZE: usize = 64 << 20;
const PAGES: usize = STORE_SIZE / PAGE_SIZE;

struct PageStore {
    data: Vec<u8>,
    versions: Vec<u32>,
}

impl PageStore {
    fn new() -> Self {
        PageStore {
            data: vec![0; STORE_SIZE],
            versions: vec![0; PAGES],
        }
    }

    fn page(&self, index: usize) -> &[u8] {
        &self.data[index * PAGE_SIZE..(index + 1) * PAGE_SIZE]
    }

    fn write_page(&mut self, index: usize, seed: u64) {
        self.versions[index] += 1;
        let version = self.versions[index] as u64;
        let page = &mut self.data[index * PAGE_SIZE..(index + 1) * PAGE_SIZE];
        let mut x = seed ^ (version << 32) ^ index as u64;
        for chunk in page.chunks_exact_mut(8) {
            x ^= x << 7;
            x ^= x >> 9;
            chunk.copy_from_slice(&x.to_le_bytes());
        }
    }
}

fn checksum(bytes: &[u8]) -> u64 {
    // Adler-style sums, 8 bytes at a time.
    let (mut a, mut b) = (1u64, 0u64);
    for chunk in bytes.chunks_exact(8) {
        a = a.wrapping_add(u64::from_le_bytes(chunk.try_into().unwrap()));
        b = b.wrapping_add(a);
    }
    a ^ b.rotate_left(32)
}

fn main() {
    let writes: usize = env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000);

    let mut store = PageStore::new();
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut read_sum = 0u64;
    for i in 0..writes {
        rng ^= rng >> 12;
        rng ^= rng << 25;
        rng ^= rng >> 27;
        let r = rng.wrapping_mul(0x2545_f491_4f6c_dd1d);
        // A quarter of the store is hot and takes most of the writes.
        let page = if r.is_multiple_of(4) {
            (r >> 8) as usize % PAGES
        } else {
            (r >> 8) as usize % (PAGES / 4)
        };
        store.write_page(page, r);
        if i % 8 == 0 {
            let other = (r >> 40) as usize % PAGES;
            read_sum = read_sum.wrapping_add(checksum(store.page(other)));
        }
    }

    let touched = store.versions.iter().filter(|&&v| v > 0).count();
    let max_version = store.versions.iter().max().copied().unwrap_or(0);
    println!("{writes} writes, {touched} of {PAGES} pages touched, max version {max_version}");
    println!("read checksum  {read_sum:016x}");
    println!("store checksum {:016x}", checksum(&store.data));
}
