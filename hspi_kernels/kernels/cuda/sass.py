"""SASS of a cubin, per kernel, on a machine without a GPU (cuobjdump + nvdisasm).

The tools come from the CUDA toolkit or from the ``nvidia-cuda-cuobjdump`` /
``nvidia-cuda-nvdisasm`` wheels (``site-packages/nvidia/cu13/bin``); ``cuobjdump --dump-sass``
runs ``nvdisasm``, which must be on PATH, so its folder is put there for the call.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path


class SassToolsMissing(RuntimeError):
    """cuobjdump or nvdisasm cannot be found."""


def _wheel_bin_dirs() -> list[Path]:
    dirs = []
    for base in {Path(p) for p in sys.path if p} | {Path(sys.prefix)}:
        nv = base / "nvidia"
        if nv.is_dir():
            dirs.extend(sorted(p for p in nv.glob("*/bin") if p.is_dir()))
            dirs.extend(sorted(p for p in nv.glob("*/*/bin") if p.is_dir()))
    return dirs


def find_tool(name: str) -> Path:
    """``cuobjdump`` / ``nvdisasm``: PATH first, then the nvidia wheels, then CUDA_HOME."""
    found = shutil.which(name)
    if found:
        return Path(found)
    candidates = _wheel_bin_dirs()
    for env in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(env):
            candidates.append(Path(os.environ[env]) / "bin")
    candidates.append(Path("/usr/local/cuda/bin"))
    for d in candidates:
        if (d / name).is_file():
            return d / name
    raise SassToolsMissing(
        f"{name} not found on PATH, in the nvidia-cuda-* wheels or in CUDA_HOME "
        "(pip install nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm)"
    )


def dump_sass(cubin_path: str | os.PathLike) -> dict[str, str]:
    """``{kernel name: SASS text}`` for every function in ``cubin_path``."""
    cuobjdump = find_tool("cuobjdump")
    nvdisasm = find_tool("nvdisasm")
    env = dict(os.environ)
    env["PATH"] = f"{nvdisasm.parent}{os.pathsep}{env.get('PATH', '')}"
    proc = subprocess.run([str(cuobjdump), "--dump-sass", str(cubin_path)], capture_output=True,
                          text=True, env=env, check=False)
    if proc.returncode == 0:
        kernels = split_functions(proc.stdout)
        if kernels:
            return kernels
    # cuobjdump refuses some bare ELF cubins (NVRTC's: "does not contain device code");
    # nvdisasm reads any cubin directly.
    direct = subprocess.run([str(nvdisasm), str(cubin_path)], capture_output=True, text=True, check=False)
    if direct.returncode != 0:
        raise RuntimeError(f"cuobjdump --dump-sass {cubin_path} failed ({proc.returncode}): {proc.stderr.strip()}; "
                           f"nvdisasm failed ({direct.returncode}): {direct.stderr.strip()}")
    return split_nvdisasm(direct.stdout)


_FUNCTION = re.compile(r"^\s*Function\s*:\s*(\S+)\s*$", re.MULTILINE)


def split_functions(text: str) -> dict[str, str]:
    """Split cuobjdump's output at its ``Function : name`` headers."""
    heads = list(_FUNCTION.finditer(text))
    return {m.group(1): text[m.end(): heads[i + 1].start() if i + 1 < len(heads) else len(text)]
            for i, m in enumerate(heads)}


_TEXT_LABEL = re.compile(r"^\.text\.(\S+):\s*$", re.MULTILINE)


def split_nvdisasm(text: str) -> dict[str, str]:
    """Split nvdisasm's output at its ``.text.<kernel>:`` labels."""
    heads = list(_TEXT_LABEL.finditer(text))
    return {m.group(1): text[m.end(): heads[i + 1].start() if i + 1 < len(heads) else len(text)]
            for i, m in enumerate(heads)}


def opcodes(sass: str) -> list[str]:
    """The instruction mnemonics of one kernel's SASS, with modifiers (``FFMA``, ``HMMA.16816.F32``)."""
    ops = []
    for line in sass.splitlines():
        m = re.search(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)", line)
        if m:
            ops.append(m.group(1))
    return ops


def has_opcode(sass: str, name: str) -> bool:
    """Whether a mnemonic (``FFMA``) appears, with or without modifiers (``FFMA.FTZ``)."""
    return any(op == name or op.startswith(name + ".") for op in opcodes(sass))
