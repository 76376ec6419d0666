"""Print an OPENBLAS_CORETYPE setting that makes every loaded OpenBLAS use another kernel, for CI.

Prints "SETTING KERNELS_NOW KERNELS_THEN" (SETTING is "unset" where the environment's
setting is to be removed), or nothing where no setting changes the kernel (no OpenBLAS,
or not x86-64). The kernel is what threadpoolctl reports: NumPy's and SciPy's OpenBLAS
are separate libraries, and a setting counts only if it changes both.
"""
import json, os, subprocess, sys

PROBE = ("import json, numpy, scipy.linalg.cython_blas\n"
         "from threadpoolctl import threadpool_info\n"
         "print(json.dumps({i['filepath']: i.get('architecture') for i in threadpool_info()"
         " if i.get('internal_api') == 'openblas'}))")


def kernels(coretype):
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_CORETYPE"}
    if coretype is not None:
        env["OPENBLAS_CORETYPE"] = coretype
    done = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True)
    return json.loads(done.stdout) if done.returncode == 0 else {}


now = kernels(os.environ.get("OPENBLAS_CORETYPE"))
# Unset first where it is set; then AVX2, AVX-512 and AVX kernels (x86-64; elsewhere none may change).
for coretype in ([None] if "OPENBLAS_CORETYPE" in os.environ else []) + ["Haswell", "SkylakeX", "Sandybridge"]:
    then = kernels(coretype)
    if now and then.keys() == now.keys() and all(then[lib] != now[lib] for lib in now):
        print("unset" if coretype is None else coretype, ",".join(sorted(set(map(str, now.values())))),
              ",".join(sorted(set(map(str, then.values())))))
        break
