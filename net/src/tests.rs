//! Handshakes between real endpoints on 127.0.0.1: who is let in, who is
//! refused and with what message, and that stream limits hold requests back.

use std::net::SocketAddr;
use std::time::Duration;

use crate::stream::{read_frame, write_frame};
use crate::*;

const ALPN: &[u8] = b"wmig-test/1";

fn config() -> EndpointConfig {
    let mut c = EndpointConfig::new(ALPN);
    c.max_streams = 2;
    c
}

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// A server that answers each stream's frame with the same frame + 1.
fn echo_server(creds: &Credentials) -> Endpoint {
    let ep = server_endpoint(loopback(), creds, &config()).expect("server endpoint");
    let accept = ep.clone();
    tokio::spawn(async move {
        while let Some(incoming) = accept.accept().await {
            tokio::spawn(async move {
                let Ok(conn) = incoming.await else { return };
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    tokio::spawn(async move {
                        if let Ok(n) = read_frame::<u64>(&mut recv, 1024).await {
                            let _ = write_frame(&mut send, &(n + 1)).await;
                            let _ = send.finish();
                        }
                    });
                }
            });
        }
    });
    ep
}

async fn ask(conn: &Connection, n: u64) -> Result<u64, NetError> {
    let (mut send, mut recv) = conn.open_bi().await?;
    write_frame(&mut send, &n).await?;
    send.finish()?;
    read_frame(&mut recv, 1024).await
}

async fn dial(creds: &Credentials, server: &Endpoint, name: &str) -> Result<u64, NetError> {
    let client = client_endpoint(loopback(), creds, &config())?;
    let addr = server.local_addr().expect("addr");
    let conn = connect(&client, addr, name, Duration::from_secs(5), creds).await?;
    let r = tokio::time::timeout(Duration::from_secs(5), ask(&conn, 41))
        .await
        .unwrap_or(Err(NetError::Timeout(Duration::from_secs(5))));
    conn.close(VarInt::from_u32(0), b"done");
    r
}

#[tokio::test]
async fn cluster_members_talk() {
    let ca = ClusterCa::generate().expect("ca");
    let server = echo_server(&ca.credentials("registry").expect("server creds"));
    let client = ca.credentials(OPERATOR).expect("client creds");
    assert_eq!(
        dial(&client, &server, "registry").await.expect("answer"),
        42
    );
}

#[tokio::test]
async fn a_client_from_another_cluster_is_refused() {
    let ca = ClusterCa::generate().expect("ca");
    let server = echo_server(&ca.credentials("registry").expect("server creds"));
    let stranger = ClusterCa::generate().expect("other ca");
    // The stranger trusts our CA (so it accepts the server) but its own
    // certificate is signed by another CA.
    let mut creds = stranger.credentials(OPERATOR).expect("creds");
    creds.ca = ca.credentials("x").expect("x").ca;
    let err = dial(&creds, &server, "registry")
        .await
        .expect_err("refused");
    let msg = err.to_string();
    eprintln!("stranger client: {msg}");
    assert!(msg.contains("TLS"), "{msg}");
}

#[tokio::test]
async fn a_server_from_another_cluster_is_refused() {
    let ca = ClusterCa::generate().expect("ca");
    let impostor = ClusterCa::generate().expect("other ca");
    let server = echo_server(&impostor.credentials("registry").expect("server creds"));
    let err = dial(
        &ca.credentials(OPERATOR).expect("creds"),
        &server,
        "registry",
    )
    .await
    .expect_err("refused");
    eprintln!("refused server: {err}");
    assert!(err.to_string().contains("TLS handshake failed"), "{err}");
}

#[tokio::test]
async fn a_server_with_another_name_is_refused() {
    let ca = ClusterCa::generate().expect("ca");
    let server = echo_server(&ca.credentials("worker-1").expect("server creds"));
    let err = dial(
        &ca.credentials(OPERATOR).expect("creds"),
        &server,
        "registry",
    )
    .await
    .expect_err("refused");
    eprintln!("refused server: {err}");
    assert!(err.to_string().contains("TLS handshake failed"), "{err}");
}

