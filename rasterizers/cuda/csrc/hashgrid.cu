// recon CUDA core: multiresolution hash encoding (3D), forward and backward (table gradient, optional
// input gradient). Formulas: shared/notes/surfaces_4d_export.md 1.1 and 3.2 (tiny-cuda-nn conventions:
// vertex-convention level scales, +0.5 offset, dense coarse levels, CoherentPrime hash, level-local
// modulo, levels concatenated in one [rows, F] table). Our own code; the PyTorch twin is
// rasterizers/reference/hashgrid.py.
//
// Thread mapping: one thread per (point, level), level = blockIdx.y. Blocks are issued x-fastest, so at
// any time the GPU works on one or two levels and that level's table (<= 2^19 rows) stays hot in L2.
// Per-level constants live in a small device tensor `meta` [L, 4] int32 (resolution, row offset, rows,
// dense) plus `scales` [L] float32, read with uniform (broadcast) loads.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_fp16.h>
#include <torch/library.h>

#include <cstring>
#include <type_traits>

namespace recon {
namespace hashgrid {

constexpr int BLOCK = 256;
constexpr uint32_t PRIME1 = 2654435761u;
constexpr uint32_t PRIME2 = 805459861u;

template <int F>
struct Row {
    float v[F];
};

// Load one table row as F floats (vector loads: rows are F-contiguous and F-aligned).
template <int F>
__device__ __forceinline__ Row<F> load_row(const float* __restrict__ t) {
    Row<F> r;
    if constexpr (F == 1) {
        r.v[0] = __ldg(t);
    } else if constexpr (F == 2) {
        const float2 a = __ldg(reinterpret_cast<const float2*>(t));
        r.v[0] = a.x; r.v[1] = a.y;
    } else {
#pragma unroll
        for (int q = 0; q < F / 4; ++q) {
            const float4 a = __ldg(reinterpret_cast<const float4*>(t) + q);
            r.v[4 * q] = a.x; r.v[4 * q + 1] = a.y; r.v[4 * q + 2] = a.z; r.v[4 * q + 3] = a.w;
        }
    }
    return r;
}

template <int F>
__device__ __forceinline__ Row<F> load_row(const __half* __restrict__ t) {
    Row<F> r;
    if constexpr (F == 1) {
        r.v[0] = __half2float(t[0]);
    } else {
#pragma unroll
        for (int q = 0; q < F / 2; ++q) {
            const float2 a = __half22float2(reinterpret_cast<const __half2*>(t)[q]);
            r.v[2 * q] = a.x; r.v[2 * q + 1] = a.y;
        }
    }
    return r;
}

// Scatter-add g * w into one fp32 gradient row. sm_90 has vector float2/float4 atomics: one L2
// operation per row instead of F.
template <int F>
__device__ __forceinline__ void add_row(float* __restrict__ g, const float* vals, float w) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    if constexpr (F == 2) {
        atomicAdd(reinterpret_cast<float2*>(g), make_float2(w * vals[0], w * vals[1]));
        return;
    } else if constexpr (F % 4 == 0) {
#pragma unroll
        for (int q = 0; q < F / 4; ++q)
            atomicAdd(reinterpret_cast<float4*>(g) + q,
                      make_float4(w * vals[4 * q], w * vals[4 * q + 1], w * vals[4 * q + 2], w * vals[4 * q + 3]));
        return;
    }
#endif
#pragma unroll
    for (int f = 0; f < F; ++f) atomicAdd(g + f, w * vals[f]);
}

struct Cell {
    uint32_t i[3];
    float w[3];   // weight of the upper corner per dimension
    float dw[3];  // d w / d x (includes the level scale)
};

template <bool SMOOTH>
__device__ __forceinline__ Cell locate(const float* __restrict__ x, int64_t n, float scale) {
    Cell c;
#pragma unroll
    for (int k = 0; k < 3; ++k) {
        const float xk = fminf(fmaxf(x[n * 3 + k], 0.f), 1.f);
        const float p = fmaf(scale, xk, 0.5f);
        const float fl = floorf(p);
        const float fr = p - fl;
        c.i[k] = (uint32_t)(int)fl;
        if constexpr (SMOOTH) {
            c.w[k] = fr * fr * (3.f - 2.f * fr);
            c.dw[k] = 6.f * fr * (1.f - fr) * scale;
        } else {
            c.w[k] = fr;
            c.dw[k] = scale;
        }
        // the clamp passes no gradient outside [0, 1]
        const float raw = x[n * 3 + k];
        if (raw < 0.f || raw > 1.f) c.dw[k] = 0.f;
    }
    return c;
}

__device__ __forceinline__ uint32_t corner_row(const Cell& c, int corner, uint32_t res, uint32_t size, bool dense) {
    const uint32_t a = c.i[0] + (corner & 1), b = c.i[1] + ((corner >> 1) & 1), d = c.i[2] + ((corner >> 2) & 1);
    // A hashed level always has the full table, a power of two: the modulo is a mask.
    return dense ? (a + b * res + d * res * res) % size : (a ^ (b * PRIME1) ^ (d * PRIME2)) & (size - 1);
}

__device__ __forceinline__ float corner_weight(const Cell& c, int corner) {
    const float w0 = (corner & 1) ? c.w[0] : 1.f - c.w[0];
    const float w1 = (corner & 2) ? c.w[1] : 1.f - c.w[1];
    const float w2 = (corner & 4) ? c.w[2] : 1.f - c.w[2];
    return w0 * w1 * w2;
}

// x-neighbouring corners (c, c+1) often land in one aligned 16-byte group of rows: with the
// CoherentPrime hash their rows differ only in the low bits when i0 is even (row ^ 1) or i0 % 4 == 1
// (row ^ 3); in dense levels they are consecutive. One 16-byte load (or one float4 atomic) then serves
// both, cutting the L2 sector requests that bound these kernels. F == 2 only: float rows are 8 bytes
// (2 per group), half rows 4 bytes (4 per group).
template <typename T>
struct PairGroup {
    static constexpr uint32_t ROWS = 16 / (2 * sizeof(T));
};

__device__ __forceinline__ float2 word_to_float2(const float4& q, uint32_t k) {
    return k ? make_float2(q.z, q.w) : make_float2(q.x, q.y);
}

__device__ __forceinline__ float2 word_to_float2(const uint4& q, uint32_t k) {
    const uint32_t w = k == 0 ? q.x : k == 1 ? q.y : k == 2 ? q.z : q.w;
    __half2 h;
    memcpy(&h, &w, sizeof(h));
    return __half22float2(h);
}

template <typename T>
__device__ __forceinline__ void load_pair(const T* __restrict__ table, int64_t offset, uint32_t ra, uint32_t rb, Row<2>& va,
                                          Row<2>& vb) {
    constexpr uint32_t G = PairGroup<T>::ROWS;
    using Vec = std::conditional_t<std::is_same_v<T, float>, float4, uint4>;
    const Vec q = __ldg(reinterpret_cast<const Vec*>(table + (offset + (ra & ~(G - 1))) * 2));
    const float2 a = word_to_float2(q, ra & (G - 1)), b = word_to_float2(q, rb & (G - 1));
    va.v[0] = a.x; va.v[1] = a.y;
    vb.v[0] = b.x; vb.v[1] = b.y;
}

template <typename T, int F, bool SMOOTH>
__global__ void encode_fwd_kernel(int64_t N, int L, const float* __restrict__ x, const T* __restrict__ table,
                                  const float* __restrict__ scales, const int32_t* __restrict__ meta,
                                  const uint8_t* __restrict__ active, float* __restrict__ out, int64_t sn, int64_t sc,
                                  bool pair) {
    const int64_t n = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    const int level = blockIdx.y;
    if (n >= N) return;
    float* o = out + n * sn + (int64_t)level * F * sc;
    if (active && !active[level]) {
#pragma unroll
        for (int f = 0; f < F; ++f) o[f * sc] = 0.f;
        return;
    }
    const uint32_t res = (uint32_t)meta[level * 4], size = (uint32_t)meta[level * 4 + 2];
    const int64_t offset = meta[level * 4 + 1];
    const bool dense = meta[level * 4 + 3] != 0;
    const Cell c = locate<SMOOTH>(x, n, scales[level]);
    float acc[F];
#pragma unroll
    for (int f = 0; f < F; ++f) acc[f] = 0.f;
#pragma unroll
    for (int corner = 0; corner < 8; corner += 2) {
        const uint32_t ra = corner_row(c, corner, res, size, dense), rb = corner_row(c, corner + 1, res, size, dense);
        const float wa = corner_weight(c, corner), wb = corner_weight(c, corner + 1);
        Row<F> va, vb;
        bool done = false;
        if constexpr (F == 2) {
            constexpr uint32_t G = PairGroup<T>::ROWS;
            if (pair && (ra / G) == (rb / G)) {
                load_pair<T>(table, offset, ra, rb, va, vb);
                done = true;
            }
        }
        if (!done) {
            va = load_row<F>(table + (offset + ra) * F);
            vb = load_row<F>(table + (offset + rb) * F);
        }
#pragma unroll
        for (int f = 0; f < F; ++f) acc[f] = fmaf(wb, vb.v[f], fmaf(wa, va.v[f], acc[f]));
    }
    if (F == 2 && sc == 1) {
        *reinterpret_cast<float2*>(o) = make_float2(acc[0], acc[F - 1]);
    } else {
#pragma unroll
        for (int f = 0; f < F; ++f) o[f * sc] = acc[f];
    }
}

template <typename T, int F, bool SMOOTH, bool INPUT_GRAD>
__global__ void encode_bwd_kernel(int64_t N, int L, const float* __restrict__ x, const T* __restrict__ table,
                                  const float* __restrict__ scales, const int32_t* __restrict__ meta,
                                  const uint8_t* __restrict__ active, const float* __restrict__ grad_out,
                                  float* __restrict__ grad_table, float* __restrict__ grad_x, int64_t sn, int64_t sc,
                                  bool pair) {
    const int64_t n = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    const int level = blockIdx.y;
    if (n >= N) return;
    if (active && !active[level]) return;
    const uint32_t res = (uint32_t)meta[level * 4], size = (uint32_t)meta[level * 4 + 2];
    const int64_t offset = meta[level * 4 + 1];
    const bool dense = meta[level * 4 + 3] != 0;
    const Cell c = locate<SMOOTH>(x, n, scales[level]);
    float g[F];
    const float* go = grad_out + n * sn + (int64_t)level * F * sc;
    if (F == 2 && sc == 1) {
        const float2 a = *reinterpret_cast<const float2*>(go);
        g[0] = a.x; g[F - 1] = a.y;
    } else {
#pragma unroll
        for (int f = 0; f < F; ++f) g[f] = go[f * sc];
    }
    float gx[3] = {0.f, 0.f, 0.f};
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    if constexpr (F == 2 && !INPUT_GRAD) {
        // fp32 gradient rows are 8 bytes: x-neighbours in one 16-byte group share one float4 atomic
        if (pair) {
#pragma unroll
            for (int corner = 0; corner < 8; corner += 2) {
                const uint32_t ra = corner_row(c, corner, res, size, dense), rb = corner_row(c, corner + 1, res, size, dense);
                const float wa = corner_weight(c, corner), wb = corner_weight(c, corner + 1);
                if ((ra >> 1) == (rb >> 1)) {
                    float v[4] = {0.f, 0.f, 0.f, 0.f};
                    v[(ra & 1) * 2] += wa * g[0]; v[(ra & 1) * 2 + 1] += wa * g[1];
                    v[(rb & 1) * 2] += wb * g[0]; v[(rb & 1) * 2 + 1] += wb * g[1];
                    atomicAdd(reinterpret_cast<float4*>(grad_table + (offset + (ra & ~1u)) * 2), make_float4(v[0], v[1], v[2], v[3]));
                } else {
                    add_row<F>(grad_table + (offset + ra) * F, g, wa);
                    add_row<F>(grad_table + (offset + rb) * F, g, wb);
                }
            }
            return;
        }
    }
#endif
#pragma unroll
    for (int corner = 0; corner < 8; ++corner) {
        const uint32_t row = corner_row(c, corner, res, size, dense);
        add_row<F>(grad_table + (offset + row) * F, g, corner_weight(c, corner));
        if constexpr (INPUT_GRAD) {
            // d y / d x_k for this corner: the weight with dimension k's factor replaced by its derivative
            // (+dw for the upper corner, -dw for the lower one).
            const Row<F> v = load_row<F>(table + (offset + row) * F);
            float gv = 0.f;
#pragma unroll
            for (int f = 0; f < F; ++f) gv = fmaf(g[f], v.v[f], gv);
#pragma unroll
            for (int k = 0; k < 3; ++k) {
                float prod = ((corner >> k) & 1) ? c.dw[k] : -c.dw[k];
#pragma unroll
                for (int j = 0; j < 3; ++j)
                    if (j != k) prod *= ((corner >> j) & 1) ? c.w[j] : 1.f - c.w[j];
                gx[k] = fmaf(prod, gv, gx[k]);
            }
        }
    }
    if constexpr (INPUT_GRAD) {
#pragma unroll
        for (int k = 0; k < 3; ++k) atomicAdd(grad_x + n * 3 + k, gx[k]);
    }
}

static void check_inputs(const at::Tensor& x, const at::Tensor& table, const at::Tensor& scales, const at::Tensor& meta,
                         const at::Tensor& active) {
    TORCH_CHECK(x.is_cuda() && x.scalar_type() == at::kFloat && x.dim() == 2 && x.size(1) == 3 && x.is_contiguous(),
                "hashgrid: x must be a contiguous CUDA float32 [N, 3] tensor");
    TORCH_CHECK(table.is_cuda() && table.dim() == 2 && table.is_contiguous() &&
                    (table.scalar_type() == at::kFloat || table.scalar_type() == at::kHalf),
                "hashgrid: table must be a contiguous CUDA float32/float16 [rows, F] tensor");
    TORCH_CHECK(scales.is_cuda() && scales.scalar_type() == at::kFloat && scales.is_contiguous(), "hashgrid: scales must be CUDA float32");
    TORCH_CHECK(meta.is_cuda() && meta.scalar_type() == at::kInt && meta.dim() == 2 && meta.size(1) == 4 && meta.is_contiguous(),
                "hashgrid: meta must be CUDA int32 [L, 4]");
    TORCH_CHECK(scales.numel() == meta.size(0), "hashgrid: scales and meta disagree on the level count");
    TORCH_CHECK(active.numel() == 0 || (active.is_cuda() && active.scalar_type() == at::kByte && active.numel() == meta.size(0)),
                "hashgrid: active must be empty or a CUDA uint8 [L] tensor");
}

#define RECON_HASHGRID_DISPATCH(F_, SMOOTH_, ...)                                                  \
    [&] {                                                                                          \
        switch (F_) {                                                                              \
            case 1: { constexpr int F = 1; if (SMOOTH_) { constexpr bool SM = true; __VA_ARGS__(); } else { constexpr bool SM = false; __VA_ARGS__(); } break; } \
            case 2: { constexpr int F = 2; if (SMOOTH_) { constexpr bool SM = true; __VA_ARGS__(); } else { constexpr bool SM = false; __VA_ARGS__(); } break; } \
            case 4: { constexpr int F = 4; if (SMOOTH_) { constexpr bool SM = true; __VA_ARGS__(); } else { constexpr bool SM = false; __VA_ARGS__(); } break; } \
            case 8: { constexpr int F = 8; if (SMOOTH_) { constexpr bool SM = true; __VA_ARGS__(); } else { constexpr bool SM = false; __VA_ARGS__(); } break; } \
            default: TORCH_CHECK(false, "hashgrid: n_features must be 1, 2, 4 or 8, got ", F_);    \
        }                                                                                          \
    }()

// out [N, L*F] float32; feature-major storage (soa: strides (1, N)) makes the writes coalesced.
// pair: serve x-neighbouring corners with one 16-byte load when they share a row group (F == 2).
at::Tensor hashgrid_fwd(at::Tensor x, at::Tensor table, at::Tensor scales, at::Tensor meta, at::Tensor active, bool smoothstep,
                        bool soa, bool pair) {
    check_inputs(x, table, scales, meta, active);
    const at::cuda::CUDAGuard guard(x.device());
    const int64_t N = x.size(0);
    const int L = (int)meta.size(0);
    const int Fdim = (int)table.size(1);
    auto out = soa ? at::empty({(int64_t)L * Fdim, N}, x.options()).t() : at::empty({N, (int64_t)L * Fdim}, x.options());
    const int64_t sn = out.stride(0), sc = out.stride(1);
    if (N == 0) return out;
    const dim3 grid((unsigned)((N + BLOCK - 1) / BLOCK), (unsigned)L);
    auto stream = at::cuda::getCurrentCUDAStream();
    const uint8_t* act = active.numel() ? active.data_ptr<uint8_t>() : nullptr;
    pair = pair && (reinterpret_cast<uintptr_t>(table.data_ptr()) % 16 == 0);
    RECON_HASHGRID_DISPATCH(Fdim, smoothstep, [&] {
        if (table.scalar_type() == at::kHalf) {
            encode_fwd_kernel<__half, F, SM><<<grid, BLOCK, 0, stream>>>(
                N, L, x.data_ptr<float>(), reinterpret_cast<const __half*>(table.data_ptr<at::Half>()),
                scales.data_ptr<float>(), meta.data_ptr<int32_t>(), act, out.data_ptr<float>(), sn, sc, pair);
        } else {
            encode_fwd_kernel<float, F, SM><<<grid, BLOCK, 0, stream>>>(
                N, L, x.data_ptr<float>(), table.data_ptr<float>(), scales.data_ptr<float>(), meta.data_ptr<int32_t>(), act,
                out.data_ptr<float>(), sn, sc, pair);
        }
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return out;
}

// Returns (grad_table [rows, F] float32, grad_x [N, 3] float32 or an empty tensor).
std::vector<at::Tensor> hashgrid_bwd(at::Tensor x, at::Tensor table, at::Tensor scales, at::Tensor meta, at::Tensor active,
                                     bool smoothstep, at::Tensor grad_out, bool input_grad, bool pair) {
    check_inputs(x, table, scales, meta, active);
    const at::cuda::CUDAGuard guard(x.device());
    const int64_t N = x.size(0);
    const int L = (int)meta.size(0);
    const int Fdim = (int)table.size(1);
    // any strides: [N, L*F] row-major and its feature-major transpose are both read directly
    grad_out = grad_out.to(at::kFloat);
    const bool row_major = grad_out.stride(1) == 1;
    if ((!row_major && grad_out.stride(0) != 1) ||
        (row_major && ((grad_out.stride(0) & 1) || (reinterpret_cast<uintptr_t>(grad_out.data_ptr()) & 7))))
        grad_out = grad_out.contiguous();  // other strides, or rows too misaligned for the float2 loads
    const int64_t sn = grad_out.stride(0), sc = grad_out.stride(1);
    TORCH_CHECK(grad_out.size(0) == N && grad_out.size(1) == (int64_t)L * Fdim, "hashgrid: grad_out must be [N, L*F]");
    auto grad_table = at::zeros({table.size(0), table.size(1)}, table.options().dtype(at::kFloat));
    auto grad_x = input_grad ? at::zeros({N, 3}, x.options()) : at::empty({0}, x.options());
    if (N == 0) return {grad_table, grad_x};
    const dim3 grid((unsigned)((N + BLOCK - 1) / BLOCK), (unsigned)L);
    auto stream = at::cuda::getCurrentCUDAStream();
    const uint8_t* act = active.numel() ? active.data_ptr<uint8_t>() : nullptr;
    float* gx = input_grad ? grad_x.data_ptr<float>() : nullptr;
    RECON_HASHGRID_DISPATCH(Fdim, smoothstep, [&] {
        auto launch = [&](auto tptr, auto ig) {
            using T = std::remove_const_t<std::remove_pointer_t<decltype(tptr)>>;
            constexpr bool IG = decltype(ig)::value;
            encode_bwd_kernel<T, F, SM, IG><<<grid, BLOCK, 0, stream>>>(
                N, L, x.data_ptr<float>(), tptr, scales.data_ptr<float>(), meta.data_ptr<int32_t>(), act,
                grad_out.data_ptr<float>(), grad_table.data_ptr<float>(), gx, sn, sc, pair);
        };
        const bool half = table.scalar_type() == at::kHalf;
        const __half* th = half ? reinterpret_cast<const __half*>(table.data_ptr<at::Half>()) : nullptr;
        const float* tf = half ? nullptr : table.data_ptr<float>();
        if (half) {
            if (input_grad) launch(th, std::true_type{}); else launch(th, std::false_type{});
        } else {
            if (input_grad) launch(tf, std::true_type{}); else launch(tf, std::false_type{});
        }
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return {grad_table, grad_x};
}

}  // namespace hashgrid
}  // namespace recon

TORCH_LIBRARY_FRAGMENT(recon, m) {
    m.def("hashgrid_fwd", &recon::hashgrid::hashgrid_fwd);
    m.def("hashgrid_bwd", &recon::hashgrid::hashgrid_bwd);
}
