//! Fuzz harness of the wire messages: every request and response of the
//! control, registry and live-migration protocols as it arrives from a peer,
//! i.e. one frame decoded by [`crate::frame`]. Peers are authenticated but
//! not trusted to be bug-free or current, so a damaged or hostile frame
//! must decode to a well-formed message or fail with a named error; never
//! panic, never allocate by a claimed length, never decode to something
//! that re-encodes differently.
//!
//! Each protocol gets: valid messages of every variant round-tripping,
//! arbitrary bytes, and valid encodings damaged by [`fuzzing::Mutation`]s
//! (with the length prefix kept consistent, so the damage reaches postcard).
//! [`PageDelta::validate`], the live target's only guard before it sizes a
//! buffer and writes into a task's memory, is fuzzed on its own.

use std::collections::BTreeMap;

use proptest::collection::{btree_map, vec};
use proptest::option::of;
use proptest::prelude::*;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::control::*;
use super::live::*;
use super::registry::tests::{request, response, revoked};
use super::registry::{RegistryRequest, RegistryResponse};
use super::RemoteError;
use crate::frame::{self, MAX_FRAME_LEN};
use crate::fuzzing::{self, check_frame, code, hash, manifest, mutations, node_id, task_id, text};

// --- strategies ---------------------------------------------------------------

fn n() -> BoxedStrategy<u64> {
    prop_oneof![0u64..1000, any::<u64>()].boxed()
}

fn bytes() -> BoxedStrategy<Vec<u8>> {
    vec(any::<u8>(), 0..48).boxed()
}

fn strings() -> BoxedStrategy<Vec<String>> {
    vec(text(), 0..3).boxed()
}

fn map() -> BoxedStrategy<BTreeMap<String, String>> {
    btree_map(text(), text(), 0..3).boxed()
}

fn stream() -> BoxedStrategy<Stream> {
    prop_oneof![Just(Stream::Stdout), Just(Stream::Stderr)].boxed()
}

fn chunk() -> BoxedStrategy<OutputChunk> {
    (task_id(), stream(), n(), bytes())
        .prop_map(|(task, stream, offset, bytes)| OutputChunk {
            task,
            stream,
            offset,
            bytes,
        })
        .boxed()
}

fn spec() -> BoxedStrategy<TaskSpec> {
    (hash(), strings(), map())
        .prop_map(|(bundle, args, env)| TaskSpec { bundle, args, env })
        .boxed()
}

fn options() -> BoxedStrategy<TaskOptions> {
    (
        text(),
        vec((text(), text()), 0..2),
        [of(n()), of(n()), of(n()), of(n()), of(n())],
        any::<bool>(),
        vec((hash(), text()), 0..2),
    )
        .prop_map(|(name, dirs, l, stdin, trees)| TaskOptions {
            name,
            dirs,
            memory_limit: l[0],
            fuel_limit: l[1],
            wall_limit_ms: l[2],
            checkpoint_every_ms: l[3],
            stdin,
            trees,
            files_limit: l[4],
        })
        .boxed()
}

fn outcome() -> BoxedStrategy<Outcome> {
    prop_oneof![
        any::<i32>().prop_map(|exit_code| Outcome::Completed { exit_code }),
        (text(), of(any::<i32>()))
            .prop_map(|(reason, exit_code)| Outcome::Failed { reason, exit_code }),
    ]
    .boxed()
}

fn role() -> BoxedStrategy<Role> {
    prop_oneof![
        Just(Role::Worker),
        Just(Role::Monitor),
        Just(Role::Coordinator)
    ]
    .boxed()
}

fn node_info() -> BoxedStrategy<NodeInfo> {
    (node_id(), role(), any::<u32>(), map(), text(), any::<u32>())
        .prop_map(|(name, role, slots, labels, addr, pid)| NodeInfo {
            name,
            role,
            slots,
            labels,
            addr,
            pid,
        })
        .boxed()
}

