// recon CUDA core: small fixed-size linear algebra with hand-written vector-Jacobian products.
// Every forward helper has its `_vjp` twin right below it (pattern after gsplat's Utils.cuh,
// Apache-2.0; the code here is our own, derived from rasterizers.md section a.3).
#pragma once
#include <cuda_runtime.h>

namespace recon {

struct vec3 { float x, y, z; };
// Row-major small matrices: m[r][c].
struct mat2 { float m[2][2]; };
struct mat3 { float m[3][3]; };
struct mat23 { float m[2][3]; };

__device__ __forceinline__ vec3 make_v3(float x, float y, float z) { return {x, y, z}; }
__device__ __forceinline__ float dot3(vec3 a, vec3 b) { return a.x * b.x + a.y * b.y + a.z * b.z; }

__device__ __forceinline__ mat3 transpose(const mat3& a) {
    mat3 r;
#pragma unroll
    for (int i = 0; i < 3; ++i)
#pragma unroll
        for (int j = 0; j < 3; ++j) r.m[i][j] = a.m[j][i];
    return r;
}
__device__ __forceinline__ mat3 matmul(const mat3& a, const mat3& b) {
    mat3 r;
#pragma unroll
    for (int i = 0; i < 3; ++i)
#pragma unroll
        for (int j = 0; j < 3; ++j) r.m[i][j] = a.m[i][0] * b.m[0][j] + a.m[i][1] * b.m[1][j] + a.m[i][2] * b.m[2][j];
    return r;
}
__device__ __forceinline__ vec3 matvec(const mat3& a, vec3 v) {
    return {a.m[0][0] * v.x + a.m[0][1] * v.y + a.m[0][2] * v.z, a.m[1][0] * v.x + a.m[1][1] * v.y + a.m[1][2] * v.z,
            a.m[2][0] * v.x + a.m[2][1] * v.y + a.m[2][2] * v.z};
}
__device__ __forceinline__ vec3 matTvec(const mat3& a, vec3 v) {
    return {a.m[0][0] * v.x + a.m[1][0] * v.y + a.m[2][0] * v.z, a.m[0][1] * v.x + a.m[1][1] * v.y + a.m[2][1] * v.z,
            a.m[0][2] * v.x + a.m[1][2] * v.y + a.m[2][2] * v.z};
}

// ---- quaternion (w, x, y, z), normalised inside -> rotation matrix ------------------------------
__device__ __forceinline__ mat3 quat_to_rotmat(const float* q_raw, float& inv_norm) {
    float w = q_raw[0], x = q_raw[1], y = q_raw[2], z = q_raw[3];
    inv_norm = rsqrtf(w * w + x * x + y * y + z * z);
    w *= inv_norm; x *= inv_norm; y *= inv_norm; z *= inv_norm;
    mat3 R;
    R.m[0][0] = 1.f - 2.f * (y * y + z * z); R.m[0][1] = 2.f * (x * y - w * z);       R.m[0][2] = 2.f * (x * z + w * y);
    R.m[1][0] = 2.f * (x * y + w * z);       R.m[1][1] = 1.f - 2.f * (x * x + z * z); R.m[1][2] = 2.f * (y * z - w * x);
    R.m[2][0] = 2.f * (x * z - w * y);       R.m[2][1] = 2.f * (y * z + w * x);       R.m[2][2] = 1.f - 2.f * (x * x + y * y);
    return R;
}
// Given dL/dR, returns dL/dq for the *raw* (unnormalised) quaternion.
__device__ __forceinline__ void quat_to_rotmat_vjp(const float* q_raw, const mat3& g, float* v_q) {
    float inv = rsqrtf(q_raw[0] * q_raw[0] + q_raw[1] * q_raw[1] + q_raw[2] * q_raw[2] + q_raw[3] * q_raw[3]);
    float w = q_raw[0] * inv, x = q_raw[1] * inv, y = q_raw[2] * inv, z = q_raw[3] * inv;
    const float (*G)[3] = g.m;
    float vw = 2.f * (z * (G[1][0] - G[0][1]) + y * (G[0][2] - G[2][0]) + x * (G[2][1] - G[1][2]));
    float vx = 2.f * (y * (G[0][1] + G[1][0]) + z * (G[0][2] + G[2][0]) + w * (G[2][1] - G[1][2])) - 4.f * x * (G[1][1] + G[2][2]);
    float vy = 2.f * (x * (G[0][1] + G[1][0]) + w * (G[0][2] - G[2][0]) + z * (G[1][2] + G[2][1])) - 4.f * y * (G[0][0] + G[2][2]);
    float vz = 2.f * (w * (G[1][0] - G[0][1]) + x * (G[0][2] + G[2][0]) + y * (G[1][2] + G[2][1])) - 4.f * z * (G[0][0] + G[1][1]);
    // through the normalisation q_hat = q / |q|
    float d = vw * w + vx * x + vy * y + vz * z;
    v_q[0] = (vw - d * w) * inv; v_q[1] = (vx - d * x) * inv; v_q[2] = (vy - d * y) * inv; v_q[3] = (vz - d * z) * inv;
}

// ---- covariance Sigma = (R S)(R S)^T ------------------------------------------------------------
__device__ __forceinline__ mat3 quat_scale_to_covar(const float* q_raw, const float* s) {
    float inv;
    mat3 R = quat_to_rotmat(q_raw, inv);
    mat3 M;
#pragma unroll
    for (int i = 0; i < 3; ++i) { M.m[i][0] = R.m[i][0] * s[0]; M.m[i][1] = R.m[i][1] * s[1]; M.m[i][2] = R.m[i][2] * s[2]; }
    return matmul(M, transpose(M));
}
// Given dL/dSigma (full 3x3), accumulate dL/dq (raw) and dL/ds.
__device__ __forceinline__ void quat_scale_to_covar_vjp(const float* q_raw, const float* s, const mat3& v_cov,
                                                        float* v_q, float* v_s) {
    float inv;
    mat3 R = quat_to_rotmat(q_raw, inv);
    mat3 M;
#pragma unroll
    for (int i = 0; i < 3; ++i) { M.m[i][0] = R.m[i][0] * s[0]; M.m[i][1] = R.m[i][1] * s[1]; M.m[i][2] = R.m[i][2] * s[2]; }
    mat3 Gs;  // v_cov + v_cov^T
#pragma unroll
    for (int i = 0; i < 3; ++i)
#pragma unroll
        for (int j = 0; j < 3; ++j) Gs.m[i][j] = v_cov.m[i][j] + v_cov.m[j][i];
    mat3 vM = matmul(Gs, M);
    mat3 vR;
#pragma unroll
    for (int i = 0; i < 3; ++i) { vR.m[i][0] = vM.m[i][0] * s[0]; vR.m[i][1] = vM.m[i][1] * s[1]; vR.m[i][2] = vM.m[i][2] * s[2]; }
#pragma unroll
    for (int j = 0; j < 3; ++j) v_s[j] = R.m[0][j] * vM.m[0][j] + R.m[1][j] * vM.m[1][j] + R.m[2][j] * vM.m[2][j];
    quat_to_rotmat_vjp(q_raw, vR, v_q);
}

// ---- Sigma_c = W Sigma W^T ----------------------------------------------------------------------
__device__ __forceinline__ mat3 covar_world_to_cam(const mat3& W, const mat3& S) { return matmul(matmul(W, S), transpose(W)); }
// dL/dSigma = W^T G W (the W gradient is not needed: cameras are constants here).
__device__ __forceinline__ mat3 covar_world_to_cam_vjp(const mat3& W, const mat3& G) { return matmul(matmul(transpose(W), G), W); }

// ---- pinhole projection with clamped lateral Jacobian ------------------------------------------
struct Pinhole { float fx, fy, cx, cy, lim_xp, lim_xn, lim_yp, lim_yn; };
__device__ __forceinline__ Pinhole make_pinhole(const float* K, int width, int height) {
    Pinhole c;
    c.fx = K[0]; c.fy = K[4]; c.cx = K[2]; c.cy = K[5];
    float tan_x = 0.5f * width / c.fx, tan_y = 0.5f * height / c.fy;
    c.lim_xp = (width - c.cx) / c.fx + 0.3f * tan_x; c.lim_xn = c.cx / c.fx + 0.3f * tan_x;
    c.lim_yp = (height - c.cy) / c.fy + 0.3f * tan_y; c.lim_yn = c.cy / c.fy + 0.3f * tan_y;
    return c;
}
// mean2d = (fx x/z + cx, fy y/z + cy); cov2d = J Sigma_c J^T with J evaluated at clamped x/z, y/z.
__device__ __forceinline__ void persp_proj(const Pinhole& c, vec3 t, const mat3& Sc, float2& mean2d, mat2& cov2d) {
    float rz = 1.f / t.z, rz2 = rz * rz;
    float tx = t.z * fminf(c.lim_xp, fmaxf(-c.lim_xn, t.x * rz));
    float ty = t.z * fminf(c.lim_yp, fmaxf(-c.lim_yn, t.y * rz));
    mat23 J = {{{c.fx * rz, 0.f, -c.fx * tx * rz2}, {0.f, c.fy * rz, -c.fy * ty * rz2}}};
    float JS[2][3];
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 3; ++j) JS[i][j] = J.m[i][0] * Sc.m[0][j] + J.m[i][1] * Sc.m[1][j] + J.m[i][2] * Sc.m[2][j];
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j) cov2d.m[i][j] = JS[i][0] * J.m[j][0] + JS[i][1] * J.m[j][1] + JS[i][2] * J.m[j][2];
    mean2d = make_float2(c.fx * t.x * rz + c.cx, c.fy * t.y * rz + c.cy);
}
// Given dL/dmean2d and dL/dcov2d (full), accumulate dL/dt and dL/dSigma_c.
__device__ __forceinline__ void persp_proj_vjp(const Pinhole& c, vec3 t, const mat3& Sc, float2 v_mean2d, const mat2& v_cov2d,
                                               vec3& v_t, mat3& v_Sc) {
    float rz = 1.f / t.z, rz2 = rz * rz, rz3 = rz2 * rz;
    float ux = t.x * rz, uy = t.y * rz;
    bool clip_x = ux > c.lim_xp || ux < -c.lim_xn;
    bool clip_y = uy > c.lim_yp || uy < -c.lim_yn;
    float tx = t.z * fminf(c.lim_xp, fmaxf(-c.lim_xn, ux));
    float ty = t.z * fminf(c.lim_yp, fmaxf(-c.lim_yn, uy));
    float J[2][3] = {{c.fx * rz, 0.f, -c.fx * tx * rz2}, {0.f, c.fy * rz, -c.fy * ty * rz2}};
    // v_Sc = J^T G J
    float GJ[2][3];
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 3; ++j) GJ[i][j] = v_cov2d.m[i][0] * J[0][j] + v_cov2d.m[i][1] * J[1][j];
#pragma unroll
    for (int i = 0; i < 3; ++i)
