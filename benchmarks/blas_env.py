"""The BLAS setting a benchmark measures under: a user's, unless asked otherwise.

Imported as `blas_env` by the scripts beside it, before anything that loads NumPy (OpenBLAS
reads its environment once, when it loads):

    import blas_env  # noqa: F401  (first: it settles the environment NumPy's OpenBLAS loads with)
    import numpy as np

The development machines set OPENBLAS_CORETYPE (Haswell) and OPENBLAS_L2_SIZE (512), which
pin OpenBLAS's kernels and its blocking; a user's machine sets neither, and OpenBLAS then
picks the kernels of the CPU it finds (SkylakeX where there is AVX-512). So this module
removes both from its own process's environment, and so from the subprocesses that process
starts, unless ``--keep-blas-env`` is on the command line (to compare with the development
machines' setting). Only benchmarks import it: tests and CI keep the environment as they
find it.

`add_argument(parser)` declares the flag in a script's --help; `describe()` says, for the
top of a benchmark's output, the CPU's vector extensions, the BLAS kernel in use (from
threadpoolctl, when it is installed) and what was done with the two variables.
"""
from __future__ import annotations

import os
import platform
import sys

#: the development machines' OpenBLAS settings; a user's machine has neither
VARIABLES = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
FLAG = "--keep-blas-env"
HELP = "keep OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE as set (default: unset in this process, as on a user's machine)"

#: True: the variables were left as found
KEEP = FLAG in sys.argv
#: NumPy was loaded before this module: too late for an unset to reach OpenBLAS
TOO_LATE = "numpy" in sys.modules
#: the variables this module removed, with the values they had
REMOVED = {} if KEEP else {name: os.environ.pop(name) for name in VARIABLES if name in os.environ}

#: the vector extensions worth naming, as /proc/cpuinfo spells them (x86 "flags", Arm "Features")
EXTENSIONS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl",
              "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "asimd", "sve", "sve2")


def add_argument(parser) -> None:
    """Declare --keep-blas-env on an argparse parser (this module has read it already, from sys.argv)."""
    parser.add_argument(FLAG, action="store_true", help=HELP)


def vector_extensions() -> str:
    """The CPU's vector extensions among EXTENSIONS, from /proc/cpuinfo, e.g. "avx2 fma avx512f ..."."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    present = set(value.split())
                    return " ".join(e for e in EXTENSIONS if e in present) or "none of " + ", ".join(EXTENSIONS)
    except OSError:
        pass
    return f"unknown (no /proc/cpuinfo on {platform.system() or 'this system'})"


def blas_kernels() -> list[str]:
    """One line per BLAS library loaded in this process: its name, version, kernel and threads.

    The kernel ("architecture": OpenBLAS's core name, e.g. SkylakeX or Haswell) comes from
    threadpoolctl; without it, NumPy's build configuration names the library only."""
    import numpy as np

    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        try:
            blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
            name = f"{blas.get('name', '?')} {blas.get('version', '')}".strip()
        except Exception:  # show_config's layout is NumPy's to change
            name = "NumPy's BLAS"
        return [f"{name}: kernel unknown (pip install threadpoolctl)"]
    lines = [f"{info.get('internal_api', '?')} {info.get('version') or ''} "
             f"({os.path.basename(info.get('filepath', '?'))}): kernel {info.get('architecture', 'not reported')}, "
             f"{info.get('num_threads', '?')} threads"
             for info in threadpool_info() if info.get("user_api") == "blas"]
    return lines or ["no BLAS library found loaded (threadpoolctl)"]


def variables_line() -> str:
    """What this process did with OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE."""
    names = " / ".join(VARIABLES)
    if KEEP:
        values = ", ".join(f"{name}={os.environ[name]}" for name in VARIABLES if name in os.environ)
        return f"{names}: kept ({FLAG}): " + (values or "neither is set")
    if TOO_LATE and REMOVED:
        return f"{names}: unset too late (NumPy was loaded first; OpenBLAS kept {REMOVED})"
    if REMOVED:
        return f"{names}: unset in this process, as on a user's machine (were " + \
            ", ".join(f"{k}={v}" for k, v in REMOVED.items()) + ")"
    return f"{names}: not set, as on a user's machine"


def describe() -> str:
    """The lines a benchmark prints first: vector extensions, BLAS kernel(s), the two variables."""
    return "\n".join([f"CPU: {platform.machine()}, {os.cpu_count()} CPUs; vector extensions: {vector_extensions()}",
                      *(f"BLAS: {line}" for line in blas_kernels()), variables_line()])


def summary() -> dict:
    """describe()'s facts as data, for a benchmark's JSON output."""
    return {"vector_extensions": vector_extensions(), "blas": blas_kernels(), "kept": KEEP,
            "unset": sorted(REMOVED), "unset_too_late": TOO_LATE and bool(REMOVED),
            "values": {name: os.environ[name] for name in VARIABLES if name in os.environ} if KEEP else {}}
