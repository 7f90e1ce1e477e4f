// recon CUDA core: host-side helpers shared by raster_fwd.cu and raster_bwd.cu.
#pragma once
#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include "composite.cuh"
#include "footprints.h"
#include "ops.h"

namespace recon {

inline CompositeParams make_params(const at::Tensor& records, const at::Tensor& flatten_ids, int64_t width, int64_t height,
                                   int64_t tile, double pixel_offset, double alpha_min, double alpha_max, double t_min) {
    CompositeParams p;
    p.I = (int)records.size(0);
    p.N = (int)records.size(1);
    p.width = (int)width; p.height = (int)height; p.tile = (int)tile;
    p.tiles_x = (int)((width + tile - 1) / tile);
    p.tiles_y = (int)((height + tile - 1) / tile);
    p.n_isects = (int)flatten_ids.numel();
    p.pixel_offset = (float)pixel_offset; p.alpha_min = (float)alpha_min; p.alpha_max = (float)alpha_max; p.t_min = (float)t_min;
    TORCH_CHECK(tile * tile <= 1024 && (tile * tile) % 32 == 0, "tile_size^2 must be a multiple of 32 and <= 1024");
    return p;
}

template <class K>
inline void set_smem(K kernel, size_t bytes) {
    if (bytes > 48 * 1024) {
        C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
    }
}

}  // namespace recon
