//! The coordinator's HTTP API against a real `wmig up` cluster: reads,
//! authorization, bad input, submit → migrate → cancel, the registry's
//! numbers, and the server-sent event stream seeing a SIGKILLed worker's
//! task recovered.

use std::io::{BufRead, BufReader};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{json, Value};
use wmig_tests::artifacts;

use crate::cluster::{kill9, wait_until, Up};

/// The API of one cluster, as a browser or a script sees it.
pub(crate) struct Api {
    base: String,
    token: String,
    agent: ureq::Agent,
}

impl Api {
    pub(crate) fn of(up: &Up) -> Api {
        let config = std::fs::read_to_string(up.dir.join("config.toml")).expect("config.toml");
        let http = config
            .lines()
            .find_map(|l| l.strip_prefix("http = "))
            .map(|v| v.trim().trim_matches('"').to_owned())
            .unwrap_or_else(|| panic!("no http address in config.toml:\n{config}"));
        let token = std::fs::read_to_string(up.dir.join("operator.token"))
            .expect("operator.token")
            .trim()
            .to_owned();
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(90)))
            .build()
            .into();
        Api {
            base: format!("http://{http}"),
            token,
            agent,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn read(mut resp: ureq::http::Response<ureq::Body>, what: &str) -> (u16, Value) {
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .read_to_string()
            .unwrap_or_else(|e| panic!("{what}: reading the body: {e}"));
        let value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {text}"));
        (status, value)
    }

    fn get(&self, path: &str) -> (u16, Value) {
        let resp = self
            .agent
            .get(self.url(path))
            .call()
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        Self::read(resp, path)
    }

    /// GET of raw bytes that must succeed.
    pub(crate) fn bytes(&self, path: &str) -> Vec<u8> {
        let mut resp = self
            .agent
            .get(self.url(path))
            .call()
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        assert_eq!(resp.status().as_u16(), 200, "GET {path}");
        resp.body_mut()
            .with_config()
            .limit(1 << 30)
            .read_to_vec()
            .unwrap_or_else(|e| panic!("GET {path}: reading the body: {e}"))
    }

    /// GET that must succeed.
    pub(crate) fn ok(&self, path: &str) -> Value {
        let (status, v) = self.get(path);
        assert_eq!(status, 200, "GET {path}: {v}");
        v
    }

    /// POST `body` (raw text) with `token` as the bearer, if any.
    fn post_raw(&self, path: &str, body: &str, token: Option<&str>) -> (u16, Value) {
        let mut req = self
            .agent
            .post(self.url(path))
            .header("Content-Type", "application/json");
        if let Some(t) = token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        let resp = req
            .send(body)
            .unwrap_or_else(|e| panic!("POST {path}: {e}"));
        Self::read(resp, path)
    }

    fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.post_raw(path, &body.to_string(), Some(&self.token))
    }

    fn delete(&self, path: &str) -> (u16, Value) {
        let resp = self
            .agent
            .delete(self.url(path))
            .header("Authorization", format!("Bearer {}", self.token))
            .call()
            .unwrap_or_else(|e| panic!("DELETE {path}: {e}"));
        Self::read(resp, path)
    }

    fn task(&self, id: &str) -> Value {
        self.ok(&format!("/api/tasks/{id}"))
    }
}

fn error_of(v: &Value) -> String {
    v["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no `error` in {v}"))
        .to_owned()
}

fn names(v: &Value) -> Vec<String> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|n| n["name"].as_str().expect("name").to_owned())
        .collect()
}

