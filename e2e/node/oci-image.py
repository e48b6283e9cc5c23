#!/usr/bin/env python3
"""Assembles a single-layer OCI image archive without Docker or a registry.

    oci-image.py --name ghcr.io/remora-mesh/remora-echo:e2e --out echo.tar \
        --entrypoint /usr/local/bin/app --user 65532:65532 \
        --file target/release/remora-echo=/usr/local/bin/app

`--file SRC=DEST` copies a file (ELF files bring the shared libraries `ldd`
names, and their loader, at the same paths); `--link DEST=TARGET` makes a
symlink; `--tree SRC=DEST` copies a directory. The archive (oci-layout,
index.json with the `io.containerd.image.name` annotation, manifest, config,
one uncompressed tar layer) imports with `ctr -n k8s.io images import`. Files
are owned by root, dated at the epoch and sorted, so the same inputs give the
same image digest.
"""

import argparse
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile

ELF_MAGIC = b"\x7fELF"


def is_elf(path):
    with open(path, "rb") as f:
        return f.read(4) == ELF_MAGIC


def shared_libraries(path):
    """Absolute paths of the libraries `ldd` resolves for an ELF file (empty for static ones)."""
    out = subprocess.run(["ldd", path], capture_output=True, text=True)
    if out.returncode != 0:
        if "not a dynamic executable" in out.stdout + out.stderr:
            return []
        sys.exit(f"oci-image: ldd {path} failed: {out.stderr.strip()}")
    libs = []
    for line in out.stdout.splitlines():
        line = line.strip()
        if "not found" in line:
            sys.exit(f"oci-image: {path} needs a library that is not installed: {line}")
        if "=>" in line:
            target = line.split("=>", 1)[1].strip().split(" ")[0]
        else:
            target = line.split(" ")[0]
        if target.startswith("/"):
            libs.append(target)
    return libs


class Layer:
    def __init__(self):
        self.entries = {}  # path in the image -> (kind, source or target)

    def add_dirs(self, dest):
        parts = dest.strip("/").split("/")[:-1]
        for i in range(1, len(parts) + 1):
            self.entries.setdefault("/" + "/".join(parts[:i]), ("dir", None))

    def add_file(self, src, dest, with_libraries=True):
        if not os.path.isfile(src):
            sys.exit(f"oci-image: --file {src}: no such file")
        self.add_dirs(dest)
        self.entries[dest] = ("file", src)
        if with_libraries and is_elf(src):
            for lib in shared_libraries(src):
                real = os.path.realpath(lib)
                if lib not in self.entries:
                    self.add_file(real, lib, with_libraries=False)

    def add_link(self, dest, target):
        self.add_dirs(dest)
        self.entries[dest] = ("link", target)

    def add_tree(self, src, dest):
        if not os.path.isdir(src):
            sys.exit(f"oci-image: --tree {src}: no such directory")
        for root, _dirs, files in os.walk(src):
            for name in files:
                path = os.path.join(root, name)
                rel = os.path.relpath(path, src)
                target = os.path.join(dest, rel)
                if os.path.islink(path):
                    self.add_link(target, os.readlink(path))
                else:
                    self.add_file(path, target)

    def tar(self):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for dest in sorted(self.entries):
                kind, src = self.entries[dest]
                info = tarfile.TarInfo(dest.lstrip("/"))
                info.uid = info.gid = 0
                info.uname = info.gname = "root"
                info.mtime = 0
                if kind == "dir":
                    info.type = tarfile.DIRTYPE
                    info.mode = 0o1777 if dest == "/tmp" else 0o755
                    tar.addfile(info)
                elif kind == "link":
                    info.type = tarfile.SYMTYPE
                    info.linkname = src
                    info.mode = 0o777
                    tar.addfile(info)
                else:
                    info.size = os.path.getsize(src)
                    info.mode = 0o755 if os.access(src, os.X_OK) else 0o644
                    with open(src, "rb") as f:
                        tar.addfile(info, f)
        return buf.getvalue()


def blob(layout, data):
    digest = hashlib.sha256(data).hexdigest()
    layout[f"blobs/sha256/{digest}"] = data
    return f"sha256:{digest}", len(data)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--name", required=True, help="full reference, e.g. ghcr.io/o/app:tag")
    p.add_argument("--out", required=True, help="the archive to write")
    p.add_argument("--entrypoint", action="append", default=[])
    p.add_argument("--cmd", action="append", default=[])
    p.add_argument("--user", default="")
    p.add_argument("--env", action="append", default=[])
    p.add_argument("--file", action="append", default=[], metavar="SRC=DEST")
    p.add_argument("--link", action="append", default=[], metavar="DEST=TARGET")
    p.add_argument("--tree", action="append", default=[], metavar="SRC=DEST")
    p.add_argument("--text", action="append", default=[], metavar="DEST=CONTENT")
    args = p.parse_args()

    layer = Layer()
    layer.entries["/tmp"] = ("dir", None)
    for spec in args.file:
        src, dest = spec.split("=", 1)
        layer.add_file(src, dest)
    for spec in args.tree:
        src, dest = spec.split("=", 1)
        layer.add_tree(src, dest)
    for spec in args.link:
        dest, target = spec.split("=", 1)
        layer.add_link(dest, target)
    texts = []
    for spec in args.text:
        dest, content = spec.split("=", 1)
        path = os.path.join(os.path.dirname(args.out), "." + dest.replace("/", "_"))
        with open(path, "w") as f:
            f.write(content.replace("\\n", "\n"))
        texts.append(path)
        layer.add_file(path, dest, with_libraries=False)

    layout = {}
    layer_digest, layer_size = blob(layout, layer.tar())
    for path in texts:
        os.unlink(path)
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Entrypoint": args.entrypoint or None,
            "Cmd": args.cmd or None,
            "User": args.user,
            "Env": ["PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"] + args.env,
        },
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    }
    config_digest, config_size = blob(layout, json.dumps(config, sort_keys=True).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config_size,
        },
        "layers": [
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": layer_digest,
                "size": layer_size,
            }
        ],
    }
    manifest_digest, manifest_size = blob(layout, json.dumps(manifest, sort_keys=True).encode())
    tag = args.name.rsplit(":", 1)[1] if ":" in args.name.rsplit("/", 1)[-1] else "latest"
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest_digest,
                "size": manifest_size,
                "annotations": {
                    "io.containerd.image.name": args.name,
                    "org.opencontainers.image.ref.name": tag,
                },
            }
        ],
    }
    layout["index.json"] = json.dumps(index, sort_keys=True).encode()
    layout["oci-layout"] = b'{"imageLayoutVersion":"1.0.0"}'

    tmp = args.out + ".partial"
    with tarfile.open(tmp, "w") as tar:
        for name in ["oci-layout", "index.json"] + sorted(k for k in layout if k.startswith("blobs/")):
            data = layout[name]
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    os.replace(tmp, args.out)
    print(f"{args.name} {manifest_digest} layer {layer_size // 1024} KiB", file=sys.stderr)


if __name__ == "__main__":
    main()