fn placement() -> BoxedStrategy<Placement> {
    prop_oneof![
        Just(Placement::LeastLoaded),
        Just(Placement::RoundRobin),
        Just(Placement::Random),
        node_id().prop_map(Placement::Pinned),
    ]
    .boxed()
}

fn task_state() -> BoxedStrategy<TaskState> {
    proptest::sample::select(vec![
        TaskState::Pending,
        TaskState::Running,
        TaskState::Migrating,
        TaskState::Completed,
        TaskState::Failed,
        TaskState::Cancelled,
    ])
    .boxed()
}

fn task_view() -> BoxedStrategy<TaskView> {
    (
        (task_id(), text(), hash(), strings(), task_state()),
        (of(node_id()), of(n()), of(any::<i32>()), of(text())),
        [n(), n(), n(), n()],
        (of(n()), of(n()), of((n(), n()))),
    )
        .prop_map(
            |(
                (id, name, bundle, args, state),
                (owner, checkpoint_seq, exit_code, failure),
                k,
                (started_us, memory_bytes, progress),
            )| TaskView {
                id,
                name,
                bundle,
                args,
                state,
                owner,
                epoch: k[0],
                checkpoint_seq,
                fuel_used: k[1],
                exit_code,
                failure,
                stdout_bytes: k[2],
                stderr_bytes: k[3],
                started_us,
                memory_bytes,
                progress,
                files_bytes: memory_bytes,
                files_limit: started_us,
                trees: Vec::new(),
            },
        )
        .boxed()
}

fn liveness() -> BoxedStrategy<Liveness> {
    prop_oneof![Just(Liveness::Online), Just(Liveness::Offline)].boxed()
}

fn node_status() -> BoxedStrategy<NodeStatus> {
    (
        node_id(),
        role(),
        liveness(),
        any::<bool>(),
        text(),
        any::<[u32; 3]>(),
        (n(), any::<bool>()),
    )
        .prop_map(
            |(name, role, liveness, draining, addr, k, (last_seen_ms, leader))| NodeStatus {
                name,
                role,
                liveness,
                draining,
                addr,
                pid: k[0],
                slots: k[1],
                tasks: k[2],
                last_seen_ms,
                leader,
            },
        )
        .boxed()
}

fn stats() -> BoxedStrategy<ClusterStats> {
    (any::<[u32; 6]>(), any::<[u64; 8]>())
        .prop_map(|(a, b)| ClusterStats {
            workers_online: a[0],
            workers_offline: a[1],
            monitors_online: a[2],
            slots: a[3],
            tasks_pending: a[4],
            tasks_running: a[5],
            tasks_completed: b[0],
            tasks_failed: b[1],
            tasks_cancelled: b[2],
            checkpoints: b[3],
            output_bytes: b[4],
            events: b[5],
            memory_bytes: b[6],
            fuel_used: b[7],
        })
        .boxed()
}

/// Finite floats: NaN would make equal messages compare unequal.
fn ms() -> BoxedStrategy<f64> {
    (-1e12f64..1e12).boxed()
}

fn report() -> BoxedStrategy<MigrationReport> {
    (
        (task_id(), node_id(), node_id()),
        (ms(), ms()),
        [n(), n(), n(), n()],
        vec((text(), ms()), 0..3),
    )
        .prop_map(
            |((task, from, to), (downtime_ms, total_ms), k, phases_ms)| MigrationReport {
                task,
                from,
                to,
                downtime_ms,
                total_ms,
                precopy_bytes: k[0],
                delta_bytes: k[1],
                resume_bytes: k[2],
                at_ms: k[3],
                phases_ms,
            },
        )
        .boxed()
}

