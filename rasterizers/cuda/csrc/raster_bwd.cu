// recon CUDA core: instantiations + launcher of the backward compositor (composite.cuh).
#include "raster_common.cuh"

namespace recon {

template <class P, int C>
static void launch_bwd(const CompositeParams& p, const at::Tensor& records, const at::Tensor& opacities, const at::Tensor& colors,
                       const at::Tensor& background, const at::Tensor& tile_offsets, const at::Tensor& flatten_ids,
                       const at::Tensor& render_alphas, const at::Tensor& last_ids, const at::Tensor& v_colors_img,
                       const at::Tensor& v_alphas_img, at::Tensor& v_records, at::Tensor& v_opacities, at::Tensor& v_colors) {
    constexpr int CV = ColorVerts<P>::value;  // colours per primitive (per-pixel colour hook, composite.cuh)
    if constexpr (CV > 1 && C > 8) {
        TORCH_CHECK(false, "per-vertex colours support at most 8 channels, got ", C);  // not instantiated: compile time
    } else {
    TORCH_CHECK(colors.numel() == (int64_t)p.I * p.N * CV * C, "colors must be [I, N", (CV > 1 ? ", V" : ""), ", C]");
    dim3 block(p.tile, p.tile, 1), grid(p.tiles_x, p.tiles_y, p.I);
    size_t smem = (size_t)p.tile * p.tile * (sizeof(int32_t) + sizeof(float) * (1 + P::R + C * CV));
    auto kernel = composite_bwd_kernel<P, C>;
    set_smem(kernel, smem);
    if (grid.x * grid.y * grid.z == 0) return;
    kernel<<<grid, block, smem, c10::cuda::getCurrentCUDAStream()>>>(
        p, records.data_ptr<float>(), opacities.data_ptr<float>(), colors.data_ptr<float>(),
        background.numel() ? background.data_ptr<float>() : nullptr, tile_offsets.data_ptr<int32_t>(),
        flatten_ids.data_ptr<int32_t>(), render_alphas.data_ptr<float>(), last_ids.data_ptr<int32_t>(),
        v_colors_img.data_ptr<float>(), v_alphas_img.data_ptr<float>(), v_records.data_ptr<float>(), v_opacities.data_ptr<float>(),
        v_colors.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
}

std::vector<at::Tensor> composite_bwd(int64_t footprint, const at::Tensor& records, const at::Tensor& opacities,
                                      const at::Tensor& colors, const at::Tensor& background, const at::Tensor& tile_offsets,
                                      const at::Tensor& flatten_ids, int64_t width, int64_t height, int64_t tile,
                                      double pixel_offset, double alpha_min, double alpha_max, double t_min,
                                      const at::Tensor& render_alphas, const at::Tensor& last_ids, const at::Tensor& v_colors_img,
                                      const at::Tensor& v_alphas_img) {
    RECON_CHECK_INPUT(records); RECON_CHECK_INPUT(opacities); RECON_CHECK_INPUT(colors);
    RECON_CHECK_INPUT(tile_offsets); RECON_CHECK_INPUT(flatten_ids); RECON_CHECK_INPUT(render_alphas);
    RECON_CHECK_INPUT(last_ids); RECON_CHECK_INPUT(v_colors_img); RECON_CHECK_INPUT(v_alphas_img);
    if (background.numel()) { RECON_CHECK_INPUT(background); }
    const c10::cuda::OptionalCUDAGuard guard(records.device());
    CompositeParams p = make_params(records, flatten_ids, width, height, tile, pixel_offset, alpha_min, alpha_max, t_min);
    const int64_t C = colors.size(-1);
    at::Tensor v_records = at::zeros_like(records);
    at::Tensor v_opacities = at::zeros_like(opacities);
    at::Tensor v_colors = at::zeros_like(colors);
    bool ok = false;
#define RECON_BWD_CASE(P, ID, CH)                                                                                         \
    if (!ok && footprint == ID && C == CH) {                                                                             \
        launch_bwd<P, CH>(p, records, opacities, colors, background, tile_offsets, flatten_ids, render_alphas, last_ids, \
                          v_colors_img, v_alphas_img, v_records, v_opacities, v_colors);                                 \
        ok = true;                                                                                                       \
    }
#define RECON_BWD_FOOTPRINT(P, ID) RECON_FOR_EACH_CHANNELS(RECON_BWD_CASE, P, ID)
    RECON_FOR_EACH_FOOTPRINT(RECON_BWD_FOOTPRINT)
#undef RECON_BWD_FOOTPRINT
#undef RECON_BWD_CASE
    TORCH_CHECK(ok, "composite_bwd: no instantiation for footprint ", footprint, " with ", C, " channels");
    return {v_records, v_opacities, v_colors};
}

}  // namespace recon
