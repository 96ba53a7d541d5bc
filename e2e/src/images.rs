//! The images `scripts/build-images.sh` builds, as the kubelet stand-in runs them.
//!
//! [`ImageStore::ensure`] runs the script (a no-op in seconds when its cache under
//! `~/.cache/weft/images/` matches the inputs), reads `target/images/images.json` and each OCI
//! image layout, and unpacks every image's layers once into a root filesystem cached by the
//! image's manifest digest (`~/.cache/weft/rootfs/<digest>/`). [`ImageStore::for_image`] maps a
//! pod's `image:` to one of them: `weft/operator:*`, `weft/proxy:*`, `weft/sample-app:*` by
//! repository name (any registry, any tag or digest), anything else to `weft/sample-app`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("scripts/build-images.sh failed ({status}):\n{output}")]
    Build { status: String, output: String },
    #[error("{path}: {msg}")]
    Layout { path: String, msg: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

fn layout_err(path: &Path, msg: impl Into<String>) -> ImageError {
    ImageError::Layout {
        path: path.display().to_string(),
        msg: msg.into(),
    }
}

/// The parts of an image's config a runtime uses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// `NAME=value` entries, in order.
    pub env: Vec<(String, String)>,
    /// `User` as written (`uid`, `uid:gid`, or a name from the image's /etc/passwd).
    pub user: String,
    pub working_dir: String,
}

/// One built image, unpacked.
#[derive(Clone, Debug)]
pub struct Image {
    /// `weft/proxy:0.1.0`.
    pub reference: String,
    /// `weft/proxy`.
    pub repository: String,
    /// The manifest digest (`sha256:…`).
    pub digest: String,
    /// The OCI image layout it was read from.
    pub layout: PathBuf,
    /// The unpacked layers (read-only: containers run on an overlay of it).
    pub rootfs: PathBuf,
    pub config: ImageConfig,
}

impl Image {
    /// `(uid, gid)` for the image's `User` (numeric, or looked up in the image's /etc/passwd
    /// and /etc/group). An empty `User` is root, as in every runtime.
    pub fn user_ids(&self) -> Result<(u32, u32), String> {
        let user = self.config.user.trim();
        if user.is_empty() {
            return Ok((0, 0));
        }
        let (u, g) = match user.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (user, None),
        };
        let uid = match u.parse::<u32>() {
            Ok(n) => n,
            Err(_) => self
                .passwd_entry(|name, _| name == u)
                .map(|(uid, _)| uid)
                .ok_or_else(|| format!("user {u:?} is not in the image's /etc/passwd"))?,
        };
        let gid = match g {
            Some(g) => match g.parse::<u32>() {
                Ok(n) => n,
                Err(_) => self
                    .group_gid(g)
                    .ok_or_else(|| format!("group {g:?} is not in the image's /etc/group"))?,
            },
            None => self.primary_gid(uid),
        };
        Ok((uid, gid))
    }

    /// The primary group of `uid` in the image's /etc/passwd, else 0 (what containerd does
    /// when a pod sets `runAsUser` without `runAsGroup`).
    pub fn primary_gid(&self, uid: u32) -> u32 {
        self.passwd_entry(|_, u| u == uid)
            .map(|(_, g)| g)
            .unwrap_or(0)
    }

    fn passwd_entry(&self, pick: impl Fn(&str, u32) -> bool) -> Option<(u32, u32)> {
        let text = std::fs::read_to_string(self.rootfs.join("etc/passwd")).ok()?;
        text.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            let uid = f.get(2)?.parse().ok()?;
            let gid = f.get(3)?.parse().ok()?;
            pick(f.first()?, uid).then_some((uid, gid))
        })
    }

    fn group_gid(&self, name: &str) -> Option<u32> {
        let text = std::fs::read_to_string(self.rootfs.join("etc/group")).ok()?;
        text.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.first() == Some(&name)).then(|| f.get(2)?.parse().ok())?
        })
    }
}

/// The built images, by repository.
#[derive(Clone, Debug)]
pub struct ImageStore {
    images: BTreeMap<String, Image>,
}

/// The repository of an image reference: no registry host, tag or digest
/// (`localhost:5000/weft/proxy:dev` → `weft/proxy`, `docker.io/library/x` → `x`).
pub fn repository_of(image: &str) -> String {
    let no_digest = image.split('@').next().unwrap_or("");
    let last_slash = no_digest.rfind('/').map_or(0, |i| i + 1);
    let repo = match no_digest[last_slash..].rfind(':') {
        Some(i) => &no_digest[..last_slash + i],
        None => no_digest,
    };
    let mut parts: Vec<&str> = repo.split('/').collect();
    if parts.len() > 1 {
        let first = parts[0];
        if first.contains('.') || first.contains(':') || first == "localhost" {
            parts.remove(0);
        }
    }
    if parts.len() > 1 && parts[0] == "library" {
        parts.remove(0);
    }
    parts.join("/")
}

