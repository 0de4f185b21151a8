//! Live migration between workers (`wmig_proto::wire::live`): the source
//! streams rounds of written pages straight to the target while the task
//! runs, then pauses it once and sends the rest; the target has built the
//! instance from the rounds by then, so the pause carries only what the
//! last round missed.
//!
//! The target accepts a task only after the coordinator announced it
//! (`Expect`), and reports `LiveReady` once the whole state is applied; the
//! coordinator then logs the move and sends it an ordinary `Run`, which
//! starts the instance it holds. The source waits paused, after its final
//! message, for the coordinator's `Drop` (moved) or `Resume` (abandoned).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::mpsc;
use wmig_host::Incoming;
use wmig_net::stream::{read_exact, read_frame, read_payload, write_frame};
use wmig_net::EndpointConfig;
use wmig_proto::checkpoint::CHUNK_SIZE;
use wmig_proto::frame::MAX_FRAME_LEN;
use wmig_proto::wire::control::ControlRequest;
use wmig_proto::wire::live::{LiveMessage, LiveReply, LIVE_ALPN};
use wmig_proto::{NodeId, TaskId};

use crate::exec::{
    unix_us, FileRound, LiveOut, TaskControl, FINAL_PIECE_PAGES, LIVE_END, LIVE_FINAL, LIVE_ROUND,
    MAX_THROTTLE,
};
use crate::Worker;

/// Pre-copy rounds at most, before the final pause whatever the dirty rate.
const MAX_ROUNDS: u32 = 30;
/// A round this small is the last before the pause (1 MiB of pages).
const FINAL_PAGES: u64 = 256;
/// Rounds in a row that may fail to shrink below the smallest so far by
/// 10 % before the task pauses anyway (the dirty rate beats the link).
const PATIENCE: u32 = 4;
/// Throttle added per round that fails to shrink (see
/// [`TaskControl::throttle`]).
const THROTTLE_STEP: u8 = 20;
/// Buffers a cold move's pieces cycle through (4 MiB each).
const PIECE_BUFFERS: usize = 4;
/// Round numbers of the final round's pieces start here.
const FINAL_ROUNDS: u32 = 1 << 20;
/// How long a task may take to reach a pause for one step.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the target waits for the coordinator's `Expect` of a task a
/// source offers.
const EXPECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The endpoint settings of the live protocol: the stream windows hold a
/// whole round in flight on a fast link.
pub(crate) fn endpoint_config() -> EndpointConfig {
    let mut c = EndpointConfig::new(LIVE_ALPN);
    c.max_streams = 16;
    c.stream_window = 64 << 20;
    c.connection_window = 128 << 20;
    // Fewer, larger datagrams: a round is megabytes, and per-packet costs
    // (syscalls, crypto setup) bound loopback and LAN transfers. 4 KiB took
    // a 64 MiB move from 113 to 5 ms; 8 KiB lost packets against 4 MiB
    // socket buffers (64 MiB cold: 165 → 918 ms).
    c.max_udp_payload = 4096;
    c
}

/// Fault injection for the end-to-end tests: `WMIG_FAULT=POINT[:SECS]`
/// makes this worker stall at POINT of a live migration (for SECS seconds,
/// default an hour) so that a test can kill a process at that exact stage.
/// Points: `live-target-after-round` (the target, round 0 applied, not yet
/// acknowledged) and `live-source-after-pause` (the source, paused for
/// good, final state not yet sent).
async fn fault(point: &str) {
    static FAULT: std::sync::OnceLock<Option<(String, u64)>> = std::sync::OnceLock::new();
    let fault = FAULT.get_or_init(|| {
        let spec = std::env::var("WMIG_FAULT").ok()?;
        let (name, secs) = match spec.split_once(':') {
            Some((n, s)) => (n.to_owned(), s.parse().unwrap_or(3600)),
            None => (spec, 3600),
        };
        Some((name, secs))
    });
    if let Some((name, secs)) = fault.as_ref().filter(|(n, _)| n == point) {
        tracing::warn!(point = %name, secs, "fault injection: stalling");
        tokio::time::sleep(Duration::from_secs(*secs)).await;
    }
}

