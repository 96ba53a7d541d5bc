#!/usr/bin/env python3
"""Builds weft's OCI images offline and reproducibly (called by scripts/build-images.sh).

Inputs: the workspace's `dist` binaries (built by scripts/build-dist.sh: `cargo build --profile
dist --locked`, the proxy's with its profile-guided optimization from proxy/pgo/) and files
taken from Debian packages (`apt-get download`, checked against the SHA256 that apt's package
lists record, then unpacked with `dpkg-deb -x`): the dynamic loader, the C library
and what the binaries link (their ELF DT_NEEDED closure, resolved here with a small ELF reader),
and for the proxy image a working iptables (both backends) with the xtables extensions that
`weft-proxy-init` uses.

Outputs, under <target>/images/ (CARGO_TARGET_DIR or ./target):
  weft-<name>-<version>/          an OCI image layout (oci-layout, index.json, blobs/sha256/...)
  weft-<name>-<version>.oci.tar   the same as an OCI archive (plus a docker-style manifest.json)
  images.json                     name, reference, digests, sizes and paths of every image
Everything is cached in ~/.cache/weft/images/<key>/, where <key> hashes every input (sources of
the crates that go into the binaries, Cargo.lock, the toolchain, this script, the Debian package
versions and checksums, SOURCE_DATE_EPOCH); a second run with the same inputs only copies from
the cache and never runs cargo.

Reproducible: tar entries sorted, owners 0:0 with no names, mtime SOURCE_DATE_EPOCH (default 0),
gzip with mtime 0 and no file name, JSON with sorted keys.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# What builds the images, so inputs of the cache key too (build-dist.sh: how the binaries are built).
SCRIPTS = [
    REPO / "scripts" / "build_images.py",
    REPO / "scripts" / "build-images.sh",
    REPO / "scripts" / "build-dist.sh",
]

PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
NONROOT = 65532
# The uid the injector and the chart run the proxy as (core/src/inject.rs, charts/weft/values.yaml
# `proxy.uid`); weft-proxy-init excludes its traffic from redirection.
PROXY_UID = 2102

# Debian packages whose files go into the images (only the files the binaries need).
BASE_PACKAGES = ["libc6", "libgcc-s1"]
IPTABLES_PACKAGES = [
    "iptables",
    "libxtables12",
    "libip4tc2",
    "libip6tc2",
    "libnftnl11",
    "libmnl0",
]
# xtables extensions the proxy's init program needs (-p tcp, -j RETURN/REDIRECT, -m owner,
# -m multiport), plus a few that hand-written redirection rules commonly use.
XTABLES_EXTENSIONS = [
    "libxt_standard.so",
    "libxt_tcp.so",
    "libxt_udp.so",
    "libxt_multiport.so",
    "libxt_owner.so",
    "libxt_REDIRECT.so",
    "libxt_comment.so",
    "libxt_mark.so",
    "libxt_MARK.so",
    "libxt_conntrack.so",
    "libxt_addrtype.so",
    "libipt_icmp.so",
]

TRIPLETS = {"amd64": "x86_64-linux-gnu", "arm64": "aarch64-linux-gnu"}
GOARCH = {"amd64": "amd64", "arm64": "arm64"}

MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


class BuildError(Exception):
    pass


def log(msg: str) -> None:
    print(f"build-images: {msg}", file=sys.stderr, flush=True)


def run(cmd: list[str], cwd: Path | None = None, capture: bool = True) -> str:
    try:
        p = subprocess.run(
            cmd, cwd=cwd, check=False, text=True, stdout=subprocess.PIPE if capture else None
        )
    except FileNotFoundError as e:
        raise BuildError(f"`{cmd[0]}` is not installed: {e}") from e
    if p.returncode != 0:
        raise BuildError(f"`{' '.join(cmd)}` failed with exit code {p.returncode}")
    return p.stdout or ""


def sha256_bytes(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def sha256_file(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def canonical_json(v) -> bytes:
    return json.dumps(v, sort_keys=True, separators=(",", ":")).encode()


# ---------------------------------------------------------------------------------------------
# Images


def image_specs(version: str) -> list[dict]:
    """The three images: files from the dist build, entrypoint, user, extra Debian content."""
    return [
        {
            "name": "operator",
            "repository": "weft/operator",
            "title": "weft-operator",
            "description": "weft's control plane: SMI to per-proxy config, identity, webhooks",
            "bins": ["weft-operator"],
            "entrypoint": ["/usr/local/bin/weft-operator"],
            "user": f"{NONROOT}:{NONROOT}",
            "iptables": False,
            "ports": ["8086/tcp", "9990/tcp", "9443/tcp"],
        },
        {
            "name": "proxy",
            "repository": "weft/proxy",
            "title": "weft-proxy",
            "description": "weft's sidecar proxy and its init program (weft-proxy-init, iptables)",
            "bins": ["weft-proxy", "weft-proxy-init"],
            "entrypoint": ["/usr/local/bin/weft-proxy"],
            "user": f"{PROXY_UID}:{PROXY_UID}",
            "iptables": True,
            "ports": ["4143/tcp", "4191/tcp"],
        },
        {
            "name": "sample-app",
            "repository": "weft/sample-app",
            "title": "weft-sample-app",
            "description": "weft's sample application (HTTP, TCP echo, original-destination modes)",
            "bins": ["weft-test-app"],
            "entrypoint": ["/usr/local/bin/weft-test-app"],
            "user": f"{NONROOT}:{NONROOT}",
            "iptables": False,
            "ports": ["8080/tcp"],
        },
    ]


# ---------------------------------------------------------------------------------------------
# Inputs and the cache key


def workspace_version() -> str:
    with open(REPO / "Cargo.toml", "rb") as f:
        return tomllib.load(f)["workspace"]["package"]["version"]


def crate_dirs_for(packages: list[str]) -> list[Path]:
    """Workspace crates (folders) that the given packages depend on, transitively (normal and
    build dependencies; dev-dependencies do not go into binaries)."""
    with open(REPO / "Cargo.toml", "rb") as f:
        root = tomllib.load(f)
    ws_deps = root["workspace"].get("dependencies", {})
    by_name: dict[str, Path] = {}
    for member in root["workspace"]["members"]:
        with open(REPO / member / "Cargo.toml", "rb") as f:
            by_name[tomllib.load(f)["package"]["name"]] = REPO / member
    seen: dict[str, Path] = {}
    todo = list(packages)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        d = by_name.get(name)
        if d is None:
            raise BuildError(f"workspace package {name} not found")
        seen[name] = d
        with open(d / "Cargo.toml", "rb") as f:
            manifest = tomllib.load(f)
        for section in ("dependencies", "build-dependencies"):
            for dep, spec in manifest.get(section, {}).items():
                if isinstance(spec, dict) and spec.get("workspace"):
                    spec = ws_deps.get(dep, {})
                if isinstance(spec, dict) and "path" in spec:
                    todo.append(dep)
    return sorted(seen.values())


def source_files() -> list[Path]:
    """Every file that goes into the binaries: the crates' folders (without tests, benches,
    examples), and of the e2e crate only what the sample app is built from."""
    files: list[Path] = []
    for d in crate_dirs_for(["weft-operator", "weft-proxy"]):
        for dirpath, dirnames, filenames in os.walk(d):
            dirnames[:] = sorted(
                n
                for n in dirnames
                if not n.startswith(".")
                and not (Path(dirpath) == d and n in ("tests", "benches", "examples", "target"))
            )
            files.extend(Path(dirpath) / n for n in sorted(filenames))
    e2e = REPO / "e2e"
    files += [e2e / "Cargo.toml", e2e / "src" / "bin" / "test_app.rs"]
    # The sample app is a binary of the e2e crate; it uses nothing of the crate's library today.
    # If it ever does, the library's sources are inputs too.
    if "weft_e2e" in (e2e / "src" / "bin" / "test_app.rs").read_text():
        for p in sorted((e2e / "src").rglob("*.rs")):
            if p not in files:
                files.append(p)
    return files


def rust_toolchain() -> str:
    try:
        return run(["rustc", "-vV"], cwd=REPO)
    except BuildError:
        return "unknown"


class Debian:
    """Debian packages: versions from apt's lists, .deb files cached in ~/.cache/weft/debs."""

    def __init__(self, cache: Path, arch: str):
        self.dir = cache / "debs"
        self.arch = arch

    def resolve(self, pkgs: list[str]) -> list[dict]:
        """Candidate version, SHA256 and archive path of each package (one apt-cache call)."""
        out = run(["apt-cache", "show", "--no-all-versions"] + [f"{p}:{self.arch}" for p in pkgs])
        found: dict[str, dict] = {}
        for stanza in out.split("\n\n"):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if line and not line[0].isspace() and ":" in line:
                    k, v = line.split(":", 1)
                    fields.setdefault(k, v.strip())
            name = fields.get("Package")
            if name and "Version" in fields and "SHA256" in fields:
                found.setdefault(
                    name,
                    {
                        "package": name,
                        "version": fields["Version"],
                        "sha256": fields["SHA256"],
                        "filename": fields.get("Filename", ""),
                    },
                )
        missing = [p for p in pkgs if p not in found]
        if missing:
            raise BuildError(
                f"apt has no downloadable candidate for {missing} (run `apt-get update` first)"
            )
        return [found[p] for p in pkgs]

    def fetch(self, info: dict) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        name = Path(info["filename"]).name or (
            f"{info['package']}_{info['version'].replace(':', '%3a')}_{self.arch}.deb"
        )
        dest = self.dir / name
        if dest.is_file() and sha256_file(dest) == info["sha256"]:
            return dest
        with tempfile.TemporaryDirectory(dir=self.dir) as tmp:
            log(f"downloading {info['package']}={info['version']}")
            sandbox = ["-o", "APT::Sandbox::User=root"] if os.geteuid() == 0 else []
            run(
                ["apt-get", "download", "-q", *sandbox,
                 f"{info['package']}:{self.arch}={info['version']}"],
                cwd=Path(tmp),
                capture=False,
            )
            debs = list(Path(tmp).glob("*.deb"))
            if len(debs) != 1:
                raise BuildError(f"apt-get download {info['package']}: no .deb")
            got = sha256_file(debs[0])
            if got != info["sha256"]:
                raise BuildError(
                    f"{debs[0].name}: sha256 {got} does not match apt's {info['sha256']}"
                )
            os.replace(debs[0], dest)
        return dest


