// recon CUDA core: tile intersection, radix sort and tile ranges (rasterizers.md a.2 steps 2-4),
// shared by every primitive. Two-pass emission (count, scan, emit) and the 64-bit
// (image | tile | depth) key layout follow gsplat's IntersectTile.cu (Apache-2.0); code our own.
// Mode 1 (two-level sort: depth once per primitive, then a stable sort on 32-bit tile keys) follows the
// idea described for Splatshop / Faster-GS in speed.md A3.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <cub/cub.cuh>
#include "footprints.h"
#include "ops.h"

namespace recon {

struct IsectParams {
    int I, N, width, height, tile, tiles_x, tiles_y, n_tiles;  // n_tiles per image
    float pixel_offset, alpha_min;
    bool exact;
};

// Visits the tiles primitive `idx` (flat image*N + n) touches; f(local_tile_id) per tile. Returns the count.
template <class P, class F>
__device__ __forceinline__ int for_each_tile(const IsectParams& p, int64_t idx, const float* __restrict__ records,
                                             const int32_t* __restrict__ rects, const float* __restrict__ opacities, F&& f) {
    const int32_t* r = rects + idx * 4;
    const int x0 = r[0], y0 = r[1], x1 = r[2], y1 = r[3];
    if (x1 <= x0 || y1 <= y0) return 0;
    const int tx0 = x0 / p.tile, ty0 = y0 / p.tile;
    const int tx1 = (x1 + p.tile - 1) / p.tile, ty1 = (y1 + p.tile - 1) / p.tile;
    if (!p.exact) {
        for (int ty = ty0; ty < ty1; ++ty)
            for (int tx = tx0; tx < tx1; ++tx) f(ty * p.tiles_x + tx);
        return (tx1 - tx0) * (ty1 - ty0);
    }
    float rec[P::R];
#pragma unroll
    for (int k = 0; k < P::R; ++k) rec[k] = records[idx * P::R + k];
    const float o = opacities[idx];
    int count = 0;
    for (int ty = ty0; ty < ty1; ++ty) {
        // pixel centres of this tile row that lie inside the primitive's rect
        const float cy0 = max(ty * p.tile, y0) + p.pixel_offset, cy1 = min(ty * p.tile + p.tile, y1) - 1 + p.pixel_offset;
        for (int tx = tx0; tx < tx1; ++tx) {
            const float cx0 = max(tx * p.tile, x0) + p.pixel_offset, cx1 = min(tx * p.tile + p.tile, x1) - 1 + p.pixel_offset;
            if (P::touches_rect(rec, o, p.alpha_min, cx0, cx1, cy0, cy1)) {
                f(ty * p.tiles_x + tx);
                ++count;
            }
        }
    }
    return count;
}

template <class P>
__global__ void count_tiles_kernel(IsectParams p, const int32_t* __restrict__ order, const float* __restrict__ records,
                                   const int32_t* __restrict__ rects, const float* __restrict__ opacities, int32_t* __restrict__ counts) {
    const int64_t j = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= (int64_t)p.I * p.N) return;
    const int64_t idx = order ? order[j] : j;
    counts[j] = for_each_tile<P>(p, idx, records, rects, opacities, [](int) {});
}

// mode 0: 64-bit keys (image << (32 + tile_bits)) | (tile << 32) | depth bits, primitive order.
template <class P>
__global__ void emit64_kernel(IsectParams p, int tile_bits, const float* __restrict__ records, const int32_t* __restrict__ rects,
                              const float* __restrict__ opacities, const float* __restrict__ depths,
                              const int32_t* __restrict__ cum_counts, int64_t* __restrict__ keys, int32_t* __restrict__ values) {
    const int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (int64_t)p.I * p.N) return;
    int64_t cur = idx == 0 ? 0 : cum_counts[idx - 1];
    const int64_t img = idx / p.N;
    const int64_t depth_bits = (int64_t)(uint32_t)__float_as_uint(depths[idx]);
    const int64_t hi = img << (32 + tile_bits);
    for_each_tile<P>(p, idx, records, rects, opacities, [&](int t) {
        keys[cur] = hi | ((int64_t)t << 32) | depth_bits;
        values[cur] = (int32_t)idx;
        ++cur;
    });
}

// mode 1: primitives visited in depth order; 32-bit key = flat tile id (image * n_tiles + tile).
template <class P>
__global__ void emit32_kernel(IsectParams p, const int32_t* __restrict__ order, const float* __restrict__ records,
                              const int32_t* __restrict__ rects, const float* __restrict__ opacities,
                              const int32_t* __restrict__ cum_counts, int32_t* __restrict__ keys, int32_t* __restrict__ values) {
    const int64_t j = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= (int64_t)p.I * p.N) return;
    int64_t cur = j == 0 ? 0 : cum_counts[j - 1];
    const int64_t idx = order[j];
    const int32_t base = (int32_t)(idx / p.N) * p.n_tiles;
    for_each_tile<P>(p, idx, records, rects, opacities, [&](int t) {
        keys[cur] = base + t;
        values[cur] = (int32_t)idx;
        ++cur;
    });
}

