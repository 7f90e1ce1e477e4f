// recon CUDA core: projection of 3D Gaussians to screen-space records (EWA splatting, rasterizers.md
// a.2 step 1 and a.3) and its backward (a.3 "projection VJP chain"). One thread per (image, Gaussian).
// Kernel structure after gsplat's ProjectionEWA3DGSFused.cu (Apache-2.0); code and derivations our own.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include "math.cuh"
#include "ops.h"

namespace recon {

struct ProjectParams {
    int I, N, width, height;
    float eps2d, near, far, alpha_min;
    bool antialiased;
};

__device__ __forceinline__ void load_view(const float* vm, mat3& W, vec3& b) {
#pragma unroll
    for (int r = 0; r < 3; ++r) {
        W.m[r][0] = vm[r * 4 + 0]; W.m[r][1] = vm[r * 4 + 1]; W.m[r][2] = vm[r * 4 + 2];
    }
    b = make_v3(vm[3], vm[7], vm[11]);
}

__global__ void project_gaussians_fwd_kernel(ProjectParams p, const float* __restrict__ means, const float* __restrict__ quats,
                                             const float* __restrict__ scales, const float* __restrict__ opacities,
                                             const float* __restrict__ viewmats, const float* __restrict__ Ks,
                                             float* __restrict__ records, float* __restrict__ depths, int32_t* __restrict__ radii,
                                             int32_t* __restrict__ rects, float* __restrict__ opac_out, float* __restrict__ comp_out,
                                             float* __restrict__ means2d) {
    const int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (int64_t)p.I * p.N) return;
    const int i = (int)(idx / p.N), n = (int)(idx % p.N);
    float* rec = records + idx * 5;
    int32_t* rect = rects + idx * 4;
    auto cull = [&]() {
        rec[0] = rec[1] = rec[2] = rec[3] = rec[4] = 0.f;
        means2d[idx * 2] = means2d[idx * 2 + 1] = 0.f;
        rect[0] = rect[1] = rect[2] = rect[3] = 0;
        radii[idx] = 0;
        depths[idx] = 0.f;
        opac_out[idx] = 0.f;
        comp_out[idx] = 0.f;
    };
    mat3 W; vec3 b;
    load_view(viewmats + i * 16, W, b);
    const vec3 mu = make_v3(means[n * 3], means[n * 3 + 1], means[n * 3 + 2]);
    vec3 t = matvec(W, mu);
    t.x += b.x; t.y += b.y; t.z += b.z;
    if (!(t.z > p.near && t.z < p.far)) { cull(); return; }
    const mat3 cov = quat_scale_to_covar(quats + n * 4, scales + n * 3);
    const mat3 Sc = covar_world_to_cam(W, cov);
    const Pinhole cam = make_pinhole(Ks + i * 9, p.width, p.height);
    float2 m2; mat2 c2;
    persp_proj(cam, t, Sc, m2, c2);
    float rho;
    const float det = add_blur(c2, p.eps2d, rho);
    if (!(det > 0.f)) { cull(); return; }
    const mat2 Q = inverse2(c2, det);
    if (!p.antialiased) rho = 1.f;
    const float o = opacities[n] * rho;
    if (!(o >= p.alpha_min)) { cull(); return; }
    // opacity-aware extent: alpha >= alpha_min needs d^T Q d <= 2 ln(o / alpha_min)
    const float ext = fminf(3.33f, sqrtf(fmaxf(0.f, 2.f * logf(o / p.alpha_min))));
    const float rx = ceilf(ext * sqrtf(fmaxf(0.f, c2.m[0][0]))), ry = ceilf(ext * sqrtf(fmaxf(0.f, c2.m[1][1])));
    if (!(rx > 0.f || ry > 0.f)) { cull(); return; }
    // pixel rect, end exclusive, clipped to the image (reference projection.py convention)
    const float x0 = fminf(fmaxf(floorf(m2.x - rx), 0.f), (float)p.width), x1 = fminf(fmaxf(ceilf(m2.x + rx), 0.f), (float)p.width);
    const float y0 = fminf(fmaxf(floorf(m2.y - ry), 0.f), (float)p.height), y1 = fminf(fmaxf(ceilf(m2.y + ry), 0.f), (float)p.height);
    if (!(x1 > x0 && y1 > y0)) { cull(); return; }
    means2d[idx * 2] = m2.x; means2d[idx * 2 + 1] = m2.y;
    rec[0] = m2.x; rec[1] = m2.y; rec[2] = Q.m[0][0]; rec[3] = Q.m[0][1]; rec[4] = Q.m[1][1];
    rect[0] = (int32_t)x0; rect[1] = (int32_t)y0; rect[2] = (int32_t)x1; rect[3] = (int32_t)y1;
    radii[idx] = (int32_t)fmaxf(rx, ry);
    depths[idx] = t.z;
    opac_out[idx] = o;
    comp_out[idx] = rho;
}

