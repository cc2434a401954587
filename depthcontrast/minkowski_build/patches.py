"""Our patch set for the MinkowskiEngine 0.5.4 sdist: what breaks on today's Python, compilers and CUDA 13, and the fix.

Each patch replaces an exact text a known number of times; a text not found (a changed sdist) fails the build with the
file and the patch's name. The CPU flavour needs only the Python and setup.py patches; CUDA adds the C++/CUDA ones.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

CPU, CUDA = "cpu", "cuda"
FLAVOURS = (CPU, CUDA)


class PatchError(RuntimeError):
    """A patch whose target text is not where it should be."""


@dataclass(frozen=True)
class Patch:
    """Replace `old` by `new` in `path` (relative to the sdist root), exactly `count` times; `old=""` creates it."""

    name: str
    path: str
    old: str
    new: str
    count: int = 1
    flavours: tuple[str, ...] = FLAVOURS

    def apply(self, root: Path) -> None:
        target = root / self.path
        if not self.old:
            if target.exists():
                raise PatchError(f"patch {self.name!r}: {self.path} already exists in the sdist")
            target.write_text(self.new)
            return
        if not target.is_file():
            raise PatchError(f"patch {self.name!r}: {self.path} is not in the sdist")
        text = target.read_text()
        found = text.count(self.old)
        if found != self.count:
            raise PatchError(
                f"patch {self.name!r}: expected {self.count} occurrence(s) of its target text in {self.path}, "
                f"found {found} (a different MinkowskiEngine sdist?)"
            )
        target.write_text(text.replace(self.old, self.new))


# ---------------------------------------------------------------- Python >= 3.10 and setup.py (both flavours)
_ABC = "from collections import Sequence"
PYTHON_PATCHES = [
    Patch(f"collections.abc in {name}", f"MinkowskiEngine/{name}", _ABC, "from collections.abc import Sequence")
    for name in (
        "MinkowskiCoordinateManager.py",
        "MinkowskiTensorField.py",
        "MinkowskiCommon.py",
        "utils/quantization.py",
    )
] + [
    Patch(
        "collections.abc in MinkowskiKernelGenerator.py",
        "MinkowskiEngine/MinkowskiKernelGenerator.py",
        "from collections import Sequence, namedtuple",
        "from collections import namedtuple\nfrom collections.abc import Sequence",
    ),
    # setup.py removes ./build and calls `pip uninstall` (a bare `pip`, often the wrong interpreter's) on every run
    Patch(
        "setup.py: no rm -rf build, no pip uninstall",
        "setup.py",
        'run_command("rm", "-rf", "build")\nrun_command("pip", "uninstall", "MinkowskiEngine", "-y")\n',
        "",
    ),
]

# ---------------------------------------------------------------- CUDA 13 (CCCL 3, new runtime API), gcc 12/13
_THRUST_HEADER = "src/depthcontrast_thrust.cuh"
_THRUST_INCLUDE = '#include "depthcontrast_thrust.cuh"\n'
_PREFETCH_HELPER = """#include <type_traits>

