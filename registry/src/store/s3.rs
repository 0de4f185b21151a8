//! S3-compatible object storage (AWS S3, MinIO, Ceph RGW, Garage, ...)
//! through the `object_store` crate.
//!
//! Layout under `s3://BUCKET/PREFIX`: `chunks/<hex>`, `bundles/<hex>`,
//! `refs/names/<key>`, `refs/manifests/<key>`, the same as the file store's
//! directories, so a store can be copied between the two with any sync
//! tool. Records carry `value ‖ blake3(value)` like the file store's, and
//! objects are verified against their names when read: a bucket is trusted
//! no more than a disk.
//!
//! The `Store` trait blocks (the server calls it on blocking threads), so
//! this backend keeps a small runtime of its own for the HTTP requests. The
//! index of objects (for `contains`, asked a million times a second) is
//! built by listing the bucket at open and kept up to date by this
//! process's writes; several registry nodes sharing one bucket each know
//! the chunks they wrote, which is what a ring needs: a chunk's owner is
//! the node its writes go to.
//!
//! Credentials and endpoint come from the usual environment:
//! `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, and
//! `AWS_ENDPOINT` (or `AWS_ENDPOINT_URL`) for a server that is not AWS;
//! plain `http://` endpoints are allowed, for servers on a private network.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use bytes::Bytes;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use wmig_proto::wire::registry::ObjectCount;
use wmig_proto::Hash;

use super::{verify_all, ObjectInfo, ObjectKind, RefSpace, Store};
use crate::error::StoreError;

/// Requests one `put_objects` or `objects_many` keeps in flight.
const PARALLEL_PUTS: usize = 16;

type Index = HashMap<Hash, (u64, SystemTime)>;

/// What the environment would otherwise say (`AWS_*`).
#[derive(Clone, Debug, Default)]
pub struct S3Options {
    /// `http(s)://HOST:PORT` of a server that is not AWS.
    pub endpoint: Option<String>,
    pub access_key: Option<String>,
    pub secret_key: Option<String>,
    pub region: Option<String>,
}

pub struct S3Store {
    url: String,
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    /// Taken on drop, to shut it down without blocking (the store may be
    /// dropped on an async thread).
    rt: Option<tokio::runtime::Runtime>,
    chunks: RwLock<Index>,
    bundles: RwLock<Index>,
}

impl std::fmt::Debug for S3Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Store").field("url", &self.url).finish()
    }
}

fn remote(url: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Remote {
        url: url.to_owned(),
        reason: e.to_string(),
    }
}

impl S3Store {
    /// Open `s3://BUCKET[/PREFIX]` with settings from the environment.
    pub fn open(url: &str) -> Result<S3Store, StoreError> {
        Self::open_with(url, &S3Options::default())
    }