fn task_event() -> BoxedStrategy<TaskEvent> {
    prop_oneof![
        (task_id(), spec()).prop_map(|(id, spec)| TaskEvent::Submitted { id, spec }),
        (task_id(), node_id(), n()).prop_map(|(id, worker, epoch)| TaskEvent::Placed {
            id,
            worker,
            epoch
        }),
        (task_id(), n(), n()).prop_map(|(id, seq, fuel_used)| TaskEvent::Checkpointed {
            id,
            seq,
            fuel_used
        }),
        (task_id(), outcome(), n()).prop_map(|(id, outcome, fuel_used)| TaskEvent::Finished {
            id,
            outcome,
            fuel_used
        }),
        task_id().prop_map(|id| TaskEvent::Cancelled { id }),
        // `SubmittedWith` stores options without `stdin` (the v1 layout).
        (task_id(), spec(), options()).prop_map(|(id, spec, options)| {
            TaskEvent::SubmittedWith {
                id,
                spec,
                options: TaskOptions {
                    stdin: false,
                    trees: Vec::new(),
                    files_limit: None,
                    ..options
                },
            }
        }),
        task_id().prop_map(|id| TaskEvent::Requeued { id }),
        (task_id(), spec(), options()).prop_map(|(id, spec, options)| TaskEvent::SubmittedV3 {
            id,
            spec,
            options: TaskOptions {
                trees: Vec::new(),
                files_limit: None,
                ..options
            }
        }),
        (task_id(), spec(), options()).prop_map(|(id, spec, options)| TaskEvent::SubmittedV4 {
            id,
            spec,
            options
        }),
    ]
    .boxed()
}

fn membership_event() -> BoxedStrategy<MembershipEvent> {
    prop_oneof![
        node_info().prop_map(MembershipEvent::Joined),
        (node_id(), of(node_info()))
            .prop_map(|(node, info)| MembershipEvent::Recovered { node, info }),
        node_id().prop_map(MembershipEvent::Offline),
        node_id().prop_map(MembershipEvent::Drained),
        node_id().prop_map(MembershipEvent::Uncordoned),
        node_id().prop_map(MembershipEvent::Removed),
    ]
    .boxed()
}

fn event() -> BoxedStrategy<Event> {
    prop_oneof![
        membership_event().prop_map(Event::Node),
        task_event().prop_map(Event::Task),
    ]
    .boxed()
}

fn monitor_item() -> BoxedStrategy<MonitorItem> {
    prop_oneof![
        (n(), n(), event()).prop_map(|(seq, at_ms, event)| MonitorItem::Event {
            seq,
            at_ms,
            event
        }),
        chunk().prop_map(MonitorItem::Output),
        stats().prop_map(MonitorItem::Stats),
        report().prop_map(MonitorItem::Migrated),
        (task_id(), node_id(), node_id(), of(n()), ms(), n()).prop_map(
            |(task, from, to, checkpoint_seq, downtime_ms, at_ms)| {
                MonitorItem::Recovered(RecoveryReport {
                    task,
                    from,
                    to,
                    checkpoint_seq,
                    downtime_ms,
                    at_ms,
                })
            }
        ),
    ]
    .boxed()
}

fn command() -> BoxedStrategy<WorkerCommand> {
    prop_oneof![
        (task_id(), n(), spec(), options(), of(n())).prop_map(
            |(task, epoch, spec, options, resume)| WorkerCommand::Run {
                task,
                epoch,
                spec,
                options,
                resume
            }
        ),
        (task_id(), n()).prop_map(|(task, epoch)| WorkerCommand::Drop { task, epoch }),
        (task_id(), n()).prop_map(|(task, epoch)| WorkerCommand::Checkpoint { task, epoch }),
        (task_id(), n()).prop_map(|(task, epoch)| WorkerCommand::Migrate { task, epoch }),
        (task_id(), n()).prop_map(|(task, seq)| WorkerCommand::Prefetch { task, seq }),
        (task_id(), n()).prop_map(|(task, epoch)| WorkerCommand::Handoff { task, epoch }),
        (task_id(), n(), node_id(), text(), any::<bool>()).prop_map(
            |(task, epoch, to, addr, precopy)| WorkerCommand::LiveMigrate {
                task,
                epoch,
                to,
                addr,
                precopy
            }
        ),
        (task_id(), n(), node_id(), spec(), options()).prop_map(
            |(task, epoch, from, spec, options)| WorkerCommand::Expect {
                task,
                epoch,
                from,
                spec,
                options
            }
        ),
        (task_id(), n()).prop_map(|(task, epoch)| WorkerCommand::Resume { task, epoch }),
        vec(revoked(), 0..4).prop_map(|revoked| WorkerCommand::Revocations { revoked }),
    ]
    .boxed()
}

