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
