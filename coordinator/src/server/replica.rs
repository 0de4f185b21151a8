//! Coordinators replicated on etcd: leader election, and the leader's
//! durable state kept in etcd instead of on its own disk.
//!
//! Any number of `wmig coordinator --etcd URL,...` processes share one etcd
//! cluster. Each holds a lease (kept alive three times per TTL) under which
//! it lists itself in `PREFIX/coordinators/NAME`; the first to create
//! `PREFIX/leader` under its lease leads, and the others follow (they answer
//! every request with the leader's address) until that key disappears with
//! the leader's lease.
//!
//! **Fencing.** The leader key's create revision is the leader's *term*.
//! Every write the leader makes (an event, task output, task input) is an
//! etcd transaction conditioned on `create_revision(PREFIX/leader) == term`.
//! A leader whose lease expired while it was paused or cut off, and which
//! another coordinator has replaced, has its next write refused by etcd
//! itself: it cannot commit anything, whatever it believes. It then stops
//! (the process exits; `wmig up` starts it again as a follower). It also
//! stops on its own once its lease may have expired, before anyone could
//! have replaced it, so it does not keep sending commands to workers.
//!
//! **State.** The event log is one key per event (`PREFIX/log/SEQ`, the same
//! checksummed record as the local log file), written in order; a new
//! leader replays it exactly as a restarted single coordinator replays its
//! file, so nothing but etcd needs to survive a coordinator's machine.
//! Task output and input, which a single coordinator keeps in files, are
//! also written to etcd (`PREFIX/out/...`, `PREFIX/in/...`) before they are
//! acknowledged, and a new leader rebuilds its local copy from there.
//!
//! The client is `etcd-client` (tonic gRPC, the maintained Rust client for
//! the v3 API); the server is Debian's `etcd-server` 3.4.

use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{Client, Compare, CompareOp, ConnectOptions, GetOptions, PutOptions, Txn, TxnOp};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use wmig_proto::TaskId;

use crate::log::{decode_record, encode_record, LogError};
use crate::wire::{OutputChunk, Stream};
use crate::Event;

/// etcd refuses requests over 1.5 MiB by default; stay well under it.
const MAX_TXN_BYTES: usize = 1 << 20;
/// etcd's default `--max-txn-ops` is 128.
const MAX_TXN_OPS: usize = 100;
/// Output and input are stored in pieces of at most this size, so a page of
/// them stays under the gRPC client's 4 MiB message limit.
pub const PIECE: usize = 256 << 10;

/// How one coordinator is reached: stored as its membership and leader key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoordinatorRecord {
    pub name: String,
    /// QUIC control address.
    pub addr: String,
    /// HTTP address (API, dashboard, `/metrics`), if it serves one.
    pub http: Option<String>,
    pub pid: u32,
    /// Where it takes part in the SWIM membership (UDP), if it does.
    #[serde(default)]
    pub gossip: Option<std::net::SocketAddr>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    #[error("etcd at {endpoints}: {source}; check that etcd runs there (`etcd --version`) and that --etcd names its client URLs")]
    Etcd {
        endpoints: String,
        // Printed inline, no `source`: an error chain shows it once.
        source: etcd_client::Error,
    },
    #[error("this coordinator is no longer the leader: etcd refused a write for term {term} (another coordinator was elected after this one's lease expired); it stops and can be started again as a follower")]
    Deposed { term: i64 },
    #[error("this coordinator does not lead, so it writes nothing")]
    NotLeading,
    #[error(
        "etcd holds a malformed {what} at {key}: {reason}; it was not written by this wmig release"
    )]
    Malformed {
        what: &'static str,
        key: String,
        reason: String,
    },
    #[error(transparent)]
    Log(#[from] LogError),
}

