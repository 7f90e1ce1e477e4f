// recon CUDA core: fused spherical-harmonics colour evaluation (degree <= 3) and its backward
// (rasterizers.md a.3 "SH colour"). colour = max(0, sum_k coeff_k Y_k(dir) + 0.5), dir = normalize(mean -
// camera centre). The backward returns the coefficient gradient and the mean gradient through the
// view direction. One thread per (image, Gaussian). Our own code.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include "ops.h"
#include "sh.cuh"

namespace recon {

__device__ __forceinline__ float3 camera_center(const float* vm) {
    // viewmat = [R | t]; centre = -R^T t
    const float tx = vm[3], ty = vm[7], tz = vm[11];
    return make_float3(-(vm[0] * tx + vm[4] * ty + vm[8] * tz), -(vm[1] * tx + vm[5] * ty + vm[9] * tz),
                       -(vm[2] * tx + vm[6] * ty + vm[10] * tz));
}

// One thread per (image, Gaussian, channel): the colour writes and most coefficient accesses are
// coalesced across the warp; blocks of 96 threads hold 32 whole Gaussians so the three channels'
// direction gradients are summed in shared memory before the mean gradient is written.
constexpr int SH_BLOCK = 96;

template <int DEG>
__global__ void sh_fwd_kernel(int I, int N, int K, const float* __restrict__ means, const float* __restrict__ coeffs,
                              const float* __restrict__ viewmats, const int32_t* __restrict__ radii, float* __restrict__ colors) {
    constexpr int NB = (DEG + 1) * (DEG + 1);
    const int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (int64_t)I * N * 3) return;
    const int64_t elem = idx / 3;
    const int ch = (int)(idx % 3);
    const int i = (int)(elem / N), n = (int)(elem % N);
    if (radii && radii[elem] <= 0) { colors[idx] = 0.f; return; }
    const float3 c = camera_center(viewmats + i * 16);
    float dx = means[n * 3] - c.x, dy = means[n * 3 + 1] - c.y, dz = means[n * 3 + 2] - c.z;
    const float inv = 1.f / fmaxf(sqrtf(dx * dx + dy * dy + dz * dz), 1e-12f);
    dx *= inv; dy *= inv; dz *= inv;
    float Y[16];
    sh_basis(DEG, dx, dy, dz, Y);
    const float* co = coeffs + (int64_t)n * K * 3 + ch;
    float v = 0.f;
#pragma unroll
    for (int k = 0; k < NB; ++k) v += Y[k] * co[k * 3];
    colors[idx] = fmaxf(v + 0.5f, 0.f);
}

template <int DEG>
__global__ void sh_bwd_kernel(int I, int N, int K, const float* __restrict__ means, const float* __restrict__ coeffs,
                              const float* __restrict__ viewmats, const int32_t* __restrict__ radii,
                              const float* __restrict__ v_colors, float* __restrict__ v_coeffs, float* __restrict__ v_means) {
    constexpr int NB = (DEG + 1) * (DEG + 1);
    __shared__ float s_v[SH_BLOCK * 3];
    const int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    const int64_t total = (int64_t)I * N * 3;
    const bool live = idx < total;
    const int64_t elem = live ? idx / 3 : 0;
    const int ch = (int)(idx % 3);
    const int i = (int)(elem / N), n = (int)(elem % N);
    const bool visible = live && !(radii && radii[elem] <= 0);
    float gx = 0.f, gy = 0.f, gz = 0.f, inv = 0.f, x = 0.f, y = 0.f, z = 0.f;
    float* vco = v_coeffs + (int64_t)n * K * 3 + ch;
    if (visible) {
        const float3 c = camera_center(viewmats + i * 16);
        const float ox = means[n * 3] - c.x, oy = means[n * 3 + 1] - c.y, oz = means[n * 3 + 2] - c.z;
        inv = 1.f / fmaxf(sqrtf(ox * ox + oy * oy + oz * oz), 1e-12f);
        x = ox * inv; y = oy * inv; z = oz * inv;
        float Y[16];
        sh_basis(DEG, x, y, z, Y);
        const float* co = coeffs + (int64_t)n * K * 3 + ch;
        float pre = 0.f, wk[16];
#pragma unroll
        for (int k = 0; k < NB; ++k) { wk[k] = co[k * 3]; pre += Y[k] * wk[k]; }
        // colour = max(0, pre + 0.5) passes the gradient where pre + 0.5 >= 0 (torch clamp_min)
        const float vc = pre + 0.5f < 0.f ? 0.f : v_colors[idx];
#pragma unroll
        for (int k = 0; k < NB; ++k) {
            if (I == 1) vco[k * 3] = Y[k] * vc;
            else atomicAdd(vco + k * 3, Y[k] * vc);
            wk[k] *= vc;  // dL/dY_k for this channel
        }
        if (I == 1)
            for (int k = NB; k < K; ++k) vco[k * 3] = 0.f;
        sh_basis_vjp(DEG, x, y, z, wk, gx, gy, gz);
    } else if (live && I == 1) {
        for (int k = 0; k < K; ++k) vco[k * 3] = 0.f;
    }
    // sum the three channels of each Gaussian (blocks hold whole Gaussians: SH_BLOCK % 3 == 0)
    const int t = threadIdx.x;
    s_v[t * 3] = gx; s_v[t * 3 + 1] = gy; s_v[t * 3 + 2] = gz;
    __syncthreads();
    if (!live || ch != 0) return;
    gx = s_v[t * 3] + s_v[t * 3 + 3] + s_v[t * 3 + 6];
    gy = s_v[t * 3 + 1] + s_v[t * 3 + 4] + s_v[t * 3 + 7];
    gz = s_v[t * 3 + 2] + s_v[t * 3 + 5] + s_v[t * 3 + 8];
    float vx = 0.f, vy = 0.f, vz = 0.f;
    if (visible) {
        // through dir = o / |o|: dL/do = (g - (g.dir) dir) / |o|
        const float d = gx * x + gy * y + gz * z;
        vx = (gx - d * x) * inv; vy = (gy - d * y) * inv; vz = (gz - d * z) * inv;
    }
    if (I == 1) { v_means[n * 3] = vx; v_means[n * 3 + 1] = vy; v_means[n * 3 + 2] = vz; }
    else if (visible) { atomicAdd(v_means + n * 3, vx); atomicAdd(v_means + n * 3 + 1, vy); atomicAdd(v_means + n * 3 + 2, vz); }
}

