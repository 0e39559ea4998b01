//! The memory backend (`memory://`): objects in a sorted map in process memory, one map for
//! each open of `memory://`.
//!
//! An `ObjectStore` of its own rather than object_store's `InMemory`, for the piece path: a
//! piece's put, get, head and delete reach their map entry directly ([`Memory::put_piece`],
//! [`Memory::piece`], [`Memory::remove`]) with its checksum kept as a number beside its bytes,
//! where `InMemory` builds each get a `GetResult` (the key copied into a `Path`, an e-tag
//! formatted, the entry's attribute map cloned, a boxed stream) and keeps the checksum as
//! string metadata to format on put and parse on get. Everything else (PieceStore's own
//! objects, listings, the raw store a tool inspects) goes through the [`ObjectStore`] trait on
//! the same map, where a piece shows its checksum as the metadata a bucket holds it in.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{
    Attribute, AttributeValue, Attributes, CopyMode, CopyOptions, GetOptions, GetResult,
    GetResultPayload, ListResult, MultipartUpload, ObjectMeta, ObjectStore, PutMode,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, UploadPart,
};

use crate::checksum;

/// One `memory://` store's objects.
#[derive(Default)]
pub(crate) struct Memory {
    objects: Arc<RwLock<Objects>>,
}

#[derive(Default)]
struct Objects {
    map: BTreeMap<String, Object>,
    next_etag: u64,
}

/// One stored object.
#[derive(Clone)]
struct Object {
    data: Bytes,
    /// A piece's CRC32C, when it was stored by [`Memory::put_piece`]; shown through the
    /// trait as the checksum metadata.
    crc: Option<u32>,
    /// What a put through the trait gave (empty for a piece: an empty map clones for free).
    attributes: Attributes,
    modified: SystemTime,
    e_tag: u64,
}

/// A stored piece as the piece path reads it.
pub(crate) struct Piece {
    /// Its bytes.
    pub(crate) data: Bytes,
    /// Its checksum, when [`Memory::put_piece`] stored it; else see `attributes`.
    pub(crate) crc: Option<u32>,
    /// The attributes of an object put through the trait (a raw piece from another tool, or
    /// a copy), which may hold its checksum as metadata.
    pub(crate) attributes: Attributes,
    /// When it was stored.
    pub(crate) modified: SystemTime,
}

impl fmt::Debug for Memory {
    /// The number of objects only: never their bytes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Memory")
            .field("objects", &self.read().map.len())
            .finish()
    }
}

impl fmt::Display for Memory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("memory")
    }
}

/// Whether `key` is an object path as it stands: what `Path::parse` takes and returns
/// unchanged (no leading or trailing `/`, no empty, `.` or `..` segment, no ASCII control
/// character), checked without building the `Path`.
pub(crate) fn is_object_path(key: &str) -> bool {
    !key.is_empty()
        && key.split('/').all(|s| {
            !s.is_empty() && s != "." && s != ".." && !s.bytes().any(|b| b < 0x20 || b == 0x7f)
        })
}

fn e_tag(n: u64) -> String {
    format!("\"{n}\"")
}

fn not_found(path: &str) -> object_store::Error {
    object_store::Error::NotFound {
        path: path.into(),
        source: "no such object in this memory store".into(),
    }
}

/// The key prefix a listing of `prefix` covers: whole segments (`a/b` lists `a/b/…`, not
/// `a/b` itself nor `a/bc`); empty for the root.
fn base_of(prefix: Option<&Path>) -> String {
    prefix
        .map(|p| format!("{}/", p.as_ref()))
        .filter(|b| b != "/")
        .unwrap_or_default()
}

impl Objects {
    fn stamp(&mut self) -> u64 {
        let n = self.next_etag;
        self.next_etag += 1;
        n
    }

    fn meta(key: &str, o: &Object) -> ObjectMeta {
        ObjectMeta {
            location: super::path_as_listed(key),
            last_modified: o.modified.into(),
            size: o.data.len() as u64,
            e_tag: Some(e_tag(o.e_tag)),
            version: None,
        }
    }

    /// Stores `object` under `key` as `mode` says; returns its e-tag.
    fn put(&mut self, key: &str, mut object: Object, mode: PutMode) -> object_store::Result<u64> {
        use std::collections::btree_map::Entry;
        let n = self.stamp();
        object.e_tag = n;
        match (self.map.entry(key.to_string()), mode) {
            (Entry::Occupied(_), PutMode::Create) => {
                return Err(object_store::Error::AlreadyExists {
                    path: key.into(),
                    source: "the object exists".into(),
                });
            }
            (Entry::Vacant(_), PutMode::Update(_)) => {
                return Err(object_store::Error::Precondition {
                    path: key.into(),
                    source: "no object to update".into(),
                });
            }
            (Entry::Occupied(mut e), PutMode::Update(v)) => {
                let now = e_tag(e.get().e_tag);
                if v.e_tag.as_deref() != Some(now.as_str()) {
                    return Err(object_store::Error::Precondition {
                        path: key.into(),
                        source: format!("e-tag is {now}, not {:?}", v.e_tag).into(),
                    });
                }
                e.insert(object);
            }
            (Entry::Occupied(mut e), PutMode::Overwrite) => {
                e.insert(object);
            }
            (Entry::Vacant(e), _) => {
                e.insert(object);
            }
        }
        Ok(n)
    }
}

