"""Where ANI network files are found, and the one-time install of ANI-1ccx's.

The torchani 2.2.4 wheel ships ANI-1x's NeuroChem files but ANI-1ccx's as empty
files, and newer torchani ships none. The torchani 2.0 wheel on the package
index holds ANI-1ccx's in the same layout, so ``ecd-chem fetch-models`` (or
:func:`fetch_ani_files`) takes them from that wheel once, at set-up time, into
:func:`ani_data_dir`. Models are then built offline; nothing is downloaded while
a calculation runs.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

from ..structures import remove_stale_temps, temp_prefix

#: the wheel that holds ANI-1ccx's files, and its SHA-256 (PyPI's file)
SOURCE_WHEEL = "torchani==2.0"
SOURCE_SHA256 = "87db70affc847c3aa26081607166580a6e6b01f33e09218e2c5b26f66b45ed89"
#: model name -> (resource folder, networks in its ensemble)
MODELS = {"ani1x": ("ani-1x_8x", 8), "ani1ccx": ("ani-1ccx_8x", 8)}
#: the models whose files are taken from that wheel
FETCHED = ("ani1ccx",)
CONSTANTS = "rHCNO-5.2R_16-3.5A_a4-8.params"


def ani_data_dir() -> str:
    """``$ECD_CHEM_ANI_DIR``, else ``<sys.prefix>/share/ecd_chem/ani`` (inside
    the virtual environment, so it goes when the environment goes)."""
    return os.environ.get("ECD_CHEM_ANI_DIR") or os.path.join(sys.prefix, "share", "ecd_chem",
                                                              "ani")


def required_files(root: str, size: int) -> list[str]:
    """The files a NeuroChem ensemble of ``size`` networks is built from."""
    paths = [os.path.join(root, CONSTANTS), os.path.join(root, "sae_linfit.dat")]
    for k in range(size):
        networks = os.path.join(root, f"train{k}", "networks")
        paths += [os.path.join(networks, f"ANN-{e}.nnf") for e in "HCNO"]
    return paths


def missing_files(root: str, size: int) -> list[str]:
    """Required files under ``root`` that are absent or empty."""
    return [p for p in required_files(root, size)
            if not os.path.isfile(p) or os.path.getsize(p) == 0]


def installed(target: str | None = None) -> bool:
    """Whether every fetched model's files are complete in ``target``."""
    target = target or ani_data_dir()
    return not any(missing_files(os.path.join(target, MODELS[m][0]), MODELS[m][1])
                   for m in FETCHED)


def install_from_wheel(wheel: str, target: str | None = None, models=FETCHED) -> list[str]:
    """Extract the folders of ``models`` from a torchani wheel into ``target``
    (default :func:`ani_data_dir`); each folder appears whole or not at all.
    Returns the folders written."""
    target = target or ani_data_dir()
    os.makedirs(target, exist_ok=True)
    written = []
    with zipfile.ZipFile(wheel) as archive:
        for folder in (MODELS[m][0] for m in models):
            prefix = f"torchani/resources/{folder}/"
            members = [m for m in archive.infolist()
                       if m.filename.startswith(prefix) and not m.is_dir() and m.file_size > 0]
            if not members:
                raise ValueError(f"{os.path.basename(wheel)} holds no files for {folder}")
            remove_stale_temps(target, folder)      # a killed install's half-written folder
            staging = tempfile.mkdtemp(dir=target, prefix=temp_prefix(folder))
            try:
                for member in members:
                    path = os.path.join(staging, member.filename[len(prefix):])
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                    with archive.open(member) as src, open(path, "wb") as dst:
                        shutil.copyfileobj(src, dst)
                final = os.path.join(target, folder)
                if os.path.exists(final):
                    shutil.rmtree(final)
                os.rename(staging, final)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            written.append(final)
    return written


def fetch_ani_files(target: str | None = None, wheel: str | None = None) -> list[str]:
    """Install ANI-1ccx's network files into ``target`` from the torchani 2.0
    wheel: ``wheel`` (a path, for machines without the index) or downloaded by
    pip from the configured package index. The wheel's SHA-256 must match."""
    with tempfile.TemporaryDirectory() as tmp:
        if wheel is None:
            command = [sys.executable, "-m", "pip", "download", SOURCE_WHEEL, "--no-deps",
                       "--only-binary=:all:", "--dest", tmp, "--quiet"]
            run = subprocess.run(command, capture_output=True, text=True)
            wheels = [f for f in os.listdir(tmp) if f.endswith(".whl")]
            if run.returncode != 0 or len(wheels) != 1:
                reason = (run.stderr.strip().splitlines() or ["no wheel"])[-1]
                raise RuntimeError(f"could not download {SOURCE_WHEEL} from the package index: "
                                   f"{reason}")
            wheel = os.path.join(tmp, wheels[0])
        digest = hashlib.sha256()
        with open(wheel, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        if digest.hexdigest() != SOURCE_SHA256:
            raise ValueError(f"{os.path.basename(wheel)} is not the {SOURCE_WHEEL} wheel "
                             f"(SHA-256 {digest.hexdigest()[:16]}..., expected "
                             f"{SOURCE_SHA256[:16]}...)")
        return install_from_wheel(wheel, target)