/// The folder the script writes images to (`CARGO_TARGET_DIR` or `<repo>/target`, `images`).
pub fn images_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::cluster::repo_root().join("target"))
        .join("images")
}

/// weft's cache folder (`WEFT_CACHE_DIR`, else `$XDG_CACHE_HOME/weft` or `~/.cache/weft`), as
/// the build script uses it.
pub fn weft_cache() -> PathBuf {
    if let Some(d) = std::env::var_os("WEFT_CACHE_DIR") {
        return PathBuf::from(d);
    }
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/root/.cache"))
        .join("weft")
}

/// Where unpacked root filesystems are cached (`~/.cache/weft/rootfs`).
pub fn rootfs_cache() -> PathBuf {
    weft_cache().join("rootfs")
}

/// Runs `scripts/build-images.sh` (which reuses its cache when the inputs did not change).
pub fn build() -> Result<(), ImageError> {
    let script = crate::cluster::repo_root().join("scripts/build-images.sh");
    let out = std::process::Command::new(&script)
        .current_dir(crate::cluster::repo_root())
        .stdin(std::process::Stdio::null())
        .output()?;
    if !out.status.success() {
        return Err(ImageError::Build {
            status: out.status.to_string(),
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        });
    }
    Ok(())
}

fn read_json(p: &Path) -> Result<Value, ImageError> {
    let text = std::fs::read_to_string(p).map_err(|e| layout_err(p, e.to_string()))?;
    serde_json::from_str(&text).map_err(|e| layout_err(p, e.to_string()))
}

fn blob_path(layout: &Path, digest: &str) -> Result<PathBuf, ImageError> {
    let hex = digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| layout_err(layout, format!("bad digest {digest:?}")))?;
    Ok(layout.join("blobs/sha256").join(hex))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Reads one OCI image layout (its single manifest) and unpacks it into `cache`.
pub fn open_layout(layout: &Path, cache: &Path) -> Result<Image, ImageError> {
    let index = read_json(&layout.join("index.json"))?;
    let desc = index["manifests"]
        .as_array()
        .and_then(|m| m.first())
        .ok_or_else(|| layout_err(layout, "index.json has no manifest"))?;
    let digest = desc["digest"].as_str().unwrap_or("").to_string();
    let manifest = read_json(&blob_path(layout, &digest)?)?;
    let config = read_json(&blob_path(
        layout,
        manifest["config"]["digest"].as_str().unwrap_or(""),
    )?)?;
    let name = desc["annotations"]["io.containerd.image.name"]
        .as_str()
        .unwrap_or("");
    let reference = name.strip_prefix("docker.io/").unwrap_or(name).to_string();
    let c = &config["config"];
    let env = strings(&c["Env"])
        .into_iter()
        .map(|e| match e.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (e, String::new()),
        })
        .collect();
    let mut layers = Vec::new();
    for l in manifest["layers"].as_array().cloned().unwrap_or_default() {
        layers.push(blob_path(layout, l["digest"].as_str().unwrap_or(""))?);
    }
    let rootfs = unpack(&digest, &layers, cache)?;
    Ok(Image {
        repository: repository_of(&reference),
        reference,
        digest,
        layout: layout.to_path_buf(),
        rootfs,
        config: ImageConfig {
            entrypoint: strings(&c["Entrypoint"]),
            cmd: strings(&c["Cmd"]),
            env,
            user: c["User"].as_str().unwrap_or("").to_string(),
            working_dir: c["WorkingDir"].as_str().unwrap_or("").to_string(),
        },
    })
}

