//! Capture a paused task into a [`Manifest`] and rebuild a task from one.
//!
//! Restore always goes into a brand-new `Store` + `Instance`: memory images
//! are written straight into the new memories, every exported mutable global
//! is set, the WASI table is rebuilt from its snapshot, and the next
//! [`Task::run`] rewinds the saved frames.

use std::sync::Arc;
use std::time::Instant;

use wasmtime::{Memory, Store, Val};
use wmig_proto::checkpoint::{GlobalValue, Manifest, MemoryImage, CHUNK_SIZE};
use wmig_proto::TaskId;
use wmig_rewrite::{STACK_HEADER_OFFSET, STACK_MEMORY_EXPORT};
use wmig_wasi::WasiCtx;

use crate::chunks::{self, CaptureCost, ChunkSink, ChunkSource};
use crate::engine::{PreparedModule, Runtime};
use crate::task::{split, HostState, Task, TaskConfig};
use crate::HostError;

/// Identity of a checkpoint within its task's history.
#[derive(Debug, Clone, Copy, Default)]
pub struct CaptureMeta {
    pub task: Option<TaskId>,
    pub seq: u64,
    pub epoch: u64,
}

/// A capture's manifest and what it cost.
#[derive(Debug, Clone)]
pub struct Captured {
    pub manifest: Manifest,
    pub cost: CaptureCost,
    pub millis: f64,
}

impl Task {
    /// Capture the paused task. Chunks `sink` lacks are copied into it.
    pub fn capture(
        &mut self,
        sink: &mut dyn ChunkSink,
        meta: CaptureMeta,
    ) -> Result<Captured, HostError> {
        if !self.is_paused() {
            return Err(HostError::NotPaused);
        }
        let start = Instant::now();
        let hooks = self.hooks()?;
        let mut cost = CaptureCost::default();
        let mut memories = Vec::with_capacity(2);
        {
            let data = self.memory.data(&self.store);
            memories.push(chunks::capture("memory", data, data.len(), sink, &mut cost));
        }
        {
            let data = hooks.stack.data(&self.store);
            let used = stack_used(data);
            memories.push(chunks::capture(
                STACK_MEMORY_EXPORT,
                data,
                used,
                sink,
                &mut cost,
            ));
        }
        let manifest = self.state_manifest(meta, memories)?;
        Ok(Captured {
            manifest,
            cost,
            millis: start.elapsed().as_secs_f64() * 1e3,
        })
    }

    /// Rebuild a paused task from `manifest` in a fresh store; chunk bytes come
    /// from `source`. `config.wasi` supplies sinks and preopened directories;
    /// args and environment come from the checkpoint.
    pub fn restore(
        rt: &Runtime,
        module: &Arc<PreparedModule>,
        config: TaskConfig,
        manifest: &Manifest,
        source: &dyn ChunkSource,
    ) -> Result<Task, HostError> {
        if manifest.end {
            return Err(HostError::corrupt(format!(
                "checkpoint {} records the task's end (its final files), not a state to resume",
                manifest.seq
            )));
        }
        check_module(module, manifest)?;
        let (wasi_config, control) = split(config);
        let wasi = WasiCtx::restore(wasi_config, &manifest.wasi)?;
        let mut task = Task::instantiate(rt, module, wasi, control)?;
        let hooks = task.hooks()?;
        for image in &manifest.memories {
            let memory = match image.name.as_str() {
                "memory" => task.memory,
                STACK_MEMORY_EXPORT => hooks.stack,
                other => return Err(HostError::corrupt(format!("unknown memory `{other}`"))),
            };
            write_image(&mut task.store, memory, image, source)?;
        }
        task.apply_state(manifest)?;
        Ok(task)
    }
}

impl Task {
    /// The manifest of the paused task with `memories` as its memory images:
    /// globals, WASI state and counters.
    pub(crate) fn state_manifest(
        &mut self,
        meta: CaptureMeta,
        memories: Vec<MemoryImage>,
    ) -> Result<Manifest, HostError> {
        let mut globals = Vec::with_capacity(self.globals.len());
        for (name, g) in &self.globals {
            let v = match g.get(&mut self.store) {
                Val::I32(v) => GlobalValue::I32(v),
                Val::I64(v) => GlobalValue::I64(v),
                Val::F32(v) => GlobalValue::F32(v),
                Val::F64(v) => GlobalValue::F64(v),
                Val::V128(v) => GlobalValue::V128(v.as_u128()),
                _ => {
                    return Err(HostError::Engine(format!(
                        "global `{name}` holds a reference"
                    )))
                }
            };
            globals.push((name.clone(), v));
        }
        let counters = self.counters();
        Ok(Manifest {
            module: self.module.module_hash,
            rewriter: self.module.rewriter,
            instrumented: self.module.instrumented_hash,
            task: meta.task,
            seq: meta.seq,
            epoch: meta.epoch,
            memories,
            globals,
            wasi: self.store.data().wasi.snapshot(),
            counters,
            files: Vec::new(),
            end: false,
        })
    }

