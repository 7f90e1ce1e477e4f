// recon CUDA core: projection of 3D smooth convexes to screen-space records (rasterizers.md a.4) and its
// backward. One thread per (image, convex): K <= 8 points -> pixels, 2D hull by gift wrapping (the same
// algorithm and tie rules as reference/convex.py::convex_hull_2d), edge lines, depth-scaled record in
// the layout of footprint_convex.cuh, and the exact conservative bound of the pushed-out hull (float64).
// Registers its own ops (torch.ops.recon.project_convexes_fwd / _bwd). Our own code.
#include <ATen/ATen.h>
#include <torch/library.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <vector>
#include "footprint_convex.cuh"

namespace recon {
namespace {

constexpr int KMAX = ConvexFootprint::E;
constexpr int RC = ConvexFootprint::R;

struct ConvexProjParams {
    int I, N, K, width, height, law;
    float near, far, alpha_min, pixel_offset;
};

// hull packing: vertex j's point index in bits 3j..3j+2 (j < 8), the vertex count in bits 24..27
__device__ __forceinline__ int hull_index(int32_t packed, int j) { return (packed >> (3 * j)) & 7; }
__device__ __forceinline__ int hull_count(int32_t packed) { return (packed >> 24) & 15; }

// s(zeta) and ds/dzeta for the depth law: 0 linear (3DCS code), 1 sqrt, 2 none
__device__ __forceinline__ float depth_scale(float z, int law) { return law == 0 ? z : (law == 1 ? sqrtf(z) : 1.f); }
__device__ __forceinline__ float depth_scale_grad(float z, int law) { return law == 0 ? 1.f : (law == 1 ? 0.5f / sqrtf(z) : 0.f); }

struct ConvexView {
    float W[3][3], b[3], fx, fy, cx, cy;
};
__device__ __forceinline__ ConvexView load_camera(const float* vm, const float* K) {
    ConvexView v;
#pragma unroll
    for (int r = 0; r < 3; ++r) {
        v.W[r][0] = vm[r * 4]; v.W[r][1] = vm[r * 4 + 1]; v.W[r][2] = vm[r * 4 + 2]; v.b[r] = vm[r * 4 + 3];
    }
    v.fx = K[0]; v.fy = K[4]; v.cx = K[2]; v.cy = K[5];
    return v;
}
__device__ __forceinline__ float3 to_camera(const ConvexView& v, float x, float y, float z) {
    return make_float3(v.W[0][0] * x + v.W[0][1] * y + v.W[0][2] * z + v.b[0], v.W[1][0] * x + v.W[1][1] * y + v.W[1][2] * z + v.b[1],
                       v.W[2][0] * x + v.W[2][1] * y + v.W[2][2] * z + v.b[2]);
}

// Everything the forward and backward both need: camera-space points, pixels, centroid, centre, hull.
struct ConvexGeom {
    float px[KMAX], py[KMAX], tx[KMAX], ty[KMAX], tz[KMAX];
    float zeta, cx, cy;
    int order[KMAX], count;
    bool front;
};

__device__ __forceinline__ void project_points(const ConvexProjParams& p, const ConvexView& v, const float* pts, ConvexGeom& g) {
    float sx = 0.f, sy = 0.f, sz = 0.f;
    g.front = true;
    for (int k = 0; k < p.K; ++k) {
        const float x = pts[k * 3], y = pts[k * 3 + 1], z = pts[k * 3 + 2];
        sx += x; sy += y; sz += z;
        const float3 t = to_camera(v, x, y, z);
        g.tx[k] = t.x; g.ty[k] = t.y; g.tz[k] = t.z;
        g.front = g.front && t.z > p.near;
        const float tz = g.front ? t.z : 1.f;
        g.px[k] = v.fx * t.x / tz + v.cx;
        g.py[k] = v.fy * t.y / tz + v.cy;
    }
    const float inv_k = 1.f / p.K;
    const float3 c = to_camera(v, sx * inv_k, sy * inv_k, sz * inv_k);
    g.zeta = c.z;
    const float cz = c.z > 0.f ? c.z : 1.f;
    g.cx = v.fx * c.x / cz + v.cx;
    g.cy = v.fy * c.y / cz + v.cy;
}

// Gift wrapping from the lowest-x (then lowest-y, then lowest-index) point; every point ends left of or on
// each edge (counter-clockwise in the (x, y) sense); collinear and duplicate points are dropped. count = 0
// when the walk does not close within K steps.
__device__ __forceinline__ void gift_wrap(int K, const float* px, const float* py, int* order, int& count) {
    int start = 0;
    for (int k = 1; k < K; ++k)
        if (px[k] < px[start] || (px[k] == px[start] && py[k] < py[start])) start = k;
    order[0] = start;
    count = 1;
    int cur = start;
    bool closed = false;
    for (int step = 0; step < K; ++step) {
        int q = (cur + 1) % K;
        for (int r = 0; r < K; ++r) {
            const float dqx = px[q] - px[cur], dqy = py[q] - py[cur];
            const float drx = px[r] - px[cur], dry = py[r] - py[cur];
            const float cross = __fsub_rn(__fmul_rn(dqx, dry), __fmul_rn(dqy, drx));
            const float lq = __fadd_rn(__fmul_rn(dqx, dqx), __fmul_rn(dqy, dqy));
            const float lr = __fadd_rn(__fmul_rn(drx, drx), __fmul_rn(dry, dry));
            if (lr > 0.f && (lq == 0.f || cross < 0.f || (cross == 0.f && lr > lq))) q = r;
        }
        if (px[q] == px[start] && py[q] == py[start]) { closed = true; break; }
        if (step + 1 < K) order[step + 1] = q;
        ++count;
        cur = q;
    }
    if (!closed) count = 0;
}

__global__ void project_convexes_fwd_kernel(ConvexProjParams p, const float* __restrict__ points, const float* __restrict__ deltas,
                                            const float* __restrict__ sigmas, const float* __restrict__ opacities,
                                            const float* __restrict__ viewmats, const float* __restrict__ Ks,
                                            float* __restrict__ records, float* __restrict__ depths, int32_t* __restrict__ radii,
                                            int32_t* __restrict__ rects, float* __restrict__ means2d, int32_t* __restrict__ hulls) {
    const int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (int64_t)p.I * p.N) return;
    const int i = (int)(idx / p.N), n = (int)(idx % p.N);
    float* rec = records + idx * RC;
    int32_t* rect = rects + idx * 4;
    auto cull = [&]() {
        for (int r = 0; r < RC; ++r) rec[r] = 0.f;
        means2d[idx * 2] = means2d[idx * 2 + 1] = 0.f;
        rect[0] = rect[1] = rect[2] = rect[3] = 0;
        radii[idx] = 0;
        depths[idx] = 0.f;
        hulls[idx] = 0;
    };
    const float o = opacities[n];
    const ConvexView v = load_camera(viewmats + i * 16, Ks + i * 9);
    ConvexGeom g;
    project_points(p, v, points + (int64_t)n * p.K * 3, g);
    if (!g.front || !(g.zeta < p.far) || !(o > p.alpha_min)) { cull(); return; }
    gift_wrap(p.K, g.px, g.py, g.order, g.count);
    const int M = g.count;
    if (M < 3) { cull(); return; }
    const float s = depth_scale(g.zeta, p.law);
    const float delta = deltas[n], sigma = sigmas[n];
    const float gs = s * delta;
    // edges, record, and the support bound: {p : max_j L_j(p) <= kappa}, kappa = ln(o/alpha_min - 1) / (s^2 sigma delta)
    double nx[KMAX], ny[KMAX], ee[KMAX], nn[KMAX];
    for (int j = 0; j < KMAX; ++j) {
        float* r = rec + 2 + 3 * j;
        if (j < M) {
            const int a = g.order[j], b = g.order[j + 1 < M ? j + 1 : 0];
            const float n_x = g.py[b] - g.py[a], n_y = g.px[a] - g.px[b];
            r[0] = gs * n_x;
            r[1] = gs * n_y;
            r[2] = gs * (n_x * (g.cx - g.px[a]) + n_y * (g.cy - g.py[a]));
            nx[j] = n_x; ny[j] = n_y; nn[j] = sqrt(nx[j] * nx[j] + ny[j] * ny[j]);
            ee[j] = (double)g.px[b] * g.py[a] - (double)g.px[a] * g.py[b];
        } else {
            r[0] = r[1] = r[2] = 0.f;
        }
    }
    const double kappa = fmax(0.0, log((double)o / p.alpha_min - 1.0) / ((double)s * s * sigma * delta));
    double xmin = 1e300, xmax = -1e300, ymin = 1e300, ymax = -1e300;
    for (int j = 0; j < M; ++j) {  // the hull's vertices lie inside the region (kappa >= 0)
        const double hx = g.px[g.order[j]], hy = g.py[g.order[j]];
        xmin = fmin(xmin, hx); xmax = fmax(xmax, hx); ymin = fmin(ymin, hy); ymax = fmax(ymax, hy);
    }
    for (int j = 0; j < M; ++j) {
        for (int k = j + 1; k < M; ++k) {  // the intersection of lines (j, k) is that of (k, j)
            const double det = nx[j] * ny[k] - ny[j] * nx[k];
            if (!(fabs(det) > 1e-12 * nn[j] * nn[k])) continue;
            const double rj = kappa - ee[j], rk = kappa - ee[k];
            const double vx = (rj * ny[k] - rk * ny[j]) / det, vy = (nx[j] * rk - nx[k] * rj) / det;
            bool feasible = true;
            for (int l = 0; l < M && feasible; ++l) {
                const double L = nx[l] * vx + ny[l] * vy + ee[l];
                const double tol = 1e-9 * (kappa + nn[l] * (fabs(vx) + fabs(vy)) + fabs(ee[l]));
                feasible = L <= kappa + tol;
            }
            if (feasible) { xmin = fmin(xmin, vx); xmax = fmax(xmax, vx); ymin = fmin(ymin, vy); ymax = fmax(ymax, vy); }
        }
    }
    const double x0 = fmin(fmax(floor(xmin - p.pixel_offset), 0.0), (double)p.width);
    const double x1 = fmin(fmax(floor(xmax - p.pixel_offset) + 1.0, 0.0), (double)p.width);
    const double y0 = fmin(fmax(floor(ymin - p.pixel_offset), 0.0), (double)p.height);
    const double y1 = fmin(fmax(floor(ymax - p.pixel_offset) + 1.0, 0.0), (double)p.height);
    if (!(x1 > x0 && y1 > y0)) { cull(); return; }
    rec[0] = g.cx; rec[1] = g.cy;
    rec[ConvexFootprint::COUNT] = (float)M;
    rec[ConvexFootprint::BETA] = s * sigma;
    means2d[idx * 2] = g.cx; means2d[idx * 2 + 1] = g.cy;
    rect[0] = (int32_t)x0; rect[1] = (int32_t)y0; rect[2] = (int32_t)x1; rect[3] = (int32_t)y1;
    const int side = max(rect[2] - rect[0], rect[3] - rect[1]);
    radii[idx] = (side + 1) / 2;
    depths[idx] = g.zeta;
    int32_t packed = M << 24;
    for (int j = 0; j < M; ++j) packed |= g.order[j] << (3 * j);
    hulls[idx] = packed;
}

// Backward (c treated as a constant, see reference/convex.py): for edge a -> b with n = (b_y - a_y, a_x - b_x),
// record a_j = g n, b_j = g n . (c - a), g = s delta:
//   v_n = g (v_a + v_b c), v_e = g v_b, v_g += v_a . n + v_b n . (c - a); then the edge -> vertex VJP
//   (rasterizers.md a.4) written relative to c: v_pa += g (v_ay + v_b (c_y - b_y), -(v_ax + v_b (c_x - b_x))),
//   v_pb += g (-(v_ay + v_b (c_y - a_y)), v_ax + v_b (c_x - a_x)); pixels -> camera -> world.
__global__ void project_convexes_bwd_kernel(ConvexProjParams p, const float* __restrict__ points, const float* __restrict__ deltas,
                                            const float* __restrict__ sigmas, const float* __restrict__ viewmats,
                                            const float* __restrict__ Ks, const int32_t* __restrict__ radii,
                                            const int32_t* __restrict__ hulls, const float* __restrict__ v_records,
                                            const float* __restrict__ v_depths, float* __restrict__ v_points,
                                            float* __restrict__ v_deltas, float* __restrict__ v_sigmas) {
    const int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (int64_t)p.I * p.N) return;
    const int i = (int)(idx / p.N), n = (int)(idx % p.N);
    float* vp = v_points + (int64_t)n * p.K * 3;
    if (radii[idx] <= 0) {
        if (p.I == 1) {  // one image: outputs are not zero-filled, every entry is written here
            for (int k = 0; k < p.K * 3; ++k) vp[k] = 0.f;
            v_deltas[n] = 0.f;
            v_sigmas[n] = 0.f;
        }
        return;
    }
    const ConvexView v = load_camera(viewmats + i * 16, Ks + i * 9);
    ConvexGeom g;
    project_points(p, v, points + (int64_t)n * p.K * 3, g);
    const int32_t packed = hulls[idx];
    const int M = hull_count(packed);
    const float s = depth_scale(g.zeta, p.law);
    const float delta = deltas[n], sigma = sigmas[n];
    const float gs = s * delta;
    const float* vr = v_records + idx * RC;
    float vpx[KMAX], vpy[KMAX];
    for (int k = 0; k < KMAX; ++k) vpx[k] = vpy[k] = 0.f;
    float v_g = 0.f;
    for (int j = 0; j < M; ++j) {
        const int a = hull_index(packed, j), b = hull_index(packed, j + 1 < M ? j + 1 : 0);
        const float n_x = g.py[b] - g.py[a], n_y = g.px[a] - g.px[b];
        const float vax = vr[2 + 3 * j], vay = vr[3 + 3 * j], vb = vr[4 + 3 * j];
        v_g += vax * n_x + vay * n_y + vb * (n_x * (g.cx - g.px[a]) + n_y * (g.cy - g.py[a]));
        vpx[a] += gs * (vay + vb * (g.cy - g.py[b]));
        vpy[a] -= gs * (vax + vb * (g.cx - g.px[b]));
        vpx[b] -= gs * (vay + vb * (g.cy - g.py[a]));
        vpy[b] += gs * (vax + vb * (g.cx - g.px[a]));
    }
    const float v_beta = vr[ConvexFootprint::BETA];
    const float v_sigma = v_beta * s;
    const float v_delta = v_g * s;
    const float v_s = v_beta * sigma + v_g * delta;
    const float v_zeta = v_depths[idx] + v_s * depth_scale_grad(g.zeta, p.law);
    // zeta = z(centroid) = W_2 . mean(P) + b_2: each point gets W_2^T v_zeta / K
    const float vz_k = v_zeta / p.K;
    for (int k = 0; k < p.K; ++k) {
        const float rz = 1.f / g.tz[k];
        const float vtx = v.fx * rz * vpx[k], vty = v.fy * rz * vpy[k];
        const float vtz = -(v.fx * g.tx[k] * vpx[k] + v.fy * g.ty[k] * vpy[k]) * rz * rz + vz_k;
        const float gx = v.W[0][0] * vtx + v.W[1][0] * vty + v.W[2][0] * vtz;
        const float gy = v.W[0][1] * vtx + v.W[1][1] * vty + v.W[2][1] * vtz;
        const float gz = v.W[0][2] * vtx + v.W[1][2] * vty + v.W[2][2] * vtz;
        if (p.I == 1) {
            vp[k * 3] = gx; vp[k * 3 + 1] = gy; vp[k * 3 + 2] = gz;
        } else {
            atomicAdd(vp + k * 3, gx); atomicAdd(vp + k * 3 + 1, gy); atomicAdd(vp + k * 3 + 2, gz);
        }
    }
    if (p.I == 1) {
        v_deltas[n] = v_delta;
        v_sigmas[n] = v_sigma;
    } else {
        atomicAdd(v_deltas + n, v_delta);
        atomicAdd(v_sigmas + n, v_sigma);
    }
}

