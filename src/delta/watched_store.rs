//! Test support: an object store that counts the listings of a Delta log made through it
//! and can let another writer in just before each commit entry is put, to replay a race
//! against a writer exactly.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use deltalake::{DeltaTable, ObjectMeta, ObjectStore, Path};
use futures::future::BoxFuture;
use futures::stream::BoxStream;

/// Runs before the put of the commit entry of the given version.
pub(crate) type BeforeCommit = Box<dyn Fn(u64) -> BoxFuture<'static, ()> + Send + Sync>;

/// See the module doc.
pub(crate) struct WatchedStore {
    inner: Arc<dyn ObjectStore>,
    log_listings: AtomicUsize,
    before_commit: Option<BeforeCommit>,
}

impl WatchedStore {
    /// `table` opened again through a watched store over its own.
    pub(crate) async fn open(
        table: &DeltaTable,
        before_commit: Option<BeforeCommit>,
    ) -> (DeltaTable, Arc<WatchedStore>) {
        let store = Arc::new(WatchedStore {
            inner: table.log_store().root_object_store(None),
            log_listings: AtomicUsize::new(0),
            before_commit,
        });
        let url = table.table_url().clone();
        let table = deltalake::DeltaTableBuilder::from_url(url.clone())
            .unwrap()
            .with_storage_backend(store.clone(), url)
            .load()
            .await
            .unwrap();
        (table, store)
    }

    /// Listings of the Delta log so far.
    pub(crate) fn log_listings(&self) -> usize {
        self.log_listings.load(Ordering::Relaxed)
    }

    fn count(&self, prefix: Option<&Path>) {
        if prefix.is_some_and(|p| p.as_ref().contains("_delta_log")) {
            self.log_listings.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The version of a commit entry's path (`_delta_log/00000000000000000012.json`).
fn commit_version(location: &Path) -> Option<u64> {
    let name = location.filename()?;
    let digits = name.strip_suffix(".json")?;
    (digits.len() == 20 && location.as_ref().contains("_delta_log/"))
        .then(|| digits.parse().ok())
        .flatten()
}

impl std::fmt::Debug for WatchedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WatchedStore({})", self.inner)
    }
}

impl std::fmt::Display for WatchedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WatchedStore({})", self.inner)
    }
}

#[async_trait::async_trait]
impl ObjectStore for WatchedStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: object_store::PutPayload,
        opts: object_store::PutOptions,
    ) -> object_store::Result<object_store::PutResult> {
        if let (Some(hook), Some(version)) = (&self.before_commit, commit_version(location)) {
            hook(version).await;
        }
        self.inner.put_opts(location, payload, opts).await
    }
    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: object_store::PutMultipartOptions,
    ) -> object_store::Result<Box<dyn object_store::MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }
    async fn get_opts(
        &self,
        location: &Path,
        options: object_store::GetOptions,
    ) -> object_store::Result<object_store::GetResult> {
        self.inner.get_opts(location, options).await
    }
    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }
    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.count(prefix);
        self.inner.list(prefix)
    }
    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.count(prefix);
        self.inner.list_with_offset(prefix, offset)
    }
    async fn list_with_delimiter(
        &self,
        prefix: Option<&Path>,
    ) -> object_store::Result<object_store::ListResult> {
        self.count(prefix);
        self.inner.list_with_delimiter(prefix).await
    }
    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: object_store::CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

#[test]
fn only_commit_entries_have_a_version() {
    let v = |p: &str| commit_version(&Path::from(p));
    assert_eq!(v("t/pin/_delta_log/00000000000000000012.json"), Some(12));
    assert_eq!(v("t/pin/_delta_log/_last_checkpoint"), None);
    assert_eq!(
        v("t/pin/_delta_log/00000000000000000010.checkpoint.parquet"),
        None
    );
    assert_eq!(v("t/pin/_delta_log/_commit_0a1b.json.tmp"), None);
    assert_eq!(v("t/pin/part-00000-0a1b.parquet"), None);
}