#pragma unroll
        for (int j = 0; j < 3; ++j) v_Sc.m[i][j] += J[0][i] * GJ[0][j] + J[1][i] * GJ[1][j];
    // v_J = G J Sc^T + G^T J Sc
    float JS[2][3], JSt[2][3];
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 3; ++j) {
            JS[i][j] = J[i][0] * Sc.m[0][j] + J[i][1] * Sc.m[1][j] + J[i][2] * Sc.m[2][j];   // (J Sc)
            JSt[i][j] = J[i][0] * Sc.m[j][0] + J[i][1] * Sc.m[j][1] + J[i][2] * Sc.m[j][2];  // (J Sc^T)
        }
    float vJ[2][3];
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 3; ++j)
            vJ[i][j] = v_cov2d.m[i][0] * JSt[0][j] + v_cov2d.m[i][1] * JSt[1][j] + v_cov2d.m[0][i] * JS[0][j] + v_cov2d.m[1][i] * JS[1][j];
    // mean2d
    v_t.x += c.fx * rz * v_mean2d.x;
    v_t.y += c.fy * rz * v_mean2d.y;
    v_t.z -= (c.fx * t.x * v_mean2d.x + c.fy * t.y * v_mean2d.y) * rz2;
    // J(t): J00 = fx/z, J11 = fy/z, J02 = -fx tx/z^2, J12 = -fy ty/z^2 (tx = x unless clamped, then tx = z*lim)
    v_t.z += -c.fx * rz2 * vJ[0][0] - c.fy * rz2 * vJ[1][1];
    if (!clip_x) { v_t.x += -c.fx * rz2 * vJ[0][2]; v_t.z += 2.f * c.fx * tx * rz3 * vJ[0][2]; }
    else { v_t.z += c.fx * tx * rz3 * vJ[0][2]; }
    if (!clip_y) { v_t.y += -c.fy * rz2 * vJ[1][2]; v_t.z += 2.f * c.fy * ty * rz3 * vJ[1][2]; }
    else { v_t.z += c.fy * ty * rz3 * vJ[1][2]; }
}