__global__ void depth_keys_kernel(int64_t n, const float* __restrict__ depths, uint32_t* __restrict__ keys, int32_t* __restrict__ vals) {
    const int64_t j = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= n) return;
    keys[j] = __float_as_uint(depths[j]);  // depths > 0 (culled = 0): integer order = float order
    vals[j] = (int32_t)j;
}

// Tile ranges from sorted keys: offsets[t] = first index whose flat tile >= t; offsets[total] = M.
template <bool KEY64>
__global__ void tile_offsets_kernel(int64_t M, int n_tiles_total, int n_tiles, int tile_bits, const void* __restrict__ keys_v,
                                    int32_t* __restrict__ offsets, int32_t* __restrict__ tile_ids) {
    const int64_t j = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= M) return;
    auto flat = [&](int64_t k) -> int {
        if (KEY64) {
            const int64_t key = static_cast<const int64_t*>(keys_v)[k];
            const int64_t img = key >> (32 + tile_bits);
            const int64_t t = (key >> 32) & ((1ll << tile_bits) - 1);
            return (int)(img * n_tiles + t);
        } else {
            return static_cast<const int32_t*>(keys_v)[k];
        }
    };
    const int cur = flat(j);
    tile_ids[j] = cur;
    const int prev = j == 0 ? -1 : flat(j - 1);
    for (int t = prev + 1; t <= cur; ++t) offsets[t] = (int32_t)j;
    if (j == M - 1)
        for (int t = cur + 1; t <= n_tiles_total; ++t) offsets[t] = (int32_t)M;
}

static int bits_for(int64_t n) {  // floor(log2(n)) + 1 for n >= 1
    int b = 0;
    while ((int64_t(1) << b) <= n) ++b;
    return b;
}

template <class K, class V>
static void radix_sort_pairs(at::Tensor& keys, at::Tensor& keys_alt, at::Tensor& vals, at::Tensor& vals_alt, int64_t n,
                             int end_bit, cudaStream_t stream) {
    cub::DoubleBuffer<K> dk(reinterpret_cast<K*>(keys.data_ptr()), reinterpret_cast<K*>(keys_alt.data_ptr()));
    cub::DoubleBuffer<V> dv(reinterpret_cast<V*>(vals.data_ptr()), reinterpret_cast<V*>(vals_alt.data_ptr()));
    size_t temp_bytes = 0;
    C10_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, temp_bytes, dk, dv, (int)n, 0, end_bit, stream));
    at::Tensor temp = at::empty({(int64_t)temp_bytes}, keys.options().dtype(at::kByte));
    C10_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(temp.data_ptr(), temp_bytes, dk, dv, (int)n, 0, end_bit, stream));
    if (dk.selector != 0) { std::swap(keys, keys_alt); }
    if (dv.selector != 0) { std::swap(vals, vals_alt); }
}

static at::Tensor inclusive_scan(const at::Tensor& counts, cudaStream_t stream) {
    at::Tensor out = at::empty_like(counts);
    size_t temp_bytes = 0;
    const int n = (int)counts.numel();
    C10_CUDA_CHECK(cub::DeviceScan::InclusiveSum(nullptr, temp_bytes, counts.data_ptr<int32_t>(), out.data_ptr<int32_t>(), n, stream));
    at::Tensor temp = at::empty({(int64_t)temp_bytes}, counts.options().dtype(at::kByte));
    C10_CUDA_CHECK(cub::DeviceScan::InclusiveSum(temp.data_ptr(), temp_bytes, counts.data_ptr<int32_t>(), out.data_ptr<int32_t>(), n, stream));
    return out;
}