def target_dir() -> Path:
    t = os.environ.get("CARGO_TARGET_DIR")
    return Path(t) if t else REPO / "target"


def cache_dir() -> Path:
    base = os.environ.get("WEFT_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "weft"
    )
    return Path(base)


def input_key(version: str, epoch: int, debs: list[dict], arch: str) -> str:
    h = hashlib.sha256()

    def add(label: str, data: bytes) -> None:
        h.update(label.encode() + b"\0" + str(len(data)).encode() + b"\0" + data)

    add("version", version.encode())
    add("epoch", str(epoch).encode())
    add("arch", arch.encode())
    add("debs", canonical_json(debs))
    add("rustc", rust_toolchain().encode())
    for p in SCRIPTS + [REPO / "Cargo.lock", REPO / "Cargo.toml", REPO / "rust-toolchain.toml"]:
        if p.is_file():
            add(str(p.relative_to(REPO)), p.read_bytes())
    for p in source_files():
        add(str(p.relative_to(REPO)), p.read_bytes())
    return h.hexdigest()[:32]


# ---------------------------------------------------------------------------------------------
# ELF: the interpreter and DT_NEEDED of a binary or library


def elf_deps(data: bytes) -> tuple[str | None, list[str]] | None:
    """(PT_INTERP, DT_NEEDED names) of a 64-bit little-endian ELF file; None if not ELF."""
    if data[:4] != b"\x7fELF":
        return None
    if data[4] != 2 or data[5] != 1:
        raise BuildError("only 64-bit little-endian ELF files are supported")
    (phoff,) = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    loads: list[tuple[int, int, int]] = []
    interp = None
    dynamic = None
    for i in range(phnum):
        p_type, _flags, off, vaddr, _paddr, filesz, _memsz, _align = struct.unpack_from(
            "<IIQQQQQQ", data, phoff + i * phentsize
        )
        if p_type == 1:
            loads.append((vaddr, off, filesz))
        elif p_type == 3:
            interp = data[off : off + filesz].split(b"\0", 1)[0].decode()
        elif p_type == 2:
            dynamic = (off, filesz)
    needed: list[int] = []
    strtab = None
    if dynamic:
        off, size = dynamic
        for j in range(size // 16):
            tag, val = struct.unpack_from("<qQ", data, off + 16 * j)
            if tag == 0:
                break
            if tag == 1:
                needed.append(val)
            elif tag == 5:
                strtab = val
    names: list[str] = []
    if needed:
        if strtab is None:
            raise BuildError("ELF file with DT_NEEDED but no DT_STRTAB")
        base = None
        for vaddr, off, filesz in loads:
            if vaddr <= strtab < vaddr + filesz:
                base = strtab - vaddr + off
        if base is None:
            raise BuildError("ELF DT_STRTAB outside every PT_LOAD segment")
        for n in needed:
            end = data.index(b"\0", base + n)
            names.append(data[base + n : end].decode())
    return interp, names


# ---------------------------------------------------------------------------------------------
# Layers


class Tree:
    """Files of one layer: image path -> entry. Directories are implied by their contents."""

    def __init__(self) -> None:
        self.entries: dict[str, dict] = {}

    def add_file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        self.entries[path.strip("/")] = {"type": "file", "data": data, "mode": mode}

    def add_dir(self, path: str, mode: int = 0o755) -> None:
        self.entries[path.strip("/")] = {"type": "dir", "mode": mode}

    def add_symlink(self, path: str, target: str) -> None:
        self.entries[path.strip("/")] = {"type": "symlink", "target": target}

    def paths(self) -> set[str]:
        return set(self.entries)

    def tar(self, epoch: int) -> bytes:
        entries = dict(self.entries)
        # Parent folders of every entry, 0755, unless given.
        for p in list(entries):
            parts = p.split("/")
            for i in range(1, len(parts)):
                entries.setdefault("/".join(parts[:i]), {"type": "dir", "mode": 0o755})
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
            for p in sorted(entries):
                e = entries[p]
                ti = tarfile.TarInfo(p)
                ti.uid = ti.gid = 0
                ti.uname = ti.gname = ""
                ti.mtime = epoch
                if e["type"] == "dir":
                    ti.type = tarfile.DIRTYPE
                    ti.mode = e["mode"]
                    tf.addfile(ti)
                elif e["type"] == "symlink":
                    ti.type = tarfile.SYMTYPE
                    ti.mode = 0o777
                    ti.linkname = e["target"]
                    tf.addfile(ti)
                else:
                    ti.type = tarfile.REGTYPE
                    ti.mode = e["mode"]
                    ti.size = len(e["data"])
                    tf.addfile(ti, io.BytesIO(e["data"]))
        return buf.getvalue()


_GZIPPED: dict[str, bytes] = {}


def gzip_bytes(data: bytes) -> bytes:
    """gzip with no file name and mtime 0 (the shared base layer is compressed once)."""
    key = sha256_bytes(data)
    if key not in _GZIPPED:
        out = io.BytesIO()
        with gzip.GzipFile(filename="", fileobj=out, mode="wb", compresslevel=6, mtime=0) as gz:
            gz.write(data)
        _GZIPPED[key] = out.getvalue()
    return _GZIPPED[key]


class Staging:
    """Unpacked Debian packages; copies files (following symlinks inside the tree) into layers."""

    def __init__(self, root: Path, triplet: str):
        self.root = root
        self.triplet = triplet
        self.lib_dirs = [
            f"lib/{triplet}",
            f"usr/lib/{triplet}",
            "lib64",
            "usr/lib64",
            "lib",
            "usr/lib",
        ]

    def _local(self, path: str) -> Path:
        return self.root / path.strip("/")

    def copy(self, path: str, tree: Tree, have: set[str]) -> str:
        """Copies `path` (and, for a symlink, what it points to) into `tree` unless in `have`.
        Returns the path of the real file."""
        path = path.strip("/")
        for _ in range(40):
            local = self._local(path)
            if local.is_symlink():
                target = os.readlink(local)
                if path not in have:
                    tree.add_symlink(path, target)
                    have.add(path)
                if target.startswith("/"):
                    path = target.strip("/")
                else:
                    path = os.path.normpath(os.path.join(os.path.dirname(path), target))
                continue
            if not local.is_file():
                raise BuildError(f"/{path} is not in the Debian packages")
            if path not in have:
                mode = local.stat().st_mode & 0o777
                tree.add_file(path, local.read_bytes(), 0o755 if mode & 0o111 else 0o644)
                have.add(path)
            return path
        raise BuildError(f"/{path}: too many symlinks")

    def find_lib(self, name: str) -> str:
        for d in self.lib_dirs:
            p = f"{d}/{name}"
            if self._local(p).exists() or self._local(p).is_symlink():
                return p
        raise BuildError(f"shared library {name} is not in the Debian packages")

    def add_closure(self, data: bytes, tree: Tree, have: set[str], what: str) -> None:
        """Adds the interpreter and every library an ELF file needs, recursively."""
        deps = elf_deps(data)
        if deps is None:
            return
        interp, needed = deps
        todo: list[tuple[str, bytes]] = []
        if interp:
            real = self.copy(interp, tree, have)
            todo.append((real, self._local(real).read_bytes()))
        for n in needed:
            real = self.copy(self.find_lib(n), tree, have)
            todo.append((real, self._local(real).read_bytes()))
        for real, d in todo:
            key = f"closure:{real}"
            if key in have:
                continue
            have.add(key)
            self.add_closure(d, tree, have, real)


def etc_tree() -> Tree:
    t = Tree()
    t.add_file(
        "etc/passwd",
        (
            "root:x:0:0:root:/root:/sbin/nologin\n"
            f"weft-proxy:x:{PROXY_UID}:{PROXY_UID}:weft-proxy:/nonexistent:/sbin/nologin\n"
            f"nonroot:x:{NONROOT}:{NONROOT}:nonroot:/home/nonroot:/sbin/nologin\n"
        ).encode(),
    )
    t.add_file(
        "etc/group",
        (f"root:x:0:\nweft-proxy:x:{PROXY_UID}:\nnonroot:x:{NONROOT}:\n").encode(),
    )
    t.add_file(
        "etc/nsswitch.conf",
        b"passwd: files\ngroup: files\nhosts: files dns\nprotocols: files\nservices: files\n",
    )
    t.add_dir("tmp", 0o1777)
    t.add_dir("run", 0o755)
    t.add_dir("root", 0o700)
    t.add_dir("home/nonroot", 0o755)
    return t


# ---------------------------------------------------------------------------------------------
# OCI layout and archive


class Blobs:
    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}

    def put(self, data: bytes) -> tuple[str, int]:
        d = "sha256:" + sha256_bytes(data)
        self.blobs[d] = data
        return d, len(data)


