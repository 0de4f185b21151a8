//! Deep and plentiful recursion: naive Fibonacci, the Ackermann function,
//! binary trees built and walked recursively, and a deep recursive descent
//! over a long chain.
//!
//! Usage: recursion [DEPTH]   (binary-tree depth, default 16)

use std::env;

fn fib(n: u32) -> u64 {
    if n < 2 {
        n as u64
    } else {
        fib(n - 1) + fib(n - 2)
    }
}

fn ackermann(m: u64, n: u64) -> u64 {
    match (m, n) {
        (0, n) => n + 1,
        (m, 0) => ackermann(m - 1, 1),
        (m, n) => ackermann(m - 1, ackermann(m, n - 1)),
    }
}

enum Tree {
    Leaf,
    Node(Box<Tree>, Box<Tree>),
}

impl Tree {
    fn build(depth: u32) -> Tree {
        if depth == 0 {
            Tree::Leaf
        } else {
            Tree::Node(
                Box::new(Tree::build(depth - 1)),
                Box::new(Tree::build(depth - 1)),
            )
        }
    }

    fn count(&self) -> u64 {
        match self {
            Tree::Leaf => 1,
            Tree::Node(left, right) => 1 + left.count() + right.count(),
        }
    }
}

/// A sorted binary search tree, filled with keys in an order that makes it
/// degenerate into long paths, then searched recursively.
#[derive(Default)]
struct Bst {
    root: Option<Box<BstNode>>,
}

struct BstNode {
    key: u32,
    left: Option<Box<BstNode>>,
    right: Option<Box<BstNode>>,
}

impl Bst {
    fn insert(&mut self, key: u32) {
        fn go(node: &mut Option<Box<BstNode>>, key: u32) {
            match node {
                None => {
                    *node = Some(Box::new(BstNode {
                        key,
                        left: None,
                        right: None,
                    }))
                }
                Some(n) if key < n.key => go(&mut n.left, key),
                Some(n) => go(&mut n.right, key),
            }
        }
        go(&mut self.root, key);
    }

    fn depth(&self) -> usize {
        fn go(node: &Option<Box<BstNode>>) -> usize {
            match node {
                None => 0,
                Some(n) => 1 + go(&n.left).max(go(&n.right)),
            }
        }
        go(&self.root)
    }

    fn sum_in_range(&self, lo: u32, hi: u32) -> u64 {
        fn go(node: &Option<Box<BstNode>>, lo: u32, hi: u32) -> u64 {
            match node {
                None => 0,
                Some(n) => {
                    let mut sum = 0;
                    if lo < n.key {
                        sum += go(&n.left, lo, hi);
                    }
                    if (lo..=hi).contains(&n.key) {
                        sum += n.key as u64;
                    }
                    if n.key < hi {
                        sum += go(&n.right, lo, hi);
                    }
                    sum
                }
            }
        }
        go(&self.root, lo, hi)
    }
}

impl Drop for Bst {
    // Dropping a degenerate tree recursively would be fine at this depth, but
    // tear it down iteratively as one would for arbitrary input.
    fn drop(&mut self) {
        let mut stack: Vec<Box<BstNode>> = self.root.take().into_iter().collect();
        while let Some(mut node) = stack.pop() {
            stack.extend(node.left.take());
            stack.extend(node.right.take());
        }
    }
}

fn main() {
    let max_depth: u32 = env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(16);

    println!("fib(27) = {}", fib(27));
    println!("ackermann(2, 2000) = {}", ackermann(2, 2000));
    println!("ackermann(3, 7) = {}", ackermann(3, 7));

    // binary-trees, as in the Benchmarks Game
    let stretch = Tree::build(max_depth + 1);
    println!(
        "stretch tree of depth {}\t check: {}",
        max_depth + 1,
        stretch.count()
    );
    drop(stretch);
    let long_lived = Tree::build(max_depth);
    let mut depth = 4;
    while depth <= max_depth {
        let iterations = 1 << (max_depth - depth + 4);
        let check: u64 = (0..iterations).map(|_| Tree::build(depth).count()).sum();
        println!("{iterations}\t trees of depth {depth}\t check: {check}");
        depth += 2;
    }
    println!(
        "long lived tree of depth {max_depth}\t check: {}",
        long_lived.count()
    );

    // A search tree whose keys arrive in zig-zag runs, so its depth is in
    // the thousands and every operation recurses that deep.
    let mut bst = Bst::default();
    for run in 0..8u32 {
        for i in 0..500u32 {
            let key = if run % 2 == 0 {
                run * 1000 + i
            } else {
                run * 1000 + 999 - i
            };
            bst.insert(key);
        }
    }
    let mut total = 0;
    for lo in (0..8000).step_by(40) {
        total += bst.sum_in_range(lo, lo + 2500);
    }
    println!("bst depth {}, range sums {}", bst.depth(), total);
}
