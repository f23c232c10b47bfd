"""Trim pybullet's source distribution and data for the GPU device machine (stdlib only).

The device has no pybullet and no internet: ``bench/device/prepare.sh`` carries a trimmed
source tree (to build there) and the few ``pybullet_data`` files this repo loads. Usage::

    python bench/device/pybullet_files.py src  SDIST_DIR OUT_DIR
    python bench/device/pybullet_files.py data SDIST_DIR OUT_DIR [--repo REPO]

``src`` keeps what the build reads: every file gcc reads to compile the sources of the
extensions ``setup.py`` declares on linux (``pybullet`` and ``eglRenderer``; found with
``gcc -MM`` under each extension's own flags and include dirs),
every other file of those directories (a margin for includes under other macros), the
top-level build files, and the Python packages of ``examples/pybullet/gym`` except
``pybullet_data`` (carried apart, trimmed) and ``pybullet_envs`` (9 MB, unused here). It
also makes setup.py's parallel compile honour ``PYBULLET_BUILD_JOBS`` (default: its own
``min(2 * cores, GiB of RAM)`` threads).

``data`` keeps the URDFs that ``sim_envs`` loads (every ``getDataPath() + "/..."`` in its
sources, and ``random_urdfs/NNN/`` for each mesh of the grasp catalogue in
``sim_envs/objects.py``) with every mesh, material and texture they reference, plus the
package's ``__init__.py`` (``getDataPath()``), so that the output folder is an importable
``pybullet_data`` package.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import io
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import types
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

GYM = "examples/pybullet/gym"
#: Python packages of the sdist left out of the trimmed tree (setup.py finds the rest).
DROPPED_PACKAGES = ("pybullet_data", "pybullet_envs")
#: Top-level files of the sdist that the build (or its metadata) reads.
TOP_FILES = ("setup.py", "setup.cfg", "PKG-INFO", "MANIFEST.in", "LICENSE.txt", "README.md",
             "AUTHORS.txt", "requirements.txt")
JOBS_LINE = "  N = 2 * multiprocessing.cpu_count()  # number of parallel compilations"
JOBS_PATCH = ("  N = int(os.environ.get('PYBULLET_BUILD_JOBS', '0')) or "
              "2 * multiprocessing.cpu_count()")


def setup_py_extensions(sdist: Path) -> list[SimpleNamespace]:
    """The extensions setup.py builds here (name, sources, extra_compile_args, include_dirs).

    Runs setup.py with stand-ins for setuptools / distutils that record ``Extension``
    arguments and ignore ``setup()``, so that the platform branches pick what they pick on
    this (linux) machine, as on the device.
    """
    captured: list[SimpleNamespace] = []

    def extension(name: str, sources: list[str], **kwargs: Any) -> SimpleNamespace:
        ext = SimpleNamespace(name=name, sources=list(sources),
                              extra_compile_args=list(kwargs.get("extra_compile_args", [])),
                              include_dirs=list(kwargs.get("include_dirs", [])))
        captured.append(ext)
        return ext

    stubs = {name: types.ModuleType(name) for name in (
        "setuptools", "distutils", "distutils.core", "distutils.extension", "distutils.util",
        "distutils.ccompiler")}
    stubs["setuptools"].find_packages = lambda *a, **k: []
    stubs["distutils.core"].setup = lambda **kwargs: None
    stubs["distutils.extension"].Extension = extension
    stubs["distutils.util"].get_platform = sysconfig.get_platform
    stubs["distutils.ccompiler"].CCompiler = type("CCompiler", (), {})
    for name in ("core", "extension", "util", "ccompiler"):
        setattr(stubs["distutils"], name, stubs[f"distutils.{name}"])
    saved = {name: sys.modules.get(name) for name in stubs}
    cwd = os.getcwd()
    try:
        sys.modules.update(stubs)
        os.chdir(sdist)
        with contextlib.redirect_stdout(io.StringIO()):
            code = compile((sdist / "setup.py").read_text(), "setup.py", "exec")
            exec(code, {"__file__": str(sdist / "setup.py"), "__name__": "__main__"})
    finally:
        os.chdir(cwd)
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
    if not captured:
        raise RuntimeError("setup.py declared no extension")
    return captured


def compiled_files(sdist: Path, jobs: int = 2) -> set[str]:
    """Relative paths of every file gcc reads to compile every extension's sources."""
    pyinc = sysconfig.get_paths()["include"]
    work = [(ext, source) for ext in setup_py_extensions(sdist) for source in ext.sources]

    def deps(item: tuple[SimpleNamespace, str]) -> list[str]:
        ext, source = item
        compiler = "gcc" if source.endswith(".c") else "g++"
        cmd = [compiler, "-MM", *ext.extra_compile_args,
               *[f"-I{d}" for d in ext.include_dirs], f"-I{pyinc}", source]
        result = subprocess.run(cmd, cwd=sdist, capture_output=True, text=True)
        if result.returncode:
            raise RuntimeError(f"gcc -MM {source} failed:\n{result.stderr[-2000:]}")
        return result.stdout.replace("\\\n", " ").split(":", 1)[1].split()

    needed: set[str] = set()
    with ThreadPoolExecutor(jobs) as pool:
        for paths in pool.map(deps, work):
            needed.update(os.path.normpath(p) for p in paths if not os.path.isabs(p))
    return needed


