// recon CUDA core: host entry points (bound to Python in ext.cpp).
#pragma once
#include <ATen/ATen.h>
#include <tuple>
#include <vector>

namespace recon {

#define RECON_CHECK_CUDA(x) TORCH_CHECK((x).is_cuda(), #x " must be a CUDA tensor")
#define RECON_CHECK_CONTIG(x) TORCH_CHECK((x).is_contiguous(), #x " must be contiguous")
#define RECON_CHECK_F32(x) TORCH_CHECK((x).scalar_type() == at::kFloat, #x " must be float32")
#define RECON_CHECK_INPUT(x) RECON_CHECK_CUDA(x); RECON_CHECK_CONTIG(x)

// project_gaussian.cu ------------------------------------------------------------------------
// means [N,3], quats [N,4] (wxyz, any norm), scales [N,3] (activated), opacities [N] (activated),
// viewmats [I,4,4] world->camera, Ks [I,3,3].
// Returns records [I,N,5] = (mean2d, conic a b c), depths [I,N], radii [I,N] int32 = max(r_x, r_y) (0 = culled),
// rects [I,N,4] int32 (x0, y0, x1, y1) pixel bbox end exclusive, opacities_out [I,N] (times the antialiasing
// compensation when antialiased), compensation [I,N], means2d [I,N,2] (a separate copy of the records' first two
// entries: the tensor handed out for densification). Culled entries are all zeros (reference projection.py).
std::vector<at::Tensor> project_gaussians_fwd(const at::Tensor& means, const at::Tensor& quats, const at::Tensor& scales,
                                              const at::Tensor& opacities, const at::Tensor& viewmats, const at::Tensor& Ks,
                                              int64_t width, int64_t height, double eps2d, double near, double far,
                                              double alpha_min, bool antialiased);
// v_means2d [I,N,2] adds to the records' position gradient. Returns v_means [N,3], v_quats [N,4], v_scales [N,3],
// v_opacities [N].
std::vector<at::Tensor> project_gaussians_bwd(const at::Tensor& means, const at::Tensor& quats, const at::Tensor& scales,
                                              const at::Tensor& opacities, const at::Tensor& viewmats, const at::Tensor& Ks,
                                              int64_t width, int64_t height, double eps2d, bool antialiased,
                                              const at::Tensor& radii, const at::Tensor& v_records, const at::Tensor& v_depths,
                                              const at::Tensor& v_opacities_out, const at::Tensor& v_means2d);

// sh.cu ---------------------------------------------------------------------------------------
// coeffs [N,K,3], K >= (degree+1)^2; colours [I,N,3] = max(0, sum_k coeffs_k Y_k(dir) + 0.5), dir from the
// camera centre of viewmats[i] to the mean; entries with radii == 0 are skipped (written 0).
at::Tensor sh_fwd(int64_t degree, const at::Tensor& means, const at::Tensor& coeffs, const at::Tensor& viewmats,
                  const at::Tensor& radii);
// Returns v_coeffs [N,K,3], v_means [N,3].
std::vector<at::Tensor> sh_bwd(int64_t degree, const at::Tensor& means, const at::Tensor& coeffs, const at::Tensor& viewmats,
                               const at::Tensor& radii, const at::Tensor& colors, const at::Tensor& v_colors);

// intersect.cu --------------------------------------------------------------------------------
// rects [I,N,4] int32 from the projection (empty = culled). Returns tile_offsets [I*tiles_y*tiles_x + 1] int32
// (intersections of flat tile t = img*tiles + ty*tiles_x + tx are [off[t], off[t+1])), flatten_ids [M] int32
// (index into I*N, per tile in depth order, ties by index) and tile_ids [M] int32 (flat tile of each entry).
// exact: additionally drop tiles the footprint cannot reach with alpha >= alpha_min (policy touches_rect).
// mode 0: one 64-bit (image|tile|depth) key radix sort; mode 1: depth sort of the primitives, then a
// stable radix sort of 32-bit (image|tile) keys.
std::vector<at::Tensor> intersect_tiles(int64_t footprint, const at::Tensor& records, const at::Tensor& depths,
                                        const at::Tensor& rects, const at::Tensor& opacities, int64_t width, int64_t height,
                                        int64_t tile, double pixel_offset, double alpha_min, bool exact, int64_t mode);

// raster_fwd.cu / raster_bwd.cu ------------------------------------------------------------------
// records [I,N,R], opacities [I,N], colors [I,N,C] with C in {1,2,3,4,8,16,32}, background [I,C] or empty,
// tile_offsets / flatten_ids from intersect_tiles. Returns colors [I,H,W,C], alphas [I,H,W,1], last_ids [I,H,W]
// int32 (index into flatten_ids of the last contributor, -1 if none), n_contrib [I,H,W] int32, max_weight [I,N]
// (empty unless asked: one global atomicMax per contributing (pixel, primitive) pair).
std::vector<at::Tensor> composite_fwd(int64_t footprint, const at::Tensor& records, const at::Tensor& opacities,
                                      const at::Tensor& colors, const at::Tensor& background, const at::Tensor& tile_offsets,
                                      const at::Tensor& flatten_ids, int64_t width, int64_t height, int64_t tile,
                                      double pixel_offset, double alpha_min, double alpha_max, double t_min, bool max_weight);
// Returns v_records, v_opacities, v_colors.
std::vector<at::Tensor> composite_bwd(int64_t footprint, const at::Tensor& records, const at::Tensor& opacities,
                                      const at::Tensor& colors, const at::Tensor& background, const at::Tensor& tile_offsets,
                                      const at::Tensor& flatten_ids, int64_t width, int64_t height, int64_t tile,
                                      double pixel_offset, double alpha_min, double alpha_max, double t_min,
                                      const at::Tensor& render_alphas, const at::Tensor& last_ids, const at::Tensor& v_colors,
                                      const at::Tensor& v_alphas);

}  // namespace recon
