//! Roles, expiry and revocation through real processes: directories made by
//! `wmig cert issue` for "other machines" (other directories here), used by
//! `wmig worker`, `wmig monitor` and operator commands against a `wmig up`
//! cluster.

use std::fs::File;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use wmig_tests::artifacts;

use crate::cluster::{wait_until, Up};
use crate::support::{run, stderr, stdout, wmig};

/// `wmig ARGS` with the cluster directory `dir`.
fn as_dir(dir: &Path, args: &[&str]) -> std::process::Output {
    run(wmig().env("WMIG_CLUSTER", dir).args(args))
}

/// Wait for `child` to exit by itself; kill it and fail after `timeout`.
fn exits_within(child: &mut Child, what: &str, timeout: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn online(up: &Up, name: &str) -> bool {
    up.json(&["nodes", "--json"]).as_array().is_some_and(|a| {
        a.iter()
            .any(|n| n["name"] == name && n["state"] == "online")
    })
}

/// `cert ls --json`, one entry per certificate.
fn cert_ls(up: &Up) -> Vec<serde_json::Value> {
    up.json(&["cert", "ls", "--json"])
        .as_array()
        .cloned()
        .expect("a list")
}

/// A monitor's directory reads (it registers as a monitor and prints the
/// live stream; `ps` works) but may not act: submitting is refused by the
/// coordinator, uploading by the registry, each with the role message.
#[test]
fn a_monitor_certificate_reads_but_may_not_submit() {
    let up = Up::start(1);
    let mon = up.dir.with_file_name("monitor-machine");
    let o = run(up
        .cmd(&["cert", "issue", "mon-1", "--role", "monitor", "--out"])
        .arg(&mon));
    assert!(o.status.success(), "cert issue: {}", stderr(&o));
    assert!(stdout(&o).contains("(monitor, serial "), "{}", stdout(&o));
    assert!(!mon.join("ca.key").exists(), "the CA key stays home");

    // `wmig monitor` there registers as mon-1 (its identity) and streams.
    let log = up.dir.with_file_name("monitor.out");
    let mut monitor = wmig()
        .env("WMIG_CLUSTER", &mon)
        .arg("monitor")
        .stdout(File::create(&log).expect("log"))
        .stderr(Stdio::null())
        .spawn()
        .expect("start the monitor");
    wait_until("mon-1 registers", Duration::from_secs(30), || {
        online(&up, "mon-1")
    });
    assert_eq!(up.node("mon-1")["role"], "monitor");
    wait_until("the monitor prints events", Duration::from_secs(30), || {
        read(&log).contains("node mon-1 joined as monitor")
    });
    let o = as_dir(&mon, &["ps"]);
    assert!(o.status.success(), "a monitor reads: {}", stderr(&o));

    // Acting is refused, and changes nothing.
    up.ok(&["upload", artifacts::EXIT_CODE, "--name", "exit"]);
    let o = as_dir(&mon, &["submit", "exit", "--", "3"]);
    assert!(!o.status.success(), "a monitor may not submit");
    assert!(
        stderr(&o)
            .contains("permission denied: mon-1 is a monitor; submitting a task needs an operator"),
        "{}",
        stderr(&o)
    );
    let o = as_dir(&mon, &["submit", artifacts::EXIT_CODE, "--", "3"]);
    assert!(!o.status.success(), "nor upload");
    assert!(
        stderr(&o).contains(
            "permission denied: mon-1 is a monitor; uploading a module needs an operator"
        ),
        "{}",
        stderr(&o)
    );
    let o = as_dir(&mon, &["registry", "gc"]);
    assert!(
        stderr(&o).contains("mon-1 is a monitor; collecting garbage needs an operator"),
        "{}",
        stderr(&o)
    );
    assert_eq!(up.json(&["ps", "--json"]), serde_json::json!([]));

    // The operator's own index lists it.
    let certs = cert_ls(&up);
    assert!(
        certs
            .iter()
            .any(|c| c["name"] == "mon-1" && c["role"] == "monitor" && c["status"] == "valid"),
        "{certs:?}"
    );
    let _ = monitor.kill();
    let _ = monitor.wait();
}

/// A certificate issued already expired is refused by the registry and the
/// coordinator at the handshake, and the client says when it expired and
/// how to renew it; the renewed one works. A revoked worker is cut off while
/// it runs, refused when it reconnects, and exits saying why; the cluster's
/// own worker carries on.
#[test]
fn expired_and_revoked_certificates_are_refused_while_other_nodes_keep_working() {
    let up = Up::start(1);

    // --- expired -----------------------------------------------------------
    let exp = up.dir.with_file_name("expired-machine");
    let o = run(up
        .cmd(&["cert", "issue", "worker-8", "--days", "0", "--out"])
        .arg(&exp));
    assert!(o.status.success(), "cert issue: {}", stderr(&o));
    let err_log = up.dir.with_file_name("worker-8.err");
    let mut worker = wmig()
        .env("WMIG_CLUSTER", &exp)
        .arg("worker")
        .stdout(Stdio::null())
        .stderr(File::create(&err_log).expect("log"))
        .spawn()
        .expect("start worker-8");
    let status = exits_within(&mut worker, "the expired worker", Duration::from_secs(30));
    assert!(!status.success());
    let text = read(&err_log);
    assert!(
        text.contains(
            "the registry refused the certificate of `worker-8`: certificate expired on "
        ) && text.contains("renew it with `wmig cert renew worker-8`"),
        "{text}"
    );
    let o = as_dir(&exp, &["ps"]);
    assert!(!o.status.success(), "the coordinator refuses it too");
    assert!(
        stderr(&o).contains(
            "the coordinator refused the certificate of `worker-8`: certificate expired on "
        ),
        "{}",
        stderr(&o)
    );
    // Renewed into that directory, it is let in.
    let o = run(up.cmd(&["cert", "renew", "worker-8", "--out"]).arg(&exp));
    assert!(o.status.success(), "cert renew: {}", stderr(&o));
    assert!(
        stdout(&o).contains("renewed `worker-8` (worker"),
        "{}",
        stdout(&o)
    );
    let o = as_dir(&exp, &["ps"]);
    assert!(o.status.success(), "renewed: {}", stderr(&o));

    // --- revoked -----------------------------------------------------------
    let rev = up.dir.with_file_name("revoked-machine");
    let o = run(up.cmd(&["cert", "issue", "worker-9", "--out"]).arg(&rev));
    assert!(o.status.success(), "cert issue: {}", stderr(&o));
    let err_log = up.dir.with_file_name("worker-9.err");
    let mut worker = wmig()
        .env("WMIG_CLUSTER", &rev)
        .arg("worker")
        .stdout(Stdio::null())
        .stderr(File::create(&err_log).expect("log"))
        .spawn()
        .expect("start worker-9");
    wait_until("worker-9 joins", Duration::from_secs(30), || {
        online(&up, "worker-9")
    });
    let o = up.ok(&["cert", "revoke", "worker-9"]);
    assert!(o.contains("revoked `worker-9` (serial "), "{o}");
    // Its next heartbeat loses the connection; reconnecting is refused in
    // the handshake, and a refusal no retry can fix ends the worker.
    let status = exits_within(&mut worker, "the revoked worker", Duration::from_secs(30));
    assert!(!status.success());
    let text = read(&err_log);
    assert!(
        text.contains("refused the certificate of `worker-9` (serial ")
            && text.contains("it has been revoked"),
        "{text}"
    );
    let o = as_dir(&rev, &["ps"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("it has been revoked"), "{}", stderr(&o));

    // The rest of the cluster is unaffected: worker-1 runs a task.
    assert_eq!(up.node("worker-1")["state"], "online");
    let id = up.submit(artifacts::EXIT_CODE, &["--on", "worker-1"], &["6"]);
    assert_eq!(
        run(&mut up.cmd(&["wait", &id, "--timeout", "180s"]))
            .status
            .code(),
        Some(6)
    );
    assert!(as_dir(&exp, &["ps"]).status.success(), "worker-8 too");

    let certs = cert_ls(&up);
    let status_of = |name: &str| -> Vec<String> {
        certs
            .iter()
            .filter(|c| c["name"] == name)
            .map(|c| c["status"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    assert_eq!(status_of("worker-8"), ["expired", "valid"], "{certs:?}");
    let nine = status_of("worker-9");
    assert!(
        nine.len() == 1 && nine[0].starts_with("revoked "),
        "{certs:?}"
    );
    let text = up.ok(&["cert", "ls"]);
    assert!(
        text.contains("worker-9") && text.contains("revoked"),
        "{text}"
    );
}