/// Unpacks layers (gzip tarballs, in order) into `<cache>/<digest hex>` unless already there.
/// Whiteout files are not supported (the script's images have none): they fail the unpack.
fn unpack(digest: &str, layers: &[PathBuf], cache: &Path) -> Result<PathBuf, ImageError> {
    let hex = digest.trim_start_matches("sha256:");
    let dest = cache.join(hex);
    if dest.join(".weft-unpacked").is_file() {
        return Ok(dest);
    }
    std::fs::create_dir_all(cache)?;
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{hex}-"))
        .tempdir_in(cache)?;
    for layer in layers {
        let list = std::process::Command::new("tar")
            .arg("-tzf")
            .arg(layer)
            .output()?;
        if !list.status.success() {
            return Err(layout_err(layer, "not a gzip tarball"));
        }
        if String::from_utf8_lossy(&list.stdout)
            .lines()
            .any(|l| l.rsplit('/').next().unwrap_or("").starts_with(".wh."))
        {
            return Err(layout_err(layer, "whiteout files are not supported"));
        }
        let out = std::process::Command::new("tar")
            .args(["-xzf"])
            .arg(layer)
            .arg("-C")
            .arg(tmp.path())
            .args(["--numeric-owner", "--same-owner", "--same-permissions"])
            .output()?;
        if !out.status.success() {
            return Err(layout_err(
                layer,
                format!("tar: {}", String::from_utf8_lossy(&out.stderr).trim()),
            ));
        }
    }
    // The root of a container's filesystem is world-readable, whatever the temp folder was.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755))?;
    }
    std::fs::write(tmp.path().join(".weft-unpacked"), digest)?;
    let staged = tmp.keep();
    if std::fs::rename(&staged, &dest).is_err() {
        // Another process unpacked the same image meanwhile.
        let _ = std::fs::remove_dir_all(&staged);
        if !dest.join(".weft-unpacked").is_file() {
            return Err(layout_err(&dest, "could not be unpacked"));
        }
    }
    Ok(dest)
}

impl ImageStore {
    /// Builds the images (or reuses them) and unpacks them; once per process. With
    /// `WEFT_IMAGES_DIR` set, uses the images there and builds nothing.
    pub fn ensure() -> Result<Arc<ImageStore>, String> {
        static STORE: OnceLock<Mutex<Option<Arc<ImageStore>>>> = OnceLock::new();
        let cell = STORE.get_or_init(|| Mutex::new(None));
        let mut guard = cell.lock().map_err(|e| e.to_string())?;
        if let Some(s) = guard.as_ref() {
            return Ok(s.clone());
        }
        let dir = match std::env::var_os("WEFT_IMAGES_DIR") {
            // Images built elsewhere (e.g. `scripts/build-images.sh --out DIR`): used as they are.
            Some(d) => PathBuf::from(d),
            None => {
                build().map_err(|e| e.to_string())?;
                images_dir()
            }
        };
        let store =
            Self::open(&dir, &rootfs_cache()).map_err(|e| format!("{e} (in {})", dir.display()))?;
        let store = Arc::new(store);
        *guard = Some(store.clone());
        Ok(store)
    }

    /// Reads `images.json` in `dir` and every image layout it lists.
    pub fn open(dir: &Path, cache: &Path) -> Result<ImageStore, ImageError> {
        let list = read_json(&dir.join("images.json"))?;
        let mut images = BTreeMap::new();
        for im in list["images"].as_array().cloned().unwrap_or_default() {
            let layout = dir.join(im["layout"].as_str().unwrap_or(""));
            let image = open_layout(&layout, cache)?;
            images.insert(image.repository.clone(), image);
        }
        for needed in ["weft/operator", "weft/proxy", "weft/sample-app"] {
            if !images.contains_key(needed) {
                return Err(layout_err(dir, format!("no {needed} image")));
            }
        }
        Ok(ImageStore { images })
    }

    /// The image a pod's `image:` runs from.
    pub fn for_image(&self, image: &str) -> Option<&Image> {
        self.images
            .get(&repository_of(image))
            .or_else(|| self.images.get("weft/sample-app"))
    }

    /// An image by repository (`weft/proxy`).
    pub fn get(&self, repository: &str) -> Option<&Image> {
        self.images.get(repository)
    }

    pub fn all(&self) -> impl Iterator<Item = &Image> {
        self.images.values()
    }
}

#[cfg(test)]
mod tests {
    use super::repository_of;

    #[test]
    fn repositories() {
        assert_eq!(repository_of("weft/proxy:dev"), "weft/proxy");
        assert_eq!(repository_of("weft/proxy"), "weft/proxy");
        assert_eq!(
            repository_of("docker.io/weft/operator:0.1.0"),
            "weft/operator"
        );
        assert_eq!(
            repository_of("localhost:5000/weft/proxy@sha256:abcd"),
            "weft/proxy"
        );
        assert_eq!(repository_of("weft-test-app"), "weft-test-app");
        assert_eq!(repository_of("docker.io/library/nginx:1"), "nginx");
    }
}
