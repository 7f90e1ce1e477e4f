// recon CUDA core: projection of triangle splats to screen-space records (rasterizers.md a.5 / a.6) and its
// backward. One thread per (image, triangle). PyTorch twin and exact conventions: reference/triangle.py
// (record layout, culling, bound); footprint: footprint_triangle.cuh. Derivations our own (clean room).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdint>
#include <vector>

namespace recon {
namespace triangle {

struct Params {
    int I, N, width, height;
    float near, far, alpha_min, pixel_offset, min_inradius, min_extent, max_extent, min_cos;
    bool bary, stopgrad;
};

struct Cam { float W[9], b[3], fx, fy, cx, cy; };

__device__ __forceinline__ Cam load_cam(const float* vm, const float* K) {
    Cam c;
#pragma unroll
    for (int r = 0; r < 3; ++r) {
        c.W[r * 3 + 0] = vm[r * 4 + 0]; c.W[r * 3 + 1] = vm[r * 4 + 1]; c.W[r * 3 + 2] = vm[r * 4 + 2];
        c.b[r] = vm[r * 4 + 3];
    }
    c.fx = K[0]; c.fy = K[4]; c.cx = K[2]; c.cy = K[5];
    return c;
}

// Camera-space vertices t[3][3] and pixels a[3][2] of triangle n; false when a vertex is outside (near, far).
__device__ __forceinline__ bool project_vertices(const Params& p, const Cam& c, const float* V, float t[3][3], float a[3][2]) {
    bool ok = true;
#pragma unroll
    for (int j = 0; j < 3; ++j) {
        const float x = V[j * 3], y = V[j * 3 + 1], z = V[j * 3 + 2];
#pragma unroll
        for (int r = 0; r < 3; ++r) t[j][r] = c.W[r * 3] * x + c.W[r * 3 + 1] * y + c.W[r * 3 + 2] * z + c.b[r];
        ok = ok && t[j][2] > p.near && t[j][2] < p.far;
        const float iz = ok ? 1.f / t[j][2] : 1.f;
        a[j][0] = c.fx * t[j][0] * iz + c.cx;
        a[j][1] = c.fy * t[j][1] * iz + c.cy;
    }
    return ok;
}

// Edge geometry shared by forward and backward.
struct Edges {
    float d[3][2], len[3], s, area2, per;
};

__device__ __forceinline__ bool edges_of(const float a[3][2], Edges& g) {
#pragma unroll
    for (int i = 0; i < 3; ++i) {
        const int k = (i + 1) % 3;
        g.d[i][0] = a[k][0] - a[i][0];
        g.d[i][1] = a[k][1] - a[i][1];
    }
    const float cross = g.d[0][0] * (a[2][1] - a[0][1]) - g.d[0][1] * (a[2][0] - a[0][0]);
    g.s = cross >= 0.f ? 1.f : -1.f;
    g.area2 = cross * g.s;
    bool ok = g.area2 > 1e-12f;
    g.per = 0.f;
#pragma unroll
    for (int i = 0; i < 3; ++i) {
        const float l2 = g.d[i][0] * g.d[i][0] + g.d[i][1] * g.d[i][1];
        ok = ok && l2 > 1e-12f;
        g.len[i] = sqrtf(fmaxf(l2, 1e-24f));
        g.per += g.len[i];
    }
    return ok;
}

__global__ void fwd_kernel(Params p, const float* __restrict__ verts, const float* __restrict__ opac, const float* __restrict__ sigmas,
                           const float* __restrict__ viewmats, const float* __restrict__ Ks, float* __restrict__ records,
                           float* __restrict__ depths, int32_t* __restrict__ rects, float* __restrict__ extents,
                           float* __restrict__ inradii) {
    const int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (int64_t)p.I * p.N) return;
    const int i = (int)(idx / p.N), n = (int)(idx % p.N);
    const int R = p.bary ? 14 : 11;
    float* rec = records + idx * R;
    int32_t* rect = rects + idx * 4;
    auto cull = [&]() {
        for (int r = 0; r < R; ++r) rec[r] = 0.f;
        rect[0] = rect[1] = rect[2] = rect[3] = 0;
        depths[idx] = 0.f;
        extents[idx] = 0.f;
        inradii[idx] = 0.f;
    };
    const Cam c = load_cam(viewmats + i * 16, Ks + i * 9);
    float t[3][3], a[3][2];
    if (!project_vertices(p, c, verts + (int64_t)n * 9, t, a)) { cull(); return; }
    Edges g;
    if (!edges_of(a, g)) { cull(); return; }
    const float inradius = g.area2 / g.per;
    const float cxm = (a[0][0] + a[1][0] + a[2][0]) / 3.f, cym = (a[0][1] + a[1][1] + a[2][1]) / 3.f;
    float extent = 0.f;
#pragma unroll
    for (int j = 0; j < 3; ++j) extent = fmaxf(extent, sqrtf((a[j][0] - cxm) * (a[j][0] - cxm) + (a[j][1] - cym) * (a[j][1] - cym)));
    // edge-on test: camera-space normal vs the ray to the centroid
    const float e1x = t[1][0] - t[0][0], e1y = t[1][1] - t[0][1], e1z = t[1][2] - t[0][2];
    const float e2x = t[2][0] - t[0][0], e2y = t[2][1] - t[0][1], e2z = t[2][2] - t[0][2];
    const float nx = e1y * e2z - e1z * e2y, ny = e1z * e2x - e1x * e2z, nz = e1x * e2y - e1y * e2x;
    const float tcx = (t[0][0] + t[1][0] + t[2][0]) / 3.f, tcy = (t[0][1] + t[1][1] + t[2][1]) / 3.f,
                tcz = (t[0][2] + t[1][2] + t[2][2]) / 3.f;
    const float cosv = fabsf(nx * tcx + ny * tcy + nz * tcz) /
                       fmaxf(sqrtf(nx * nx + ny * ny + nz * nz) * sqrtf(tcx * tcx + tcy * tcy + tcz * tcz), 1e-12f);
    const float o = opac[n];
    if (inradius < p.min_inradius || extent < p.min_extent || (p.max_extent > 0.f && extent > p.max_extent) ||
        cosv < p.min_cos || !(o >= p.alpha_min)) {
        cull();
        return;
    }
    const float sigma = sigmas[n];
    // bound: the triangle shrunk about its incentre by 1 - k, k = (alpha_min / o)^(1 / sigma)
    const float k = expf(logf(fminf(p.alpha_min / fmaxf(o, 1e-12f), 1.f)) / fmaxf(sigma, 1e-12f));
    const float incx = (g.len[1] * a[0][0] + g.len[2] * a[1][0] + g.len[0] * a[2][0]) / g.per;
    const float incy = (g.len[1] * a[0][1] + g.len[2] * a[1][1] + g.len[0] * a[2][1]) / g.per;
    float xmin = 3.4e38f, xmax = -3.4e38f, ymin = 3.4e38f, ymax = -3.4e38f;
#pragma unroll
    for (int j = 0; j < 3; ++j) {
        const float sx = incx + (1.f - k) * (a[j][0] - incx), sy = incy + (1.f - k) * (a[j][1] - incy);
        xmin = fminf(xmin, sx); xmax = fmaxf(xmax, sx); ymin = fminf(ymin, sy); ymax = fmaxf(ymax, sy);
    }
    const int x0 = (int)fminf(fmaxf(floorf(xmin - p.pixel_offset), 0.f), (float)p.width);
    const int x1 = (int)fminf(fmaxf(floorf(xmax - p.pixel_offset) + 1.f, 0.f), (float)p.width);
    const int y0 = (int)fminf(fmaxf(floorf(ymin - p.pixel_offset), 0.f), (float)p.height);
    const int y1 = (int)fminf(fmaxf(floorf(ymax - p.pixel_offset) + 1.f, 0.f), (float)p.height);
    if (x1 <= x0 || y1 <= y0) { cull(); return; }
#pragma unroll
    for (int e = 0; e < 3; ++e) {
        const float ux = g.s * g.d[e][1] / g.len[e], uy = -g.s * g.d[e][0] / g.len[e];
        rec[3 * e] = ux;
        rec[3 * e + 1] = uy;
        rec[3 * e + 2] = -(ux * a[e][0] + uy * a[e][1]);
    }
    rec[9] = -g.per / g.area2;
    rec[10] = sigma;
    if (p.bary) {
#pragma unroll
        for (int e = 0; e < 3; ++e) rec[11 + e] = -g.len[e] / g.area2;
    }
    rect[0] = x0; rect[1] = y0; rect[2] = x1; rect[3] = y1;
    depths[idx] = (t[0][2] + t[1][2] + t[2][2]) / 3.f;
    extents[idx] = extent;
    inradii[idx] = inradius;
}

// VJP of records (and depth) w.r.t. the three world vertices (derivation in reference/triangle.py terms:
// n_i = s m_i / |m_i| with m_i = (d_iy, -d_ix); e_i = -n_i . a_i; inv = -P / A; q_i = -|d_i| / A).
__global__ void bwd_kernel(Params p, const float* __restrict__ verts, const float* __restrict__ viewmats, const float* __restrict__ Ks,
                           const float* __restrict__ inradii, const float* __restrict__ v_records, const float* __restrict__ v_depths,
                           float* __restrict__ v_verts) {
    const int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (int64_t)p.I * p.N) return;
    if (!(inradii[idx] > 0.f)) return;  // culled
    const int i = (int)(idx / p.N), n = (int)(idx % p.N);
    const int R = p.bary ? 14 : 11;
    const float* vr = v_records + idx * R;
    const Cam c = load_cam(viewmats + i * 16, Ks + i * 9);
    float t[3][3], a[3][2];
    project_vertices(p, c, verts + (int64_t)n * 9, t, a);
    Edges g;
    edges_of(a, g);
    float v_a[3][2] = {{0.f, 0.f}, {0.f, 0.f}, {0.f, 0.f}};
    float v_d[3][2] = {{0.f, 0.f}, {0.f, 0.f}, {0.f, 0.f}};
    float v_len[3] = {0.f, 0.f, 0.f};
    float v_area2 = 0.f;
    const float inv_a = 1.f / g.area2;
#pragma unroll
    for (int e = 0; e < 3; ++e) {
        const float mx = g.d[e][1] / g.len[e], my = -g.d[e][0] / g.len[e];  // unit m, unsigned
        const float nx = g.s * mx, ny = g.s * my;
        const float v_e = vr[3 * e + 2];
        const float v_nx = vr[3 * e] - v_e * a[e][0], v_ny = vr[3 * e + 1] - v_e * a[e][1];
        v_a[e][0] -= v_e * nx;
        v_a[e][1] -= v_e * ny;
        const float gx = g.s * v_nx, gy = g.s * v_ny;  // gradient w.r.t. the unit m
        const float dotm = gx * mx + gy * my;
        const float v_mx = (gx - dotm * mx) / g.len[e], v_my = (gy - dotm * my) / g.len[e];
        v_d[e][0] += -v_my;
        v_d[e][1] += v_mx;
        if (p.bary) {
            const float vq = vr[11 + e];
            v_len[e] += -vq * inv_a;
            v_area2 += vq * g.len[e] * inv_a * inv_a;
        }
    }
    if (!p.stopgrad) {
        const float vinv = vr[9];
        const float v_per = -vinv * inv_a;
        v_area2 += vinv * g.per * inv_a * inv_a;
#pragma unroll
        for (int e = 0; e < 3; ++e) v_len[e] += v_per;
    }
#pragma unroll
    for (int e = 0; e < 3; ++e) {
        v_d[e][0] += v_len[e] * g.d[e][0] / g.len[e];
        v_d[e][1] += v_len[e] * g.d[e][1] / g.len[e];
        const int k = (e + 1) % 3;
        v_a[k][0] += v_d[e][0]; v_a[k][1] += v_d[e][1];
        v_a[e][0] -= v_d[e][0]; v_a[e][1] -= v_d[e][1];
    }
    {  // area2 = s ((a1 - a0) x (a2 - a0))
        const float vc = g.s * v_area2;
        const float ux = a[1][0] - a[0][0], uy = a[1][1] - a[0][1], wx = a[2][0] - a[0][0], wy = a[2][1] - a[0][1];
        const float vux = vc * wy, vuy = -vc * wx, vwx = -vc * uy, vwy = vc * ux;
        v_a[1][0] += vux; v_a[1][1] += vuy;
        v_a[2][0] += vwx; v_a[2][1] += vwy;
        v_a[0][0] -= vux + vwx; v_a[0][1] -= vuy + vwy;
    }
    const float v_depth = v_depths[idx] / 3.f;
    float* out = v_verts + (int64_t)n * 9;
#pragma unroll
    for (int j = 0; j < 3; ++j) {
        const float iz = 1.f / t[j][2];
        const float vtx = c.fx * v_a[j][0] * iz, vty = c.fy * v_a[j][1] * iz;
        const float vtz = -(c.fx * t[j][0] * v_a[j][0] + c.fy * t[j][1] * v_a[j][1]) * iz * iz + v_depth;
#pragma unroll
        for (int r = 0; r < 3; ++r) atomicAdd(out + j * 3 + r, c.W[0 * 3 + r] * vtx + c.W[1 * 3 + r] * vty + c.W[2 * 3 + r] * vtz);
    }
}