#define RECON_CHECK_CONVEX_INPUT(x) \
    TORCH_CHECK((x).is_cuda() && (x).is_contiguous(), #x " must be a contiguous CUDA tensor")

ConvexProjParams make_params(const at::Tensor& points, const at::Tensor& viewmats, int64_t width, int64_t height, double near,
                             double far, double alpha_min, double pixel_offset, int64_t law) {
    TORCH_CHECK(points.dim() == 3 && points.size(2) == 3 && points.size(1) >= 3 && points.size(1) <= KMAX,
                "points must be [N, K, 3] with 3 <= K <= 8");
    TORCH_CHECK(law >= 0 && law <= 2, "depth law must be 0 (linear), 1 (sqrt) or 2 (none)");
    ConvexProjParams p;
    p.I = (int)viewmats.size(0); p.N = (int)points.size(0); p.K = (int)points.size(1);
    p.width = (int)width; p.height = (int)height; p.law = (int)law;
    p.near = (float)near; p.far = (float)far; p.alpha_min = (float)alpha_min; p.pixel_offset = (float)pixel_offset;
    return p;
}

}  // namespace

// points [N,K,3], deltas/sigmas/opacities [N] (activated), viewmats [I,4,4] world->camera, Ks [I,3,3].
// Returns records [I,N,28], depths [I,N], radii [I,N] int32 (0 = culled), rects [I,N,4] int32, means2d [I,N,2],
// hulls [I,N] int32 (packed hull indices and count). Culled entries are zero.
std::vector<at::Tensor> project_convexes_fwd(const at::Tensor& points, const at::Tensor& deltas, const at::Tensor& sigmas,
                                             const at::Tensor& opacities, const at::Tensor& viewmats, const at::Tensor& Ks,
                                             int64_t width, int64_t height, double near, double far, double alpha_min,
                                             double pixel_offset, int64_t law) {
    RECON_CHECK_CONVEX_INPUT(points); RECON_CHECK_CONVEX_INPUT(deltas); RECON_CHECK_CONVEX_INPUT(sigmas);
    RECON_CHECK_CONVEX_INPUT(opacities); RECON_CHECK_CONVEX_INPUT(viewmats); RECON_CHECK_CONVEX_INPUT(Ks);
    const c10::cuda::OptionalCUDAGuard guard(points.device());
    const ConvexProjParams p = make_params(points, viewmats, width, height, near, far, alpha_min, pixel_offset, law);
    auto f = points.options();
    at::Tensor records = at::empty({p.I, p.N, RC}, f);
    at::Tensor depths = at::empty({p.I, p.N}, f);
    at::Tensor radii = at::empty({p.I, p.N}, f.dtype(at::kInt));
    at::Tensor rects = at::empty({p.I, p.N, 4}, f.dtype(at::kInt));
    at::Tensor means2d = at::empty({p.I, p.N, 2}, f);
    at::Tensor hulls = at::empty({p.I, p.N}, f.dtype(at::kInt));
    const int64_t total = (int64_t)p.I * p.N;
    if (total) {
        project_convexes_fwd_kernel<<<(unsigned)((total + 127) / 128), 128, 0, c10::cuda::getCurrentCUDAStream()>>>(
            p, points.data_ptr<float>(), deltas.data_ptr<float>(), sigmas.data_ptr<float>(), opacities.data_ptr<float>(),
            viewmats.data_ptr<float>(), Ks.data_ptr<float>(), records.data_ptr<float>(), depths.data_ptr<float>(),
            radii.data_ptr<int32_t>(), rects.data_ptr<int32_t>(), means2d.data_ptr<float>(), hulls.data_ptr<int32_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    return {records, depths, radii, rects, means2d, hulls};
}

// Returns v_points [N,K,3], v_deltas [N], v_sigmas [N] (the records' means2d slots are ignored: see above).
std::vector<at::Tensor> project_convexes_bwd(const at::Tensor& points, const at::Tensor& deltas, const at::Tensor& sigmas,
                                             const at::Tensor& viewmats, const at::Tensor& Ks, const at::Tensor& radii,
                                             const at::Tensor& hulls, const at::Tensor& v_records, const at::Tensor& v_depths,
                                             int64_t law) {
    RECON_CHECK_CONVEX_INPUT(points); RECON_CHECK_CONVEX_INPUT(deltas); RECON_CHECK_CONVEX_INPUT(sigmas);
    RECON_CHECK_CONVEX_INPUT(viewmats); RECON_CHECK_CONVEX_INPUT(Ks); RECON_CHECK_CONVEX_INPUT(radii);
    RECON_CHECK_CONVEX_INPUT(hulls); RECON_CHECK_CONVEX_INPUT(v_records); RECON_CHECK_CONVEX_INPUT(v_depths);
    const c10::cuda::OptionalCUDAGuard guard(points.device());
    const ConvexProjParams p = make_params(points, viewmats, 1, 1, 0.0, 0.0, 0.0, 0.0, law);
    auto alloc = [&](const at::Tensor& t) { return p.I == 1 ? at::empty_like(t) : at::zeros_like(t); };
    at::Tensor v_points = alloc(points), v_deltas = alloc(deltas), v_sigmas = alloc(sigmas);
    const int64_t total = (int64_t)p.I * p.N;
    if (total) {
        project_convexes_bwd_kernel<<<(unsigned)((total + 127) / 128), 128, 0, c10::cuda::getCurrentCUDAStream()>>>(
            p, points.data_ptr<float>(), deltas.data_ptr<float>(), sigmas.data_ptr<float>(), viewmats.data_ptr<float>(),
            Ks.data_ptr<float>(), radii.data_ptr<int32_t>(), hulls.data_ptr<int32_t>(), v_records.data_ptr<float>(),
            v_depths.data_ptr<float>(), v_points.data_ptr<float>(), v_deltas.data_ptr<float>(), v_sigmas.data_ptr<float>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    return {v_points, v_deltas, v_sigmas};
}

}  // namespace recon

TORCH_LIBRARY_FRAGMENT(recon, m) {
    m.def("project_convexes_fwd", &recon::project_convexes_fwd);
    m.def("project_convexes_bwd", &recon::project_convexes_bwd);
}
