// recon CUDA core: footprint policy of the 3D smooth convex (3D Convex Splatting; rasterizers.md a.4).
// recon-footprint: ConvexFootprint id=1
//
// Record (R = 28 floats, written by project_convex.cu; the PyTorch twin is reference/convex.py):
//   [0..1]            c = the convex's 2D centre (the projected centroid, inside the hull)
//   [2 + 3j .. 4 + 3j] (a_x, a_y, b) of hull edge j < 8:  A_j(p) = a_j . (p - c) + b_j = s delta L_j(p)
//   [26]              M = number of hull edges (3..8); edges j >= M are zero and skipped
//   [27]              beta = s sigma
// Footprint: phi = logsumexp_j A_j (max subtracted), w = sigmoid(-beta phi) = 1 / (1 + exp(beta phi)).
// The policy interface (R, Cache, eval, vjp, touches_rect) is documented in footprint_gaussian.cuh.
#pragma once
#include <cuda_runtime.h>

namespace recon {

struct ConvexFootprint {
    static constexpr int E = 8;              // max hull edges (max points per convex)
    static constexpr int COUNT = 2 + 3 * E;  // record slot of M
    static constexpr int BETA = COUNT + 1;   // record slot of beta
    static constexpr int R = BETA + 1;
    // e[j] = exp(A_j - max): the backward reuses them for the softmax instead of recomputing A_j and exp
    struct Cache { float dx, dy, inv_sum, phi; float e[E]; };

    __device__ __forceinline__ static bool eval(const float* rec, float px, float py, float& w, Cache& cache) {
        const int m = (int)rec[COUNT];
        if (m < 3) return false;
        const float dx = px - rec[0], dy = py - rec[1];
        float A[E];
        float mx = -3.4e38f;
#pragma unroll
        for (int j = 0; j < E; ++j) {
            if (j < m) {
                A[j] = fmaf(rec[2 + 3 * j], dx, fmaf(rec[3 + 3 * j], dy, rec[4 + 3 * j]));
                mx = fmaxf(mx, A[j]);
            }
        }
        float sum = 0.f;
#pragma unroll
        for (int j = 0; j < E; ++j) {
            cache.e[j] = j < m ? __expf(A[j] - mx) : 0.f;
            sum += cache.e[j];
        }
        const float phi = mx + __logf(sum);
        w = 1.f / (1.f + __expf(rec[BETA] * phi));
        cache.dx = dx; cache.dy = dy; cache.inv_sum = 1.f / sum; cache.phi = phi;
        return true;
    }

    // dL/drec given dL/dw: w = sigmoid(-x), x = beta phi; dphi/dA_j = softmax_j; dA_j/d(a_j, b_j, c).
    __device__ __forceinline__ static void vjp(const float* rec, float /*px*/, float /*py*/, const Cache& c, float w, float v_w,
                                               float* v_rec) {
        const int m = (int)rec[COUNT];
        const float v_x = -w * (1.f - w) * v_w;
        v_rec[BETA] += v_x * c.phi;
        const float v_phi = v_x * rec[BETA];
        float v_cx = 0.f, v_cy = 0.f;
#pragma unroll
        for (int j = 0; j < E; ++j) {
            if (j < m) {
                const float ax = rec[2 + 3 * j], ay = rec[3 + 3 * j];
                const float v_A = v_phi * c.e[j] * c.inv_sum;
                v_rec[2 + 3 * j] += v_A * c.dx;
                v_rec[3 + 3 * j] += v_A * c.dy;
                v_rec[4 + 3 * j] += v_A;
                v_cx -= v_A * ax;
                v_cy -= v_A * ay;
            }
        }
        v_rec[0] += v_cx;
        v_rec[1] += v_cy;
    }

    // Exact-enough tile test for intersect.cu: logsumexp >= max, so alpha = o w < alpha_min wherever some
    // A_j > T = ln(o / alpha_min - 1) / beta. A_j is linear, so its minimum over the rectangle of pixel
    // centres [x0, x1] x [y0, y1] is at a corner; the tile is skipped when one edge's minimum exceeds T
    // (a separating-axis test on the pushed-out hull, conservative by a small relative slack).
    __device__ __forceinline__ static bool touches_rect(const float* rec, float opacity, float alpha_min, float x0, float x1,
                                                        float y0, float y1) {
        const int m = (int)rec[COUNT];
        if (m < 3 || !(opacity > alpha_min)) return false;
        const float T = __logf(opacity / alpha_min - 1.f) / rec[BETA];
        const float slack = 1e-3f * (fabsf(T) + 1.f);
        const float lx0 = x0 - rec[0], lx1 = x1 - rec[0], ly0 = y0 - rec[1], ly1 = y1 - rec[1];
        for (int j = 0; j < m; ++j) {
            const float ax = rec[2 + 3 * j], ay = rec[3 + 3 * j];
            const float lo = rec[4 + 3 * j] + (ax > 0.f ? ax * lx0 : ax * lx1) + (ay > 0.f ? ay * ly0 : ay * ly1);
            if (lo > T + slack) return false;
        }
        return true;
    }
};

}  // namespace recon