#[tokio::test]
async fn streams_beyond_the_limit_wait_for_a_free_slot() {
    let ca = ClusterCa::generate().expect("ca");
    // A server that accepts streams but never answers until told.
    let server = server_endpoint(
        loopback(),
        &ca.credentials("registry").expect("c"),
        &config(),
    )
    .expect("server");
    let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
    let accept = server.clone();
    tokio::spawn(async move {
        let Some(incoming) = accept.accept().await else {
            return;
        };
        let Ok(conn) = incoming.await else { return };
        let mut held = Vec::new();
        for _ in 0..2 {
            if let Ok(s) = conn.accept_bi().await {
                held.push(s);
            }
        }
        let _ = release_rx.await;
        drop(held);
        // Keep the connection up while the client finishes.
        tokio::time::sleep(Duration::from_secs(2)).await;
    });
    let creds = ca.credentials(OPERATOR).expect("c");
    let client = client_endpoint(loopback(), &creds, &config()).expect("client");
    let conn = connect(
        &client,
        server.local_addr().expect("addr"),
        "registry",
        Duration::from_secs(5),
        &creds,
    )
    .await
    .expect("connect");
    let mut open = Vec::new();
    for _ in 0..2 {
        let (mut send, recv) = conn.open_bi().await.expect("within limit");
        write_frame(&mut send, &1u64).await.expect("write");
        send.finish().expect("finish");
        open.push((send, recv));
    }
    let third = tokio::time::timeout(Duration::from_millis(300), conn.open_bi()).await;
    assert!(third.is_err(), "a third concurrent stream must wait");
    release_tx.send(()).expect("release");
    drop(open);
    let third = tokio::time::timeout(Duration::from_secs(5), conn.open_bi()).await;
    assert!(
        matches!(third, Ok(Ok(_))),
        "a slot frees up once a stream closes"
    );
}

#[tokio::test]
async fn a_server_knows_which_cluster_member_dialed_it() {
    let ca = ClusterCa::generate().expect("ca");
    let server = server_endpoint(
        loopback(),
        &ca.credentials("registry").expect("server creds"),
        &config(),
    )
    .expect("server endpoint");
    let addr = server.local_addr().expect("addr");
    let seen = tokio::spawn(async move {
        let incoming = server.accept().await.expect("a connection");
        let conn = accept(incoming).await.expect("handshake");
        let peer = PeerIdentity::of(&conn);
        (
            peer.is("worker-1"),
            peer.is("worker-2"),
            peer.is(OPERATOR),
            peer.name(),
        )
    });
    let creds = ca.credentials("worker-1").expect("client creds");
    let client = client_endpoint(loopback(), &creds, &config()).expect("client endpoint");
    let conn = connect(&client, addr, "registry", Duration::from_secs(5), &creds)
        .await
        .expect("connect");
    let (me, other, operator, name) = seen.await.expect("server task");
    conn.close(VarInt::from_u32(0), b"done");
    assert!(me, "the certificate names worker-1");
    assert!(!other && !operator, "and no one else");
    assert_eq!(name.as_deref(), Some("worker-1"));
}

/// An echo server with its own endpoint settings (a revocation list).
fn echo_server_with(creds: &Credentials, config: &EndpointConfig) -> Endpoint {
    let ep = server_endpoint(loopback(), creds, config).expect("server endpoint");
    let accept = ep.clone();
    tokio::spawn(async move {
        while let Some(incoming) = accept.accept().await {
            tokio::spawn(async move {
                let Some(conn) = crate::accept(incoming).await else {
                    return;
                };
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    tokio::spawn(async move {
                        if let Ok(n) = read_frame::<u64>(&mut recv, 1024).await {
                            let _ = write_frame(&mut send, &(n + 1)).await;
                            let _ = send.finish();
                        }
                    });
                }
            });
        }
    });
    ep
}

#[tokio::test]
async fn an_expired_client_certificate_is_refused_in_the_handshake_with_its_date() {
    let ca = ClusterCa::generate().expect("ca");
    let server = echo_server(&ca.credentials("registry").expect("server creds"));
    let expired = ca
        .credentials_with("worker-9", CertRole::Worker, Validity::days(0))
        .expect("creds");
    assert!(matches!(
        expired.time_problem(),
        Some(TimeProblem::Expired { .. })
    ));
    let err = dial(&expired, &server, "registry")
        .await
        .expect_err("refused");
    let msg = err.to_string();
    eprintln!("expired client: {msg}");
    assert!(
        matches!(err, NetError::CertificateRefused { .. }),
        "refused at connect, not on a later request: {err:?}"
    );
    assert!(
        msg.contains("certificate expired on ") && msg.contains("wmig cert renew worker-9"),
        "{msg}"
    );
    // A valid certificate of the same CA still gets in.
    let fresh = ca.credentials("worker-9").expect("creds");
    assert_eq!(fresh.time_problem(), None);
    assert_eq!(dial(&fresh, &server, "registry").await.expect("answer"), 42);
}

#[tokio::test]
async fn an_expired_server_certificate_is_refused_by_the_client() {
    let ca = ClusterCa::generate().expect("ca");
    let server = echo_server(
        &ca.credentials_with("registry", CertRole::Registry, Validity::days(0))
            .expect("server creds"),
    );
    let err = dial(
        &ca.credentials(OPERATOR).expect("creds"),
        &server,
        "registry",
    )
    .await
    .expect_err("refused");
    let msg = err.to_string();
    eprintln!("expired server: {msg}");
    assert!(
        msg.contains("expired") && msg.contains("wmig cert renew registry"),
        "{msg}"
    );
}