fn beat() -> BoxedStrategy<TaskBeat> {
    (task_id(), n(), n(), n(), of((n(), n())), n())
        .prop_map(
            |(task, epoch, fuel_used, memory_bytes, progress, files_bytes)| TaskBeat {
                task,
                epoch,
                fuel_used,
                memory_bytes,
                progress,
                files_bytes,
            },
        )
        .boxed()
}

fn control_request() -> BoxedStrategy<ControlRequest> {
    use ControlRequest as R;
    prop_oneof![
        node_info().prop_map(R::Register),
        (node_id(), vec(beat(), 0..3)).prop_map(|(node, tasks)| R::Heartbeat { node, tasks }),
        node_id().prop_map(|node| R::Attach { node }),
        (node_id(), task_id(), [n(), n(), n()]).prop_map(|(node, task, k)| R::Started {
            node,
            task,
            epoch: k[0],
            at_us: k[1],
            fetched: k[2]
        }),
        (node_id(), n(), chunk()).prop_map(|(node, epoch, chunk)| R::Output { node, epoch, chunk }),
        (node_id(), task_id(), [n(), n(), n()]).prop_map(|(node, task, k)| R::Checkpointed {
            node,
            task,
            epoch: k[0],
            seq: k[1],
            fuel_used: k[2]
        }),
        (node_id(), task_id(), n(), outcome(), n()).prop_map(
            |(node, task, epoch, outcome, fuel_used)| R::Finished {
                node,
                task,
                epoch,
                outcome,
                fuel_used
            }
        ),
        (node_id(), task_id(), n(), n()).prop_map(|(node, task, seq, bytes)| R::Prefetched {
            node,
            task,
            seq,
            bytes
        }),
        (node_id(), task_id(), [n(), n(), n(), n(), n()]).prop_map(|(node, task, k)| {
            R::HandedOff {
                node,
                task,
                epoch: k[0],
                seq: k[1],
                fuel_used: k[2],
                paused_at_us: k[3],
                bytes: k[4],
            }
        }),
        (node_id(), task_id(), n(), text()).prop_map(|(node, task, epoch, reason)| {
            R::HandoffFailed {
                node,
                task,
                epoch,
                reason,
            }
        }),
        (spec(), options(), placement()).prop_map(|(spec, options, placement)| R::Submit {
            spec,
            options,
            placement
        }),
        Just(R::ListTasks),
        task_id().prop_map(|task| R::Inspect { task }),
        Just(R::ListNodes),
        task_id().prop_map(|task| R::Cancel { task }),
        task_id().prop_map(|task| R::Checkpoint { task }),
        (task_id(), node_id(), any::<bool>()).prop_map(|(task, to, precopy)| R::Migrate {
            task,
            to,
            precopy
        }),
        node_id().prop_map(|node| R::Drain { node }),
        node_id().prop_map(|node| R::Uncordon { node }),
        (task_id(), n(), n(), any::<bool>()).prop_map(
            |(task, stdout_from, stderr_from, follow)| R::Logs {
                task,
                stdout_from,
                stderr_from,
                follow
            }
        ),
        task_id().prop_map(|task| R::Wait { task }),
        (n(), any::<bool>()).prop_map(|(from, follow)| R::Events { from, follow }),
        Just(R::Stats),
        node_id().prop_map(|node| R::Remove { node }),
        (node_id(), task_id(), any::<[u64; 7]>()).prop_map(|(node, task, k)| R::LiveReady {
            node,
            task,
            epoch: k[0],
            paused_at_us: k[1],
            captured_us: k[2],
            received_at_us: k[3],
            applied_at_us: k[4],
            precopy_bytes: k[5],
            delta_bytes: k[6],
        }),
        (node_id(), task_id(), n(), text()).prop_map(|(node, task, epoch, reason)| {
            R::LiveFailed {
                node,
                task,
                epoch,
                reason,
            }
        }),
        (task_id(), of(n()), bytes(), any::<bool>()).prop_map(|(task, offset, bytes, eof)| {
            R::Input {
                task,
                offset,
                bytes,
                eof,
            }
        }),
        (node_id(), task_id(), n(), n(), any::<u32>()).prop_map(
            |(node, task, epoch, offset, max)| R::ReadInput {
                node,
                task,
                epoch,
                offset,
                max
            }
        ),
        vec(revoked(), 0..4).prop_map(|revoked| R::Revocations { revoked }),
        Just(R::WhoLeads),
    ]
    .boxed()
}