// --- source ----------------------------------------------------------------

/// Move `task` to `to` at `addr`. Runs beside the task thread, which hands
/// it rounds at pauses.
pub(crate) async fn send(
    worker: Arc<Worker>,
    task: TaskId,
    epoch: u64,
    to: NodeId,
    addr: String,
    precopy: bool,
    control: Arc<TaskControl>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    {
        let mut out = control.live_out.lock().unwrap_or_else(|p| p.into_inner());
        // Checked under the lock the task thread clears `live_out` with.
        if !control.ended.load(std::sync::atomic::Ordering::SeqCst) {
            *out = Some(tx);
        }
    }
    let mut final_sent = false;
    let result = tokio::select! {
        r = stream_task(
            &worker,
            task,
            epoch,
            &to,
            &addr,
            precopy,
            &control,
            rx,
            &mut final_sent,
        ) => r,
        () = control.live_abort.notified() => Err(anyhow::anyhow!("the coordinator abandoned the migration")),
    };
    *control.live_out.lock().unwrap_or_else(|p| p.into_inner()) = None;
    control.throttle.store(0, Ordering::SeqCst);
    // The move is not complete yet (the coordinator still has to place the
    // task): unmapping these now would hold up what completes it.
    crate::exec::release_later(std::mem::take(
        &mut *control.spare_bufs.lock().unwrap_or_else(|p| p.into_inner()),
    ));
    if let Err(e) = result {
        let reason = format!("{e:#}");
        tracing::warn!(%task, %to, reason, "live migration failed");
        if !final_sent {
            // Still running here: stop tracking writes.
            control.request_live(LIVE_END);
        }
        // After the final message the task waits, paused, for the
        // coordinator: the target may hold the state all the same.
        let _ = worker.reports.send(ControlRequest::LiveFailed {
            node: worker.config.name.clone(),
            task,
            epoch,
            reason,
        });
    }
}

