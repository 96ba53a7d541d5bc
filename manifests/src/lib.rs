//! Loading a directory of Kubernetes manifests into model objects.
//!
//! Files are read recursively (`*.yaml`, `*.yml`, `*.json`), in path order; a file may hold
//! several YAML documents and `List` kinds.
//!
//! The walk and the reads are bounded, so that nothing in the directory can stall or exhaust
//! the operator: only regular files are read (a FIFO, socket or device named `*.yaml` is
//! skipped without being opened); each directory and file is read once, however many symlinks
//! lead to it (identified by device and inode), so symlink loops end; the walk goes at most
//! [`MAX_DIR_DEPTH`] directories deep, lists at most [`MAX_ENTRIES`] entries and
//! [`MAX_FILES`] manifests; a file larger than [`MAX_MANIFEST_BYTES`] or nesting collections
//! deeper than [`MAX_NESTING`] is refused before it is parsed. Each file loads on its own: a malformed file is
//! reported in [`Loaded::errors`] and does not stop the others (the runtime keeps the last
//! good version of that file). Kinds weft does not read (Deployments, ConfigMaps…) are skipped
//! and listed in [`LoadedFile::ignored`].

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

pub use weft_smi::limits::{LimitError, MAX_MANIFEST_BYTES, MAX_NESTING};

pub use weft_core::compile::report::LoadError;
use weft_core::compile::{compile, CompileOptions, CompileReport};
pub use weft_core::model::parse::{parse_manifests, ParseError};
use weft_core::model::{ClusterObject, Model};

