//! A connection to the coordinator, used by workers, monitors and `wmig`.
//!
//! It lives in its own crate, beside the messages in
//! [`wmig_proto::wire::control`], so that the worker and the CLI can speak the
//! control protocol without linking the coordinator server (axum, the
//! dashboard, the event log). `wmig_coordinator` re-exports it.

use std::net::SocketAddr;
use std::time::Duration;

use wmig_net::stream::{read_frame, timed, write_frame};
use wmig_net::{Credentials, EndpointConfig, NetError};
use wmig_proto::frame::{FrameError, MAX_FRAME_LEN};
use wmig_proto::wire::control::{
    ClusterStats, ControlRequest, ControlResponse, MigrationReport, NodeStatus, TaskBeat, TaskView,
};
use wmig_proto::wire::{ErrorCode, RemoteError, CONTROL_ALPN};
use wmig_proto::{NodeId, TaskId};

/// How often [`ControlClient::connect_cluster`] asks again during an
/// election.
const ELECTION_RETRY: Duration = Duration::from_millis(200);
/// How long the leader named by a follower has to answer before the round
/// starts again.
const FOLLOW_GRACE: Duration = Duration::from_millis(500);

/// The node name on the coordinator's certificate.
pub const COORDINATOR_NODE: &str = "coordinator";

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    // Each prints its cause inline and has no `source`, so an error chain
    // (`{:#}`) shows it once.
    #[error("coordinator unreachable: {0}")]
    Net(NetError),
    #[error(transparent)]
    Remote(#[from] RemoteError),
    #[error("the coordinator answered {what} with an unexpected message; are both the same wmig release?")]
    Unexpected { what: &'static str },
}

impl From<NetError> for ControlError {
    fn from(e: NetError) -> Self {
        ControlError::Net(e)
    }
}

impl ControlError {
    /// The coordinator refused this node's request as stale or unknown; the
    /// caller should re-register (node) or drop the task (report).
    pub fn remote(&self) -> Option<&RemoteError> {
        match self {
            ControlError::Remote(r) => Some(r),
            _ => None,
        }
    }
}

pub struct ControlClient {
    conn: quinn::Connection,
    _endpoint: quinn::Endpoint,
    timeout: Duration,
}

/// An open stream of responses (attach, logs -f, events -f).
pub struct Subscription {
    recv: quinn::RecvStream,
    _send: quinn::SendStream,
}

impl Subscription {
    /// The next response, or `None` once the coordinator finished the stream.
    pub async fn next(&mut self) -> Result<Option<ControlResponse>, ControlError> {
        match read_frame(&mut self.recv, MAX_FRAME_LEN).await {
            Ok(ControlResponse::Error(e)) => Err(e.into()),
            Ok(r) => Ok(Some(r)),
            Err(NetError::Frame(FrameError::Truncated { have: 0, .. })) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

/// A coordinator's answer to a check-in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckIn {
    /// Tasks (and the epochs the node reported) it no longer owns.
    pub stale: Vec<(TaskId, u64)>,
    /// Check in again within this long.
    pub next: Duration,
}

impl ControlClient {
    pub async fn connect(
        addr: SocketAddr,
        creds: &Credentials,
        timeout: Duration,
    ) -> Result<Self, ControlError> {
        let mut config = EndpointConfig::new(CONTROL_ALPN);
        config.max_streams = 256;
        let endpoint =
            wmig_net::client_endpoint(wmig_net::endpoint::any_addr_for(addr), creds, &config)?;
        let conn = wmig_net::connect(&endpoint, addr, COORDINATOR_NODE, timeout, creds).await?;
        Ok(ControlClient {
            conn,
            _endpoint: endpoint,
            timeout,
        })
    }

    /// Connect to whichever of `addrs` leads. One address is a single
    /// coordinator (or one of several replicated on etcd, which points at
    /// the leader); several are replicated coordinators. All are dialled
    /// at once, each is asked who leads, and a follower's answer is
    /// followed, so a dead coordinator in the list costs nothing while
    /// another answers. While followers answer that an election is under
    /// way, this tries again until `timeout`.
    pub async fn connect_cluster(
        addrs: &[SocketAddr],
        creds: &Credentials,
        timeout: Duration,
    ) -> Result<Self, ControlError> {
        use futures_util::stream::{FuturesUnordered, StreamExt};
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let mut tried: Vec<SocketAddr> = addrs.to_vec();
            let mut pending: FuturesUnordered<_> = addrs
                .iter()
                .map(|&a| Self::probe(a, creds, timeout))
                .collect();
            let mut last = None;
            let mut followers = false;
            // Once a follower has answered, the leader it names gets a
            // moment to answer too; a leader that died does not hold the
            // round up for a whole connect timeout.
            let mut round_end: Option<tokio::time::Instant> = None;
            loop {
                let next = match round_end {
                    Some(end) => match tokio::time::timeout_at(end, pending.next()).await {
                        Ok(next) => next,
                        Err(_) => break,
                    },
                    None => pending.next().await,
                };
                let Some(result) = next else { break };
                match result {
                    Ok((client, None)) => return Ok(client),
                    Ok((client, Some(leader))) => {
                        client.close();
                        followers = true;
                        round_end.get_or_insert_with(|| tokio::time::Instant::now() + FOLLOW_GRACE);
                        last = Some(ControlError::Remote(RemoteError::new(
                            ErrorCode::NotLeader,
                            match &leader {
                                Some(l) => format!("the coordinators name {l} as their leader, and it did not answer; an election takes a few seconds after a leader stops: retry"),
                                None => "no coordinator leads right now (an election takes a few seconds after a leader stops): retry".to_owned(),
                            },
                        )));
                        if let Some(l) = leader.and_then(|l| l.parse::<SocketAddr>().ok()) {
                            if !tried.contains(&l) {
                                tried.push(l);
                                pending.push(Self::probe(l, creds, timeout));
                            }
                        }
                    }
                    Err(e) => last = last.or(Some(e)),
                }
            }
            drop(pending);
            let last = last.unwrap_or(ControlError::Unexpected {
                what: "an empty list of coordinator addresses",
            });
            // Nobody answered at all: there is nothing to wait for here.
            if !followers || tokio::time::Instant::now() + ELECTION_RETRY > deadline {
                return Err(last);
            }
            tokio::time::sleep(ELECTION_RETRY).await;
        }
    }

    /// Connect to `addr` and ask who leads: the client when it leads, or
    /// the leader it names (`None` during an election).
    async fn probe(
        addr: SocketAddr,
        creds: &Credentials,
        timeout: Duration,
    ) -> Result<(Self, Option<Option<String>>), ControlError> {
        let client = Self::connect(addr, creds, timeout).await?;
        match client.ask(&ControlRequest::WhoLeads).await? {
            ControlResponse::Leader {
                is_leader: true, ..
            } => Ok((client, None)),
            ControlResponse::Leader { leader, .. } => Ok((client, Some(leader))),
            _ => Err(ControlError::Unexpected { what: "who leads" }),
        }
    }

    /// The coordinator this client is connected to.
    pub fn remote_address(&self) -> SocketAddr {
        self.conn.remote_address()
    }

    /// True once the connection is gone (the caller reconnects).
    pub fn is_closed(&self) -> bool {
        self.conn.close_reason().is_some()
    }

    pub fn close(&self) {
        self.conn.close(quinn::VarInt::from_u32(0), b"bye");
    }

    async fn open(
        &self,
        req: &ControlRequest,
    ) -> Result<(quinn::SendStream, quinn::RecvStream), ControlError> {
        let (mut send, recv) = timed(self.timeout, async {
            self.conn
                .open_bi()
                .await
                .map_err(|e| NetError::Connection(wmig_net::error::describe_connection_error(&e)))
        })
        .await?;
        write_frame(&mut send, req).await?;
        Ok((send, recv))
    }

    /// One request, one response; an error response becomes `Err`.
    pub async fn ask(&self, req: &ControlRequest) -> Result<ControlResponse, ControlError> {
        let (mut send, mut recv) = self.open(req).await?;
        let _ = send.finish();
        match timed(self.timeout, read_frame(&mut recv, MAX_FRAME_LEN)).await? {
            ControlResponse::Error(e) => Err(e.into()),
            r => Ok(r),
        }
    }

    /// Like [`Self::ask`] without a response deadline (`Wait`).
    pub async fn ask_untimed(&self, req: &ControlRequest) -> Result<ControlResponse, ControlError> {
        let (mut send, mut recv) = self.open(req).await?;
        let _ = send.finish();
        match read_frame(&mut recv, MAX_FRAME_LEN).await? {
            ControlResponse::Error(e) => Err(e.into()),
            r => Ok(r),
        }
    }

    /// A request whose answer is a stream of responses.
    pub async fn subscribe(&self, req: &ControlRequest) -> Result<Subscription, ControlError> {
        let (send, recv) = self.open(req).await?;
        Ok(Subscription { recv, _send: send })
    }

    /// `ask` expecting `Ok`.
    pub async fn call(&self, req: &ControlRequest, what: &'static str) -> Result<(), ControlError> {
        match self.ask(req).await? {
            ControlResponse::Ok => Ok(()),
            _ => Err(ControlError::Unexpected { what }),
        }
    }

    pub async fn tasks(&self) -> Result<Vec<TaskView>, ControlError> {
        match self.ask(&ControlRequest::ListTasks).await? {
            ControlResponse::Tasks(t) => Ok(t),
            _ => Err(ControlError::Unexpected { what: "ListTasks" }),
        }
    }

    pub async fn task(&self, task: TaskId) -> Result<TaskView, ControlError> {
        match self.ask(&ControlRequest::Inspect { task }).await? {
            ControlResponse::Task(t) => Ok(*t),
            _ => Err(ControlError::Unexpected { what: "Inspect" }),
        }
    }

    pub async fn nodes(&self) -> Result<Vec<NodeStatus>, ControlError> {
        match self.ask(&ControlRequest::ListNodes).await? {
            ControlResponse::Nodes(n) => Ok(n),
            _ => Err(ControlError::Unexpected { what: "ListNodes" }),
        }
    }

    pub async fn stats(&self) -> Result<ClusterStats, ControlError> {
        match self.ask(&ControlRequest::Stats).await? {
            ControlResponse::Stats(s) => Ok(s),
            _ => Err(ControlError::Unexpected { what: "Stats" }),
        }
    }

    /// Block until the task is completed, failed or cancelled.
    pub async fn wait(&self, task: TaskId) -> Result<TaskView, ControlError> {
        match self.ask_untimed(&ControlRequest::Wait { task }).await? {
            ControlResponse::Ended(t) => Ok(*t),
            _ => Err(ControlError::Unexpected { what: "Wait" }),
        }
    }

    /// Check in (heartbeat); returns the listed tasks this node no longer
    /// owns, and when the coordinator wants to hear from it next.
    pub async fn heartbeat(
        &self,
        node: &NodeId,
        tasks: Vec<TaskBeat>,
    ) -> Result<CheckIn, ControlError> {
        let req = ControlRequest::Heartbeat {
            node: node.clone(),
            tasks,
        };
        match self.ask(&req).await? {
            ControlResponse::CheckedIn { stale, next_ms } => Ok(CheckIn {
                stale,
                next: Duration::from_millis(next_ms),
            }),
            _ => Err(ControlError::Unexpected { what: "Heartbeat" }),
        }
    }

    /// Store input for a task submitted with `stdin` (see
    /// [`ControlRequest::Input`]); returns the stored length.
    pub async fn send_input(
        &self,
        task: TaskId,
        offset: Option<u64>,
        bytes: Vec<u8>,
        eof: bool,
    ) -> Result<u64, ControlError> {
        let req = ControlRequest::Input {
            task,
            offset,
            bytes,
            eof,
        };
        match self.ask(&req).await? {
            ControlResponse::InputStored { len } => Ok(len),
            _ => Err(ControlError::Unexpected { what: "Input" }),
        }
    }

    /// The owner's read of its task's input: bytes from `offset` and whether
    /// they end it. Waits (up to the coordinator's limit, then answers
    /// empty) when none have arrived.
    pub async fn read_input(
        &self,
        node: &NodeId,
        task: TaskId,
        epoch: u64,
        offset: u64,
        max: u32,
    ) -> Result<(Vec<u8>, bool), ControlError> {
        let req = ControlRequest::ReadInput {
            node: node.clone(),
            task,
            epoch,
            offset,
            max,
        };
        match self.ask_untimed(&req).await? {
            ControlResponse::Input { bytes, eof } => Ok((bytes, eof)),
            _ => Err(ControlError::Unexpected { what: "ReadInput" }),
        }
    }

    /// Migrate a running task; returns once it runs on its new worker.
    pub async fn migrate(
        &self,
        task: TaskId,
        to: NodeId,
        precopy: bool,
    ) -> Result<MigrationReport, ControlError> {
        match self
            .ask_untimed(&ControlRequest::Migrate { task, to, precopy })
            .await?
        {
            ControlResponse::Migrated(r) => Ok(r),
            _ => Err(ControlError::Unexpected { what: "Migrate" }),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;
    use wmig_proto::wire::ErrorCode;

    /// An error chain (`{:#}`, what the CLI prints) names each cause once:
    /// these errors carry their cause inline, not again as a `source`.
    #[test]
    fn errors_print_their_cause_once() {
        let remote = ControlError::from(RemoteError::new(ErrorCode::Conflict, "task t-2 moved"));
        assert_eq!(remote.to_string(), "task t-2 moved");
        assert!(remote.source().is_none());
        let net = ControlError::from(NetError::Timeout(std::time::Duration::from_secs(5)));
        assert!(net.to_string().starts_with("coordinator unreachable: "));
        assert!(net.source().is_none());
    }
}