#[allow(clippy::too_many_arguments)]
async fn stream_task(
    worker: &Worker,
    task: TaskId,
    epoch: u64,
    to: &NodeId,
    addr: &str,
    precopy: bool,
    control: &TaskControl,
    mut rx: mpsc::UnboundedReceiver<LiveOut>,
    final_sent: &mut bool,
) -> anyhow::Result<()> {
    let addr: SocketAddr = addr
        .parse()
        .with_context(|| format!("{to} advertises `{addr}`, which is not an address"))?;
    let module = control
        .module
        .get()
        .cloned()
        .context("the task has not started here yet; try again in a moment")?;
    let endpoint = wmig_net::client_endpoint(
        wmig_net::any_addr_for(addr),
        &worker.config.creds,
        &endpoint_config(),
    )?;
    let conn = wmig_net::connect(
        &endpoint,
        addr,
        &to.0,
        Duration::from_secs(5),
        &worker.config.creds,
    )
    .await?;
    let (mut send, mut recv) = conn.open_bi().await?;
    write_frame(
        &mut send,
        &LiveMessage::Offer {
            task,
            from: worker.config.name.clone(),
            epoch,
            module: module.module_hash,
            rewriter: module.rewriter,
            instrumented: module.instrumented_hash,
            memory_len: control.usage.read().memory_bytes,
        },
    )
    .await?;
    match read_frame::<LiveReply>(&mut recv, MAX_FRAME_LEN).await? {
        LiveReply::Accepted => {}
        LiveReply::Refused(why) => anyhow::bail!("{to} refused the task: {why}"),
        other => anyhow::bail!("{to} answered the offer with {other:?}"),
    }
    let mut next = async || -> anyhow::Result<LiveOut> {
        match tokio::time::timeout(STEP_TIMEOUT, rx.recv()).await {
            Ok(Some(LiveOut::Failed(why))) => anyhow::bail!("{why}"),
            Ok(Some(out)) => Ok(out),
            Ok(None) => anyhow::bail!("the task ended during the migration"),
            Err(_) => anyhow::bail!("the task did not reach a pause within {STEP_TIMEOUT:?}"),
        }
    };
    if precopy {
        let (mut best, mut since_best) = (u64::MAX, 0u32);
        for round in 0..MAX_ROUNDS {
            control.request_live(LIVE_ROUND);
            let LiveOut::Round(buf, files) = next().await? else {
                anyhow::bail!("the task answered a round with something else");
            };
            send_files(&mut send, files).await?;
            write_frame(
                &mut send,
                &LiveMessage::Pages {
                    round,
                    delta: buf.delta.clone(),
                    paused: false,
                },
            )
            .await?;
            send.write_all(&buf.bytes).await?;
            match read_frame::<LiveReply>(&mut recv, MAX_FRAME_LEN).await? {
                LiveReply::Applied(n) if n == round => {}
                LiveReply::Refused(why) => anyhow::bail!("{to} refused round {round}: {why}"),
                other => anyhow::bail!("{to} answered round {round} with {other:?}"),
            }
            let pages = buf.pages();
            tracing::debug!(%task, round, pages, bytes = buf.bytes.len(), "live round sent");
            control.return_spare(buf);
            // Stop when little is left, or when the task writes as fast as
            // the link carries: rounds no longer shrink. When the two are
            // close, round sizes wander; a few rounds of patience often
            // find a small one (each small round makes the next small).
            if round > 0 && pages <= FINAL_PAGES {
                break;
            }
            if pages.saturating_mul(10) < best.saturating_mul(9) {
                (best, since_best) = (pages, 0);
            } else {
                since_best += 1;
                if since_best >= PATIENCE {
                    break;
                }
                // Not converging: slow the task down a notch more.
                let _ = control
                    .throttle
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |t| {
                        Some(t.saturating_add(THROTTLE_STEP).min(MAX_THROTTLE))
                    });
            }
        }
    }
    // The pause comes next; after it the task runs at full speed again,
    // here or there.
    control.throttle.store(0, Ordering::SeqCst);
    // The final step. A cold move's memory arrives first, in pieces the
    // target applies while the next are captured and on the wire; their
    // acks are read below. The pieces cycle through a few buffers faulted
    // in now, while the task still runs, not during the pause.
    if !precopy {
        let pool = tokio::task::spawn_blocking(|| {
            let len = FINAL_PIECE_PAGES as usize * wmig_proto::wire::live::PAGE_SIZE;
            (0..PIECE_BUFFERS)
                .map(|_| {
                    let mut b = wmig_host::PageBuf::default();
                    b.bytes.resize(len, 0);
                    b.bytes.clear();
                    b
                })
                .collect::<Vec<_>>()
        })
        .await
        .context("preparing piece buffers panicked")?;
        for b in pool {
            control.return_spare(b);
        }
    }
    control.request_live(LIVE_FINAL);
    let mut pieces = 0u32;
    let (fin, paused_at_us) = loop {
        match next().await? {
            LiveOut::Piece(buf) => {
                write_frame(
                    &mut send,
                    &LiveMessage::Pages {
                        round: FINAL_ROUNDS + pieces,
                        delta: buf.delta.clone(),
                        paused: true,
                    },
                )
                .await?;
                send.write_all(&buf.bytes).await?;
                pieces += 1;
                control.return_spare(buf);
            }
            LiveOut::Final(fin, at, files) => {
                send_files(&mut send, files).await?;
                break (fin, at);
            }
            _ => anyhow::bail!("the task answered the final step with a round"),
        }
    };
    *final_sent = true;
    fault("live-source-after-pause").await;
    let captured_us = unix_us().saturating_sub(paused_at_us);
    tracing::debug!(%task, since_pause_us = captured_us, pieces, pages = fin.memory.pages(), "live final captured");
    write_frame(
        &mut send,
        &LiveMessage::Final {
            manifest: Box::new(fin.manifest),
            memory: fin.memory.delta,
            stack: fin.stack.delta,
            paused_at_us,
            captured_us,
        },
    )
    .await?;
    send.write_all(&fin.memory.bytes).await?;
    send.write_all(&fin.stack.bytes).await?;
    let _ = send.finish();
    tracing::debug!(%task, since_pause_us = unix_us().saturating_sub(paused_at_us), "live final sent");
    let mut reply = read_frame::<LiveReply>(&mut recv, MAX_FRAME_LEN).await?;
    while matches!(reply, LiveReply::Applied(n) if n >= FINAL_ROUNDS) {
        reply = read_frame::<LiveReply>(&mut recv, MAX_FRAME_LEN).await?;
    }
    match reply {
        LiveReply::Ready => {
            tracing::debug!(%task, since_pause_us = unix_us().saturating_sub(paused_at_us), "target ready");
            Ok(())
        }
        LiveReply::Refused(why) => anyhow::bail!("{to} could not apply the final state: {why}"),
        other => anyhow::bail!("{to} answered the final state with {other:?}"),
    }
}