template <class P>
static std::vector<at::Tensor> intersect_impl(const IsectParams& p, const at::Tensor& records, const at::Tensor& depths,
                                              const at::Tensor& rects, const at::Tensor& opacities, int64_t mode) {
    cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    const int64_t total = (int64_t)p.I * p.N;
    auto iopt = rects.options().dtype(at::kInt);
    const int n_tiles_total = p.I * p.n_tiles;
    const int tile_bits = bits_for(p.n_tiles);
    const int img_bits = p.I > 1 ? bits_for(p.I - 1) : 0;
    TORCH_CHECK(tile_bits + img_bits <= 31, "too many images x tiles for the sort keys");
    at::Tensor offsets = at::zeros({(int64_t)n_tiles_total + 1}, iopt);
    const unsigned blocks = (unsigned)((total + 255) / 256);
    if (total == 0) return {offsets, at::empty({0}, iopt), at::empty({0}, iopt)};

    at::Tensor order;  // mode 1: primitives in depth order
    if (mode == 1) {
        at::Tensor dk = at::empty({total}, iopt), dk_alt = at::empty({total}, iopt);
        at::Tensor dv = at::empty({total}, iopt), dv_alt = at::empty({total}, iopt);
        depth_keys_kernel<<<blocks, 256, 0, stream>>>(total, depths.data_ptr<float>(), reinterpret_cast<uint32_t*>(dk.data_ptr()),
                                                      dv.data_ptr<int32_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        radix_sort_pairs<uint32_t, int32_t>(dk, dk_alt, dv, dv_alt, total, 32, stream);
        order = dv;
    }
    at::Tensor counts = at::empty({total}, iopt);
    count_tiles_kernel<P><<<blocks, 256, 0, stream>>>(p, mode == 1 ? order.data_ptr<int32_t>() : nullptr, records.data_ptr<float>(),
                                                      rects.data_ptr<int32_t>(), opacities.data_ptr<float>(), counts.data_ptr<int32_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    at::Tensor cum = inclusive_scan(counts, stream);
    const int64_t M = cum[total - 1].item<int32_t>();  // the one host sync of the pipeline
    if (M == 0) return {offsets, at::empty({0}, iopt), at::empty({0}, iopt)};
    const unsigned mblocks = (unsigned)((M + 255) / 256);
    at::Tensor vals = at::empty({M}, iopt), vals_alt = at::empty({M}, iopt);
    at::Tensor tile_ids = at::empty({M}, iopt);
    if (mode == 1) {
        at::Tensor keys = at::empty({M}, iopt), keys_alt = at::empty({M}, iopt);
        emit32_kernel<P><<<blocks, 256, 0, stream>>>(p, order.data_ptr<int32_t>(), records.data_ptr<float>(), rects.data_ptr<int32_t>(),
                                                     opacities.data_ptr<float>(), cum.data_ptr<int32_t>(), keys.data_ptr<int32_t>(),
                                                     vals.data_ptr<int32_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        radix_sort_pairs<uint32_t, int32_t>(keys, keys_alt, vals, vals_alt, M, bits_for(n_tiles_total), stream);
        tile_offsets_kernel<false><<<mblocks, 256, 0, stream>>>(M, n_tiles_total, p.n_tiles, tile_bits, keys.data_ptr(),
                                                                offsets.data_ptr<int32_t>(), tile_ids.data_ptr<int32_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
    } else {
        auto lopt = rects.options().dtype(at::kLong);
        at::Tensor keys = at::empty({M}, lopt), keys_alt = at::empty({M}, lopt);
        emit64_kernel<P><<<blocks, 256, 0, stream>>>(p, tile_bits, records.data_ptr<float>(), rects.data_ptr<int32_t>(),
                                                     opacities.data_ptr<float>(), depths.data_ptr<float>(), cum.data_ptr<int32_t>(),
                                                     keys.data_ptr<int64_t>(), vals.data_ptr<int32_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        radix_sort_pairs<uint64_t, int32_t>(keys, keys_alt, vals, vals_alt, M, 32 + tile_bits + img_bits, stream);
        tile_offsets_kernel<true><<<mblocks, 256, 0, stream>>>(M, n_tiles_total, p.n_tiles, tile_bits, keys.data_ptr(),
                                                               offsets.data_ptr<int32_t>(), tile_ids.data_ptr<int32_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    return {offsets, vals, tile_ids};
}

std::vector<at::Tensor> intersect_tiles(int64_t footprint, const at::Tensor& records, const at::Tensor& depths,
                                        const at::Tensor& rects, const at::Tensor& opacities, int64_t width, int64_t height,
                                        int64_t tile, double pixel_offset, double alpha_min, bool exact, int64_t mode) {
    RECON_CHECK_INPUT(records); RECON_CHECK_INPUT(depths); RECON_CHECK_INPUT(rects); RECON_CHECK_INPUT(opacities);
    TORCH_CHECK(mode == 0 || mode == 1, "intersect mode must be 0 or 1");
    const c10::cuda::OptionalCUDAGuard guard(records.device());
    IsectParams p;
    p.I = (int)records.size(0); p.N = (int)records.size(1);
    p.width = (int)width; p.height = (int)height; p.tile = (int)tile;
    p.tiles_x = (int)((width + tile - 1) / tile); p.tiles_y = (int)((height + tile - 1) / tile);
    p.n_tiles = p.tiles_x * p.tiles_y;
    p.pixel_offset = (float)pixel_offset; p.alpha_min = (float)alpha_min; p.exact = exact;
#define RECON_ISECT_CASE(P, ID) \
    if (footprint == ID) return intersect_impl<P>(p, records, depths, rects, opacities, mode);
    RECON_FOR_EACH_FOOTPRINT(RECON_ISECT_CASE)
#undef RECON_ISECT_CASE
    TORCH_CHECK(false, "intersect_tiles: unknown footprint ", footprint);
    return {};
}

}  // namespace recon