impl Memory {
    fn read(&self) -> RwLockReadGuard<'_, Objects> {
        self.objects.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Objects> {
        self.objects.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Stores a piece whose checksum is `crc`: create-only unless `overwrite`. A create-only
    /// put of a key already held gives back the piece held and `data`, to be compared.
    pub(crate) fn put_piece(
        &self,
        key: &str,
        data: Bytes,
        crc: u32,
        overwrite: bool,
    ) -> std::result::Result<(), Box<(Piece, Bytes)>> {
        use std::collections::btree_map::Entry;
        let modified = SystemTime::now();
        let mut objects = self.write();
        let e_tag = objects.stamp();
        let object = Object {
            data,
            crc: Some(crc),
            attributes: Attributes::new(),
            modified,
            e_tag,
        };
        match objects.map.entry(key.to_string()) {
            Entry::Vacant(v) => {
                v.insert(object);
            }
            Entry::Occupied(mut o) if overwrite => {
                o.insert(object);
            }
            Entry::Occupied(o) => return Err(Box::new((piece(o.get()), object.data))),
        }
        Ok(())
    }

    /// The piece (or other object) stored under `key`.
    pub(crate) fn piece(&self, key: &str) -> Option<Piece> {
        self.read().map.get(key).map(piece)
    }

    /// Removes the object under `key`, if there is one.
    pub(crate) fn remove(&self, key: &str) {
        self.write().map.remove(key);
    }

    /// Lets go of every object at once (freed after the lock is let go).
    pub(crate) fn clear(&self) {
        drop(std::mem::take(&mut self.write().map));
    }
}

fn piece(o: &Object) -> Piece {
    Piece {
        data: o.data.clone(),
        crc: o.crc,
        attributes: o.attributes.clone(),
        modified: o.modified,
    }
}

/// The attributes an object shows through the trait: a piece's checksum as the metadata a
/// bucket keeps it in.
fn shown_attributes(o: &Object) -> Attributes {
    let mut a = o.attributes.clone();
    if let Some(crc) = o.crc {
        a.insert(
            Attribute::Metadata(checksum::METADATA_KEY.into()),
            AttributeValue::from(crc.to_string()),
        );
    }
    a
}

#[async_trait]
impl ObjectStore for Memory {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        let object = Object {
            data: payload.into(),
            crc: None,
            attributes: opts.attributes,
            modified: SystemTime::now(),
            e_tag: 0,
        };
        let n = self.write().put(location.as_ref(), object, opts.mode)?;
        Ok(PutResult {
            e_tag: Some(e_tag(n)),
            version: None,
            extensions: Default::default(),
        })
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        Ok(Box::new(Upload {
            key: location.to_string(),
            attributes: opts.attributes,
            parts: Vec::new(),
            objects: Arc::clone(&self.objects),
        }))
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        let key = location.as_ref();
        let (meta, data, attributes) = {
            let objects = self.read();
            let o = objects.map.get(key).ok_or_else(|| not_found(key))?;
            (Objects::meta(key, o), o.data.clone(), shown_attributes(o))
        };
        options.check_preconditions(&meta)?;
        let len = data.len() as u64;
        let range = match &options.range {
            Some(r) => r.as_range(len).map_err(|e| object_store::Error::Generic {
                store: "memory",
                source: Box::new(e),
            })?,
            None => 0..len,
        };
        let data = data.slice(range.start as usize..range.end as usize);
        Ok(GetResult {
            payload: GetResultPayload::Stream(stream::once(async move { Ok(data) }).boxed()),
            meta,
            range,
            attributes,
            extensions: Default::default(),
        })
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        let objects = Arc::clone(&self.objects);
        locations
            .map(move |path| {
                let path = path?;
                objects
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .map
                    .remove(path.as_ref());
                Ok(path)
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let base = base_of(prefix);
        let found: Vec<_> = self
            .read()
            .map
            .range(base.clone()..)
            .take_while(|(k, _)| k.starts_with(&base))
            .map(|(k, o)| Ok(Objects::meta(k, o)))
            .collect();
        stream::iter(found).boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        let all: Vec<ObjectMeta> = self.list(prefix).try_collect().await?;
        Ok(super::delimited(&base_of(prefix), all))
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        let mut objects = self.write();
        let mut copy = objects
            .map
            .get(from.as_ref())
            .cloned()
            .ok_or_else(|| not_found(from.as_ref()))?;
        copy.modified = SystemTime::now();
        let mode = match options.mode {
            CopyMode::Overwrite => PutMode::Overwrite,
            CopyMode::Create => PutMode::Create,
        };
        objects.put(to.as_ref(), copy, mode).map(|_| ())
    }
}

/// A multipart upload: its parts, kept until it completes.
struct Upload {
    key: String,
    attributes: Attributes,
    parts: Vec<PutPayload>,
    objects: Arc<RwLock<Objects>>,
}

impl fmt::Debug for Upload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upload")
            .field("key", &self.key)
            .field("parts", &self.parts.len())
            .finish()
    }
}