/// A failure to read a manifest file or directory.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The text could not be parsed (YAML/JSON, limits, objects): [`ParseError`].
    #[error(transparent)]
    Parse(#[from] ParseError),
    #[error("not a regular file ({kind}); not read")]
    NotRegular { kind: &'static str },
    #[error("{path}: {reason}")]
    Walk { path: PathBuf, reason: String },
}

impl ManifestError {
    /// Whether the file was not there (deleted between listing and reading).
    pub fn is_not_found(&self) -> bool {
        matches!(self, ManifestError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }
}

/// How the reason of a skipped entry that is a second path to a file already read begins.
pub const ALIAS_REASON: &str = "the same file as ";

/// Deepest directory below the manifests directory that is read.
pub const MAX_DIR_DEPTH: usize = 16;
/// Most manifest files a directory may hold; beyond it nothing is re-read.
pub const MAX_FILES: usize = 10_000;
/// Most directory entries (of any kind, in every directory) one walk lists.
pub const MAX_ENTRIES: usize = 100_000;

/// The objects read from one file.
#[derive(Clone, Debug)]
pub struct LoadedFile {
    pub path: PathBuf,
    pub objects: Vec<ClusterObject>,
    /// `apiVersion/kind name` of documents weft does not read.
    pub ignored: Vec<String>,
}

/// The result of loading a directory.
#[derive(Clone, Debug, Default)]
pub struct Loaded {
    pub files: Vec<LoadedFile>,
    pub errors: Vec<LoadError>,
}

impl Loaded {
    /// Every object of every file that loaded, in path order.
    pub fn objects(&self) -> impl Iterator<Item = &ClusterObject> {
        self.files.iter().flat_map(|f| f.objects.iter())
    }

    /// A model of the loaded objects, deriving endpoints from pods where a service has no
    /// EndpointSlice/Endpoints (see [`Model::derive_endpoints_from_pods`]).
    pub fn to_model(&self) -> Model {
        let mut m = Model::from_objects(self.objects().cloned());
        m.derive_endpoints_from_pods = true;
        m
    }
}

fn is_manifest(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    )
}

/// The manifest files under a directory, and the entries the walk did not read.
#[derive(Clone, Debug, Default)]
pub struct Listing {
    /// Regular manifest files, sorted by path, each file once.
    pub files: Vec<PathBuf>,
    /// Entries not read, with the reason: FIFOs, sockets and devices named like manifests, a
    /// directory or file already read through another path (a symlink loop or alias), a
    /// directory nested too deep.
    pub skipped: Vec<(PathBuf, String)>,
}

/// Lists the manifest files under `dir`, recursively, in path order. Hidden entries (starting
/// with `.`) are skipped, so editor swap files and `..data` symlink farms are not read twice.
/// Symlinks are followed, but every directory and file is visited once. Errors: `dir` cannot be
/// listed, or the walk exceeds [`MAX_FILES`] or [`MAX_ENTRIES`] (a partial listing would
/// drop objects).
pub fn list_manifests(dir: &Path) -> Result<Listing, ManifestError> {
    let root = std::fs::metadata(dir).map_err(|source| ManifestError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut walk = Walk {
        root: dir.to_path_buf(),
        listing: Listing::default(),
        dirs: HashSet::from([(root.dev(), root.ino())]),
        files: HashMap::new(),
        entries: 0,
    };
    walk.dir(dir, 0)?;
    walk.listing.files.sort();
    walk.listing.skipped.sort();
    Ok(walk.listing)
}

/// Every manifest file under `dir`, recursively, sorted by path (see [`list_manifests`]).
pub fn manifest_files(dir: &Path) -> Result<Vec<PathBuf>, ManifestError> {
    Ok(list_manifests(dir)?.files)
}

struct Walk {
    root: PathBuf,
    listing: Listing,
    /// (device, inode) of every directory entered.
    dirs: HashSet<(u64, u64)>,
    /// (device, inode) of every file listed → its first path.
    files: HashMap<(u64, u64), PathBuf>,
    entries: usize,
}

impl Walk {
    fn dir(&mut self, d: &Path, depth: usize) -> Result<(), ManifestError> {
        let io = |source| ManifestError::Io {
            path: d.to_path_buf(),
            source,
        };
        let mut entries = Vec::new();
        for entry in std::fs::read_dir(d).map_err(io)? {
            let entry = entry.map_err(io)?;
            self.entries += 1;
            if self.entries > MAX_ENTRIES {
                return Err(ManifestError::Walk {
                    path: self.root.clone(),
                    reason: format!("more than {MAX_ENTRIES} directory entries; nothing re-read"),
                });
            }
            let name = entry.file_name();
            if name.to_string_lossy().starts_with('.') {
                continue;
            }
            // The entry's own type: a symlink is not followed here.
            let symlink = entry.file_type().map_err(io)?.is_symlink();
            entries.push((name, symlink));
        }
        entries.sort();
        for (name, symlink) in entries {
            let path = d.join(&name);
            // `stat` (follows a symlink) never opens the file, so a FIFO cannot block here. A
            // dangling symlink or an entry gone since the listing is absent.
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            let id = (meta.dev(), meta.ino());
            if meta.is_dir() {
                if depth + 1 > MAX_DIR_DEPTH {
                    self.skip(
                        path,
                        format!("directory more than {MAX_DIR_DEPTH} levels deep; not read"),
                    );
                } else if !self.dirs.insert(id) {
                    let how = if symlink {
                        "symlink to a directory"
                    } else {
                        "directory"
                    };
                    self.skip(
                        path,
                        format!("{how} already read through another path (a loop or an alias); not read again"),
                    );
                } else {
                    self.dir(&path, depth + 1)?;
                }
            } else if is_manifest(&path) {
                if !meta.is_file() {
                    let kind = file_kind(&meta.file_type());
                    self.skip(path, format!("not a regular file ({kind}); not read"));
                } else if let Some(first) = self.files.get(&id) {
                    let first = first.strip_prefix(&self.root).unwrap_or(first);
                    let message = format!("{ALIAS_REASON}{}; read once", first.display());
                    self.skip(path, message);
                } else {
                    self.files.insert(id, path.clone());
                    self.listing.files.push(path);
                    if self.listing.files.len() > MAX_FILES {
                        return Err(ManifestError::Walk {
                            path: self.root.clone(),
                            reason: format!(
                                "more than {MAX_FILES} manifest files; nothing re-read"
                            ),
                        });
                    }
                }
            }
        }
        Ok(())
    }

    fn skip(&mut self, path: PathBuf, reason: String) {
        tracing::warn!(path = %path.display(), reason = %reason, "manifest entry skipped");
        self.listing.skipped.push((path, reason));
    }
}

fn file_kind(t: &std::fs::FileType) -> &'static str {
    if t.is_fifo() {
        "FIFO"
    } else if t.is_socket() {
        "socket"
    } else if t.is_block_device() {
        "block device"
    } else if t.is_char_device() {
        "character device"
    } else if t.is_dir() {
        "directory"
    } else {
        "unknown type"
    }
}

/// Reads a manifest file, at most [`MAX_MANIFEST_BYTES`]. Only a regular file is read: its
/// type is checked with `stat` before it is opened, it is opened non-blocking (so a FIFO put
/// in its place meanwhile cannot block the open), and checked again on the open handle.
pub fn read_manifest(path: &Path) -> Result<Vec<u8>, ManifestError> {
    let io = |source| ManifestError::Io {
        path: path.to_path_buf(),
        source,
    };
    let limit = MAX_MANIFEST_BYTES as u64;
    let too_large =
        |size: u64| ManifestError::Parse(ParseError::Limit(LimitError::TooLarge { size, limit }));
    let meta = std::fs::metadata(path).map_err(io)?;
    if !meta.is_file() {
        return Err(ManifestError::NotRegular {
            kind: file_kind(&meta.file_type()),
        });
    }
    if meta.len() > limit {
        return Err(too_large(meta.len()));
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(ManifestError::NotRegular {
            kind: file_kind(&meta.file_type()),
        });
    }
    let mut bytes = Vec::with_capacity(meta.len().min(limit) as usize);
    file.take(limit + 1).read_to_end(&mut bytes).map_err(io)?;
    if bytes.len() as u64 > limit {
        return Err(too_large(bytes.len() as u64));
    }
    Ok(bytes)
}

/// Loads every manifest under `dir`. Only an unreadable `dir` is an error; per-file problems
/// are in [`Loaded::errors`].
pub fn load_dir(dir: &Path) -> Result<Loaded, ManifestError> {
    let mut loaded = Loaded::default();
    let listing = list_manifests(dir)?;
    for (path, message) in listing.skipped {
        loaded.errors.push(LoadError { path, message });
    }
    for path in listing.files {
        match load_file(&path) {
            Ok(f) => loaded.files.push(f),
            Err(e) => loaded.errors.push(LoadError {
                path: path.clone(),
                message: e.to_string(),
            }),
        }
    }
    Ok(loaded)
}

/// Loads one manifest file.
pub fn load_file(path: &Path) -> Result<LoadedFile, ManifestError> {
    let bytes = read_manifest(path)?;
    let (objects, ignored) = parse_file(path, &bytes)?;
    Ok(LoadedFile {
        path: path.to_path_buf(),
        objects,
        ignored,
    })
}

/// Parses the bytes of the manifest file `path` (JSON if it is named `*.json`, else YAML).
pub fn parse_file(
    path: &Path,
    bytes: &[u8],
) -> Result<(Vec<ClusterObject>, Vec<String>), ManifestError> {
    let text = std::str::from_utf8(bytes).map_err(|_| ParseError::NotUtf8)?;
    let json = path.extension().and_then(|e| e.to_str()) == Some("json");
    Ok(parse_manifests(text, json)?)
}

/// Why a directory could not be compiled at all (per-file problems are in the report).
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Manifests(#[from] ManifestError),
}

/// Loads a manifests directory, compiles it and reports the result. Only an unreadable
/// directory is an error; malformed files are listed in [`CompileReport::load_errors`].
pub fn compile_dir(dir: &Path, opts: &CompileOptions) -> Result<CompileReport, ReportError> {
    let loaded = load_dir(dir)?;
    let compiled = compile(&loaded.to_model(), opts);
    let mut report = CompileReport::from_compiled(&compiled);
    report.load_errors = loaded.errors.clone();
    for f in &loaded.files {
        for i in &f.ignored {
            report.ignored.push(format!("{}: {i}", f.path.display()));
        }
    }
    Ok(report)
}
