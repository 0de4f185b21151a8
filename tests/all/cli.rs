//! The CLI's own documentation: shell completions and man pages, generated
//! from the parser, so they list the commands and flags that really exist.

use crate::support::{run, stderr, stdout, wmig};

#[test]
fn completions_and_man_pages_cover_every_command() {
    for shell in ["bash", "zsh", "fish"] {
        let o = run(wmig().args(["completions", shell]));
        assert!(o.status.success(), "{shell}: {}", stderr(&o));
        let script = stdout(&o);
        for word in ["migrate", "submit", "--max-memory-size"] {
            assert!(script.contains(word), "{shell} completion lacks {word}");
        }
        assert!(
            !script.contains("rewrite-child"),
            "internal commands stay hidden"
        );
    }
    let o = run(wmig().args(["completions", "tcsh"]));
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("bash"),
        "names the shells it knows: {}",
        stderr(&o)
    );

    let dir = tempfile::TempDir::new().expect("tempdir");
    let o = run(wmig().args(["man", "--out"]).arg(dir.path()));
    assert!(o.status.success(), "{}", stderr(&o));
    let page = std::fs::read_to_string(dir.path().join("wmig-migrate.1")).expect("wmig-migrate.1");
    assert!(
        page.contains(".TH") && page.contains("wmig\\-migrate"),
        "{page}"
    );
    assert!(dir.path().join("wmig.1").is_file());

    let top = stdout(&run(wmig().arg("man")));
    assert!(
        top.contains(".TH") && top.contains("migrate"),
        "wmig man prints wmig.1"
    );
}

/// A directory issued for another machine carries the addresses that
/// machine reaches the servers at, when the operator names them.
#[test]
fn cert_issue_writes_the_addresses_the_other_machine_needs() {
    let tmp = tempfile::TempDir::new().expect("tempdir");
    let home = tmp.path().join("home");
    let o = run(wmig().args(["init", "--cluster"]).arg(&home));
    assert!(o.status.success(), "init: {}", stderr(&o));
    let far = tmp.path().join("far");
    let bad = run(wmig()
        .args([
            "cert",
            "issue",
            "worker-5",
            "--coordinator",
            "10.0.0.5",
            "--out",
        ])
        .arg(&far)
        .arg("--cluster")
        .arg(&home));
    assert!(!bad.status.success());
    assert!(
        stderr(&bad).contains("is not HOST:PORT"),
        "{}",
        stderr(&bad)
    );
    assert!(!far.exists(), "nothing written for a bad address");
    let o = run(wmig()
        .args(["cert", "issue", "worker-5"])
        .args([
            "--coordinator",
            "10.0.0.5:7700",
            "--registry",
            "10.0.0.6:7701",
        ])
        .arg("--out")
        .arg(&far)
        .arg("--cluster")
        .arg(&home));
    assert!(o.status.success(), "{}", stderr(&o));
    let config = std::fs::read_to_string(far.join("config.toml")).expect("config.toml");
    assert!(
        config.contains("coordinator = \"10.0.0.5:7700\"")
            && config.contains("registry = \"10.0.0.6:7701\"")
            && config.contains("identity = \"worker-5\""),
        "{config}"
    );
}