#[tokio::test]
async fn revoked_certificates_are_refused_as_soon_as_the_list_changes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = ClusterDir::new(tmp.path().join("c"));
    dir.init(false).expect("init");
    let mut cfg = config();
    cfg.revocations = Some(dir.revocations());
    let server = echo_server_with(&dir.credentials("registry").expect("server"), &cfg);
    let w1 = dir.credentials("worker-1").expect("worker-1");
    let w2 = dir.credentials("worker-2").expect("worker-2");
    assert_eq!(dial(&w1, &server, "registry").await.expect("before"), 42);

    let revoked = dir.revoke("worker-1", None).expect("revoke");
    assert_eq!(revoked.len(), 1);
    assert_eq!(Some(revoked[0].serial.clone()), w1.info().map(|i| i.serial));
    // The running server reads the new list at the next handshake.
    let err = dial(&w1, &server, "registry").await.expect_err("revoked");
    let msg = err.to_string();
    eprintln!("revoked client: {msg}");
    assert!(
        matches!(err, NetError::CertificateRefused { .. }) && msg.contains("revoked"),
        "{msg}"
    );
    assert_eq!(dial(&w2, &server, "registry").await.expect("others"), 42);
    // Revoking again changes nothing; a new certificate for the name works.
    assert!(dir.revoke("worker-1", None).expect("again").is_empty());
    dir.renew("worker-1", Validity::default(), None)
        .expect("renew");
    let renewed = dir.credentials("worker-1").expect("renewed");
    assert_eq!(
        dial(&renewed, &server, "registry").await.expect("renewed"),
        42
    );
}

#[tokio::test]
async fn a_connection_open_before_a_revocation_is_closed_on_its_next_request() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = ClusterDir::new(tmp.path().join("c"));
    dir.init(false).expect("init");
    let list = dir.revocations();
    let mut cfg = config();
    cfg.revocations = Some(list.clone());
    let server = server_endpoint(loopback(), &dir.credentials("registry").expect("s"), &cfg)
        .expect("server");
    let addr = server.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Some(incoming) = server.accept().await {
            let list = list.clone();
            tokio::spawn(async move {
                let Some(conn) = crate::accept(incoming).await else {
                    return;
                };
                let peer = PeerIdentity::of(&conn);
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    if crate::revocation::close_if_revoked(&conn, &peer, Some(&list)) {
                        break;
                    }
                    if let Ok(n) = read_frame::<u64>(&mut recv, 1024).await {
                        let _ = write_frame(&mut send, &(n + 1)).await;
                        let _ = send.finish();
                    }
                }
            });
        }
    });
    let w1 = dir.credentials("worker-1").expect("worker-1");
    let client = client_endpoint(loopback(), &w1, &config()).expect("client");
    let conn = connect(&client, addr, "registry", Duration::from_secs(5), &w1)
        .await
        .expect("connect");
    assert_eq!(ask(&conn, 1).await.expect("before"), 2);
    dir.revoke("worker-1", None).expect("revoke");
    // Requests re-read the list at most once a second.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let err = ask(&conn, 1).await.expect_err("closed");
    let msg = err.to_string();
    eprintln!("revoked connection: {msg}");
    assert!(
        msg.contains("worker-1") && msg.contains("was revoked"),
        "{msg}"
    );
}

#[tokio::test]
async fn a_server_knows_the_role_in_the_peer_certificate() {
    let ca = ClusterCa::generate().expect("ca");
    let server = server_endpoint(
        loopback(),
        &ca.credentials("registry").expect("server creds"),
        &config(),
    )
    .expect("server endpoint");
    let addr = server.local_addr().expect("addr");
    let seen = tokio::spawn(async move {
        let incoming = server.accept().await.expect("a connection");
        let conn = accept(incoming).await.expect("handshake");
        let peer = PeerIdentity::of(&conn);
        (
            peer.role(),
            peer.acts_as(CertRole::Monitor),
            peer.acts_as(CertRole::Worker),
            peer.require(&[CertRole::Operator], "submitting a task"),
        )
    });
    let creds = ca
        .credentials_with("mon-1", CertRole::Monitor, Validity::default())
        .expect("client creds");
    let client = client_endpoint(loopback(), &creds, &config()).expect("client endpoint");
    let conn = connect(&client, addr, "registry", Duration::from_secs(5), &creds)
        .await
        .expect("connect");
    let (role, monitor, worker, submit) = seen.await.expect("server task");
    conn.close(VarInt::from_u32(0), b"done");
    assert_eq!(role, Some(CertRole::Monitor));
    assert!(monitor && !worker);
    assert_eq!(
        submit,
        Err("permission denied: mon-1 is a monitor; submitting a task needs an operator".into())
    );
}