/// Settings of `--etcd`.
#[derive(Clone, Debug)]
pub struct EtcdConfig {
    pub endpoints: Vec<String>,
    /// Every key lives under this prefix, so clusters can share an etcd.
    pub prefix: String,
    /// Lease time to live: how long a dead leader holds on to its
    /// leadership. etcd's smallest is about 2 s with its default timings.
    pub ttl: Duration,
    /// For `https://` endpoints: the cluster CA's PEM, and this
    /// coordinator's certificate with its key (one PEM), which etcd
    /// checks against that CA (`--client-cert-auth`).
    pub tls: Option<(String, String)>,
}

impl EtcdConfig {
    pub fn new(endpoints: Vec<String>) -> Self {
        EtcdConfig {
            endpoints,
            prefix: "/wmig".into(),
            ttl: Duration::from_secs(2),
            tls: None,
        }
    }
}

/// The etcd endpoints and the one in use.
struct Endpoints {
    clients: Vec<Client>,
    current: std::sync::atomic::AtomicUsize,
    names: String,
}

impl Endpoints {
    /// Run `op` on the endpoint in use; on any failure, on each other
    /// endpoint in turn. Safe because every operation here is idempotent:
    /// puts write the same value under the same key, and a fenced write
    /// replayed after it was applied still holds the same term.
    async fn call<T, F, Fut>(&self, op: F) -> Result<T, ReplicaError>
    where
        F: Fn(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let n = self.clients.len();
        let first = self.current.load(Ordering::Relaxed);
        let mut last = None;
        for attempt in 0..n {
            let i = (first + attempt) % n;
            let Some(client) = self.clients.get(i) else {
                continue;
            };
            match tokio::time::timeout(OP_TIMEOUT, op(client.clone())).await {
                Ok(Ok(v)) => {
                    self.current.store(i, Ordering::Relaxed);
                    return Ok(v);
                }
                Ok(Err(e)) => last = Some(e),
                Err(_) => {
                    last = Some(etcd_client::Error::IoError(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("no answer within {OP_TIMEOUT:?}"),
                    )))
                }
            }
        }
        Err(ReplicaError::Etcd {
            endpoints: self.names.clone(),
            source: last.unwrap_or_else(|| {
                etcd_client::Error::InvalidArgs("no etcd endpoints given (--etcd)".into())
            }),
        })
    }
}

/// How long one endpoint has to answer one request before the next is
/// tried: well under the lease TTL, so a member that went silent costs a
/// fraction of it.
const OP_TIMEOUT: Duration = Duration::from_millis(600);

/// One coordinator's connection to etcd, its lease and (when it leads) its
/// term.
pub struct Replica {
    /// One client per etcd endpoint. etcd-client's own balancing spreads
    /// requests over every endpoint, so with one member cut off a third of
    /// them would hang until their timeout and a healthy leader would step
    /// down; instead each call goes to the endpoint that answered last and
    /// moves on to the next one when it does not answer.
    clients: Arc<Endpoints>,
    config: EtcdConfig,
    lease: i64,
    me: CoordinatorRecord,
    term: AtomicI64,
    lost: watch::Receiver<Option<String>>,
    keepalive: tokio::task::JoinHandle<()>,
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.keepalive.abort();
    }
}

fn stream_digit(s: Stream) -> u8 {
    match s {
        Stream::Stdout => 0,
        Stream::Stderr => 1,
    }
}

