"""Where results go: absolute local folders that outlive a Ray job, and optional storage URIs.

``ray job submit --working-dir .`` runs the entrypoint inside a copy of the working directory
under Ray's session folder, which Ray deletes. A relative output path there would vanish with
the job, so inside a Ray job relative output paths resolve against ``$BYZSGD_JOB_ROOT``
(default: the home directory of the user Ray runs as, e.g. ``/home/ray``, where the KubeRay
manifests mount the results volume) instead of the current directory. Everywhere else they
resolve against the current directory. Either way every path byzsgd prints is absolute.

An output given as a URI (``s3://bucket/x``, ``gs://...``, ``file:///shared/x``) is written to a
local folder first and copied there with fsspec when the run or sweep ends (the bucket's fsspec
backend, e.g. s3fs or gcsfs, must be installed).
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path

from byzsgd.registry import ConfigError

JOB_ROOT_VARIABLE = "BYZSGD_JOB_ROOT"
# Ray's job supervisor sets this in the environment of every job's entrypoint.
RAY_JOB_VARIABLE = "RAY_JOB_CONFIG_JSON_ENV_VAR"
URI_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def in_ray_job() -> bool:
    return RAY_JOB_VARIABLE in os.environ


def is_uri(path: str | Path) -> bool:
    return isinstance(path, str) and bool(URI_PATTERN.match(path))


def job_root() -> Path:
    return Path(os.environ.get(JOB_ROOT_VARIABLE) or Path.home()).expanduser().resolve()


def resolve_output(path: str | Path) -> Path:
    """An absolute local path for an output folder (see the module docstring)."""
    if is_uri(path):
        raise ConfigError(f"{path}: a storage URI is only accepted by --out")
    path = Path(path).expanduser()
    if path.is_absolute():
        return path
    base = job_root() if in_ray_job() else Path.cwd()
    return (base / path).resolve()


def location_note(path: Path) -> str | None:
    """Inside a Ray job: on which machine the results are and how to fetch them."""
    if not in_ray_job():
        return None
    host = socket.gethostname()
    return (
        f"results are on the Ray head ({host}) at {path}; fetch them with "
        f"`ray rsync-down CLUSTER.yaml {path} .`, `kubectl cp POD:{path} .` or `scp -r {host}:{path} .` "
        f"(relative output paths in a Ray job resolve against ${JOB_ROOT_VARIABLE}, default ~)"
    )


def upload(local: Path, uri: str) -> str:
    """Copy a local results folder to a storage URI with fsspec; returns the URI."""
    try:
        import fsspec
    except ImportError:  # pragma: no cover - fsspec comes with the package's dependencies
        raise ConfigError(f"--out {uri}: storage URIs need fsspec (pip install fsspec)") from None
    try:
        filesystem, root = fsspec.core.url_to_fs(uri)
    except (ImportError, ValueError) as error:
        raise ConfigError(f"--out {uri}: {error}") from None
    filesystem.makedirs(root, exist_ok=True)
    for file in sorted(p for p in local.rglob("*") if p.is_file()):
        target = f"{root.rstrip('/')}/{file.relative_to(local).as_posix()}"
        filesystem.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
        filesystem.put_file(str(file), target)
    return uri
