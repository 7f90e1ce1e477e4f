// recon CUDA core: footprint policy of the EWA 3D Gaussian (rasterizers.md a.3).
// recon-footprint: GaussianFootprint id=0
//
// A footprint policy is everything the shared compositor (composite.cuh) knows about a primitive:
//   - R            floats in its screen-space record (stored [I, N, R], row-major);
//   - Cache        what eval() leaves for vjp();
//   - eval(rec, px, py, w, cache) -> bool   w = F(rec, pixel) in [0, 1]; false = no contribution;
//   - vjp(rec, px, py, cache, w, v_w, v_rec) accumulates dL/drec given dL/dw;
//   - touches_rect(rec, opacity, alpha_min, x0, x1, y0, y1) -> bool   exact tile test (intersect.cu).
// The marker line above registers the policy (footprints.h); adding a primitive = one header like this
// + its projection kernel (a .cu file that registers its own ops); the compositor is untouched.
#pragma once
#include <cuda_runtime.h>

namespace recon {

struct GaussianFootprint {
    // record = (u_x, u_y, a, b, c): projected mean in pixels and the conic Q = [[a, b], [b, c]].
    static constexpr int R = 5;
    struct Cache { float dx, dy; };

    __device__ __forceinline__ static bool eval(const float* rec, float px, float py, float& w, Cache& cache) {
        float dx = rec[0] - px, dy = rec[1] - py;
        float e = 0.5f * (rec[2] * dx * dx + rec[4] * dy * dy) + rec[3] * dx * dy;
        cache.dx = dx; cache.dy = dy;
        if (e < 0.f) return false;
        w = __expf(-e);
        return true;
    }

    __device__ __forceinline__ static void vjp(const float* rec, float /*px*/, float /*py*/, const Cache& c, float w, float v_w,
                                               float* v_rec) {
        float v_e = -w * v_w;  // w = exp(-e)
        float dx = c.dx, dy = c.dy;
        v_rec[0] += v_e * (rec[2] * dx + rec[3] * dy);
        v_rec[1] += v_e * (rec[3] * dx + rec[4] * dy);
        v_rec[2] += 0.5f * v_e * dx * dx;
        v_rec[3] += v_e * dx * dy;
        v_rec[4] += 0.5f * v_e * dy * dy;
    }

    // Exact tile test used by intersect.cu: can any pixel centre in [x0, x1] x [y0, y1] reach
    // alpha >= alpha_min?  alpha = o exp(-q/2), q = d^T Q d, so the tile is touched iff
    // min over the rectangle of q <= 2 ln(o / alpha_min). q is a convex quadratic, so when the centre
    // is outside the rectangle its minimum lies on one of the four edges (1-D clamped minimisations).
    // A relative slack of 1e-4 keeps the test conservative against rounding (the per-pixel test decides).
    __device__ __forceinline__ static bool touches_rect(const float* rec, float opacity, float alpha_min, float x0, float x1,
                                                        float y0, float y1) {
        float q = min_quad_over_rect(rec, x0, x1, y0, y1);
        float thr = 2.f * logf(opacity / alpha_min);
        return q <= thr * 1.0001f + 1e-4f;
    }

    __device__ __forceinline__ static float min_quad_over_rect(const float* rec, float x0, float x1, float y0, float y1) {
        float ux = rec[0], uy = rec[1], a = rec[2], b = rec[3], c = rec[4];
        if (ux >= x0 && ux <= x1 && uy >= y0 && uy <= y1) return 0.f;
        float best = 3.4e38f;
        // vertical edges: dx fixed, minimise over dy in [y0-uy, y1-uy]
#pragma unroll
        for (int k = 0; k < 2; ++k) {
            float dx = (k == 0 ? x0 : x1) - ux;
            float dy = c > 0.f ? fminf(fmaxf(-b * dx / c, y0 - uy), y1 - uy) : y0 - uy;
            best = fminf(best, a * dx * dx + 2.f * b * dx * dy + c * dy * dy);
        }
#pragma unroll
        for (int k = 0; k < 2; ++k) {
            float dy = (k == 0 ? y0 : y1) - uy;
            float dx = a > 0.f ? fminf(fmaxf(-b * dy / a, x0 - ux), x1 - ux) : x0 - ux;
            best = fminf(best, a * dx * dx + 2.f * b * dx * dy + c * dy * dy);
        }
        return best;
    }
};

}  // namespace recon