__global__ void project_gaussians_bwd_kernel(ProjectParams p, const float* __restrict__ means, const float* __restrict__ quats,
                                             const float* __restrict__ scales, const float* __restrict__ opacities,
                                             const float* __restrict__ viewmats, const float* __restrict__ Ks,
                                             const int32_t* __restrict__ radii, const float* __restrict__ v_records,
                                             const float* __restrict__ v_depths, const float* __restrict__ v_opac_out,
                                             const float* __restrict__ v_means2d,
                                             float* __restrict__ v_means, float* __restrict__ v_quats, float* __restrict__ v_scales,
                                             float* __restrict__ v_opacities) {
    const int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (int64_t)p.I * p.N) return;
    const int i = (int)(idx / p.N), n = (int)(idx % p.N);
    if (radii[idx] <= 0) {
        if (p.I == 1) {  // one image: outputs are not zero-filled, every entry is written here
            v_means[n * 3] = v_means[n * 3 + 1] = v_means[n * 3 + 2] = 0.f;
            v_quats[n * 4] = v_quats[n * 4 + 1] = v_quats[n * 4 + 2] = v_quats[n * 4 + 3] = 0.f;
            v_scales[n * 3] = v_scales[n * 3 + 1] = v_scales[n * 3 + 2] = 0.f;
            v_opacities[n] = 0.f;
        }
        return;
    }
    mat3 W; vec3 b;
    load_view(viewmats + i * 16, W, b);
    const vec3 mu = make_v3(means[n * 3], means[n * 3 + 1], means[n * 3 + 2]);
    vec3 t = matvec(W, mu);
    t.x += b.x; t.y += b.y; t.z += b.z;
    const float* q = quats + n * 4;
    const float* s = scales + n * 3;
    const mat3 cov = quat_scale_to_covar(q, s);
    const mat3 Sc = covar_world_to_cam(W, cov);
    const Pinhole cam = make_pinhole(Ks + i * 9, p.width, p.height);
    float2 m2; mat2 c2;
    persp_proj(cam, t, Sc, m2, c2);
    float rho;
    const float det = add_blur(c2, p.eps2d, rho);
    const mat2 Q = inverse2(c2, det);

    const float* vr = v_records + idx * 5;
    mat2 VQ;
    VQ.m[0][0] = vr[2]; VQ.m[0][1] = 0.5f * vr[3]; VQ.m[1][0] = 0.5f * vr[3]; VQ.m[1][1] = vr[4];
    mat2 v_c2 = inverse2_vjp(Q, VQ);
    const float vo = v_opac_out[idx];
    float v_op_in = vo;
    if (p.antialiased) {
        add_blur_vjp(p.eps2d, Q, rho, vo * opacities[n], v_c2);
        v_op_in = vo * rho;
    }
    vec3 v_t = make_v3(0.f, 0.f, v_depths[idx]);
    mat3 v_Sc = {};
    persp_proj_vjp(cam, t, Sc, make_float2(vr[0] + v_means2d[idx * 2], vr[1] + v_means2d[idx * 2 + 1]), v_c2, v_t, v_Sc);
    const mat3 v_cov = covar_world_to_cam_vjp(W, v_Sc);
    const vec3 v_mu = matTvec(W, v_t);
    float v_q[4], v_s[3];
    quat_scale_to_covar_vjp(q, s, v_cov, v_q, v_s);
    if (p.I == 1) {
        v_means[n * 3] = v_mu.x; v_means[n * 3 + 1] = v_mu.y; v_means[n * 3 + 2] = v_mu.z;
#pragma unroll
        for (int k = 0; k < 4; ++k) v_quats[n * 4 + k] = v_q[k];
#pragma unroll
        for (int k = 0; k < 3; ++k) v_scales[n * 3 + k] = v_s[k];
        v_opacities[n] = v_op_in;
    } else {
        atomicAdd(v_means + n * 3, v_mu.x); atomicAdd(v_means + n * 3 + 1, v_mu.y); atomicAdd(v_means + n * 3 + 2, v_mu.z);
#pragma unroll
        for (int k = 0; k < 4; ++k) atomicAdd(v_quats + n * 4 + k, v_q[k]);
#pragma unroll
        for (int k = 0; k < 3; ++k) atomicAdd(v_scales + n * 3 + k, v_s[k]);
        atomicAdd(v_opacities + n, v_op_in);
    }
}

static ProjectParams make_project_params(const at::Tensor& means, const at::Tensor& viewmats, int64_t width, int64_t height,
                                         double eps2d, double near, double far, double alpha_min, bool antialiased) {
    ProjectParams p;
    p.I = (int)viewmats.size(0); p.N = (int)means.size(0);
    p.width = (int)width; p.height = (int)height;
    p.eps2d = (float)eps2d; p.near = (float)near; p.far = (float)far; p.alpha_min = (float)alpha_min;
    p.antialiased = antialiased;
    return p;
}