#[test]
fn http_api_reads_acts_and_refuses_bad_input() {
    let up = Up::start(3);
    let api = Api::of(&up);

    // Nodes: all, active, one, unknown.
    let all = api.ok("/api/nodes");
    // The coordinator lists itself, as the leader (it is the only one).
    assert_eq!(
        names(&all),
        ["worker-1", "worker-2", "worker-3", "coordinator"]
    );
    assert_eq!(api.ok("/api/nodes/coordinator")["leader"], true);
    assert_eq!(names(&api.ok("/api/nodes/active")).len(), 4);
    let w1 = api.ok("/api/nodes/worker-1");
    assert_eq!(
        (w1["role"].as_str(), w1["state"].as_str()),
        (Some("worker"), Some("online"))
    );
    let (status, v) = api.get("/api/nodes/ghost");
    assert_eq!(status, 404);
    assert!(error_of(&v).contains("unknown node `ghost`"), "{v}");
    let (status, v) = api.get("/api/tasks/not-a-task");
    assert_eq!(status, 400);
    assert!(error_of(&v).contains("not a task id"), "{v}");
    let (status, _) = api.get("/api/nothing-here");
    assert_eq!(status, 404);
    // DNS rebinding: a loopback API answers only to loopback names.
    let resp = api
        .agent
        .get(api.url("/api/nodes"))
        .header("Host", "evil.example")
        .call()
        .expect("GET with a foreign Host");
    let (status, v) = Api::read(resp, "foreign Host");
    assert_eq!(status, 403, "{v}");
    assert!(error_of(&v).contains("evil.example"), "{v}");

    // Changing anything needs the operator token.
    up.ok(&["upload", artifacts::COUNTER, "--name", "counter"]);
    let submit =
        json!({ "bundle": "counter", "args": ["40000000000"], "checkpoint_every_ms": 300 });
    let (status, v) = api.post_raw("/api/tasks", &submit.to_string(), None);
    assert_eq!(status, 401, "{v}");
    assert!(error_of(&v).contains("operator token"), "{v}");
    let (status, v) = api.post_raw("/api/tasks", &submit.to_string(), Some("0000"));
    assert_eq!(status, 401, "{v}");
    assert!(error_of(&v).contains("wrong operator token"), "{v}");
    assert_eq!(
        api.ok("/api/tasks").as_array().map(Vec::len),
        Some(0),
        "refused requests must not submit anything"
    );

    // Bad bodies name what is wrong.
    let (status, v) = api.post_raw("/api/tasks", "{not json", Some(&api.token));
    assert_eq!(status, 400);
    assert!(error_of(&v).contains("invalid JSON body"), "{v}");
    let (status, v) = api.post("/api/tasks", json!({ "bundle": "counter", "argz": [] }));
    assert_eq!(status, 400);
    assert!(error_of(&v).contains("argz"), "{v}");
    let (status, v) = api.post("/api/tasks", json!({ "bundle": "nosuch" }));
    assert_eq!(status, 404);
    assert!(error_of(&v).contains("unknown bundle `nosuch"), "{v}");
    let (status, v) = api.post(
        "/api/tasks",
        json!({ "bundle": "counter", "worker": "ghost" }),
    );
    assert!(status == 404 || status == 409, "{status} {v}");
    assert!(error_of(&v).contains("ghost"), "{v}");
    // 1.5 MB of args once made the event log refuse the record and the
    // coordinator refuse everything after it: now a 413 that changes nothing.
    let (status, v) = api.post(
        "/api/tasks",
        json!({ "bundle": "counter", "args": ["x".repeat(1_500_000)] }),
    );
    assert_eq!(status, 413, "{v}");
    assert_eq!(v["code"], "too_large", "{v}");
    assert!(error_of(&v).contains("over the 262144-byte limit"), "{v}");
    assert_eq!(
        api.ok("/api/tasks").as_array().map(Vec::len),
        Some(0),
        "an oversized submission must not leave a task behind"
    );

    // Submit; the task's fuel and memory become visible while it runs.
    let (status, v) = api.post("/api/tasks", submit.clone());
    assert_eq!(status, 201, "{v}");
    let id = v["task"].as_str().expect("task id").to_owned();
    let first = v["worker"].as_str().expect("placed").to_owned();
    wait_until("live fuel and memory", Duration::from_secs(20), || {
        let t = api.task(&id);
        t["fuel_used"].as_u64().unwrap_or(0) > 0 && t["memory_bytes"].as_u64().unwrap_or(0) > 0
    });
    let t = api.task(&id);
    assert_eq!(t["state"], "running");
    assert_eq!(t["owner"], first.as_str());
    assert_eq!(t["args"], json!(["counter:latest", "40000000000"]));

    // Migrate through the API; refused moves say why.
    let target = ["worker-1", "worker-2", "worker-3"]
        .into_iter()
        .find(|w| *w != first)
        .expect("another worker");
    let (status, v) = api.post(&format!("/api/tasks/{id}/migrate"), json!({ "to": first }));
    assert_eq!(status, 409, "{v}");
    assert!(error_of(&v).contains("already runs on"), "{v}");
    let (status, v) = api.post(
        &format!("/api/tasks/{id}/migrate"),
        json!({ "to": "ghost" }),
    );
    assert_eq!(status, 404, "{v}");
    let (status, v) = api.post(&format!("/api/tasks/{id}/migrate"), json!({ "to": target }));
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        (v["from"].as_str(), v["to"].as_str()),
        (Some(first.as_str()), Some(target))
    );
    assert!(v["downtime_ms"].as_f64().unwrap_or(0.0) > 0.0, "{v}");
    assert_eq!(api.task(&id)["owner"], target);
    let timeline = api.ok("/api/timeline");
    assert!(
        timeline
            .as_array()
            .expect("array")
            .iter()
            .any(|e| e["kind"] == "migration" && e["task"] == id.as_str() && e["to"] == target),
        "{timeline}"
    );

    // Output by offset.
    let mut next = 0;
    wait_until("some output", Duration::from_secs(60), || {
        let page = api.ok(&format!("/api/tasks/{id}/output?stream=stdout&offset=0"));
        next = page["next"].as_u64().unwrap_or(0);
        next > 0
    });
    let page = api.ok(&format!("/api/tasks/{id}/output?offset={next}"));
    assert_eq!(page["offset"], next);
    let (status, v) = api.get(&format!("/api/tasks/{id}/output?stream=stdin"));
    assert_eq!(status, 400);
    assert!(error_of(&v).contains("stdin"), "{v}");

    // The registry holds the bundle under its name and the checkpoints' chunks.
    let reg = api.ok("/api/registry");
    assert!(
        reg["bundles"]
            .as_array()
            .expect("bundles")
            .iter()
            .any(|b| b["names"].to_string().contains("counter")),
        "{reg}"
    );
    assert!(
        reg["stats"]["chunks"]["count"].as_u64().unwrap_or(0) > 0,
        "{reg}"
    );
    // Successive checkpoints share the chunks that did not change (counter's
    // read-only data), so not every referenced chunk was written.
    let saved = reg["stats"]["dedup_ratio"].as_f64().unwrap_or(0.0);
    assert!(saved > 0.0 && saved < 1.0, "{reg}");
    assert!(
        reg["stats"]["chunks_written"].as_u64() < reg["stats"]["chunks_referenced"].as_u64(),
        "{reg}"
    );

    // Drain the owner: the task moves off it, and the worker takes no new ones.
    let (status, v) = api.post(&format!("/api/nodes/{target}/drain"), json!({}));
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["moved"][0]["task"], id.as_str(), "{v}");
    assert_eq!(v["failed"], json!([]), "{v}");
    assert_ne!(api.task(&id)["owner"], target);
    assert_eq!(api.ok(&format!("/api/nodes/{target}"))["draining"], true);
    let (status, v) = api.post(&format!("/api/tasks/{id}/migrate"), json!({ "to": target }));
    assert_eq!(status, 409, "a draining worker takes no task: {v}");
    let (status, _) = api.post(&format!("/api/nodes/{target}/uncordon"), json!({}));
    assert_eq!(status, 200);
    assert_eq!(api.ok(&format!("/api/nodes/{target}"))["draining"], false);

    // Cancel.
    let (status, v) = api.post(&format!("/api/tasks/{id}/cancel"), json!({}));
    assert_eq!(status, 200, "{v}");
    wait_until("cancelled", Duration::from_secs(10), || {
        api.task(&id)["state"] == "cancelled"
    });
    let (status, v) = api.post(&format!("/api/tasks/{id}/migrate"), json!({ "to": first }));
    assert_eq!(status, 409, "{v}");

    let stats = api.ok("/api/stats");
    assert_eq!(stats["workers_online"], 3);
    assert_eq!(stats["tasks_cancelled"], 1);
    let spec = api.ok("/api/openapi.json");
    assert!(
        spec["paths"]["/api/tasks/{id}/migrate"].is_object(),
        "{spec}"
    );
}