// One image (the training case): a block's 32 Gaussians own consecutive coefficient rows, so the rows
// are staged through shared memory and both the coefficient reads and the gradient writes are fully
// coalesced 4-byte streams (the per-channel access above touches 12 bytes of every 32-byte sector).
template <int DEG>
__global__ void sh_bwd_staged_kernel(int N, int K, const float* __restrict__ means, const float* __restrict__ coeffs,
                                     const float* __restrict__ viewmats, const int32_t* __restrict__ radii,
                                     const float* __restrict__ v_colors, float* __restrict__ v_coeffs, float* __restrict__ v_means) {
    constexpr int NB = (DEG + 1) * (DEG + 1);
    extern __shared__ float s_co[];  // [32, K, 3]
    __shared__ float s_v[SH_BLOCK * 3];
    const int n0 = blockIdx.x * (SH_BLOCK / 3);
    const int rows = min(SH_BLOCK / 3, N - n0);
    const int64_t base = (int64_t)n0 * K * 3;
    const int cnt = rows * K * 3;
    for (int j = threadIdx.x; j < cnt; j += SH_BLOCK) s_co[j] = coeffs[base + j];
    __syncthreads();
    const int gl = threadIdx.x / 3, ch = threadIdx.x % 3;
    const int n = n0 + gl;
    const bool live = gl < rows;
    const bool visible = live && !(radii && radii[n] <= 0);
    float gx = 0.f, gy = 0.f, gz = 0.f, inv = 0.f, x = 0.f, y = 0.f, z = 0.f;
    float* co = s_co + gl * K * 3 + ch;
    if (visible) {
        const float3 c = camera_center(viewmats);
        const float ox = means[n * 3] - c.x, oy = means[n * 3 + 1] - c.y, oz = means[n * 3 + 2] - c.z;
        inv = 1.f / fmaxf(sqrtf(ox * ox + oy * oy + oz * oz), 1e-12f);
        x = ox * inv; y = oy * inv; z = oz * inv;
        float Y[16];
        sh_basis(DEG, x, y, z, Y);
        float pre = 0.f, wk[16];
#pragma unroll
        for (int k = 0; k < NB; ++k) { wk[k] = co[k * 3]; pre += Y[k] * wk[k]; }
        const float vc = pre + 0.5f < 0.f ? 0.f : v_colors[(int64_t)n * 3 + ch];
#pragma unroll
        for (int k = 0; k < NB; ++k) {
            co[k * 3] = Y[k] * vc;  // each thread overwrites only its own (k, ch) entries
            wk[k] *= vc;
        }
        for (int k = NB; k < K; ++k) co[k * 3] = 0.f;
        sh_basis_vjp(DEG, x, y, z, wk, gx, gy, gz);
    } else if (live) {
        for (int k = 0; k < K; ++k) co[k * 3] = 0.f;
    }
    const int t = threadIdx.x;
    s_v[t * 3] = gx; s_v[t * 3 + 1] = gy; s_v[t * 3 + 2] = gz;
    __syncthreads();
    for (int j = threadIdx.x; j < cnt; j += SH_BLOCK) v_coeffs[base + j] = s_co[j];
    if (!live || ch != 0) return;
    gx = s_v[t * 3] + s_v[t * 3 + 3] + s_v[t * 3 + 6];
    gy = s_v[t * 3 + 1] + s_v[t * 3 + 4] + s_v[t * 3 + 7];
    gz = s_v[t * 3 + 2] + s_v[t * 3 + 5] + s_v[t * 3 + 8];
    float vx = 0.f, vy = 0.f, vz = 0.f;
    if (visible) {
        const float d = gx * x + gy * y + gz * z;
        vx = (gx - d * x) * inv; vy = (gy - d * y) * inv; vz = (gz - d * z) * inv;
    }
    v_means[n * 3] = vx; v_means[n * 3 + 1] = vy; v_means[n * 3 + 2] = vz;
}

