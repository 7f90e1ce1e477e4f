// recon CUDA core: the ONE tile compositor shared by every splat primitive (rasterizers.md a.2 steps
// 5 and 6), templated on a footprint policy P (see footprint_gaussian.cuh) and the channel count C.
//
// Structure follows gsplat's RasterizeToPixels3DGS{Fwd,Bwd}.cu (Apache-2.0): one block per
// (image, tile), one thread per pixel, records streamed through shared memory in batches, block early
// exit with __syncthreads_count, backward from each warp's last contributor with warp reductions
// before the global atomics. The code is our own and is primitive-agnostic.
#pragma once
#include <cuda_runtime.h>
#include <cstdint>
#include <type_traits>

namespace recon {

// Per-pixel colour hook (policy trait). A policy that declares `static constexpr int kColorVerts = V` (V > 1)
// takes colours [I, N, V, C] and provides color_weights(rec, cache, b[V]) and
// color_weights_vjp(rec, px, py, cache, v_b[V], v_rec): the colour of a sample is sum_v b_v c_v (Triangle
// Splatting+ barycentric colours). Policies without it (Gaussian, convex) have one colour per primitive and
// compile, through `if constexpr`, to exactly the code they had before the hook existed.
template <class P, class = void>
struct ColorVerts { static constexpr int value = 1; };
template <class P>
struct ColorVerts<P, std::void_t<decltype(P::kColorVerts)>> { static constexpr int value = P::kColorVerts; };

struct CompositeParams {
    int I, N;                   // images, primitives per image
    int width, height, tile, tiles_x, tiles_y;
    int n_isects;
    float pixel_offset, alpha_min, alpha_max, t_min;
};

// ------------------------------------------------------------------------------------------------
// Forward: front to back. Outputs colour [I,H,W,C] (+ T_end * bg), alpha [I,H,W], last contributing
// index into flatten_ids [I,H,W] (-1 if none), contributors per pixel, optionally the max over pixels of
// alpha*T per primitive (one global atomicMax per contributing pair, so opt-in).
// tile_offsets has I*tiles + 1 entries: the list of flat tile t is [off[t], off[t+1]).
// ------------------------------------------------------------------------------------------------
template <class P, int C>
__global__ void composite_fwd_kernel(CompositeParams p, const float* __restrict__ records, const float* __restrict__ opacities,
                                     const float* __restrict__ colors, const float* __restrict__ background,
                                     const int32_t* __restrict__ tile_offsets, const int32_t* __restrict__ flatten_ids,
                                     float* __restrict__ out_colors, float* __restrict__ out_alphas, int32_t* __restrict__ last_ids,
                                     int32_t* __restrict__ n_contrib, float* __restrict__ max_weight) {
    extern __shared__ float smem[];
    const int block_size = blockDim.x * blockDim.y;
    int32_t* s_id = reinterpret_cast<int32_t*>(smem);
    float* s_op = smem + block_size;
    float* s_rec = s_op + block_size;

    const int img = blockIdx.z, ty = blockIdx.y, tx = blockIdx.x;
    const int tr = threadIdx.y * blockDim.x + threadIdx.x;
    const int pix_x = tx * p.tile + threadIdx.x, pix_y = ty * p.tile + threadIdx.y;
    const bool inside = pix_x < p.width && pix_y < p.height;
    const float px = pix_x + p.pixel_offset, py = pix_y + p.pixel_offset;

    const int tile_id = (img * p.tiles_y + ty) * p.tiles_x + tx;
    const int range_start = tile_offsets[tile_id];
    const int range_end = tile_offsets[tile_id + 1];
    const int n_batches = (range_end - range_start + block_size - 1) / block_size;

    bool done = !inside;
    float T = 1.f;
    int cur_idx = -1, count = 0;
    float acc[C];
#pragma unroll
    for (int k = 0; k < C; ++k) acc[k] = 0.f;

    for (int b = 0; b < n_batches; ++b) {
        if (__syncthreads_count(done) >= block_size) break;
        const int batch_start = range_start + b * block_size;
        const int idx = batch_start + tr;
        if (idx < range_end) {
            const int g = flatten_ids[idx];
            s_id[tr] = g;
            s_op[tr] = opacities[g];
#pragma unroll
            for (int r = 0; r < P::R; ++r) s_rec[tr * P::R + r] = records[(int64_t)g * P::R + r];
        }
        __syncthreads();
        const int batch_size = min(block_size, range_end - batch_start);
        for (int t = 0; t < batch_size && !done; ++t) {
            float w;
            typename P::Cache cache;
            if (!P::eval(s_rec + t * P::R, px, py, w, cache)) continue;
            const float alpha = fminf(p.alpha_max, s_op[t] * w);
            if (alpha < p.alpha_min) continue;
            const float next_T = T * (1.f - alpha);
            if (next_T <= p.t_min) { done = true; break; }  // exclusive stop (gsplat semantics)
            const float vis = alpha * T;
            const int g = s_id[t];
            if constexpr (ColorVerts<P>::value == 1) {
                const float* c = colors + (int64_t)g * C;
#pragma unroll
                for (int k = 0; k < C; ++k) acc[k] += c[k] * vis;
            } else {
                constexpr int V = ColorVerts<P>::value;
                float bw[V];
                P::color_weights(s_rec + t * P::R, cache, bw);
                const float* c = colors + (int64_t)g * V * C;
#pragma unroll
                for (int k = 0; k < C; ++k) {
                    float ck = 0.f;
#pragma unroll
                    for (int v = 0; v < V; ++v) ck += bw[v] * c[v * C + k];
                    acc[k] += ck * vis;
                }
            }
            if (max_weight != nullptr) atomicMax(reinterpret_cast<int*>(max_weight) + g, __float_as_int(vis));
            cur_idx = batch_start + t;
            ++count;
            T = next_T;
        }
    }
    if (inside) {
        const int64_t pix = ((int64_t)img * p.height + pix_y) * p.width + pix_x;
        out_alphas[pix] = 1.f - T;
        last_ids[pix] = cur_idx;
        n_contrib[pix] = count;
#pragma unroll
        for (int k = 0; k < C; ++k) out_colors[pix * C + k] = acc[k] + (background ? T * background[img * C + k] : 0.f);
    }
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

constexpr int next_pow2(int x) { return x <= 1 ? 1 : 2 * next_pow2((x + 1) / 2); }
constexpr int ilog2(int x) { return x <= 1 ? 0 : 1 + ilog2(x / 2); }

// Warp reduce-scatter of N (power of two) per-lane values: at each butterfly level a lane keeps one half
// of its fields and trades the other half with its partner, so the whole warp needs N/2 + N/4 + ... + 1
// (+ plain levels once one field is left) shuffles instead of 5 N for N separate warp sums, and the
// totals end spread over the lanes (which then issue their atomics in parallel). After the call lane l
// holds the warp totals of fields [field_base(l), field_base(l) + max(1, N/32)).
template <int N, int O>
struct WarpReduceScatter {
    __device__ __forceinline__ static void run(float* v, int lane) {
        if constexpr (O == 0) {
            return;
        } else if constexpr (N > 1) {
            constexpr int H = N / 2;
            const bool upper = (lane & O) != 0;
#pragma unroll
            for (int k = 0; k < H; ++k) {
                const float send = upper ? v[k] : v[k + H];
                const float keep = upper ? v[k + H] : v[k];
                v[k] = keep + __shfl_xor_sync(0xffffffffu, send, O);
            }
            WarpReduceScatter<H, O / 2>::run(v, lane);
        } else {
            v[0] += __shfl_xor_sync(0xffffffffu, v[0], O);
            WarpReduceScatter<1, O / 2>::run(v, lane);
        }
    }
};

// ------------------------------------------------------------------------------------------------
// Backward: back to front from each warp's last contributor, recovering T_k = T_{k+1} / (1 - alpha_k)
// from T_end and keeping the suffix S = sum_{j>k} c_j alpha_j T_j (rasterizers.md a.2 step 6).
// Gradients to records [I,N,R], opacities [I,N] and colours [I,N,C] (all must be zero-initialised).
// ------------------------------------------------------------------------------------------------
template <class P, int C, int CV = ColorVerts<P>::value>
__global__ void composite_bwd_kernel(CompositeParams p, const float* __restrict__ records, const float* __restrict__ opacities,
                                     const float* __restrict__ colors, const float* __restrict__ background,
                                     const int32_t* __restrict__ tile_offsets, const int32_t* __restrict__ flatten_ids,
                                     const float* __restrict__ render_alphas, const int32_t* __restrict__ last_ids,
                                     const float* __restrict__ v_out_colors, const float* __restrict__ v_out_alphas,
                                     float* __restrict__ v_records, float* __restrict__ v_opacities, float* __restrict__ v_colors) {
    extern __shared__ float smem[];
    const int block_size = blockDim.x * blockDim.y;
    int32_t* s_id = reinterpret_cast<int32_t*>(smem);
    float* s_op = smem + block_size;
    float* s_rec = s_op + block_size;
    float* s_col = s_rec + block_size * P::R;

    const int img = blockIdx.z, ty = blockIdx.y, tx = blockIdx.x;
    const int tr = threadIdx.y * blockDim.x + threadIdx.x;
    const int lane = tr & 31;
    const int pix_x = tx * p.tile + threadIdx.x, pix_y = ty * p.tile + threadIdx.y;
    const bool inside = pix_x < p.width && pix_y < p.height;
    const float px = pix_x + p.pixel_offset, py = pix_y + p.pixel_offset;

    const int tile_id = (img * p.tiles_y + ty) * p.tiles_x + tx;
    const int range_start = tile_offsets[tile_id];
    const int range_end = tile_offsets[tile_id + 1];
    const int n_batches = (range_end - range_start + block_size - 1) / block_size;

    const int64_t pix = inside ? ((int64_t)img * p.height + pix_y) * p.width + pix_x : 0;
    const float T_final = inside ? 1.f - render_alphas[pix] : 1.f;
    float T = T_final;
    const int bin_final = inside ? last_ids[pix] : -1;
    float v_C[C], S[C];
    float bg_dot = 0.f;
#pragma unroll
    for (int k = 0; k < C; ++k) {
        v_C[k] = inside ? v_out_colors[pix * C + k] : 0.f;
        S[k] = 0.f;
        if (background) bg_dot += background[img * C + k] * v_C[k];
    }
    const float v_A = inside ? v_out_alphas[pix] : 0.f;

    int warp_bin_final = bin_final;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) warp_bin_final = max(warp_bin_final, __shfl_xor_sync(0xffffffffu, warp_bin_final, o));

    for (int b = 0; b < n_batches; ++b) {
        // entries processed in this batch: [batch_end - batch_size + 1, batch_end], shared slot t <-> batch_end - t
        const int batch_end = range_end - 1 - b * block_size;
        const int batch_size = min(block_size, batch_end + 1 - range_start);
        __syncthreads();
        const int idx = batch_end - tr;
        if (idx >= range_start) {
            const int g = flatten_ids[idx];
            s_id[tr] = g;
            s_op[tr] = opacities[g];
#pragma unroll
            for (int r = 0; r < P::R; ++r) s_rec[tr * P::R + r] = records[(int64_t)g * P::R + r];
#pragma unroll
            for (int k = 0; k < C * CV; ++k) s_col[tr * C * CV + k] = colors[(int64_t)g * C * CV + k];
        }
        __syncthreads();
        // skip entries behind every lane's last contributor (warp-uniform start)
        for (int t = max(0, batch_end - warp_bin_final); t < batch_size; ++t) {
            bool valid = inside && (batch_end - t <= bin_final);
            float w = 0.f, alpha = 0.f;
            typename P::Cache cache;
            const float* rec = s_rec + t * P::R;
            const float op = s_op[t];
            if (valid) {
                valid = P::eval(rec, px, py, w, cache);
                if (valid) {
                    alpha = fminf(p.alpha_max, op * w);
                    valid = alpha >= p.alpha_min;
                }
            }
            if (!__any_sync(0xffffffffu, valid)) continue;
            float v_rec[P::R], v_c[C * CV];
            float v_op = 0.f;
#pragma unroll
            for (int r = 0; r < P::R; ++r) v_rec[r] = 0.f;
#pragma unroll
            for (int k = 0; k < C * CV; ++k) v_c[k] = 0.f;
            if (valid) {
                const float ra = 1.f / (1.f - alpha);
                T *= ra;
                const float fac = alpha * T;
                float v_alpha = 0.f;
                if constexpr (CV == 1) {
                    const float* c = s_col + t * C;
#pragma unroll
                    for (int k = 0; k < C; ++k) {
                        v_c[k] = fac * v_C[k];
                        v_alpha += (c[k] * T - S[k] * ra) * v_C[k];
                    }
                    v_alpha += T_final * ra * (v_A - bg_dot);
                    if (op * w <= p.alpha_max) {
                        v_op = w * v_alpha;
                        P::vjp(rec, px, py, cache, w, op * v_alpha, v_rec);
                    }
#pragma unroll
                    for (int k = 0; k < C; ++k) S[k] += c[k] * fac;
                } else {
                    // colour at this pixel = sum_v b_v c_v; its gradient reaches c_v and, through b, the record
                    const float* c = s_col + t * C * CV;
                    float bw[CV], v_bw[CV];
                    P::color_weights(rec, cache, bw);
#pragma unroll
                    for (int v = 0; v < CV; ++v) v_bw[v] = 0.f;
#pragma unroll
                    for (int k = 0; k < C; ++k) {
                        float ck = 0.f;
#pragma unroll
                        for (int v = 0; v < CV; ++v) {
                            ck += bw[v] * c[v * C + k];
                            v_c[v * C + k] = bw[v] * fac * v_C[k];
                            v_bw[v] += c[v * C + k] * fac * v_C[k];
                        }
                        v_alpha += (ck * T - S[k] * ra) * v_C[k];
                        S[k] += ck * fac;
                    }
                    v_alpha += T_final * ra * (v_A - bg_dot);
                    if (op * w <= p.alpha_max) {
                        v_op = w * v_alpha;
                        P::vjp(rec, px, py, cache, w, op * v_alpha, v_rec);
                    }
                    P::color_weights_vjp(rec, px, py, cache, v_bw, v_rec);
                }
            }
            // one reduce-scatter over all F gradient fields, then up to F lanes issue one atomic each
            constexpr int F = P::R + 1 + C * CV;
            constexpr int NP = next_pow2(F);
            float vals[NP];
#pragma unroll
            for (int r = 0; r < P::R; ++r) vals[r] = v_rec[r];
            vals[P::R] = v_op;
#pragma unroll
            for (int k = 0; k < C * CV; ++k) vals[P::R + 1 + k] = v_c[k];
#pragma unroll
            for (int f = F; f < NP; ++f) vals[f] = 0.f;
            WarpReduceScatter<NP, 16>::run(vals, lane);
            const int64_t g = s_id[t];
            auto emit = [&](int f, float v) {
                if (f < P::R) atomicAdd(v_records + g * P::R + f, v);
                else if (f == P::R) atomicAdd(v_opacities + g, v);
                else if (f < F) atomicAdd(v_colors + g * C * CV + (f - P::R - 1), v);
            };
            if constexpr (NP <= 32) {
                constexpr int SH = 5 - ilog2(NP);  // 2^SH lanes hold each total
                if ((lane & ((1 << SH) - 1)) == 0) emit(lane >> SH, vals[0]);
            } else {
                constexpr int PER = NP / 32;
#pragma unroll
                for (int j = 0; j < PER; ++j) emit(lane * PER + j, vals[j]);
            }
        }
    }
}

}  // namespace recon
