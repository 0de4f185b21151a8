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
    let conn = connect(&client, addr, name, Duration::from_secs(5)).await?;
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
    let client = client_endpoint(loopback(), &ca.credentials(OPERATOR).expect("c"), &config())
        .expect("client");
    let conn = connect(
        &client,
        server.local_addr().expect("addr"),
        "registry",
        Duration::from_secs(5),
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
    let client = client_endpoint(
        loopback(),
        &ca.credentials("worker-1").expect("client creds"),
        &config(),
    )
    .expect("client endpoint");
    let conn = connect(&client, addr, "registry", Duration::from_secs(5))
        .await
        .expect("connect");
    let (me, other, operator, name) = seen.await.expect("server task");
    conn.close(VarInt::from_u32(0), b"done");
    assert!(me, "the certificate names worker-1");
    assert!(!other && !operator, "and no one else");
    assert_eq!(name.as_deref(), Some("worker-1"));
}