#[test]
fn event_stream_shows_a_killed_worker_and_its_task_recovered() {
    let up = Up::start(3);
    let api = Api::of(&up);
    up.ok(&["upload", artifacts::COUNTER, "--name", "counter"]);

    // Follow /api/events on its own thread: (event name, data) pairs.
    let (tx, events) = mpsc::channel::<(String, Value)>();
    let stream = api
        .agent
        .get(api.url("/api/events"))
        .config()
        .timeout_global(None)
        .build()
        .call()
        .expect("GET /api/events");
    assert_eq!(stream.status(), 200);
    assert!(stream.headers()["content-type"]
        .to_str()
        .unwrap_or_default()
        .starts_with("text/event-stream"));
    std::thread::spawn(move || {
        let mut name = String::new();
        for line in BufReader::new(stream.into_body().into_reader())
            .lines()
            .map_while(Result::ok)
        {
            if let Some(n) = line.strip_prefix("event: ") {
                name = n.to_owned();
            } else if let Some(d) = line.strip_prefix("data: ") {
                let v = serde_json::from_str(d).unwrap_or(Value::Null);
                if tx.send((name.clone(), v)).is_err() {
                    return;
                }
            }
        }
    });
    let mut seen: Vec<(String, Value)> = Vec::new();
    let mut wait_for = |what: &str, f: &dyn Fn(&str, &Value) -> bool| -> Value {
        if let Some((_, v)) = seen.iter().find(|(n, v)| f(n, v)) {
            return v.clone();
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let (n, v) = events
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no {what} on /api/events; saw {seen:?}"));
            seen.push((n.clone(), v.clone()));
            if f(&n, &v) {
                return v;
            }
        }
    };
    // The backlog has the workers joining; statistics arrive every second.
    wait_for("worker-3 joining", &|n, v| {
        n == "log" && v["kind"] == "joined" && v["node"] == "worker-3"
    });
    wait_for("stats", &|n, v| n == "stats" && v["workers_online"] == 3);

    let (status, v) = api.post(
        "/api/tasks",
        json!({ "bundle": "counter", "args": ["40000000000"], "checkpoint_every_ms": 300 }),
    );
    assert_eq!(status, 201, "{v}");
    let id = v["task"].as_str().expect("id").to_owned();
    let owner = v["worker"].as_str().expect("placed").to_owned();
    wait_for("the task placed", &|n, v| {
        n == "log" && v["kind"] == "placed" && v["task"] == id.as_str()
    });
    wait_until("a checkpoint", Duration::from_secs(20), || {
        !api.task(&id)["checkpoint_seq"].is_null()
    });

    let pid = api.ok(&format!("/api/nodes/{owner}"))["pid"]
        .as_u64()
        .expect("pid");
    kill9(pid);
    wait_for("the owner offline", &|n, v| {
        n == "log" && v["kind"] == "offline" && v["node"] == owner.as_str()
    });
    let rec = wait_for("the recovery", &|n, v| {
        n == "recovery" && v["task"] == id.as_str()
    });
    assert_eq!(rec["from"], owner.as_str());
    assert_ne!(rec["to"], owner.as_str());
    assert!(rec["downtime_ms"].as_f64().unwrap_or(0.0) > 0.0, "{rec}");
    assert!(
        !rec["checkpoint"].is_null(),
        "resumed from a checkpoint: {rec}"
    );
    assert_eq!(api.ok(&format!("/api/nodes/{owner}"))["state"], "offline");

    // An online node cannot be removed; the dead one can, once it owns nothing.
    let (status, v) = api.delete(&format!("/api/nodes/{}", rec["to"].as_str().expect("to")));
    assert_eq!(status, 409, "{v}");
    assert!(error_of(&v).contains("online"), "{v}");
    let (status, v) = api.delete(&format!("/api/nodes/{owner}"));
    assert_eq!(status, 200, "{v}");
    assert!(!names(&api.ok("/api/nodes")).contains(&owner));
    let (status, _) = api.delete(&format!("/api/nodes/{owner}"));
    assert_eq!(status, 404);
}