// CUDA 13 takes a cudaMemLocation and flags instead of a device id
inline cudaError_t depthcontrast_prefetch(const void *ptr, size_t bytes, int dev_id, cudaStream_t stream) {
#if CUDART_VERSION >= 13000
  cudaMemLocation location{};
  location.type = cudaMemLocationTypeDevice;
  location.id = dev_id;
  return cudaMemPrefetchAsync(ptr, bytes, location, 0, stream);
#else
  return cudaMemPrefetchAsync(ptr, bytes, dev_id, stream);
#endif
}
"""
CUDA_PATCHES = [
    # CCCL 3 no longer pulls these in transitively: every .cu/.cuh that uses thrust algorithms gets them explicitly
    Patch(
        "explicit thrust headers",
        _THRUST_HEADER,
        "",
        "#pragma once\n#ifdef __CUDACC__\n"
        + "".join(
            f"#include <thrust/{name}.h>\n"
            for name in (
                "copy",
                "count",
                "device_vector",
                "execution_policy",
                "fill",
                "functional",
                "host_vector",
                "reduce",
                "remove",
                "sequence",
                "sort",
                "transform",
                "unique",
                "iterator/counting_iterator",
                "iterator/discard_iterator",
                "iterator/transform_iterator",
            )
        )
        + "#endif\n",
        flavours=(CUDA,),
    ),
    Patch(
        "thrust headers in gpu.cuh",
        "src/gpu.cuh",
        '#include "utils.hpp"\n',
        '#include "utils.hpp"\n' + _THRUST_INCLUDE,
        flavours=(CUDA,),
    ),
    Patch(
        "thrust headers in concurrent_unordered_map.cuh",
        "src/3rdparty/concurrent_unordered_map.cuh",
        "#include <thrust/pair.h>\n",
        '#include <thrust/pair.h>\n#include "../depthcontrast_thrust.cuh"\n',
        flavours=(CUDA,),
    ),
    # the vendored cudf nvtx3.hpp clashes with the toolkit's ("nvtx3::domain is ambiguous"): ranges become no-ops
    Patch(
        "no vendored nvtx3",
        "src/3rdparty/cudf/detail/nvtx/ranges.hpp",
        '#include "nvtx3.hpp"\n',
        "",
        flavours=(CUDA,),
    ),
    Patch(
        "no nvtx3 thread_range",
        "src/3rdparty/cudf/detail/nvtx/ranges.hpp",
        "using thread_range = ::nvtx3::domain_thread_range<libcudf_domain>;\n",
        "",
        flavours=(CUDA,),
    ),
    Patch(
        "no-op CUDF_FUNC_RANGE",
        "src/3rdparty/cudf/detail/nvtx/ranges.hpp",
        "#define CUDF_FUNC_RANGE() NVTX3_FUNC_RANGE_IN(cudf::libcudf_domain)",
        "#define CUDF_FUNC_RANGE()",
        flavours=(CUDA,),
    ),
    # CCCL 3 removed thrust::unary_function
    Patch(
        "find_coordinate without thrust::unary_function",
        "src/coordinate_map_functors.cuh",
        "struct find_coordinate\n    : public thrust::unary_function<uint32_t,\n"
        "                                    thrust::pair<uint32_t, uint32_t>> {\n",
        "struct find_coordinate {\n  using argument_type = uint32_t;\n"
        "  using result_type = thrust::pair<uint32_t, uint32_t>;\n",
        flavours=(CUDA,),
    ),
    # the map's custom deleter in a shared_ptr trips std::__to_address with gcc 13 + cuda::std
    Patch(
        "hash map held by unique_ptr",
        "src/coordinate_map_gpu.cuh",
        "  std::shared_ptr<map_type> m_map;",
        "  std::unique_ptr<map_type, std::function<void(map_type *)>> m_map;",
        flavours=(CUDA,),
    ),
    Patch(
        "cudaMemPrefetchAsync helper",
        "src/3rdparty/concurrent_unordered_map.cuh",
        "#include <type_traits>\n",
        _PREFETCH_HELPER,
        flavours=(CUDA,),
    ),
    Patch(
        "cudaMemPrefetchAsync calls",
        "src/3rdparty/concurrent_unordered_map.cuh",
        "cudaMemPrefetchAsync(m_hashtbl_values",
        "depthcontrast_prefetch(m_hashtbl_values",
        count=2,
        flavours=(CUDA,),
    ),
    Patch(
        "cudaMemPrefetchAsync call on the map",
        "src/3rdparty/concurrent_unordered_map.cuh",
        "CUDA_TRY(cudaMemPrefetchAsync(this, sizeof(*this), dev_id, stream));",
        "CUDA_TRY(depthcontrast_prefetch(this, sizeof(*this), dev_id, stream));",
        flavours=(CUDA,),
    ),
    # ATen/cuda/CUDAUtils.h uses at::Tensor before it is complete
    Patch(
        "complete at::Tensor in spmm.cu",
        "src/spmm.cu",
        "#include <ATen/cuda/CUDAContext.h>\n",
        "#include <ATen/core/Tensor.h>\n#include <ATen/cuda/CUDAContext.h>\n",
        flavours=(CUDA,),
    ),
]

ALL_PATCHES = PYTHON_PATCHES + CUDA_PATCHES


def patches_for(flavour: str) -> list[Patch]:
    """The patches a `flavour` build applies, in order."""
    if flavour not in FLAVOURS:
        raise ValueError(f"unknown MinkowskiEngine build flavour {flavour!r} (one of {', '.join(FLAVOURS)})")
    return [patch for patch in ALL_PATCHES if flavour in patch.flavours]


def patch_set_hash(flavour: str) -> str:
    """sha256 over every patch a `flavour` build applies (part of the wheel cache key)."""
    digest = hashlib.sha256()
    for patch in patches_for(flavour):
        for part in (patch.name, patch.path, patch.old, patch.new, str(patch.count)):
            digest.update(part.encode())
            digest.update(b"\0")
    return digest.hexdigest()


def apply_patches(root: Path, flavour: str) -> int:
    """Apply the `flavour` patch set to the unpacked sdist at `root`; returns how many patches were applied."""
    patches = patches_for(flavour)
    for patch in patches:
        patch.apply(root)
    return len(patches)