def write_layout(out: Path, blobs: Blobs, index: dict, docker_manifest: list) -> None:
    if out.exists():
        shutil.rmtree(out)
    (out / "blobs" / "sha256").mkdir(parents=True)
    for d, data in blobs.blobs.items():
        (out / "blobs" / "sha256" / d.split(":", 1)[1]).write_bytes(data)
    (out / "oci-layout").write_bytes(canonical_json({"imageLayoutVersion": "1.0.0"}))
    (out / "index.json").write_bytes(canonical_json(index))
    (out / "manifest.json").write_bytes(canonical_json(docker_manifest))


def write_archive(layout: Path, dest: Path, epoch: int) -> None:
    names = ["oci-layout", "index.json", "manifest.json", "blobs", "blobs/sha256"]
    names += sorted(f"blobs/sha256/{p.name}" for p in (layout / "blobs" / "sha256").iterdir())
    tmp = dest.with_suffix(".tmp")
    with tarfile.open(tmp, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for n in names:
            p = layout / n
            ti = tarfile.TarInfo(n)
            ti.uid = ti.gid = 0
            ti.uname = ti.gname = ""
            ti.mtime = epoch
            if p.is_dir():
                ti.type = tarfile.DIRTYPE
                ti.mode = 0o755
                tf.addfile(ti)
            else:
                ti.mode = 0o644
                ti.size = p.stat().st_size
                with open(p, "rb") as f:
                    tf.addfile(ti, f)
    os.replace(tmp, dest)


def build_image(
    spec: dict,
    version: str,
    epoch: int,
    arch: str,
    bins_dir: Path,
    staging: Staging,
    base_layer: bytes,
    base_paths: set[str],
    debs: list[dict],
    out_dir: Path,
) -> dict:
    app = Tree()
    have = set(base_paths)
    used_pkgs = {"libc6", "libgcc-s1"}
    for b in spec["bins"]:
        p = bins_dir / b
        if not p.is_file():
            raise BuildError(f"{p} was not built")
        data = p.read_bytes()
        app.add_file(f"usr/local/bin/{b}", data, 0o755)
        staging.add_closure(data, app, have, b)
    if spec["iptables"]:
        used_pkgs.update(IPTABLES_PACKAGES)
        for multi in ("xtables-nft-multi", "xtables-legacy-multi"):
            real = staging.copy(f"usr/sbin/{multi}", app, have)
            staging.add_closure(staging._local(real).read_bytes(), app, have, multi)
        # The default is the nf_tables backend (Debian's default; it needs no lock file, so it
        # works on a read-only root). `--iptables iptables-legacy` selects the legacy one.
        app.add_symlink("usr/sbin/iptables", "xtables-nft-multi")
        app.add_symlink("usr/sbin/iptables-nft", "xtables-nft-multi")
        app.add_symlink("usr/sbin/iptables-legacy", "xtables-legacy-multi")
        for ext in XTABLES_EXTENSIONS:
            real = staging.copy(f"usr/lib/{staging.triplet}/xtables/{ext}", app, have)
            staging.add_closure(staging._local(real).read_bytes(), app, have, ext)
        for pkg in IPTABLES_PACKAGES:
            c = f"usr/share/doc/{pkg}/copyright"
            if staging._local(c).is_file():
                staging.copy(c, app, have)
    layers = [base_layer, app.tar(epoch)]
    blobs = Blobs()
    layer_descs = []
    diff_ids = []
    for raw in layers:
        diff_ids.append("sha256:" + sha256_bytes(raw))
        d, size = blobs.put(gzip_bytes(raw))
        layer_descs.append({"mediaType": MT_LAYER, "digest": d, "size": size})
    ref = f"{spec['repository']}:{version}"
    pkg_versions = " ".join(f"{d['package']}={d['version']}" for d in debs if d["package"] in used_pkgs)
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
    labels = {
        "org.opencontainers.image.title": spec["title"],
        "org.opencontainers.image.description": spec["description"],
        "org.opencontainers.image.version": version,
        "org.opencontainers.image.licenses": "Apache-2.0",
        "org.opencontainers.image.base.name": "scratch + files from Debian packages",
        "io.weft.debian.packages": pkg_versions,
    }
    config = {
        "architecture": GOARCH[arch],
        "os": "linux",
        "created": created,
        "config": {
            "User": spec["user"],
            "Env": [PATH_ENV],
            "Entrypoint": spec["entrypoint"],
            "WorkingDir": "/",
            "Labels": labels,
            "ExposedPorts": {p: {} for p in spec["ports"]},
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [
            {"created": created, "created_by": "build-images: Debian base files"},
            {"created": created, "created_by": f"build-images: {' '.join(spec['bins'])}"},
        ],
    }
    cfg_digest, cfg_size = blobs.put(canonical_json(config))
    manifest = {
        "schemaVersion": 2,
        "mediaType": MT_MANIFEST,
        "config": {"mediaType": MT_CONFIG, "digest": cfg_digest, "size": cfg_size},
        "layers": layer_descs,
        "annotations": {"org.opencontainers.image.created": created},
    }
    man_digest, man_size = blobs.put(canonical_json(manifest))
    index = {
        "schemaVersion": 2,
        "mediaType": MT_INDEX,
        "manifests": [
            {
                "mediaType": MT_MANIFEST,
                "digest": man_digest,
                "size": man_size,
                "platform": {"architecture": GOARCH[arch], "os": "linux"},
                "annotations": {
                    "io.containerd.image.name": f"docker.io/{ref}",
                    "org.opencontainers.image.ref.name": version,
                },
            }
        ],
    }
    docker_manifest = [
        {
            "Config": f"blobs/sha256/{cfg_digest.split(':', 1)[1]}",
            "RepoTags": [ref],
            "Layers": [f"blobs/sha256/{d['digest'].split(':', 1)[1]}" for d in layer_descs],
        }
    ]
    stem = f"weft-{spec['name']}-{version}"
    layout = out_dir / stem
    write_layout(layout, blobs, index, docker_manifest)
    archive = out_dir / f"{stem}.oci.tar"
    write_archive(layout, archive, epoch)
    return {
        "name": spec["name"],
        "repository": spec["repository"],
        "reference": ref,
        "digest": man_digest,
        "config_digest": cfg_digest,
        "compressed_size": sum(d["size"] for d in layer_descs) + cfg_size + man_size,
        "uncompressed_size": sum(len(r) for r in layers),
        "archive_size": archive.stat().st_size,
        "layout": stem,
        "archive": archive.name,
        "user": spec["user"],
        "entrypoint": spec["entrypoint"],
    }


# ---------------------------------------------------------------------------------------------


def cargo_build(specs: list[dict]) -> Path:
    # scripts/build-dist.sh decides how a shipped binary is built (the proxy's with its PGO
    # profile, which proxy/pgo/ holds and source_files() therefore keys on).
    bins = [b for s in specs for b in s["bins"]]
    cmd = [str(REPO / "scripts" / "build-dist.sh"), *bins]
    log(" ".join(cmd))
    start = time.monotonic()
    run(cmd, cwd=REPO, capture=False)
    log(f"cargo build took {time.monotonic() - start:.0f}s")
    return target_dir() / "dist"


def publish(src: Path, dest: Path) -> None:
    """Copies the cached images into <target>/images (hard links where possible)."""
    dest.mkdir(parents=True, exist_ok=True)
    for p in sorted(src.iterdir()):
        d = dest / p.name
        if d.is_dir() and not d.is_symlink():
            shutil.rmtree(d)
        elif d.exists() or d.is_symlink():
            d.unlink()
        if p.is_dir():
            shutil.copytree(p, d, copy_function=_link_or_copy)
        else:
            _link_or_copy(p, d)


def _link_or_copy(src, dst) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def main() -> int:
    ap = argparse.ArgumentParser(description="Builds weft's OCI images (docs/images.md).")
    ap.add_argument("--no-cache", action="store_true", help="rebuild even when cached")
    ap.add_argument(
        "--no-cargo",
        action="store_true",
        help="do not run cargo: use the binaries already in <target>/dist",
    )
    ap.add_argument(
        "--bins",
        type=Path,
        help="with --no-cargo: take the binaries from this folder instead of <target>/dist",
    )
    ap.add_argument(
        "--out", type=Path, help="copy the images to this folder instead of <target>/images"
    )
    ap.add_argument("--print-key", action="store_true", help="print the input key and exit")
    args = ap.parse_args()

    version = workspace_version()
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))
    arch = run(["dpkg", "--print-architecture"]).strip()
    if arch not in TRIPLETS:
        raise BuildError(f"unsupported architecture {arch}")
    cache = cache_dir()
    deb = Debian(cache, arch)
    debs = deb.resolve(BASE_PACKAGES + IPTABLES_PACKAGES)
    key = input_key(version, epoch, debs, arch)
    specs = image_specs(version)
    if args.bins and not args.no_cargo:
        raise BuildError("--bins needs --no-cargo")
    dist = args.bins or target_dir() / "dist"
    if args.no_cargo:
        # Whatever is in <target>/dist, which may not match the sources: key on its bytes.
        h = hashlib.sha256(key.encode())
        for b in sorted(b for s in specs for b in s["bins"]):
            p = dist / b
            h.update(sha256_file(p).encode() if p.is_file() else b"missing")
        key = "bins-" + h.hexdigest()[:27]
    if args.print_key:
        print(key)
        return 0
    cached = cache / "images" / key
    images_dir = target_dir() / "images"
    if args.no_cache or not (cached / "images.json").is_file():
        start = time.monotonic()
        bins_dir = dist if args.no_cargo else cargo_build(specs)
        with tempfile.TemporaryDirectory(prefix="weft-images-") as tmp:
            root = Path(tmp) / "debian"
            root.mkdir()
            for d in debs:
                run(["dpkg-deb", "-x", str(deb.fetch(d)), str(root)])
            staging = Staging(root, TRIPLETS[arch])
            # The base layer: loader, C library and what every binary links, /etc, shared by all
            # images (same digest).
            base = etc_tree()
            have: set[str] = set()
            for s in specs:
                for b in s["bins"]:
                    p = bins_dir / b
                    if not p.is_file():
                        raise BuildError(
                            f"{p} was not built (run without --no-cargo)"
                        )
                    staging.add_closure(p.read_bytes(), base, have, b)
            for pkg in BASE_PACKAGES:
                c = f"usr/share/doc/{pkg}/copyright"
                if staging._local(c).is_file():
                    staging.copy(c, base, have)
            base_layer = base.tar(epoch)
            base_paths = set(have)
            out = Path(tmp) / "out"
            out.mkdir()
            results = [
                build_image(s, version, epoch, arch, bins_dir, staging, base_layer, base_paths, debs, out)
                for s in specs
            ]
            (out / "images.json").write_bytes(
                json.dumps(
                    {"key": key, "version": version, "source_date_epoch": epoch, "debian": debs,
                     "images": results},
                    sort_keys=True,
                    indent=2,
                ).encode()
            )
            cached.parent.mkdir(parents=True, exist_ok=True)
            staged = cached.with_name(cached.name + ".tmp")
            if staged.exists():
                shutil.rmtree(staged)
            shutil.copytree(out, staged)
            if cached.exists():
                shutil.rmtree(cached)
            os.replace(staged, cached)
        log(f"built in {time.monotonic() - start:.0f}s (cache {cached})")
    else:
        log(f"up to date (cache {cached})")
    if args.out:
        images_dir = args.out
    publish(cached, images_dir)
    info = json.loads((cached / "images.json").read_text())
    for im in info["images"]:
        print(
            f"{im['reference']:<26} {im['digest']}  "
            f"{im['compressed_size'] / 1048576:.1f} MiB compressed, "
            f"{im['uncompressed_size'] / 1048576:.1f} MiB unpacked  "
            f"{images_dir / im['archive']}"
        )
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BuildError as e:
        print(f"build-images: error: {e}", file=sys.stderr)
        sys.exit(1)