fn gossip_join() -> BoxedStrategy<GossipJoin> {
    (
        any::<[u8; 32]>(),
        vec((any::<[u8; 4]>(), any::<u16>()), 0..3),
    )
        .prop_map(|(key, seeds)| GossipJoin {
            key,
            seeds: seeds
                .into_iter()
                .map(|(ip, port)| std::net::SocketAddr::from((ip, port)))
                .collect(),
        })
        .boxed()
}

fn control_response() -> BoxedStrategy<ControlResponse> {
    use ControlResponse as R;
    prop_oneof![
        Just(R::Ok),
        (n(), n(), of(gossip_join())).prop_map(|(heartbeat_ms, offline_timeout_ms, gossip)| {
            R::Registered {
                heartbeat_ms,
                offline_timeout_ms,
                gossip,
            }
        }),
        (task_id(), of(node_id())).prop_map(|(task, worker)| R::Submitted { task, worker }),
        vec(task_view(), 0..3).prop_map(R::Tasks),
        task_view().prop_map(|t| R::Task(Box::new(t))),
        vec(node_status(), 0..3).prop_map(R::Nodes),
        stats().prop_map(R::Stats),
        command().prop_map(R::Command),
        chunk().prop_map(R::Output),
        task_view().prop_map(|t| R::Ended(Box::new(t))),
        monitor_item().prop_map(|m| R::Monitor(Box::new(m))),
        (vec((task_id(), n()), 0..4), n())
            .prop_map(|(stale, next_ms)| R::CheckedIn { stale, next_ms }),
        report().prop_map(R::Migrated),
        (vec(report(), 0..2), strings()).prop_map(|(moved, failed)| R::Drained { moved, failed }),
        (code(), text()).prop_map(|(c, m)| R::Error(RemoteError::new(c, m))),
        n().prop_map(|len| R::InputStored { len }),
        (bytes(), any::<bool>()).prop_map(|(bytes, eof)| R::Input { bytes, eof }),
        n().prop_map(|from| R::Resend { from }),
        (any::<bool>(), of(text())).prop_map(|(is_leader, leader)| R::Leader { is_leader, leader }),
    ]
    .boxed()
}

/// Page runs near the interesting boundaries: empty, one page, the last
/// page, `u32::MAX`.
fn page_run() -> BoxedStrategy<PageRun> {
    let idx = prop_oneof![0u32..40, Just(u32::MAX), Just(u32::MAX - 1), any::<u32>()];
    (idx.clone(), idx, any::<bool>())
        .prop_map(|(first, count, zero)| PageRun { first, count, zero })
        .boxed()
}

fn page_delta() -> BoxedStrategy<PageDelta> {
    let len = prop_oneof![
        (0u64..40).prop_map(|p| p * PAGE_SIZE as u64),
        0u64..200_000,
        Just(1u64 << 32),
        any::<u64>(),
    ];
    (len, vec(page_run(), 0..6))
        .prop_map(|(memory_len, runs)| PageDelta { memory_len, runs })
        .boxed()
}

/// A delta as a source sends it: ascending, disjoint runs inside memory.
fn valid_page_delta() -> BoxedStrategy<PageDelta> {
    (1u32..64, vec((0u32..4, 1u32..4, any::<bool>()), 0..8))
        .prop_map(|(extra, gaps)| {
            let mut runs = Vec::new();
            let mut next = 0u32;
            for (gap, count, zero) in gaps {
                let first = next + gap;
                runs.push(PageRun { first, count, zero });
                next = first + count;
            }
            PageDelta {
                memory_len: u64::from(next + extra) * PAGE_SIZE as u64,
                runs,
            }
        })
        .boxed()
}