impl Replica {
    /// Connect, take a lease and list this coordinator under it, trying
    /// again for up to `patience` while etcd is not reachable (its members
    /// may be starting beside this coordinator).
    pub async fn join(
        config: EtcdConfig,
        me: CoordinatorRecord,
        patience: Duration,
    ) -> Result<Arc<Replica>, ReplicaError> {
        let deadline = Instant::now() + patience;
        loop {
            match Self::join_once(config.clone(), me.clone()).await {
                Ok(r) => return Ok(r),
                Err(e) if Instant::now() < deadline => {
                    tracing::warn!(error = %e, "etcd not reachable yet; trying again");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn join_once(
        config: EtcdConfig,
        me: CoordinatorRecord,
    ) -> Result<Arc<Replica>, ReplicaError> {
        let names = config.endpoints.join(",");
        let mut clients = Vec::new();
        for endpoint in &config.endpoints {
            let mut options = ConnectOptions::new()
                .with_connect_timeout(OP_TIMEOUT)
                .with_timeout(OP_TIMEOUT);
            if let Some((ca, id)) = &config.tls {
                options = options.with_tls(
                    etcd_client::TlsOptions::new()
                        .ca_certificate(etcd_client::Certificate::from_pem(ca))
                        // One PEM holds both: the certificate is read from
                        // its CERTIFICATE block, the key from its KEY block.
                        .identity(etcd_client::Identity::from_pem(id, id)),
                );
            }
            let client = Client::connect([endpoint], Some(options))
                .await
                .map_err(|source| ReplicaError::Etcd {
                    endpoints: endpoint.clone(),
                    source,
                })?;
            clients.push(client);
        }
        let clients = Arc::new(Endpoints {
            clients,
            current: std::sync::atomic::AtomicUsize::new(0),
            names,
        });
        let ttl = config.ttl.as_secs().max(1) as i64;
        let lease = clients
            .call(|mut c| async move { c.lease_grant(ttl, None).await })
            .await?
            .id();
        let record = serde_json::to_vec(&me).unwrap_or_default();
        let key = format!("{}/coordinators/{}", config.prefix, me.name);
        clients
            .call(|mut c| {
                let (key, record) = (key.clone(), record.clone());
                async move {
                    c.put(key, record, Some(PutOptions::new().with_lease(lease)))
                        .await
                }
            })
            .await?;
        let (lost_tx, lost) = watch::channel(None);
        let keepalive = tokio::spawn(keep_alive(clients.clone(), lease, config.ttl, lost_tx));
        Ok(Arc::new(Replica {
            clients,
            config,
            lease,
            me,
            term: AtomicI64::new(0),
            lost,
            keepalive,
        }))
    }

    fn key(&self, rest: &str) -> String {
        format!("{}/{rest}", self.config.prefix)
    }

    pub fn me(&self) -> &CoordinatorRecord {
        &self.me
    }

    /// Resolves with the reason once this coordinator's lease is gone (or
    /// may be): it must stop acting at once.
    pub fn lost(&self) -> watch::Receiver<Option<String>> {
        self.lost.clone()
    }

    /// The current leader, if any.
    pub async fn leader(&self) -> Result<Option<CoordinatorRecord>, ReplicaError> {
        let key = self.key("leader");
        let resp = self
            .clients
            .call(|mut c| {
                let key = key.clone();
                async move { c.get(key, None).await }
            })
            .await?;
        match resp.kvs().first() {
            None => Ok(None),
            Some(kv) => parse_record(&key, kv.value()).map(Some),
        }
    }

    /// Try once to become the leader; true if this coordinator now leads.
    pub async fn campaign(&self) -> Result<bool, ReplicaError> {
        let key = self.key("leader");
        let record = serde_json::to_vec(&self.me).unwrap_or_default();
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key.clone(),
                record,
                Some(PutOptions::new().with_lease(self.lease)),
            )])
            .or_else([TxnOp::get(key, None)]);
        let resp = self.txn(txn).await?;
        let term = if resp.succeeded() {
            // The put is the transaction's only write, so the revision it
            // created is the leader key's create revision: our term.
            resp.header().map_or(0, |h| h.revision())
        } else {
            // Taken, perhaps by this very coordinator in an attempt whose
            // answer was lost (the call was retried): the key's lease says.
            let mine = resp.op_responses().into_iter().find_map(|r| match r {
                etcd_client::TxnOpResponse::Get(g) => g
                    .kvs()
                    .first()
                    .filter(|kv| kv.lease() == self.lease)
                    .map(|kv| kv.create_revision()),
                _ => None,
            });
            match mine {
                Some(rev) => rev,
                None => return Ok(false),
            }
        };
        self.term.store(term, Ordering::SeqCst);
        Ok(term > 0)
    }

    async fn txn(&self, txn: Txn) -> Result<etcd_client::TxnResponse, ReplicaError> {
        self.clients
            .call(|mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .await
    }

    pub fn term(&self) -> i64 {
        self.term.load(Ordering::SeqCst)
    }

    /// The cluster's gossip key: the one in etcd, or `fresh` if there was
    /// none (the first coordinator to ask sets it for all).
    pub async fn gossip_key(&self, fresh: [u8; 32]) -> Result<[u8; 32], ReplicaError> {
        let key = self.key("gossip-key");
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.clone(), fresh.to_vec(), None)])
            .or_else([TxnOp::get(key.clone(), None)]);
        let resp = self.txn(txn).await?;
        if resp.succeeded() {
            return Ok(fresh);
        }
        let stored = resp.op_responses().into_iter().find_map(|r| match r {
            etcd_client::TxnOpResponse::Get(g) => g.kvs().first().map(|kv| kv.value().to_vec()),
            _ => None,
        });
        stored
            .and_then(|v| <[u8; 32]>::try_from(v.as_slice()).ok())
            .ok_or_else(|| ReplicaError::Malformed {
                what: "gossip key",
                key,
                reason: "not 32 bytes".into(),
            })
    }

    /// Give the leadership (and the membership) up now rather than when the
    /// lease times out: a clean stop hands over at once.
    pub async fn resign(&self) {
        let lease = self.lease;
        let _ = self
            .clients
            .call(|mut c| async move { c.lease_revoke(lease).await })
            .await;
    }

    /// Every coordinator that holds a lease.
    pub async fn members(&self) -> Result<Vec<CoordinatorRecord>, ReplicaError> {
        let mut out = Vec::new();
        for (key, value) in self.range("coordinators/").await? {
            out.push(parse_record(&key, &value)?);
        }
        Ok(out)
    }

    /// Every key under `PREFIX/rest`, in key order, at one revision, in
    /// pages that shrink when a page is too large for one gRPC message.
    async fn range(&self, rest: &str) -> Result<Vec<(String, Vec<u8>)>, ReplicaError> {
        let start = self.key(rest);
        let mut end = start.clone().into_bytes();
        // The prefix's end: its last byte plus one ('/' + 1 = '0').
        if let Some(last) = end.last_mut() {
            *last += 1;
        }
        let mut from = start.into_bytes();
        let mut out = Vec::new();
        let mut limit = 256;
        let mut revision = 0;
        loop {
            let mut options = GetOptions::new().with_range(end.clone()).with_limit(limit);
            if revision > 0 {
                options = options.with_revision(revision);
            }
            let resp = match self
                .clients
                .call(|mut c| {
                    let (from, options) = (from.clone(), options.clone());
                    async move { c.get(from, Some(options)).await }
                })
                .await
            {
                Ok(r) => r,
                Err(ReplicaError::Etcd {
                    source: etcd_client::Error::GRpcStatus(s),
                    ..
                }) if limit > 1 && s.message().contains("too large") => {
                    limit = (limit / 8).max(1);
                    continue;
                }
                Err(e) => return Err(e),
            };
            if revision == 0 {
                revision = resp.header().map_or(0, |h| h.revision());
            }
            let kvs = resp.kvs();
            for kv in kvs {
                out.push((
                    String::from_utf8_lossy(kv.key()).into_owned(),
                    kv.value().to_vec(),
                ));
            }
            match kvs.last() {
                Some(last) if resp.more() => {
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => return Ok(out),
            }
        }
    }

    /// The whole event log, checked to run from 0 without a gap.
    pub async fn load_log(&self) -> Result<Vec<Event>, ReplicaError> {
        let mut events = Vec::new();
        for (key, value) in self.range("log/").await? {
            let seq = key
                .rsplit('/')
                .next()
                .and_then(|s| u64::from_str_radix(s, 16).ok());
            if seq != Some(events.len() as u64) {
                return Err(ReplicaError::Malformed {
                    what: "event log key",
                    key,
                    reason: format!("expected event number {}", events.len()),
                });
            }
            events.push(decode_record(Path::new(&key), &value)?);
        }
        Ok(events)
    }

    /// A transaction of `ops` that commits only while this coordinator's
    /// term is current (and `extra` holds).
    async fn fenced(&self, extra: Option<Compare>, ops: Vec<TxnOp>) -> Result<(), ReplicaError> {
        let term = self.term();
        if term == 0 {
            return Err(ReplicaError::NotLeading);
        }
        let mut when = vec![Compare::create_revision(
            self.key("leader"),
            CompareOp::Equal,
            term,
        )];
        when.extend(extra);
        let resp = self.txn(Txn::new().when(when).and_then(ops)).await?;
        if resp.succeeded() {
            Ok(())
        } else {
            Err(ReplicaError::Deposed { term })
        }
    }

    /// Append events `first, first + 1, ...`, in order. Each transaction
    /// also requires its first key to be new, so nothing is overwritten.
    pub async fn append(&self, first: u64, events: &[Event]) -> Result<(), ReplicaError> {
        let mut batch: Vec<TxnOp> = Vec::new();
        let mut bytes = 0;
        for (seq, event) in (first..).zip(events) {
            let record = encode_record(event)?;
            if !batch.is_empty()
                && (batch.len() == MAX_TXN_OPS || bytes + record.len() > MAX_TXN_BYTES)
            {
                self.append_batch(std::mem::take(&mut batch)).await?;
                bytes = 0;
            }
            bytes += record.len();
            batch.push(TxnOp::put(
                self.key(&format!("log/{seq:016x}")),
                record,
                None,
            ));
        }
        if !batch.is_empty() {
            self.append_batch(batch).await?;
        }
        Ok(())
    }

    async fn append_batch(&self, ops: Vec<TxnOp>) -> Result<(), ReplicaError> {
        // The term alone fences: nobody else writes log keys while it
        // holds, so a batch written again after a lost answer writes the
        // same records under the same keys.
        self.fenced(None, ops).await
    }

    /// Store output bytes (already checked to extend the stream).
    pub async fn put_output(&self, chunk: &OutputChunk) -> Result<(), ReplicaError> {
        let mut ops = Vec::new();
        let mut offset = chunk.offset;
        for piece in chunk.bytes.chunks(PIECE) {
            ops.push(TxnOp::put(
                self.key(&format!(
                    "out/{:016x}/{}/{offset:016x}",
                    chunk.task.0,
                    stream_digit(chunk.stream)
                )),
                piece.to_vec(),
                None,
            ));
            offset += piece.len() as u64;
        }
        for ops in ops.chunks(4) {
            self.fenced(None, ops.to_vec()).await?;
        }
        Ok(())
    }

    /// Every stored output piece, in task, stream and offset order.
    pub async fn load_output(&self) -> Result<Vec<OutputChunk>, ReplicaError> {
        let mut out = Vec::new();
        for (key, bytes) in self.range("out/").await? {
            let mut parts = key.rsplit('/');
            let (Some(offset), Some(stream), Some(task)) =
                (parts.next(), parts.next(), parts.next())
            else {
                return Err(malformed_key("output key", key));
            };
            let (Ok(offset), Ok(task)) = (
                u64::from_str_radix(offset, 16),
                u64::from_str_radix(task, 16),
            ) else {
                return Err(malformed_key("output key", key));
            };
            let stream = match stream {
                "0" => Stream::Stdout,
                "1" => Stream::Stderr,
                _ => return Err(malformed_key("output key", key)),
            };
            out.push(OutputChunk {
                task: TaskId(task),
                stream,
                offset,
                bytes,
            });
        }
        Ok(out)
    }

    /// Store input bytes at `offset` (new ones only) and, with `eof`, the
    /// end of the task's input.
    pub async fn put_input(
        &self,
        task: TaskId,
        offset: u64,
        bytes: &[u8],
        eof: bool,
    ) -> Result<(), ReplicaError> {
        let mut ops = Vec::new();
        let mut at = offset;
        for piece in bytes.chunks(PIECE) {
            ops.push(TxnOp::put(
                self.key(&format!("in/{:016x}/{at:016x}", task.0)),
                piece.to_vec(),
                None,
            ));
            at += piece.len() as u64;
        }
        if eof {
            ops.push(TxnOp::put(
                self.key(&format!("in/{:016x}/eof", task.0)),
                Vec::new(),
                None,
            ));
        }
        for ops in ops.chunks(4) {
            self.fenced(None, ops.to_vec()).await?;
        }
        Ok(())
    }

    /// Every stored input piece (`None` bytes: the end marker), in task and
    /// offset order.
    pub async fn load_input(&self) -> Result<Vec<(TaskId, u64, Option<Vec<u8>>)>, ReplicaError> {
        let mut out = Vec::new();
        for (key, bytes) in self.range("in/").await? {
            let mut parts = key.rsplit('/');
            let (Some(last), Some(task)) = (parts.next(), parts.next()) else {
                return Err(malformed_key("input key", key));
            };
            let Ok(task) = u64::from_str_radix(task, 16) else {
                return Err(malformed_key("input key", key));
            };
            if last == "eof" {
                out.push((TaskId(task), u64::MAX, None));
                continue;
            }
            let Ok(offset) = u64::from_str_radix(last, 16) else {
                return Err(malformed_key("input key", key));
            };
            out.push((TaskId(task), offset, Some(bytes)));
        }
        Ok(out)
    }
}