    /// Open `s3://BUCKET[/PREFIX]` and index what it holds; `options`
    /// override the environment.
    pub fn open_with(url: &str, options: &S3Options) -> Result<S3Store, StoreError> {
        let rest = url.strip_prefix("s3://").ok_or_else(|| {
            remote(
                url,
                "not an S3 URL: write s3://BUCKET or s3://BUCKET/PREFIX",
            )
        })?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(remote(url, "the URL names no bucket (s3://BUCKET/PREFIX)"));
        }
        // https endpoints: reqwest's rustls takes the process's provider.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
        let endpoint = options.endpoint.clone().or_else(|| {
            std::env::var("AWS_ENDPOINT_URL")
                .or_else(|_| std::env::var("AWS_ENDPOINT"))
                .ok()
        });
        if let Some(e) = &endpoint {
            builder = builder
                .with_endpoint(e)
                .with_allow_http(e.starts_with("http://"))
                // Path-style addressing: MinIO, Garage and most servers
                // that are not AWS serve buckets under the endpoint's path.
                .with_virtual_hosted_style_request(false);
        }
        if let Some(k) = &options.access_key {
            builder = builder.with_access_key_id(k);
        }
        if let Some(k) = &options.secret_key {
            builder = builder.with_secret_access_key(k);
        }
        match &options.region {
            Some(r) => builder = builder.with_region(r),
            None if std::env::var_os("AWS_REGION").is_none()
                && std::env::var_os("AWS_DEFAULT_REGION").is_none() =>
            {
                builder = builder.with_region("us-east-1");
            }
            None => {}
        }
        let store = builder.build().map_err(|e| remote(url, e))?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("wmig-s3")
            .enable_all()
            .build()
            .map_err(|e| remote(url, e))?;
        let s = S3Store {
            url: url.to_owned(),
            store: Arc::new(store),
            prefix: Path::from(prefix),
            rt: Some(rt),
            chunks: RwLock::new(HashMap::new()),
            bundles: RwLock::new(HashMap::new()),
        };
        for kind in [ObjectKind::Chunk, ObjectKind::Bundle] {
            let listed = s.list(&s.dir(kind.dir_name()))?;
            let mut index = s.index(kind).write().unwrap_or_else(|e| e.into_inner());
            for (name, len, at) in listed {
                if let Ok(h) = name.parse::<Hash>() {
                    index.insert(h, (len, at));
                }
            }
        }
        Ok(s)
    }

    /// Run `fut` on this store's runtime and wait for it. Spawning rather
    /// than `block_on` works from any thread, async ones included (the
    /// registry opens its store there).
    fn run<T: Send + 'static>(
        &self,
        fut: impl std::future::Future<Output = Result<T, object_store::Error>> + Send + 'static,
    ) -> Result<T, StoreError> {
        let rt = self
            .rt
            .as_ref()
            .ok_or_else(|| remote(&self.url, "the store is closed"))?;
        let (tx, rx) = std::sync::mpsc::channel();
        rt.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv()
            .map_err(|_| remote(&self.url, "an S3 request failed inside the client"))?
            .map_err(|e| remote(&self.url, e))
    }

    fn index(&self, kind: ObjectKind) -> &RwLock<Index> {
        match kind {
            ObjectKind::Chunk => &self.chunks,
            ObjectKind::Bundle => &self.bundles,
        }
    }

    fn dir(&self, name: &str) -> Path {
        self.prefix.clone().join(name)
    }

    fn object_path(&self, kind: ObjectKind, hash: &Hash) -> Path {
        self.dir(kind.dir_name()).join(hash.to_string())
    }

    fn record_dir(&self, space: RefSpace) -> Path {
        self.dir("refs").join(space.dir_name())
    }

    fn record_path(&self, space: RefSpace, key: &str) -> Path {
        // Each `/`-separated part is one path segment (manifest keys are
        // `t-<task>/<seq>`); object_store escapes what S3 keys cannot hold.
        let mut p = self.record_dir(space);
        for part in key.split('/') {
            p = p.join(part);
        }
        p
    }

    /// (name relative to `dir`, size, last modified) of everything under it.
    fn list(&self, dir: &Path) -> Result<Vec<(String, u64, SystemTime)>, StoreError> {
        use futures_util::TryStreamExt;
        let store = self.store.clone();
        let d = dir.clone();
        let metas: Vec<object_store::ObjectMeta> =
            self.run(async move { store.list(Some(&d)).try_collect().await })?;
        Ok(metas
            .into_iter()
            .filter_map(|m| {
                let rel: Vec<String> = m
                    .location
                    .prefix_match(dir)?
                    .map(|p| p.as_ref().to_owned())
                    .collect();
                Some((rel.join("/"), m.size, SystemTime::from(m.last_modified)))
            })
            .collect())
    }

    /// The bytes at `path`; `None` if there are none.
    fn get(&self, path: &Path) -> Result<Option<Bytes>, StoreError> {
        let store = self.store.clone();
        let p = path.clone();
        self.run(async move {
            match store.get(&p).await {
                Ok(r) => r.bytes().await.map(Some),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        })
    }

    fn put(&self, path: &Path, bytes: Bytes) -> Result<(), StoreError> {
        let store = self.store.clone();
        let p = path.clone();
        self.run(async move { store.put(&p, bytes.into()).await.map(|_| ()) })
    }

    /// Delete `path`; S3 answers a delete of nothing with success.
    fn delete(&self, path: &Path) -> Result<(), StoreError> {
        let store = self.store.clone();
        let p = path.clone();
        self.run(async move {
            match store.delete(&p).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(e),
            }
        })
    }
}

/// A request task's result; a panicked task is an error like a failed
/// request.
fn joined<T>(
    r: Result<Result<T, object_store::Error>, tokio::task::JoinError>,
) -> Result<T, object_store::Error> {
    r.unwrap_or_else(|e| {
        Err(object_store::Error::Generic {
            store: "S3",
            source: Box::new(e),
        })
    })
}

impl Drop for S3Store {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl Store for S3Store {
    fn put_objects(
        &self,
        kind: ObjectKind,
        items: &[(Hash, &[u8])],
    ) -> Result<Vec<bool>, StoreError> {
        verify_all(items)?;
        let todo = {
            let index = self.index(kind).read().unwrap_or_else(|e| e.into_inner());
            super::new_items(items, |h| index.contains_key(h))
        };
        let mut fresh = vec![false; items.len()];
        for &i in &todo {
            fresh[i] = true;
        }
        // Content-addressed: a put that races another of the same bytes
        // writes the same object, so no conditional put is needed.
        let store = self.store.clone();
        let paths: Vec<(Hash, Path, Bytes)> = todo
            .into_iter()
            .map(|i| {
                let (h, bytes) = items[i];
                (h, self.object_path(kind, &h), Bytes::copy_from_slice(bytes))
            })
            .collect();
        let written: Vec<(Hash, u64)> = self.run(async move {
            let mut set = tokio::task::JoinSet::new();
            let mut done = Vec::new();
            for (h, path, bytes) in paths {
                if set.len() >= PARALLEL_PUTS {
                    if let Some(r) = set.join_next().await {
                        done.push(r);
                    }
                }
                let store = store.clone();
                set.spawn(async move {
                    let len = bytes.len() as u64;
                    store.put(&path, bytes.into()).await.map(|_| (h, len))
                });
            }
            while let Some(r) = set.join_next().await {
                done.push(r);
            }
            done.into_iter()
                .map(|r| match r {
                    Ok(r) => r,
                    Err(e) => Err(object_store::Error::Generic {
                        store: "S3",
                        source: Box::new(e),
                    }),
                })
                .collect::<Result<Vec<_>, _>>()
        })?;
        let now = SystemTime::now();
        let mut index = self.index(kind).write().unwrap_or_else(|e| e.into_inner());
        for (h, len) in written {
            index.insert(h, (len, now));
        }
        Ok(fresh)
    }