// ---- low-pass dilation + (optional) antialiasing compensation + inverse -------------------------
// cov' = cov + eps I; rho = sqrt(max(0, det cov / det cov')); returns det(cov').
__device__ __forceinline__ float add_blur(mat2& cov, float eps, float& rho) {
    float det0 = cov.m[0][0] * cov.m[1][1] - cov.m[0][1] * cov.m[1][0];
    cov.m[0][0] += eps; cov.m[1][1] += eps;
    float det1 = cov.m[0][0] * cov.m[1][1] - cov.m[0][1] * cov.m[1][0];
    rho = sqrtf(fmaxf(0.f, det0 / det1));
    return det1;
}
// Given dL/drho, accumulate dL/dcov (pre-dilation) = dL/drho /(2 rho) [(1 - rho^2) Q - eps det(Q) I]; Q = inv(cov').
__device__ __forceinline__ void add_blur_vjp(float eps, const mat2& Q, float rho, float v_rho, mat2& v_cov) {
    float detQ = Q.m[0][0] * Q.m[1][1] - Q.m[0][1] * Q.m[1][0];
    const float f = rho > 0.f ? v_rho * 0.5f / rho : 0.f;  // d sqrt(r) = dr / (2 sqrt(r)); 0 where r <= 0
    float one_m = 1.f - rho * rho;
    v_cov.m[0][0] += f * (one_m * Q.m[0][0] - eps * detQ);
    v_cov.m[0][1] += f * (one_m * Q.m[0][1]);
    v_cov.m[1][0] += f * (one_m * Q.m[1][0]);
    v_cov.m[1][1] += f * (one_m * Q.m[1][1] - eps * detQ);
}
__device__ __forceinline__ mat2 inverse2(const mat2& a, float det) {
    float inv = 1.f / det;
    mat2 r;
    r.m[0][0] = a.m[1][1] * inv; r.m[0][1] = -a.m[0][1] * inv; r.m[1][0] = -a.m[1][0] * inv; r.m[1][1] = a.m[0][0] * inv;
    return r;
}
// Q = inv(S): dL/dS = -Q^T G Q^T (G full; symmetric Q).
__device__ __forceinline__ mat2 inverse2_vjp(const mat2& Q, const mat2& G) {
    mat2 GQ, r;
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j) GQ.m[i][j] = G.m[i][0] * Q.m[0][j] + G.m[i][1] * Q.m[1][j];
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j) r.m[i][j] = -(Q.m[i][0] * GQ.m[0][j] + Q.m[i][1] * GQ.m[1][j]);
    return r;
}

}  // namespace recon