std::vector<at::Tensor> project_gaussians_fwd(const at::Tensor& means, const at::Tensor& quats, const at::Tensor& scales,
                                              const at::Tensor& opacities, const at::Tensor& viewmats, const at::Tensor& Ks,
                                              int64_t width, int64_t height, double eps2d, double near, double far,
                                              double alpha_min, bool antialiased) {
    RECON_CHECK_INPUT(means); RECON_CHECK_INPUT(quats); RECON_CHECK_INPUT(scales); RECON_CHECK_INPUT(opacities);
    RECON_CHECK_INPUT(viewmats); RECON_CHECK_INPUT(Ks);
    const c10::cuda::OptionalCUDAGuard guard(means.device());
    ProjectParams p = make_project_params(means, viewmats, width, height, eps2d, near, far, alpha_min, antialiased);
    auto f = means.options();
    at::Tensor records = at::empty({p.I, p.N, 5}, f);
    at::Tensor depths = at::empty({p.I, p.N}, f);
    at::Tensor radii = at::empty({p.I, p.N}, f.dtype(at::kInt));
    at::Tensor rects = at::empty({p.I, p.N, 4}, f.dtype(at::kInt));
    at::Tensor opac_out = at::empty({p.I, p.N}, f);
    at::Tensor comp_out = at::empty({p.I, p.N}, f);
    at::Tensor means2d = at::empty({p.I, p.N, 2}, f);
    const int64_t total = (int64_t)p.I * p.N;
    if (total) {
        project_gaussians_fwd_kernel<<<(unsigned)((total + 255) / 256), 256, 0, c10::cuda::getCurrentCUDAStream()>>>(
            p, means.data_ptr<float>(), quats.data_ptr<float>(), scales.data_ptr<float>(), opacities.data_ptr<float>(),
            viewmats.data_ptr<float>(), Ks.data_ptr<float>(), records.data_ptr<float>(), depths.data_ptr<float>(),
            radii.data_ptr<int32_t>(), rects.data_ptr<int32_t>(), opac_out.data_ptr<float>(), comp_out.data_ptr<float>(),
            means2d.data_ptr<float>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    return {records, depths, radii, rects, opac_out, comp_out, means2d};
}

std::vector<at::Tensor> project_gaussians_bwd(const at::Tensor& means, const at::Tensor& quats, const at::Tensor& scales,
                                              const at::Tensor& opacities, const at::Tensor& viewmats, const at::Tensor& Ks,
                                              int64_t width, int64_t height, double eps2d, bool antialiased,
                                              const at::Tensor& radii, const at::Tensor& v_records, const at::Tensor& v_depths,
                                              const at::Tensor& v_opacities_out, const at::Tensor& v_means2d) {
    RECON_CHECK_INPUT(means); RECON_CHECK_INPUT(quats); RECON_CHECK_INPUT(scales); RECON_CHECK_INPUT(opacities);
    RECON_CHECK_INPUT(viewmats); RECON_CHECK_INPUT(Ks); RECON_CHECK_INPUT(radii);
    RECON_CHECK_INPUT(v_records); RECON_CHECK_INPUT(v_depths); RECON_CHECK_INPUT(v_opacities_out); RECON_CHECK_INPUT(v_means2d);
    const c10::cuda::OptionalCUDAGuard guard(means.device());
    ProjectParams p = make_project_params(means, viewmats, width, height, eps2d, 0.0, 0.0, 0.0, antialiased);
    auto alloc = [&](const at::Tensor& t) { return p.I == 1 ? at::empty_like(t) : at::zeros_like(t); };
    at::Tensor v_means = alloc(means), v_quats = alloc(quats), v_scales = alloc(scales), v_opacities = alloc(opacities);
    const int64_t total = (int64_t)p.I * p.N;
    if (total) {
        project_gaussians_bwd_kernel<<<(unsigned)((total + 255) / 256), 256, 0, c10::cuda::getCurrentCUDAStream()>>>(
            p, means.data_ptr<float>(), quats.data_ptr<float>(), scales.data_ptr<float>(), opacities.data_ptr<float>(),
            viewmats.data_ptr<float>(), Ks.data_ptr<float>(), radii.data_ptr<int32_t>(), v_records.data_ptr<float>(),
            v_depths.data_ptr<float>(), v_opacities_out.data_ptr<float>(), v_means2d.data_ptr<float>(), v_means.data_ptr<float>(), v_quats.data_ptr<float>(),
            v_scales.data_ptr<float>(), v_opacities.data_ptr<float>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    return {v_means, v_quats, v_scales, v_opacities};
}

}  // namespace recon