    fn object(&self, kind: ObjectKind, hash: &Hash) -> Result<Vec<u8>, StoreError> {
        let bytes = self
            .get(&self.object_path(kind, hash))?
            .ok_or(StoreError::NotFound(*hash))?;
        let actual = Hash::of(&bytes);
        if actual != *hash {
            return Err(StoreError::Corrupt {
                hash: *hash,
                actual,
            });
        }
        Ok(bytes.to_vec())
    }

    fn objects_many(&self, kind: ObjectKind, hashes: &[Hash]) -> Result<Vec<Vec<u8>>, StoreError> {
        let store = self.store.clone();
        let paths: Vec<Path> = hashes.iter().map(|h| self.object_path(kind, h)).collect();
        let fetched: Vec<Option<Bytes>> = self.run(async move {
            let mut set = tokio::task::JoinSet::new();
            let mut out = vec![None; paths.len()];
            for (i, path) in paths.into_iter().enumerate() {
                if set.len() >= PARALLEL_PUTS {
                    if let Some(r) = set.join_next().await {
                        let (i, b) = joined(r)?;
                        out[i] = b;
                    }
                }
                let store = store.clone();
                set.spawn(async move {
                    match store.get(&path).await {
                        Ok(r) => r.bytes().await.map(|b| (i, Some(b))),
                        Err(object_store::Error::NotFound { .. }) => Ok((i, None)),
                        Err(e) => Err(e),
                    }
                });
            }
            while let Some(r) = set.join_next().await {
                let (i, b) = joined(r)?;
                out[i] = b;
            }
            Ok(out)
        })?;
        hashes
            .iter()
            .zip(fetched)
            .map(|(h, bytes)| {
                let bytes = bytes.ok_or(StoreError::NotFound(*h))?;
                let actual = Hash::of(&bytes);
                if actual != *h {
                    return Err(StoreError::Corrupt { hash: *h, actual });
                }
                Ok(bytes.to_vec())
            })
            .collect()
    }

    fn contains_many(&self, kind: ObjectKind, hashes: &[Hash]) -> Vec<bool> {
        let index = self.index(kind).read().unwrap_or_else(|e| e.into_inner());
        hashes.iter().map(|h| index.contains_key(h)).collect()
    }

    fn delete_object(&self, kind: ObjectKind, hash: &Hash) -> Result<Option<u64>, StoreError> {
        let known = self
            .index(kind)
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(hash)
            .map(|(len, _)| *len);
        self.delete(&self.object_path(kind, hash))?;
        self.index(kind)
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(hash);
        Ok(known)
    }

    fn objects(&self, kind: ObjectKind) -> Vec<ObjectInfo> {
        self.index(kind)
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(h, (len, at))| ObjectInfo {
                hash: *h,
                len: *len,
                stored_at: *at,
            })
            .collect()
    }

    fn count(&self, kind: ObjectKind) -> ObjectCount {
        let index = self.index(kind).read().unwrap_or_else(|e| e.into_inner());
        ObjectCount {
            count: index.len() as u64,
            bytes: index.values().map(|(len, _)| len).sum(),
        }
    }

    fn put_ref(&self, space: RefSpace, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.put(
            &self.record_path(space, key),
            Bytes::from(super::seal(value)),
        )
    }

    fn get_ref(&self, space: RefSpace, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        match self.get(&self.record_path(space, key))? {
            Some(body) => super::unseal(key, body.to_vec()).map(Some),
            None => Ok(None),
        }
    }

    fn delete_ref(&self, space: RefSpace, key: &str) -> Result<bool, StoreError> {
        let path = self.record_path(space, key);
        let existed = self.get(&path)?.is_some();
        if existed {
            self.delete(&path)?;
        }
        Ok(existed)
    }

    fn refs(&self, space: RefSpace) -> Result<Vec<(String, u64)>, StoreError> {
        let mut out: Vec<(String, u64)> = self
            .list(&self.record_dir(space))?
            .into_iter()
            .map(|(key, len, _)| (key, len.saturating_sub(32)))
            .collect();
        out.sort();
        Ok(out)
    }
}

#[cfg(test)]
#[path = "s3_tests.rs"]
mod tests;