#define TRI_CHECK(x) TORCH_CHECK((x).is_cuda() && (x).is_contiguous() && (x).scalar_type() == at::kFloat, #x " must be a contiguous CUDA float32 tensor")

std::vector<at::Tensor> project_triangles_fwd(const at::Tensor& vertices, const at::Tensor& opacities, const at::Tensor& sigmas,
                                              const at::Tensor& viewmats, const at::Tensor& Ks, int64_t width, int64_t height,
                                              double near, double far, double alpha_min, double pixel_offset, double min_inradius,
                                              double min_extent, double max_extent, double min_cos, bool barycentric) {
    TRI_CHECK(vertices); TRI_CHECK(opacities); TRI_CHECK(sigmas); TRI_CHECK(viewmats); TRI_CHECK(Ks);
    TORCH_CHECK(vertices.dim() == 3 && vertices.size(1) == 3 && vertices.size(2) == 3, "vertices must be [N, 3, 3]");
    const c10::cuda::OptionalCUDAGuard guard(vertices.device());
    Params p;
    p.I = (int)viewmats.size(0); p.N = (int)vertices.size(0); p.width = (int)width; p.height = (int)height;
    p.near = (float)near; p.far = (float)far; p.alpha_min = (float)alpha_min; p.pixel_offset = (float)pixel_offset;
    p.min_inradius = (float)min_inradius; p.min_extent = (float)min_extent; p.max_extent = (float)max_extent;
    p.min_cos = (float)min_cos; p.bary = barycentric; p.stopgrad = true;
    auto f = vertices.options();
    const int64_t R = barycentric ? 14 : 11;
    at::Tensor records = at::empty({p.I, p.N, R}, f);
    at::Tensor depths = at::empty({p.I, p.N}, f);
    at::Tensor rects = at::empty({p.I, p.N, 4}, f.dtype(at::kInt));
    at::Tensor extents = at::empty({p.I, p.N}, f);
    at::Tensor inradii = at::empty({p.I, p.N}, f);
    const int64_t total = (int64_t)p.I * p.N;
    if (total > 0) {
        fwd_kernel<<<(unsigned)((total + 255) / 256), 256, 0, c10::cuda::getCurrentCUDAStream()>>>(
            p, vertices.data_ptr<float>(), opacities.data_ptr<float>(), sigmas.data_ptr<float>(), viewmats.data_ptr<float>(),
            Ks.data_ptr<float>(), records.data_ptr<float>(), depths.data_ptr<float>(), rects.data_ptr<int32_t>(),
            extents.data_ptr<float>(), inradii.data_ptr<float>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    return {records, depths, rects, extents, inradii};
}

at::Tensor project_triangles_bwd(const at::Tensor& vertices, const at::Tensor& viewmats, const at::Tensor& Ks, const at::Tensor& inradii,
                                 const at::Tensor& v_records, const at::Tensor& v_depths, int64_t width, int64_t height,
                                 bool stopgrad_inradius, bool barycentric) {
    TRI_CHECK(vertices); TRI_CHECK(viewmats); TRI_CHECK(Ks); TRI_CHECK(inradii); TRI_CHECK(v_records); TRI_CHECK(v_depths);
    const c10::cuda::OptionalCUDAGuard guard(vertices.device());
    Params p{};
    p.I = (int)viewmats.size(0); p.N = (int)vertices.size(0); p.width = (int)width; p.height = (int)height;
    p.near = -3.4e38f; p.far = 3.4e38f;  // culling already decided in the forward (inradii == 0)
    p.bary = barycentric; p.stopgrad = stopgrad_inradius;
    TORCH_CHECK(v_records.size(-1) == (barycentric ? 14 : 11), "v_records has the wrong record size");
    at::Tensor v_vertices = at::zeros_like(vertices);
    const int64_t total = (int64_t)p.I * p.N;
    if (total > 0) {
        bwd_kernel<<<(unsigned)((total + 255) / 256), 256, 0, c10::cuda::getCurrentCUDAStream()>>>(
            p, vertices.data_ptr<float>(), viewmats.data_ptr<float>(), Ks.data_ptr<float>(), inradii.data_ptr<float>(),
            v_records.data_ptr<float>(), v_depths.data_ptr<float>(), v_vertices.data_ptr<float>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    return v_vertices;
}

}  // namespace triangle
}  // namespace recon

TORCH_LIBRARY_FRAGMENT(recon, m) {
    m.def("project_triangles_fwd", &recon::triangle::project_triangles_fwd);
    m.def("project_triangles_bwd", &recon::triangle::project_triangles_bwd);
}