fn live_message() -> BoxedStrategy<LiveMessage> {
    prop_oneof![
        (task_id(), node_id(), n(), hash(), any::<u32>(), hash(), n()).prop_map(
            |(task, from, epoch, module, rewriter, instrumented, memory_len)| {
                LiveMessage::Offer {
                    task,
                    from,
                    epoch,
                    module,
                    rewriter,
                    instrumented,
                    memory_len,
                }
            }
        ),
        (any::<u32>(), page_delta(), any::<bool>()).prop_map(|(round, delta, paused)| {
            LiveMessage::Pages {
                round,
                delta,
                paused,
            }
        }),
        (manifest(), page_delta(), page_delta(), n(), n()).prop_map(
            |(manifest, memory, stack, paused_at_us, captured_us)| LiveMessage::Final {
                manifest: Box::new(manifest),
                memory,
                stack,
                paused_at_us,
                captured_us,
            }
        ),
    ]
    .boxed()
}

fn live_reply() -> BoxedStrategy<LiveReply> {
    prop_oneof![
        Just(LiveReply::Accepted),
        any::<u32>().prop_map(LiveReply::Applied),
        Just(LiveReply::Ready),
        text().prop_map(LiveReply::Refused),
    ]
    .boxed()
}

// --- checks -----------------------------------------------------------------

/// A valid message decodes to itself (compared by encoding: the live
/// messages have no `PartialEq`), from a frame of exactly its size.
fn round_trips<T: Serialize + DeserializeOwned>(msg: &T) -> Result<(), TestCaseError> {
    let bytes = frame::encode(msg).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let (back, used) = frame::decode::<T>(&bytes, MAX_FRAME_LEN)
        .map_err(|e| TestCaseError::fail(format!("valid message: {e}")))?;
    prop_assert_eq!(used, bytes.len());
    prop_assert_eq!(frame::encode(&back).ok(), Some(bytes));
    Ok(())
}

/// `msg` encoded, damaged in its body, with the prefix fixed up.
fn damaged<T: Serialize>(msg: &T, ms: &[fuzzing::Mutation]) -> Vec<u8> {
    let mut bytes = frame::encode(msg).unwrap_or_default();
    fuzzing::apply(&mut bytes, frame::HEADER_LEN, ms);
    let len = u32::try_from(bytes.len().saturating_sub(4)).unwrap_or(u32::MAX);
    if let Some(prefix) = bytes.get_mut(..4) {
        prefix.copy_from_slice(&len.to_le_bytes());
    }
    bytes
}

/// A decoded delta is either refused by `validate` or safe to act on: its
/// payload fits the memory, which fits the limit, and every run lies inside
/// it, ascending and disjoint.
fn check_delta(d: &PageDelta, max: u64) -> Result<(), TestCaseError> {
    let payload = d.payload_len(); // must not overflow, validated or not
    match d.validate(max) {
        Ok(()) => {
            prop_assert!(d.memory_len <= max);
            prop_assert!(
                payload <= d.memory_len,
                "payload {} > memory {}",
                payload,
                d.memory_len
            );
            let pages = d.memory_len / PAGE_SIZE as u64;
            let mut next = 0u64;
            for r in &d.runs {
                prop_assert!(r.count > 0);
                prop_assert!(u64::from(r.first) >= next, "runs overlap or go backwards");
                next = u64::from(r.first) + u64::from(r.count);
                prop_assert!(next <= pages);
            }
        }
        Err(why) => prop_assert!(!why.is_empty()),
    }
    Ok(())
}

