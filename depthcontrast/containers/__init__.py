"""Reproducible container images for the two sparse-conv stacks (docs/CONTAINERS.md).

    python -m depthcontrast.containers base                 # the CPU flavours' Debian base (mmdebstrap)
    python -m depthcontrast.containers lock                 # hash-locked requirements (uv pip compile)
    python -m depthcontrast.containers build IMAGE...       # podman, docker or buildah; IDs into the lock file
    python -m depthcontrast.containers export IMAGE...      # OCI archives
    python -m depthcontrast.containers sif IMAGE...         # Apptainer SIF files (where apptainer exists)
    python -m depthcontrast.containers smoke IMAGE...       # the smoke test inside each image
    python -m depthcontrast.containers wheels IMAGE --out D  # the locked wheels, for a machine without an engine

Images: spconv-cuda, minkowski-cuda (CUDA 13 base pinned by digest) and their CPU flavours spconv-cpu,
minkowski-cpu (a local mmdebstrap base). The recipes are docker/<stack>/Containerfile, their steps
docker/steps.sh; the workflow reads docker/images.lock.json and docker/containers.yaml (see `workflow`).
Everything here but `smoke` uses the standard library only.
"""