#define RECON_SH_DISPATCH(DEGREE, LAUNCH) \
    switch (DEGREE) {                     \
        case 0: LAUNCH(0); break;         \
        case 1: LAUNCH(1); break;         \
        case 2: LAUNCH(2); break;         \
        default: LAUNCH(3); break;        \
    }

at::Tensor sh_fwd(int64_t degree, const at::Tensor& means, const at::Tensor& coeffs, const at::Tensor& viewmats,
                  const at::Tensor& radii) {
    RECON_CHECK_INPUT(means); RECON_CHECK_INPUT(coeffs); RECON_CHECK_INPUT(viewmats);
    TORCH_CHECK(degree >= 0 && degree <= 3, "sh degree must be in 0..3");
    TORCH_CHECK(coeffs.dim() == 3 && coeffs.size(2) == 3 && coeffs.size(1) >= (degree + 1) * (degree + 1),
                "coeffs must be [N, K, 3] with K >= (degree+1)^2");
    if (radii.numel()) { RECON_CHECK_INPUT(radii); }
    const c10::cuda::OptionalCUDAGuard guard(means.device());
    const int I = (int)viewmats.size(0), N = (int)means.size(0), K = (int)coeffs.size(1);
    at::Tensor colors = at::empty({I, N, 3}, means.options());
    const int64_t total = (int64_t)I * N * 3;
    if (total) {
        const unsigned blocks = (unsigned)((total + SH_BLOCK - 1) / SH_BLOCK);
        auto stream = c10::cuda::getCurrentCUDAStream();
        const int32_t* rp = radii.numel() ? radii.data_ptr<int32_t>() : nullptr;
#define RECON_SH_FWD(D) sh_fwd_kernel<D><<<blocks, SH_BLOCK, 0, stream>>>(I, N, K, means.data_ptr<float>(), coeffs.data_ptr<float>(), \
                                                                          viewmats.data_ptr<float>(), rp, colors.data_ptr<float>())
        RECON_SH_DISPATCH(degree, RECON_SH_FWD)
#undef RECON_SH_FWD
        C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    return colors;
}

std::vector<at::Tensor> sh_bwd(int64_t degree, const at::Tensor& means, const at::Tensor& coeffs, const at::Tensor& viewmats,
                               const at::Tensor& radii, const at::Tensor& colors, const at::Tensor& v_colors) {
    RECON_CHECK_INPUT(means); RECON_CHECK_INPUT(coeffs); RECON_CHECK_INPUT(viewmats); RECON_CHECK_INPUT(v_colors);
    if (radii.numel()) { RECON_CHECK_INPUT(radii); }
    const c10::cuda::OptionalCUDAGuard guard(means.device());
    const int I = (int)viewmats.size(0), N = (int)means.size(0), K = (int)coeffs.size(1);
    // one image: every entry is written by the kernel (no zero fill); several: atomics into zeros
    at::Tensor v_coeffs = I == 1 ? at::empty_like(coeffs) : at::zeros_like(coeffs);
    at::Tensor v_means = I == 1 ? at::empty_like(means) : at::zeros_like(means);
    const int64_t total = (int64_t)I * N * 3;
    if (total) {
        const unsigned blocks = (unsigned)((total + SH_BLOCK - 1) / SH_BLOCK);
        auto stream = c10::cuda::getCurrentCUDAStream();
        const int32_t* rp = radii.numel() ? radii.data_ptr<int32_t>() : nullptr;
        const size_t smem = (size_t)(SH_BLOCK / 3) * K * 3 * sizeof(float);
        if (I == 1 && smem <= 48 * 1024) {
#define RECON_SH_BWD_STAGED(D)                                                                                            \
    sh_bwd_staged_kernel<D><<<blocks, SH_BLOCK, smem, stream>>>(N, K, means.data_ptr<float>(), coeffs.data_ptr<float>(), \
                                                               viewmats.data_ptr<float>(), rp, v_colors.data_ptr<float>(), \
                                                               v_coeffs.data_ptr<float>(), v_means.data_ptr<float>())
            RECON_SH_DISPATCH(degree, RECON_SH_BWD_STAGED)
#undef RECON_SH_BWD_STAGED
        } else {
#define RECON_SH_BWD(D)                                                                                                  \
    sh_bwd_kernel<D><<<blocks, SH_BLOCK, 0, stream>>>(I, N, K, means.data_ptr<float>(), coeffs.data_ptr<float>(),       \
                                                      viewmats.data_ptr<float>(), rp, v_colors.data_ptr<float>(),      \
                                                      v_coeffs.data_ptr<float>(), v_means.data_ptr<float>())
            RECON_SH_DISPATCH(degree, RECON_SH_BWD)
#undef RECON_SH_BWD
        }
        C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    return {v_coeffs, v_means};
}

}  // namespace recon
