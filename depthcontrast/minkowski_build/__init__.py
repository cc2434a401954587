"""Build (or take from the cache) a MinkowskiEngine 0.5.4 wheel for this interpreter's torch: CPU-only or CUDA.

    python -m depthcontrast.minkowski_build [--cuda] [--arch-list "8.0;9.0"] [--install] [--sdist FILE]

Steps: check the tools → obtain the sdist through pip's configured index (or --sdist / the cache) → check its
sha256 → unpack and apply our patch set (patches.py) → compile with setup.py bdist_wheel → cache the wheel under a
key of (sdist sha256, patch-set hash, torch version, Python tag, flavour, arch list, compiler flags) → install.
Only the standard library and the interpreter's torch are used, so a container recipe can run it before this package
is installed.
"""
