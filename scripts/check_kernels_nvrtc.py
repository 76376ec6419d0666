"""Compile every CUDA kernel with NVRTC 12 and with NVRTC 13, as CI does (no GPU needed):

    python scripts/check_kernels_nvrtc.py           # this environment's NVRTC, then the other one
    python scripts/check_kernels_nvrtc.py --here    # this environment's NVRTC only

`pytest -m kernels` compiles the kernels with the NVRTC of the CuPy installed for
the tests (the dev extra: cupy-cuda12x and NVRTC 12). Users of the cuda13 extra
get cupy-cuda13x and NVRTC 13, which supports other architectures (no sm_70), so
the kernels and `gpunet info` are checked with that NVRTC too: in a throw-away
virtual environment under a temporary folder, holding CuPy of this
environment's version for the other CUDA major and that major's NVRTC package
(what cupy-cuda1Xx[ctk] installs for NVRTC), with this checkout on PYTHONPATH.

For each NVRTC: every module compiles, cubin and PTX, without warnings, for each
architecture the package claims that this NVRTC supports (at least one), and as
PTX for the newest architecture this NVRTC supports (what a device newer than
NVRTC runs, JIT-compiled by the driver: kernels.kernel_target), and `gpunet
info`'s kernels line says so. With the other NVRTC, tests/test_kernels.py
runs too (`pytest -m kernels`: NVRTC compiles, the kernels walked on the CPU).
Exit status 0 when all of it holds, else 1 with what failed; 2 when the other
environment cannot be installed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # gpunet from this checkout, installed or not

# CUDA major -> the packages that give CuPy and NVRTC for it (CuPy's version is appended).
CUDA_PACKAGES = {
    12: ("cupy-cuda12x", ("nvidia-cuda-nvrtc-cu12==12.*",)),
    13: ("cupy-cuda13x", ("nvidia-cuda-nvrtc==13.*",)),
}


def check_here() -> list[str]:
    """Compile every kernel with this environment's NVRTC; the failures, each one line."""
    from gpunet.backends import cuda as backend_cuda, kernels

    try:
        version, supported, archs = kernels.nvrtc_version(), kernels.supported_archs(), kernels.compile_archs()
    except kernels.KernelCompileError as exc:
        return [str(exc).splitlines()[0]]
    print(f"NVRTC {version[0]}.{version[1]} supports {', '.join(map(str, supported))}; "
          f"of the claimed {', '.join(f'sm_{arch}' for arch in kernels.ARCHS)} it compiles for "
          f"{', '.join(f'sm_{arch}' for arch in archs) or 'none'}")
    failures = [] if archs else [f"NVRTC {version[0]}.{version[1]} supports none of the claimed architectures"]
    for arch in archs:
        failures += compile_failures(kernels, arch)
    newest = max(supported)
    print(f"  and PTX of NVRTC's newest, compute_{newest}, for devices newer than this NVRTC:")
    failures += compile_failures(kernels, newest, targets=("ptx",))
    line = backend_cuda.device_report()[-1]
    print(f"gpunet info: {line}", flush=True)
    if not line.startswith("kernels: compile with NVRTC for "):
        failures.append(f"gpunet info says: {line}")
    return failures


def compile_failures(kernels, arch: int, targets=("cubin", "ptx")) -> list[str]:
    """Every module for ``arch``, as each of ``targets``: what failed or warned."""
    failures = []
    for target in targets:
        try:
            compiled = kernels.compile_for_arch(arch, target=target)
        except kernels.KernelCompileError as exc:
            failures.append(gist(exc))
            continue
        failures += [f"{c.module}.cu for sm_{arch} ({target}) warns: {w}" for c in compiled for w in c.warnings()]
        print(f"  {'sm' if target == 'cubin' else 'compute'}_{arch} {target}: "
              + ", ".join(f"{c.module}.cu {c.size} bytes" for c in compiled))
    return failures


def gist(exc: Exception) -> str:
    """A compile error in one line: what failed, and NVRTC's first error line."""
    lines = str(exc).splitlines()
    first_error = next((line.strip() for line in lines[1:] if "error" in line), "")
    return f"{lines[0]} {first_error}".strip()


def nvrtc_major() -> int | None:
    from gpunet.backends import kernels

    try:
        return kernels.nvrtc_version()[0]
    except kernels.KernelCompileError:
        return None


def cupy_version() -> str | None:
    try:
        import cupy
    except ImportError:
        return None
    return cupy.__version__


def project_dependencies() -> list[str] | None:
    """gpunet's own requirements from pyproject.toml (for the tests to import it), or None before Python 3.11."""
    try:
        import tomllib
    except ImportError:
        return None
    with open(ROOT / "pyproject.toml", "rb") as file:
        return tomllib.load(file)["project"]["dependencies"]


def check_in_new_environment(major: int, folder: Path) -> int:
    """Install CuPy and NVRTC for CUDA ``major`` into a new venv under ``folder``; check there. The exit status."""
    cupy_package, nvrtc_packages = CUDA_PACKAGES[major]
    version = cupy_version()
    packages = [f"{cupy_package}=={version}" if version else cupy_package, *nvrtc_packages]
    test_packages = project_dependencies()
    python = folder / f"cuda{major}" / "bin" / "python"
    print(f"\n== NVRTC {major}: {' '.join(packages)} in a temporary environment", flush=True)
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1"}
    install = [str(python), "-m", "pip", "install", "--quiet", *packages]
    install += ["pytest", *test_packages] if test_packages else []
    for command in ([sys.executable, "-m", "venv", str(python.parent.parent)], install):
        done = subprocess.run(command, stdout=subprocess.DEVNULL, env=env)
        if done.returncode != 0:
            print(f"error: could not set up the CUDA {major} environment: {' '.join(command)} "
                  f"exited {done.returncode}", file=sys.stderr)
            return 2
    status = subprocess.run([str(python), __file__, "--here"], env=env).returncode
    if test_packages is None:
        print("(tests/test_kernels.py not run with this NVRTC: reading pyproject.toml needs Python 3.11)")
        return status
    tests = [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "kernels", "-rs",
             "tests/test_kernels.py"]
    print(f"== {' '.join(tests[1:])}", flush=True)
    return max(status, subprocess.run(tests, cwd=ROOT, env=env).returncode and 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--here", action="store_true", help="check this environment's NVRTC only")
    args = parser.parse_args()
    print(f"== NVRTC of this environment ({sys.executable})", flush=True)
    failures = check_here()
    for failure in failures:
        print(f"FAILED: {failure}", file=sys.stderr)
    status = 1 if failures else 0
    if args.here:
        return status
    here = nvrtc_major()
    with tempfile.TemporaryDirectory(prefix="gpunet-nvrtc-") as folder:
        for major in CUDA_PACKAGES:
            if major != here:
                status = max(status, check_in_new_environment(major, Path(folder)))
    print("\nkernels: " + ("every NVRTC compiles them" if status == 0 else "NOT every NVRTC compiles them"))
    return status


if __name__ == "__main__":
    sys.exit(main())