    /// Set the globals and counters of `manifest` (its memories are written
    /// already) and arm the rewind for the next [`Task::run`].
    pub(crate) fn apply_state(&mut self, manifest: &Manifest) -> Result<(), HostError> {
        let hooks = self.hooks()?;
        for (name, value) in &manifest.globals {
            let Some((_, global)) = self.globals.iter().find(|(n, _)| n == name) else {
                return Err(HostError::corrupt(format!(
                    "names global `{name}`, which the module lacks"
                )));
            };
            let val = match *value {
                GlobalValue::I32(v) => Val::I32(v),
                GlobalValue::I64(v) => Val::I64(v),
                GlobalValue::F32(v) => Val::F32(v),
                GlobalValue::F64(v) => Val::F64(v),
                GlobalValue::V128(v) => Val::V128(v.into()),
            };
            global
                .set(&mut self.store, val)
                .map_err(|e| HostError::corrupt(format!("global `{name}`: {e}")))?;
        }
        let fuel_now = hooks.fuel.get(&mut self.store).i32().unwrap_or(0);
        let ctl = &mut self.store.data_mut().ctl;
        ctl.counters = manifest.counters;
        ctl.fuel_set = fuel_now;
        self.set_resume_pending();
        self.publish_usage();
        Ok(())
    }
}

/// Bytes of the stack memory that hold saved frames (its header says).
pub(crate) fn stack_used(data: &[u8]) -> usize {
    let header = STACK_HEADER_OFFSET as usize;
    data.get(header..header + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .unwrap_or(data.len())
        .min(data.len())
}

/// A checkpoint resumes only into the module and rewrite it was taken from.
pub(crate) fn check_module(module: &PreparedModule, manifest: &Manifest) -> Result<(), HostError> {
    if manifest.module != module.module_hash {
        return Err(HostError::WrongModule {
            checkpoint: manifest.module,
            module: module.module_hash,
        });
    }
    if manifest.rewriter != module.rewriter {
        return Err(HostError::WrongRewriter {
            checkpoint: manifest.rewriter,
            ours: module.rewriter,
        });
    }
    if manifest.instrumented != module.instrumented_hash {
        return Err(HostError::WrongInstrumentation);
    }
    Ok(())
}

fn write_image(
    store: &mut Store<HostState>,
    memory: Memory,
    image: &MemoryImage,
    source: &dyn ChunkSource,
) -> Result<(), HostError> {
    let fresh = memory.data_size(&*store) as u64;
    if !image.byte_len.is_multiple_of(CHUNK_SIZE as u64) {
        return Err(HostError::corrupt(format!(
            "memory `{}` size {} is not a whole number of pages",
            image.name, image.byte_len
        )));
    }
    if image.byte_len > fresh {
        memory
            .grow(&mut *store, (image.byte_len - fresh) / CHUNK_SIZE as u64)
            .map_err(|e| {
                HostError::Engine(format!(
                    "growing memory `{}` to {} bytes: {e:#}",
                    image.name, image.byte_len
                ))
            })?;
    } else if image.byte_len < fresh {
        return Err(HostError::corrupt(format!(
            "memory `{}` is {} bytes, smaller than the module's initial {fresh}",
            image.name, image.byte_len
        )));
    }
    let data = memory.data_mut(&mut *store);
    // The fresh instance's data segments live in its initial pages; chunks the
    // image leaves out are zero at capture time and must be zero here too.
    let fresh_chunks = (fresh as usize) / CHUNK_SIZE;
    let mut listed = image.chunks.iter().map(|(i, _)| *i as usize).peekable();
    for idx in 0..fresh_chunks {
        while listed.next_if(|&i| i < idx).is_some() {}
        if listed.peek() != Some(&idx) {
            data[idx * CHUNK_SIZE..(idx + 1) * CHUNK_SIZE].fill(0);
        }
    }
    for (idx, hash) in &image.chunks {
        let bytes = source.chunk(hash).ok_or(HostError::MissingChunk(*hash))?;
        let start = *idx as usize * CHUNK_SIZE;
        let dst = data.get_mut(start..start + CHUNK_SIZE).ok_or_else(|| {
            HostError::corrupt(format!("chunk {idx} lies outside memory `{}`", image.name))
        })?;
        if bytes.len() != CHUNK_SIZE {
            return Err(HostError::corrupt(format!(
                "chunk {hash} is {} bytes",
                bytes.len()
            )));
        }
        dst.copy_from_slice(bytes);
    }
    Ok(())
}
