// recon CUDA core: footprint policies of triangle splats (rasterizers.md a.5) and of the opaque,
// barycentric-coloured triangles of Triangle Splatting+ (a.6). PyTorch twin: reference/triangle.py.
// recon-footprint: TriangleFootprint id=3
// recon-footprint: TriangleBaryFootprint id=4
//
// Record (row-major [I, N, R]):
//   [n0x, n0y, e0, n1x, n1y, e1, n2x, n2y, e2, inv_phi_s, sigma (, q0, q1, q2)]
// L_i(p) = n_i . p + e_i (< 0 inside; unit normals, so |L_i| is a distance in pixels),
// phi = max_i L_i, u = phi * inv_phi_s (inv_phi_s = -1/inradius), w = u^sigma where u > 0.
// TriangleBaryFootprint adds q_i = 1 / L_i(vertex opposite edge i) and the per-pixel colour hook
// (kColorVerts = 3): the colour of a pixel is sum_v b_v c_v with b = (L1 q1, L2 q2, L0 q0).
#pragma once
#include <cuda_runtime.h>

namespace recon {

struct TriangleFootprint {
    static constexpr int R = 11;
    struct Cache { float L[3]; float u; int arg; };

    __device__ __forceinline__ static bool eval(const float* rec, float px, float py, float& w, Cache& c) {
        float phi = -3.4e38f;
        int arg = 0;
#pragma unroll
        for (int i = 0; i < 3; ++i) {
            const float l = rec[3 * i] * px + rec[3 * i + 1] * py + rec[3 * i + 2];
            c.L[i] = l;
            if (l > phi) { phi = l; arg = i; }
        }
        const float u = phi * rec[9];
        c.u = u;
        c.arg = arg;
        if (!(u > 0.f)) return false;
        w = __powf(u, rec[10]);
        return true;
    }

    // dw/du = sigma w / u, dw/dsigma = w ln u; dphi flows to the arg-max edge only (sub-gradient).
    __device__ __forceinline__ static void vjp(const float* rec, float px, float py, const Cache& c, float w, float v_w,
                                               float* v_rec) {
        const float lu = __logf(c.u);
        v_rec[10] += v_w * w * lu;
        const float v_u = v_w * rec[10] * w / c.u;
        const float phi = c.L[c.arg];
        v_rec[9] += v_u * phi;
        const float v_phi = v_u * rec[9];
#pragma unroll
        for (int i = 0; i < 3; ++i) {
            if (i == c.arg) {
                v_rec[3 * i] += v_phi * px;
                v_rec[3 * i + 1] += v_phi * py;
                v_rec[3 * i + 2] += v_phi;
            }
        }
    }

    // Exact tile test for intersect.cu: o w >= alpha_min needs u >= k = (alpha_min / o)^(1 / sigma),
    // i.e. L_i(p) <= k / inv_phi_s for every edge. The pixel-centre rectangle meets that (convex) set only if,
    // for each edge, its smallest L_i (at one of its corners) satisfies the bound; together with the rect
    // (the AABB of the shrunk triangle) this is a separating-axis test. Slack keeps it conservative.
    __device__ __forceinline__ static bool touches_rect(const float* rec, float opacity, float alpha_min, float x0, float x1,
                                                        float y0, float y1) {
        if (!(opacity > alpha_min)) return false;
        const float k = __expf(__logf(alpha_min / opacity) / fmaxf(rec[10], 1e-12f));
        const float thr = k / rec[9];  // <= 0
#pragma unroll
        for (int i = 0; i < 3; ++i) {
            const float nx = rec[3 * i], ny = rec[3 * i + 1], e = rec[3 * i + 2];
            const float lmin = fminf(nx * x0, nx * x1) + fminf(ny * y0, ny * y1) + e;
            if (lmin > thr + 1e-3f) return false;
        }
        return true;
    }
};

struct TriangleBaryFootprint : TriangleFootprint {
    static constexpr int R = 14;
    static constexpr int kColorVerts = 3;

    // Per-pixel colour hook: barycentric weights of vertices 0, 1, 2 from the cached edge values.
    __device__ __forceinline__ static void color_weights(const float* rec, const Cache& c, float* b) {
        b[0] = c.L[1] * rec[12];
        b[1] = c.L[2] * rec[13];
        b[2] = c.L[0] * rec[11];
    }

    __device__ __forceinline__ static void color_weights_vjp(const float* rec, float px, float py, const Cache& c,
                                                             const float* v_b, float* v_rec) {
        // b_{(i+2)%3} = L_i q_i
#pragma unroll
        for (int i = 0; i < 3; ++i) {
            const float vb = v_b[(i + 2) % 3];
            v_rec[11 + i] += vb * c.L[i];
            const float v_l = vb * rec[11 + i];
            v_rec[3 * i] += v_l * px;
            v_rec[3 * i + 1] += v_l * py;
            v_rec[3 * i + 2] += v_l;
        }
    }
};

}  // namespace recon