/// A round's file changes, when the task has trees.
async fn send_files(send: &mut wmig_net::SendStream, files: FileRound) -> anyhow::Result<()> {
    if files.trees.is_empty() {
        return Ok(());
    }
    write_frame(
        send,
        &LiveMessage::Files {
            trees: files.trees,
            chunks: files.chunks.iter().map(|(h, _)| *h).collect(),
        },
    )
    .await?;
    for (_, bytes) in &files.chunks {
        send.write_all(bytes).await?;
    }
    Ok(())
}

// --- target ----------------------------------------------------------------

/// Accept live migrations until the endpoint closes.
pub(crate) async fn serve(worker: Arc<Worker>, endpoint: wmig_net::Endpoint) {
    while let Some(incoming) = endpoint.accept().await {
        let worker = worker.clone();
        tokio::spawn(async move {
            let Some(conn) = wmig_net::accept(incoming).await else {
                return;
            };
            let peer = Arc::new(wmig_net::PeerIdentity::of(&conn));
            while let Ok((send, recv)) = conn.accept_bi().await {
                // Revoked since the handshake: cut off.
                let list = worker.config.revocations.as_ref();
                if wmig_net::revocation::close_if_revoked(&conn, &peer, list) {
                    break;
                }
                let worker = worker.clone();
                let peer = peer.clone();
                tokio::spawn(async move { receive(worker, peer, send, recv).await });
            }
        });
    }
}

async fn receive(
    worker: Arc<Worker>,
    peer: Arc<wmig_net::PeerIdentity>,
    mut send: wmig_net::SendStream,
    mut recv: wmig_net::RecvStream,
) {
    let offer = match read_frame::<LiveMessage>(&mut recv, MAX_FRAME_LEN).await {
        Ok(LiveMessage::Offer {
            task,
            from,
            epoch,
            module,
            rewriter,
            instrumented,
            memory_len,
        }) => (
            task,
            from,
            epoch,
            module,
            rewriter,
            instrumented,
            memory_len,
        ),
        Ok(_) => {
            refuse(&mut send, "a live migration starts with an offer").await;
            return;
        }
        Err(e) => {
            tracing::warn!(error = %e, "unreadable live-migration offer");
            return;
        }
    };
    let (task, from, epoch, ..) = offer.clone();
    match take_task(&worker, &peer, offer, &mut send, &mut recv).await {
        Ok(()) => {}
        Err(e) => {
            let reason = format!("{e:#}");
            tracing::warn!(%task, %from, reason, "could not take a live migration");
            worker.forget_incoming(task, epoch);
            refuse(&mut send, &reason).await;
            let _ = worker.reports.send(ControlRequest::LiveFailed {
                node: worker.config.name.clone(),
                task,
                epoch,
                reason,
            });
        }
    }
}