fn malformed_key(what: &'static str, key: String) -> ReplicaError {
    ReplicaError::Malformed {
        what,
        key,
        reason: "the key does not parse".into(),
    }
}

fn parse_record(key: &str, value: &[u8]) -> Result<CoordinatorRecord, ReplicaError> {
    serde_json::from_slice(value).map_err(|e| ReplicaError::Malformed {
        what: "coordinator record",
        key: key.to_owned(),
        reason: e.to_string(),
    })
}

/// Renew the lease three times per TTL. The lease is counted as lost, and
/// the coordinator stops, once three quarters of a TTL have passed since
/// the *sending* of the last renewal etcd confirmed: from then on etcd may
/// have let it expire and elected someone else.
async fn keep_alive(
    clients: Arc<Endpoints>,
    lease: i64,
    ttl: Duration,
    lost: watch::Sender<Option<String>>,
) {
    let period = ttl / 3;
    let mut confirmed = Instant::now();
    loop {
        if confirmed.elapsed() >= ttl * 3 / 4 {
            let _ = lost.send(Some(format!(
                "no lease renewal confirmed by etcd for {:?} (its TTL is {ttl:?})",
                confirmed.elapsed()
            )));
            return;
        }
        let sent = Instant::now();
        // One renewal: open a keep-alive stream, send, read the answer. A
        // new stream each time costs a round trip more, and lets every
        // renewal go to whichever endpoint answers.
        let answer = clients
            .call(|mut c| async move {
                let (mut keeper, mut responses) = c.lease_keep_alive(lease).await?;
                keeper.keep_alive().await?;
                responses.message().await
            })
            .await;
        match answer {
            Ok(Some(r)) if r.ttl() > 0 => confirmed = sent,
            Ok(Some(_)) => {
                let _ = lost.send(Some("etcd says the lease expired".into()));
                return;
            }
            Ok(None) | Err(_) => {}
        }
        tokio::time::sleep_until((sent + period).into()).await;
    }
}
