//! A ring of three registry nodes through real processes: `wmig up
//! --registries 3` starts them, one is killed with SIGKILL while a task
//! keeps checkpointing, the task still migrates and recovers from its
//! checkpoints after its owner is killed too, its output is that of a
//! local run; the killed node comes back and catches up, and a fourth node
//! joins and takes its share.

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use wmig_tests::artifacts;

use crate::cluster::{kill9, wait_until, Reaped, Up};
use crate::migration::assert_same_as_local;

/// `wmig registry members --json`'s rows.
fn members(up: &Up) -> Vec<Value> {
    up.json(&["registry", "members", "--json"])["members"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn member(up: &Up, name: &str) -> Value {
    members(up)
        .into_iter()
        .find(|m| m["name"] == name)
        .unwrap_or_else(|| panic!("no registry node {name}"))
}

fn alive(up: &Up) -> usize {
    members(up)
        .iter()
        .filter(|m| m["state"] == "alive" && !m["chunks"].is_null())
        .count()
}

fn checkpoint_seq(up: &Up, id: &str) -> Option<u64> {
    up.json(&["inspect", id, "--json"])["checkpoint_seq"].as_u64()
}

/// `holdmem ARGS` on worker-1, checkpointed every 300 ms: a steady stream
/// of chunks into the registry. Returns once it has a first checkpoint.
fn checkpointing(up: &Up, args: &[&str]) -> String {
    let id = up.submit(
        artifacts::HOLDMEM,
        &["--on", "worker-1", "--checkpoint-every", "300ms"],
        args,
    );
    wait_until("a first checkpoint", Duration::from_secs(60), || {
        checkpoint_seq(up, &id).is_some()
    });
    id
}

/// `kill -9` registry node `name` and wait until the task has committed
/// three more checkpoints without it; returns the killed pid.
fn kill_mid_checkpoint(up: &Up, id: &str, name: &str) -> u64 {
    let victim = member(up, name)["pid"].as_u64().expect("pid");
    kill9(victim);
    let seq = checkpoint_seq(up, id).unwrap_or(0);
    wait_until(
        &format!("checkpoints go on without {name}"),
        Duration::from_secs(30),
        || checkpoint_seq(up, id).is_some_and(|s| s >= seq + 3),
    );
    victim
}

#[test]
fn a_registry_node_killed_mid_checkpoint_loses_nothing_and_the_ring_heals() {
    let up = Up::start_supervised(3, &["--registries", "3", "--offline-timeout", "2000ms"]);
    let nodes = up.json(&["nodes", "--json"]);
    let registries: Vec<&Value> = nodes
        .as_array()
        .expect("array")
        .iter()
        .filter(|n| n["role"] == "registry")
        .collect();
    assert_eq!(registries.len(), 3, "{nodes}");
    assert!(registries
        .iter()
        .all(|r| r["pid"].as_u64().unwrap_or(0) > 0 && r["state"] == "online"));

    // 16 MiB of memory, scattered page writes for ~30 s, a checkpoint
    // every 300 ms: the registry takes a steady stream of chunks.
    let args = ["16", "150000", "0", "5000"];
    let id = checkpointing(&up, &args);
    // Kill a registry node in the middle of it.
    let victim = kill_mid_checkpoint(&up, &id, "registry-2");

    // The task moves, then its new owner dies: it resumes from its last
    // checkpoint, which must be whole on the surviving nodes.
    let report = up.json(&["migrate", &id, "worker-2", "--json"]);
    assert_eq!(report["to"], "worker-2", "{report}");
    let seq = checkpoint_seq(&up, &id).unwrap_or(0);
    wait_until(
        "worker-2 checkpoints the task",
        Duration::from_secs(30),
        || checkpoint_seq(&up, &id).is_some_and(|s| s > seq),
    );
    let owner_pid = up.node("worker-2")["pid"].as_u64().expect("pid");
    kill9(owner_pid);
    wait_until(
        "the task resumes on another worker",
        Duration::from_secs(30),
        || {
            let t = up.json(&["inspect", &id, "--json"]);
            t["owner"] != "worker-2" && t["state"] == "running"
        },
    );
    assert_same_as_local(&up, &id, artifacts::HOLDMEM, &args);

    // `wmig up` started registry-2 again; it catches up with the
    // checkpoints it missed.
    wait_until("registry-2 is back", Duration::from_secs(30), || {
        let m = member(&up, "registry-2");
        m["state"] == "alive" && m["pid"].as_u64() != Some(victim)
    });
    wait_until(
        "every node keeps the same checkpoints",
        Duration::from_secs(30),
        || {
            let m = members(&up);
            m.len() == 3 && m.iter().all(|n| n["manifests"] == m[0]["manifests"])
        },
    );

    // A fourth node joins and receives its share of the chunks.
    let first = member(&up, "registry-1")["addr"]
        .as_str()
        .expect("addr")
        .to_owned();
    let data = up.dir.join("registry-4");
    let fourth = Reaped(
        up.cmd(&[
            "registry",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--name",
            "registry-4",
            "--join",
            &first,
            "--offline-timeout",
            "2000ms",
            "--repair-every",
            "1s",
        ])
        .arg("--data")
        .arg(&data)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start registry-4"),
    );
    wait_until("the ring has four nodes", Duration::from_secs(30), || {
        alive(&up) == 4
    });
    wait_until(
        "registry-4 holds its share",
        Duration::from_secs(60),
        || {
            let m = members(&up);
            let total: u64 = m.iter().filter_map(|n| n["chunks"].as_u64()).sum();
            let four = member(&up, "registry-4")["chunks"].as_u64().unwrap_or(0);
            // A quarter of the copies, give or take the ring's imbalance.
            total > 0 && four * 8 > total
        },
    );
    drop(fourth);
}

/// An `s3s-fs` S3 server on loopback (installed by `scripts/deps`), with
/// one bucket `wmig`; killed on drop.
struct S3Server {
    _child: Reaped,
    endpoint: String,
    root: tempfile::TempDir,
}

fn s3_server() -> Option<S3Server> {
    let bin = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain(std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".cargo/bin")))
        .map(|d| d.join("s3s-fs"))
        .find(|p| p.is_file());
    let Some(bin) = bin else {
        assert!(
            std::env::var_os("CI").is_none(),
            "s3s-fs is not installed; scripts/deps installs it"
        );
        eprintln!("skipping: s3s-fs is not installed (scripts/deps installs it)");
        return None;
    };
    let root = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(root.path().join("wmig")).expect("bucket");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let child = Reaped(
        std::process::Command::new(bin)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", "wmig", "--secret-key", "wmig-secret"])
            .arg(root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start s3s-fs"),
    );
    wait_until("s3s-fs listens", Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    Some(S3Server {
        _child: child,
        endpoint: format!("http://127.0.0.1:{port}"),
        root,
    })
}

#[test]
fn registry_nodes_sharing_an_s3_bucket_keep_one_copy_and_outlive_a_kill() {
    let Some(s3) = s3_server() else { return };
    let up = Up::start_env(
        2,
        &[
            "--registries",
            "3",
            "--s3",
            "s3://wmig/cluster",
            "--offline-timeout",
            "2000ms",
        ],
        &[
            ("AWS_ACCESS_KEY_ID", "wmig"),
            ("AWS_SECRET_ACCESS_KEY", "wmig-secret"),
            ("AWS_ENDPOINT_URL", &s3.endpoint),
            ("AWS_REGION", "us-east-1"),
        ],
    );
    let args = ["8", "60000", "0", "5000"];
    let id = checkpointing(&up, &args);
    // One copy of each chunk: what the nodes hold adds up to the bucket.
    let ring = up.json(&["registry", "members", "--json"]);
    assert_eq!(ring["replicas"], 1, "{ring}");
    let chunks_dir = s3.root.path().join("wmig/cluster/chunks");
    let in_bucket = || std::fs::read_dir(&chunks_dir).map_or(0, |d| d.count());
    assert!(in_bucket() > 0, "no chunk reached the bucket");

    kill_mid_checkpoint(&up, &id, "registry-3");
    // The owner dies: the task resumes from a checkpoint whose chunks the
    // dead node had leased and written, read from the bucket by the others.
    kill9(up.node("worker-1")["pid"].as_u64().expect("pid"));
    assert_same_as_local(&up, &id, artifacts::HOLDMEM, &args);
}