/// A coordinator whose HTTP API listens beyond loopback serves reads only
/// with the operator token (header, or `?token=` for `EventSource`); the
/// dashboard page itself, which holds no data, loads without it.
#[test]
fn an_api_bound_beyond_loopback_needs_the_token_for_reads_too() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("cluster");
    let init = crate::support::run(crate::support::wmig().args(["init", "--cluster"]).arg(&dir));
    assert!(
        init.status.success(),
        "init: {}",
        crate::support::stderr(&init)
    );
    let mut coordinator = crate::support::wmig()
        .args(["coordinator", "--cluster"])
        .arg(&dir)
        .args(["--listen", "127.0.0.1:0", "--http", "0.0.0.0:0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start a coordinator");
    let out = coordinator.stdout.take().expect("stdout");
    // Keep reading its stdout: a closed pipe would end it at its next line.
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if let Some(addr) = line
                .strip_prefix("metrics on http://")
                .and_then(|r| r.strip_suffix("/metrics"))
            {
                let _ = tx.send(addr.to_owned());
            }
        }
    });
    let http = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the coordinator prints its HTTP address");
    let token = std::fs::read_to_string(dir.join("operator.token"))
        .expect("operator.token")
        .trim()
        .to_owned();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    let status = |path: &str, bearer: Option<&str>| {
        let mut req = agent.get(format!("http://{http}{path}"));
        if let Some(t) = bearer {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        req.call().expect("GET").status().as_u16()
    };
    assert_eq!(status("/api/tasks", None), 401, "a read without the token");
    assert_eq!(status("/api/tasks", Some("wrong")), 401);
    assert_eq!(status("/api/tasks", Some(&token)), 200);
    assert_eq!(status(&format!("/metrics?token={token}"), None), 200);
    assert_eq!(status("/metrics", None), 401);
    assert_eq!(status("/", None), 200, "the dashboard page loads");
    let _ = coordinator.kill();
    let _ = coordinator.wait();
}
