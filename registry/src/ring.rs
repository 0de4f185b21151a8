//! The consistent-hash ring that decides which registry nodes keep a chunk.
//!
//! Each alive node is placed at `vnodes` points (the first 8 bytes of
//! `blake3(name # i)`); a chunk's key is the first 8 bytes of its own hash,
//! already uniform. The chunk's owners are the first `replicas` distinct
//! nodes met walking clockwise from its key (binary search, then a short
//! walk). The first owner also holds the chunk's lease.
//!
//! Why virtual nodes: with one point per node the arcs differ by a factor
//! of ln(n) and a node leaving hands its whole arc to one neighbour; with
//! 128 the shares are within a few percent of each other (the `ring` unit
//! test and the benchmark measure it) and a leaving node's keys spread over
//! everyone. Joining or leaving moves only that node's share either way.

use wmig_proto::wire::registry::RingMember;
use wmig_proto::Hash;

/// Points per node unless configured.
pub const DEFAULT_VNODES: u32 = 128;
/// Copies of each chunk on local-disk nodes.
pub const DEFAULT_REPLICAS: usize = 2;

/// The ring over the alive members of a membership view.
#[derive(Clone, Debug, Default)]
pub struct Ring {
    /// (point, index into `members`), sorted by point.
    points: Vec<(u64, usize)>,
    /// Alive members, sorted by name (so every node builds the same ring).
    members: Vec<RingMember>,
}

/// A chunk hash's position on the ring.
pub fn key_of(hash: &Hash) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&hash.as_bytes()[..8]);
    u64::from_be_bytes(b)
}

fn point(name: &str, i: u32) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(name.as_bytes());
    h.update(b"#");
    h.update(&i.to_le_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&h.finalize().as_bytes()[..8]);
    u64::from_be_bytes(b)
}

impl Ring {
    /// The ring of the alive members among `members`.
    pub fn new(members: &[RingMember]) -> Ring {
        let mut alive: Vec<RingMember> = members.iter().filter(|m| m.alive).cloned().collect();
        alive.sort_by(|a, b| a.name.cmp(&b.name));
        alive.dedup_by(|a, b| a.name == b.name);
        let mut points = Vec::with_capacity(alive.iter().map(|m| m.vnodes as usize).sum());
        for (i, m) in alive.iter().enumerate() {
            for v in 0..m.vnodes.max(1) {
                points.push((point(&m.name, v), i));
            }
        }
        points.sort_unstable();
        Ring {
            points,
            members: alive,
        }
    }

    /// The alive members, sorted by name; owner indices refer to this.
    pub fn members(&self) -> &[RingMember] {
        &self.members
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Up to `n` distinct members owning `key`, first owner first.
    pub fn owners(&self, key: u64, n: usize) -> Vec<usize> {
        let want = n.min(self.members.len());
        let mut out = Vec::with_capacity(want);
        if want == 0 {
            return out;
        }
        let start = self.points.partition_point(|(p, _)| *p < key);
        for k in 0..self.points.len() {
            let (_, m) = self.points[(start + k) % self.points.len()];
            if !out.contains(&m) {
                out.push(m);
                if out.len() == want {
                    break;
                }
            }
        }
        out
    }

    /// The owners of a chunk.
    pub fn owners_of(&self, hash: &Hash, n: usize) -> Vec<usize> {
        self.owners(key_of(hash), n)
    }

    /// Each member's share of the key space as first owner (sums to 1).
    pub fn shares(&self) -> Vec<f64> {
        let mut share = vec![0.0; self.members.len()];
        let Some(&(last, last_owner)) = self.points.last() else {
            return share;
        };
        // The arc (previous point, this point] belongs to this point's node;
        // the first point also takes the arc that wraps around zero.
        let mut prev = last;
        for (i, &(p, m)) in self.points.iter().enumerate() {
            let arc = if i == 0 {
                p.wrapping_sub(last)
            } else {
                p - prev
            };
            share[m] += arc as f64 / 2f64.powi(64);
            prev = p;
        }
        if self.points.len() == 1 {
            share[last_owner] = 1.0;
        }
        share
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str, alive: bool) -> RingMember {
        RingMember {
            name: name.to_owned(),
            addr: "127.0.0.1:1".parse().expect("addr"),
            gossip: "127.0.0.1:2".parse().expect("addr"),
            vnodes: DEFAULT_VNODES,
            pid: 0,
            alive,
        }
    }

    fn keys(n: usize) -> Vec<Hash> {
        (0..n as u64).map(|i| Hash::of(&i.to_le_bytes())).collect()
    }

    #[test]
    fn owners_are_distinct_and_only_alive_members_own() {
        let ring = Ring::new(&[
            member("a", true),
            member("b", false),
            member("c", true),
            member("d", true),
        ]);
        assert_eq!(ring.members().len(), 3);
        for h in keys(1000) {
            let o = ring.owners_of(&h, 2);
            assert_eq!(o.len(), 2);
            assert_ne!(o[0], o[1]);
            assert!(o.iter().all(|i| ring.members()[*i].name != "b"));
        }
        // Asking for more owners than members gives every member once.
        assert_eq!(ring.owners_of(&Hash::of(b"x"), 5).len(), 3);
        assert!(Ring::new(&[]).owners(7, 2).is_empty());
    }

    #[test]
    fn shares_are_balanced_with_128_vnodes() {
        let names: Vec<String> = (1..=5).map(|i| format!("registry-{i}")).collect();
        let members: Vec<RingMember> = names.iter().map(|n| member(n, true)).collect();
        let ring = Ring::new(&members);
        let shares = ring.shares();
        let total: f64 = shares.iter().sum();
        assert!((total - 1.0).abs() < 1e-9, "shares sum to {total}");
        let max = shares.iter().copied().fold(0.0, f64::max);
        // Within 25 % of the mean (0.2); one vnode per node is often 2x off.
        assert!(max < 0.25, "most loaded node has {max} of the key space");
        let mut counts = [0usize; 5];
        for h in keys(50_000) {
            counts[ring.owners_of(&h, 1)[0]] += 1;
        }
        let top = *counts.iter().max().expect("counts");
        assert!(top < 12_500, "most loaded node owns {top} of 50000 keys");
    }

    #[test]
    fn a_joining_node_takes_only_its_share() {
        let three: Vec<RingMember> = ["a", "b", "c"].iter().map(|n| member(n, true)).collect();
        let mut four = three.clone();
        four.push(member("d", true));
        let (before, after) = (Ring::new(&three), Ring::new(&four));
        let name = |r: &Ring, h: &Hash| r.members()[r.owners_of(h, 1)[0]].name.clone();
        let all = keys(20_000);
        let moved: Vec<&Hash> = all
            .iter()
            .filter(|h| name(&before, h) != name(&after, h))
            .collect();
        // Every key that moved moved to the new node, and about a quarter moved.
        assert!(moved.iter().all(|h| name(&after, h) == "d"));
        let frac = moved.len() as f64 / all.len() as f64;
        assert!((0.18..0.32).contains(&frac), "{frac} of the keys moved");
    }
}
