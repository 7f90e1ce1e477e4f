// recon CUDA core: real spherical harmonics up to degree 3 (Sloan 2013 basis, constants from
// rasterizers.md a.3), value and hand-written derivative w.r.t. the (unnormalised-independent)
// direction components. Our own code.
#pragma once
#include <cuda_runtime.h>

namespace recon {

constexpr float SH_C0 = 0.28209479177387814f;
constexpr float SH_C1 = 0.4886025119029199f;
constexpr float SH_C2a = 1.0925484305920792f;
constexpr float SH_C2b = 0.31539156525252005f;
constexpr float SH_C2c = 0.5462742152960396f;
constexpr float SH_C3a = -0.5900435899266435f;
constexpr float SH_C3b = 2.890611442640554f;
constexpr float SH_C3c = -0.4570457994644658f;
constexpr float SH_C3d = 0.3731763325901154f;
constexpr float SH_C3e = 1.445305721320277f;

// Basis values Y[0..(deg+1)^2) at unit direction (x, y, z).
__device__ __forceinline__ void sh_basis(int deg, float x, float y, float z, float* Y) {
    Y[0] = SH_C0;
    if (deg < 1) return;
    Y[1] = -SH_C1 * y; Y[2] = SH_C1 * z; Y[3] = -SH_C1 * x;
    if (deg < 2) return;
    float xx = x * x, yy = y * y, zz = z * z;
    Y[4] = SH_C2a * x * y; Y[5] = -SH_C2a * y * z; Y[6] = SH_C2b * (2.f * zz - xx - yy);
    Y[7] = -SH_C2a * x * z; Y[8] = SH_C2c * (xx - yy);
    if (deg < 3) return;
    Y[9] = SH_C3a * y * (3.f * xx - yy);
    Y[10] = SH_C3b * x * y * z;
    Y[11] = SH_C3c * y * (4.f * zz - xx - yy);
    Y[12] = SH_C3d * z * (2.f * zz - 3.f * xx - 3.f * yy);
    Y[13] = SH_C3c * x * (4.f * zz - xx - yy);
    Y[14] = SH_C3e * z * (xx - yy);
    Y[15] = SH_C3a * x * (xx - 3.f * yy);
}

// Accumulates g_dir += sum_k w[k] * dY_k/d(x,y,z) (partial derivatives of the polynomials above).
__device__ __forceinline__ void sh_basis_vjp(int deg, float x, float y, float z, const float* w, float& gx, float& gy, float& gz) {
    if (deg < 1) return;
    gy += -SH_C1 * w[1]; gz += SH_C1 * w[2]; gx += -SH_C1 * w[3];
    if (deg < 2) return;
    float xx = x * x, yy = y * y, zz = z * z;
    gx += SH_C2a * y * w[4]; gy += SH_C2a * x * w[4];
    gy += -SH_C2a * z * w[5]; gz += -SH_C2a * y * w[5];
    gx += -2.f * SH_C2b * x * w[6]; gy += -2.f * SH_C2b * y * w[6]; gz += 4.f * SH_C2b * z * w[6];
    gx += -SH_C2a * z * w[7]; gz += -SH_C2a * x * w[7];
    gx += 2.f * SH_C2c * x * w[8]; gy += -2.f * SH_C2c * y * w[8];
    if (deg < 3) return;
    gx += SH_C3a * 6.f * x * y * w[9]; gy += SH_C3a * 3.f * (xx - yy) * w[9];
    gx += SH_C3b * y * z * w[10]; gy += SH_C3b * x * z * w[10]; gz += SH_C3b * x * y * w[10];
    gx += SH_C3c * (-2.f * x * y) * w[11]; gy += SH_C3c * (4.f * zz - xx - 3.f * yy) * w[11]; gz += SH_C3c * 8.f * y * z * w[11];
    gx += SH_C3d * (-6.f * x * z) * w[12]; gy += SH_C3d * (-6.f * y * z) * w[12]; gz += SH_C3d * (6.f * zz - 3.f * xx - 3.f * yy) * w[12];
    gx += SH_C3c * (4.f * zz - 3.f * xx - yy) * w[13]; gy += SH_C3c * (-2.f * x * y) * w[13]; gz += SH_C3c * 8.f * x * z * w[13];
    gx += SH_C3e * 2.f * x * z * w[14]; gy += SH_C3e * (-2.f * y * z) * w[14]; gz += SH_C3e * (xx - yy) * w[14];
    gx += SH_C3a * 3.f * (xx - yy) * w[15]; gy += SH_C3a * (-6.f * x * y) * w[15];
}

}  // namespace recon
