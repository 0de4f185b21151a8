//! Bad input against a real registry server: invalid and oversized uploads,
//! hash mismatches, unknown objects, malformed frames sent raw, and peers
//! whose certificate the cluster CA did not sign.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::{chunk, remote_code, TestServer};
use wmig_net::stream::{read_frame, write_frame};
use wmig_net::{ClusterCa, EndpointConfig, OPERATOR};
use wmig_proto::checkpoint::CHUNK_SIZE;
use wmig_proto::frame::{self, PROTOCOL_VERSION};
use wmig_proto::wire::registry::{BundleRef, ChunkHeader, RegistryRequest, RegistryResponse};
use wmig_proto::wire::{ErrorCode, REGISTRY_ALPN};
use wmig_proto::Hash;
use wmig_registry::{ClientConfig, RegistryClient, RegistryConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_uploads_are_refused_and_store_nothing() {
    let mut config = RegistryConfig::default();
    config.limits.max_bundle = 1024;
    let server = TestServer::start(config).await;
    let client = server.client(OPERATOR).await;
    let e = client.upload_bundle(b"#!/bin/sh\n", None).await;
    assert_eq!(remote_code(e), ErrorCode::NotWasm);
    let e = client
        .upload_bundle(&vec![0u8; 4096], None)
        .await
        .expect_err("too big");
    assert!(
        e.to_string()
            .contains("bundle of 4096 bytes exceeds the registry's limit of 1024"),
        "{e}"
    );
    let unknown = BundleRef::Hash(Hash::of(b"unknown"));
    assert_eq!(
        remote_code(client.download_bundle(&unknown).await),
        ErrorCode::NotFound
    );
    let unknown = BundleRef::Name("ghost:v9".parse().expect("name"));
    let e = client
        .download_bundle(&unknown)
        .await
        .expect_err("unknown name");
    assert!(e.to_string().contains("no bundle named ghost:v9"), "{e}");
    // A chunk whose bytes do not match its hash.
    let lie = vec![(Hash::of(b"claimed"), chunk(1))];
    let e = client.put_chunks(lie).await.expect_err("mismatch");
    assert_eq!(e.code(), Some(ErrorCode::HashMismatch), "{e}");
    let big = Bytes::from(vec![1u8; CHUNK_SIZE + 1]);
    let e = client
        .put_chunks(vec![(Hash::of(&big), big)])
        .await
        .expect_err("big chunk");
    assert_eq!(e.code(), Some(ErrorCode::TooLarge), "{e}");
    let stats = client.stats().await.expect("the connection survives");
    assert_eq!((stats.bundles.count, stats.chunks.count), (0, 0));
    server.stop().await;
}

/// Send raw bytes on a fresh stream and return the server's answer.
async fn raw_exchange(conn: &quinn::Connection, bytes: &[u8]) -> RegistryResponse {
    let (mut send, mut recv) = conn.open_bi().await.expect("stream");
    send.write_all(bytes).await.expect("write");
    send.finish().expect("finish");
    read_frame(&mut recv, 1 << 20)
        .await
        .expect("an answer frame")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_get_an_error_answer() {
    let server = TestServer::start(RegistryConfig::default()).await;
    let creds = server.ca.credentials(OPERATOR).expect("creds");
    let ep = wmig_net::client_endpoint(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        &creds,
        &EndpointConfig::new(REGISTRY_ALPN),
    )
    .expect("client");
    let conn = wmig_net::connect(&ep, server.addr, "registry", Duration::from_secs(5), &creds)
        .await
        .expect("connect");
    let code = |r: RegistryResponse| match r {
        RegistryResponse::Error(e) => (e.code, e.message),
        other => panic!("expected an error, got {other:?}"),
    };
    let (c, m) = code(raw_exchange(&conn, &[3, 0, 0, 0, PROTOCOL_VERSION, 0xee, 0xff]).await);
    assert_eq!(c, ErrorCode::Malformed, "{m}");
    let mut future = frame::encode(&RegistryRequest::Stats).expect("encode");
    future[4] = PROTOCOL_VERSION + 1;
    let (c, m) = code(raw_exchange(&conn, &future).await);
    assert_eq!(c, ErrorCode::UnsupportedVersion, "{m}");
    let (c, m) = code(raw_exchange(&conn, &[0xff, 0xff, 0xff, 0x7f]).await);
    assert_eq!(c, ErrorCode::TooLarge, "{m}");
    let (c, m) = code(raw_exchange(&conn, &[9, 0, 0, 0, PROTOCOL_VERSION, 1]).await);
    assert!(c == ErrorCode::Malformed && m.contains("truncated"), "{m}");
    // A PutChunks that promises more payload than it sends.
    let h = Hash::of(&chunk(3));
    let req = RegistryRequest::PutChunks {
        chunks: vec![ChunkHeader {
            hash: h,
            len: CHUNK_SIZE as u32,
        }],
    };
    let mut bytes = frame::encode(&req).expect("encode");
    bytes.extend_from_slice(&[0u8; 100]);
    let (c, m) = code(raw_exchange(&conn, &bytes).await);
    assert!(
        c == ErrorCode::Malformed && m.contains("nothing was stored"),
        "{m}"
    );
    // The connection still serves well-formed requests.
    let (mut send, mut recv) = conn.open_bi().await.expect("stream");
    write_frame(&mut send, &RegistryRequest::Stats)
        .await
        .expect("write");
    send.finish().expect("finish");
    let answer: RegistryResponse = read_frame(&mut recv, 1 << 20).await.expect("answer");
    assert!(matches!(answer, RegistryResponse::Stats(s) if s.chunks.count == 0));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_from_another_cluster_is_refused() {
    let server = TestServer::start(RegistryConfig::default()).await;
    let stranger = ClusterCa::generate().expect("ca");
    let mut creds = stranger.credentials(OPERATOR).expect("creds");
    // It even trusts the right CA; its own certificate is still foreign.
    creds.ca = server.ca.credentials("x").expect("x").ca;
    let outcome = async {
        let c = RegistryClient::connect(server.addr, &creds, ClientConfig::default()).await?;
        c.stats().await
    }
    .await;
    let e = outcome.expect_err("refused");
    assert!(e.to_string().contains("refused the TLS handshake"), "{e}");
    assert_eq!(
        server
            .registry
            .stats(std::time::Instant::now())
            .chunks
            .count,
        0
    );
    server.stop().await;
}