/// Whatever a damaged live frame decodes to must pass [`check_delta`].
fn check_live_deltas(bytes: &[u8]) -> Result<(), TestCaseError> {
    if let Ok((msg, _)) = frame::decode::<LiveMessage>(bytes, MAX_FRAME_LEN) {
        match msg {
            LiveMessage::Pages { delta, .. } => check_delta(&delta, 1 << 32)?,
            LiveMessage::Final { memory, stack, .. } => {
                check_delta(&memory, 1 << 32)?;
                check_delta(&stack, 1 << 32)?;
            }
            LiveMessage::Offer { .. } | LiveMessage::Files { .. } => {}
        }
    }
    Ok(())
}

// --- properties ---------------------------------------------------------------

proptest! {
    #![proptest_config(fuzzing::config())]

    #[test]
    fn control_messages_round_trip(req in control_request(), resp in control_response()) {
        round_trips(&req)?;
        round_trips(&resp)?;
        let bytes = frame::encode(&req).expect("encodes");
        prop_assert_eq!(frame::decode::<ControlRequest>(&bytes, MAX_FRAME_LEN).map(|m| m.0), Ok(req));
        let bytes = frame::encode(&resp).expect("encodes");
        prop_assert_eq!(frame::decode::<ControlResponse>(&bytes, MAX_FRAME_LEN).map(|m| m.0), Ok(resp));
    }

    #[test]
    fn damaged_control_requests(req in control_request(), ms in mutations()) {
        let bytes = damaged(&req, &ms);
        check_frame::<ControlRequest>(&bytes)?;
        // The same bytes as the other direction's type: a confused peer.
        check_frame::<ControlResponse>(&bytes)?;
    }

    #[test]
    fn damaged_control_responses(resp in control_response(), ms in mutations()) {
        let bytes = damaged(&resp, &ms);
        check_frame::<ControlResponse>(&bytes)?;
        check_frame::<ControlRequest>(&bytes)?;
    }

    #[test]
    fn damaged_registry_messages(req in request(), resp in response(), ms in mutations()) {
        check_frame::<RegistryRequest>(&damaged(&req, &ms))?;
        check_frame::<RegistryResponse>(&damaged(&resp, &ms))?;
        // A name that survived the damage is checked, not trusted; checking
        // it never panics whatever bytes it holds.
        if let Ok((RegistryRequest::PutBundle { name: Some(n), .. }, _)) =
            frame::decode::<RegistryRequest>(&damaged(&req, &ms), MAX_FRAME_LEN)
        {
            let _ = n.validate();
        }
    }

    #[test]
    fn live_messages_round_trip(msg in live_message(), reply in live_reply()) {
        round_trips(&msg)?;
        round_trips(&reply)?;
    }

    #[test]
    fn damaged_live_messages(msg in live_message(), reply in live_reply(), ms in mutations()) {
        let bytes = damaged(&msg, &ms);
        check_frame::<LiveMessage>(&bytes)?;
        check_live_deltas(&bytes)?;
        check_frame::<LiveReply>(&damaged(&reply, &ms))?;
    }

    #[test]
    fn arbitrary_bodies_as_every_wire_type(body in vec(any::<u8>(), 0..160)) {
        let mut bytes = u32::try_from(body.len() + 1).expect("small").to_le_bytes().to_vec();
        bytes.push(frame::PROTOCOL_VERSION);
        bytes.extend_from_slice(&body);
        check_frame::<ControlRequest>(&bytes)?;
        check_frame::<ControlResponse>(&bytes)?;
        check_frame::<RegistryRequest>(&bytes)?;
        check_frame::<RegistryResponse>(&bytes)?;
        check_frame::<LiveMessage>(&bytes)?;
        check_frame::<LiveReply>(&bytes)?;
        check_live_deltas(&bytes)?;
    }

    #[test]
    fn page_deltas_validate_or_are_safe(d in page_delta(), max in prop_oneof![Just(1u64 << 32), any::<u64>()]) {
        check_delta(&d, max)?;
    }

    #[test]
    fn deltas_a_source_sends_are_accepted(d in valid_page_delta()) {
        prop_assert_eq!(d.validate(1 << 32), Ok(()));
        check_delta(&d, 1 << 32)?;
    }
}