#[async_trait]
impl MultipartUpload for Upload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        self.parts.push(data);
        Box::pin(futures::future::ready(Ok(())))
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        let len = self.parts.iter().map(|p| p.content_length()).sum();
        let mut buf = Vec::with_capacity(len);
        for chunk in self.parts.iter().flat_map(|p| p.iter()) {
            buf.extend_from_slice(chunk);
        }
        self.parts.clear();
        let object = Object {
            data: Bytes::from(buf),
            crc: None,
            attributes: std::mem::take(&mut self.attributes),
            modified: SystemTime::now(),
            e_tag: 0,
        };
        let n = self
            .objects
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .put(&self.key, object, PutMode::Overwrite)?;
        Ok(PutResult {
            e_tag: Some(e_tag(n)),
            version: None,
            extensions: Default::default(),
        })
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        self.parts.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use object_store::integration::*;
    use object_store::{ObjectStoreExt, PutMode};

    use super::*;

    /// The raw store a tool inspects behaves as object_store's own stores do: its conformance
    /// tests (the ones its `InMemory` passes that need no low-level multipart API).
    #[tokio::test]
    async fn passes_object_stores_conformance_tests() {
        let store = Memory::default();
        put_get_delete_list(&store).await;
        list_with_offset_exclusivity(&store).await;
        get_opts(&store).await;
        list_uses_directories_correctly(&store).await;
        list_with_delimiter(&store).await;
        rename_and_copy(&store).await;
        copy_if_not_exists(&store).await;
        copy_rename_nonexistent_object(&store).await;
        stream_get(&store).await;
        put_opts(&store, true).await;
        put_get_attributes(&store).await;
    }

    #[tokio::test]
    async fn a_piece_is_one_object_on_both_paths() {
        let store = Memory::default();
        let data = Bytes::from_static(b"piece bytes");
        let crc = checksum::crc32c(&data);
        assert!(store.put_piece("1_s0", data.clone(), crc, false).is_ok());
        // Through the trait: the bytes, and the checksum as the metadata a bucket holds.
        let got = store.get(&Path::from("1_s0")).await.unwrap();
        let shown = got
            .attributes
            .get(&Attribute::Metadata(checksum::METADATA_KEY.into()));
        assert_eq!(shown.map(|v| v.as_ref()), Some(crc.to_string().as_str()));
        assert_eq!(got.bytes().await.unwrap(), data);
        // A create-only put of the key gives back what is held and the refused bytes.
        let other = Bytes::from_static(b"other bytes");
        let refused = store
            .put_piece("1_s0", other.clone(), 7, false)
            .unwrap_err();
        assert_eq!(
            (refused.0.data, refused.0.crc, refused.1),
            (data, Some(crc), other.clone())
        );
        assert!(store.put_piece("1_s0", other.clone(), 7, true).is_ok());
        assert_eq!(store.piece("1_s0").map(|p| p.data), Some(other));
        // An object put through the trait reads on the piece path with its attributes.
        let mut attributes = Attributes::new();
        attributes.insert(
            Attribute::Metadata(checksum::METADATA_KEY.into()),
            "42".into(),
        );
        let opts = PutOptions {
            mode: PutMode::Create,
            attributes,
            ..Default::default()
        };
        store
            .put_opts(&Path::from("2_s0"), PutPayload::from_static(b"raw"), opts)
            .await
            .unwrap();
        let p = store.piece("2_s0").unwrap();
        assert_eq!((p.data.as_ref(), p.crc), (&b"raw"[..], None));
        assert_eq!(p.attributes.len(), 1);
        store.remove("2_s0");
        assert!(store.piece("2_s0").is_none());
        store.clear();
        assert!(store.piece("1_s0").is_none());
        assert_eq!(format!("{store:?}"), "Memory { objects: 0 }");
    }

    #[test]
    fn object_paths_are_what_path_parse_keeps_unchanged() {
        for key in ["a", "1_s0", "a/b/c", "e42_s3_p5_v7", "ünïcode/ok", "a b"] {
            assert!(is_object_path(key), "{key}");
            assert_eq!(Path::parse(key).unwrap().as_ref(), key);
        }
        for key in [
            "", "/a", "a/", "a//b", ".", "a/../b", "a/./b", "a\u{0}b", "a\tb", "a\u{7f}",
        ] {
            assert!(!is_object_path(key), "{key:?}");
        }
    }
}