async fn refuse(send: &mut wmig_net::SendStream, why: &str) {
    let _ = write_frame(send, &LiveReply::Refused(why.to_owned())).await;
    let _ = send.finish();
}

type Offer = (
    TaskId,
    NodeId,
    u64,
    wmig_proto::Hash,
    u32,
    wmig_proto::Hash,
    u64,
);

async fn take_task(
    worker: &Arc<Worker>,
    peer: &wmig_net::PeerIdentity,
    (task, from, epoch, module, rewriter, instrumented, memory_len): Offer,
    send: &mut wmig_net::SendStream,
    recv: &mut wmig_net::RecvStream,
) -> anyhow::Result<()> {
    if let Err(why) = peer.require(&[wmig_net::CertRole::Worker], "sending a live migration") {
        anyhow::bail!(why);
    }
    anyhow::ensure!(
        peer.is(&from.0),
        "the offer of {task} names {from} as its source, but comes with {}'s certificate",
        peer.name().unwrap_or_else(|| "another node".into())
    );
    let (source, spec, options) = worker.wait_expected(task, epoch, EXPECT_TIMEOUT).await.with_context(|| {
        format!(
            "the coordinator did not announce {task} (epoch {epoch}) here; move tasks with `wmig migrate`"
        )
    })?;
    anyhow::ensure!(
        source == from,
        "{task} is to come from {source}, not from {from}"
    );
    anyhow::ensure!(
        spec.bundle == module,
        "{from} offers {task} with module {module}, but the task runs {}",
        spec.bundle
    );
    let prepared = worker.module_version(&module, rewriter).await?;
    anyhow::ensure!(
        prepared.instrumented_hash == instrumented,
        "{from} instruments the module differently (another wmig build); run the same wmig release on every worker"
    );
    // The first resume runs through the rewind bodies: compile them now,
    // not during the pause.
    let rw = prepared.clone();
    tokio::task::spawn_blocking(move || rw.prepare_rewind())
        .await
        .context("compiling the rewind module panicked")??;
    let control = Arc::new(TaskControl::default());
    let mut job = worker.job(task, epoch + 1, spec, options, prepared.clone(), control);
    let config = job.task_config(job.wasi_config(0, 0));
    let incoming = Incoming::new(&worker.runtime, &prepared, config)?;
    // Memory faulted in now is memory the pause does not wait for.
    let mut incoming = tokio::task::spawn_blocking(move || {
        let mut incoming = incoming;
        incoming.prefault(memory_len).map(|()| incoming)
    })
    .await
    .context("faulting in the task's memory panicked")??;
    write_frame(send, &LiveReply::Accepted).await?;
    let max_memory = job.memory_limit_bytes();
    let mut files: Option<crate::files::TaskFiles> = None;
    // File chunk bytes not yet counted: pre-copy if pages of a running
    // round follow them, else part of the pause.
    let mut file_bytes = 0u64;
    let files_limit = job.options.files_limit();
    let (mut precopy_bytes, mut paused_bytes) = (0u64, 0u64);
    let mut round_buf = Vec::new();
    loop {
        match read_frame::<LiveMessage>(recv, MAX_FRAME_LEN).await? {
            LiveMessage::Pages {
                round,
                delta,
                paused,
            } => {
                delta.validate(max_memory).map_err(anyhow::Error::msg)?;
                // One buffer for every round: faulted in once, not per round.
                let len = delta.payload_len() as usize;
                round_buf.resize(len, 0);
                read_exact(recv, &mut round_buf[..len]).await?;
                let bytes = &round_buf[..len];
                incoming.apply(&delta, bytes)?;
                if paused {
                    paused_bytes += bytes.len() as u64;
                } else {
                    precopy_bytes += bytes.len() as u64 + std::mem::take(&mut file_bytes);
                    if round == 0 {
                        fault("live-target-after-round").await;
                    }
                }
                write_frame(send, &LiveReply::Applied(round)).await?;
            }
            LiveMessage::Files { trees, chunks } => {
                let max_chunks = files_limit.div_ceil(CHUNK_SIZE as u64) as usize;
                anyhow::ensure!(
                    chunks.len() <= max_chunks,
                    "the source sent {} file chunks, more than the task's files limit allows",
                    chunks.len()
                );
                let mut arrived = wmig_host::MemChunks::new();
                for hash in chunks {
                    let bytes = read_payload(recv, CHUNK_SIZE).await?;
                    let actual = wmig_proto::Hash::of(&bytes);
                    anyhow::ensure!(
                        actual == hash,
                        "file chunk {hash} arrived damaged (its bytes hash to {actual})"
                    );
                    file_bytes += bytes.len() as u64;
                    arrived.insert_owned(hash, bytes);
                }
                let mut f = files.take().unwrap_or_else(|| {
                    crate::files::TaskFiles::receiving(
                        &worker.config.cache_dir,
                        task,
                        epoch + 1,
                        files_limit,
                    )
                });
                let f = tokio::task::spawn_blocking(move || f.apply(&trees, &arrived).map(|()| f))
                    .await
                    .context("updating the task's files panicked")??;
                files = Some(f);
            }
            LiveMessage::Final {
                manifest,
                memory,
                stack,
                paused_at_us,
                captured_us,
            } => {
                memory.validate(max_memory).map_err(anyhow::Error::msg)?;
                stack.validate(max_memory).map_err(anyhow::Error::msg)?;
                let memory_bytes = read_payload(recv, memory.payload_len() as usize).await?;
                let stack_bytes = read_payload(recv, stack.payload_len() as usize).await?;
                let received_at_us = unix_us();
                if let Some(mut f) = files.take() {
                    anyhow::ensure!(
                        f.trees.len() == manifest.files.len()
                            && f.trees
                                .iter()
                                .zip(&manifest.files)
                                .all(|(t, p)| t.last == p.tree),
                        "the final state's files differ from those sent"
                    );
                    job.files = Some(
                        tokio::task::spawn_blocking(move || f.settle().map(|()| f))
                            .await
                            .context("settling the task's files panicked")??,
                    );
                } else {
                    anyhow::ensure!(
                        manifest.files.is_empty(),
                        "the final state names files that were never sent"
                    );
                }
                let wasi =
                    job.wasi_config(manifest.wasi.stdout_offset, manifest.wasi.stderr_offset);
                let t = incoming.finish(
                    wasi,
                    &manifest,
                    (&memory, &memory_bytes),
                    (&stack, &stack_bytes),
                )?;
                let delta_bytes =
                    paused_bytes + file_bytes + (memory_bytes.len() + stack_bytes.len()) as u64;
                tracing::debug!(%task, since_pause_us = unix_us().saturating_sub(paused_at_us), "live final applied");
                let applied_at_us = unix_us();
                job.arrived = Some((t, manifest.seq));
                // Freeing a round buffer of hundreds of MiB here would hold
                // this thread, and the report below behind it (tokio runs
                // the woken reporter on this thread next): the task frees
                // it once it runs.
                job.release_after_start = Some(std::mem::take(&mut round_buf));
                worker.arrive(task, epoch, job);
                write_frame(send, &LiveReply::Ready).await?;
                let _ = send.finish();
                let _ = worker.reports.send(ControlRequest::LiveReady {
                    node: worker.config.name.clone(),
                    task,
                    epoch,
                    paused_at_us,
                    captured_us,
                    received_at_us,
                    applied_at_us,
                    precopy_bytes,
                    delta_bytes,
                });
                return Ok(());
            }
            LiveMessage::Offer { .. } => anyhow::bail!("a second offer on one migration"),
        }
    }
}