def trim_src(sdist: Path, out: Path) -> None:
    needed = compiled_files(sdist)
    keep = {f for f in TOP_FILES if (sdist / f).is_file()}
    for folder in {os.path.dirname(p) for p in needed}:
        keep.update(str(p.relative_to(sdist)) for p in (sdist / folder).iterdir() if p.is_file())
    for path in (sdist / GYM).rglob("*"):
        rel = path.relative_to(sdist / GYM)
        if path.is_file() and rel.parts[0] not in DROPPED_PACKAGES:
            keep.add(f"{GYM}/{rel}")
    if out.exists():
        shutil.rmtree(out)
    for rel in sorted(keep):
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(sdist / rel, out / rel)
    setup_py = (out / "setup.py").read_text()
    if JOBS_LINE not in setup_py:
        raise RuntimeError("setup.py changed: cannot patch its parallel-compile job count")
    (out / "setup.py").write_text(setup_py.replace(JOBS_LINE, JOBS_PATCH))
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"pybullet-src: {len(keep)} files ({len(needed)} read by gcc), {size / 2**20:.1f} MiB")


# ---------------------------------------------------------------------------------- data

def data_roots(repo: Path) -> list[str]:
    """pybullet_data-relative files sim_envs loads: URDFs and catalogue mesh folders."""
    roots: set[str] = set()
    for py in (repo / "sim_envs").rglob("*.py"):
        roots.update(re.findall(r'getDataPath\(\)\s*\+\s*"/([^"]+)"', py.read_text()))
    tree = ast.parse((repo / "sim_envs" / "objects.py").read_text())
    numbers = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                and node.func.id == "_meshes"):
            numbers += ast.literal_eval(node.args[0]).split()
    if not numbers:
        raise RuntimeError("found no _meshes(...) catalogue in sim_envs/objects.py")
    roots.update(f"random_urdfs/{n}/{n}.urdf" for n in numbers)
    return sorted(roots)


def references(path: Path) -> list[str]:
    """Files (relative to ``path``'s folder) a URDF, OBJ or MTL file names."""
    text = path.read_text(errors="replace")
    suffix = path.suffix.lower()
    if suffix in (".urdf", ".sdf", ".xml"):
        return re.findall(r'filename\s*=\s*"([^"]+)"', text)
    if suffix == ".obj":
        return re.findall(r"^\s*mtllib\s+(.+?)\s*$", text, flags=re.MULTILINE)
    if suffix == ".mtl":
        refs = re.findall(r"^\s*(?:map_\w+|bump|disp|decal|refl)\s+(.+?)\s*$", text,
                          flags=re.MULTILINE)
        return [r.split()[-1] for r in refs]  # options such as "-bm 1.0" come first
    return []


def trim_data(sdist: Path, out: Path, repo: Path) -> None:
    data = sdist / GYM / "pybullet_data"
    todo = data_roots(repo)
    keep: set[str] = {"__init__.py"}
    for root in todo:  # a whole catalogue folder travels (urdf, obj, mtl)
        if root.startswith("random_urdfs/"):
            folder = data / os.path.dirname(root)
            keep.update(str(p.relative_to(data)) for p in folder.iterdir() if p.is_file())
    missing, seen = [], set()
    while todo:  # follow URDF -> mesh -> mtllib -> texture references
        rel = todo.pop()
        if rel in seen:
            continue
        seen.add(rel)
        path = data / rel
        if not path.is_file():
            missing.append(rel)
            continue
        keep.add(rel)
        for ref in references(path):
            ref = ref.removeprefix("package://")
            todo.append(os.path.normpath(os.path.join(os.path.dirname(rel), ref)))
    if out.exists():
        shutil.rmtree(out)
    for rel in sorted(keep):
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(data / rel, out / rel)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"pybullet_data: {len(keep)} files, {size / 2**20:.1f} MiB")
    if missing:  # e.g. plane.mtl's cube.tga: absent from pybullet's own data too
        print(f"pybullet_data: {len(missing)} references absent from pybullet's own data "
              f"(it warns, as with the full data), e.g. {sorted(missing)[:2]}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=("src", "data"))
    parser.add_argument("sdist", type=Path, help="unpacked pybullet sdist")
    parser.add_argument("out", type=Path)
    parser.add_argument("--repo", type=Path, default=Path(__file__).resolve().parents[2])
    args = parser.parse_args(argv)
    if args.what == "src":
        trim_src(args.sdist.resolve(), args.out.resolve())
    else:
        trim_data(args.sdist.resolve(), args.out.resolve(), args.repo.resolve())


if __name__ == "__main__":
    sys.exit(main())
