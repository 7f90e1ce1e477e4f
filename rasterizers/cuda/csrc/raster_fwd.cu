// recon CUDA core: instantiations + launcher of the forward compositor (composite.cuh).
#include "raster_common.cuh"

namespace recon {

template <class P, int C>
static void launch_fwd(const CompositeParams& p, const at::Tensor& records, const at::Tensor& opacities, const at::Tensor& colors,
                       const at::Tensor& background, const at::Tensor& tile_offsets, const at::Tensor& flatten_ids,
                       at::Tensor& out_colors, at::Tensor& out_alphas, at::Tensor& last_ids, at::Tensor& n_contrib,
                       at::Tensor& max_weight) {
    constexpr int CV = ColorVerts<P>::value;  // colours per primitive (per-pixel colour hook, composite.cuh)
    if constexpr (CV > 1 && C > 8) {
        TORCH_CHECK(false, "per-vertex colours support at most 8 channels, got ", C);  // not instantiated: compile time
    } else {
    TORCH_CHECK(colors.numel() == (int64_t)p.I * p.N * CV * C, "colors must be [I, N", (CV > 1 ? ", V" : ""), ", C]");
    dim3 block(p.tile, p.tile, 1), grid(p.tiles_x, p.tiles_y, p.I);
    size_t smem = (size_t)p.tile * p.tile * (sizeof(int32_t) + sizeof(float) * (1 + P::R));
    auto kernel = composite_fwd_kernel<P, C>;
    set_smem(kernel, smem);
    if (grid.x * grid.y * grid.z == 0) return;
    kernel<<<grid, block, smem, c10::cuda::getCurrentCUDAStream()>>>(
        p, records.data_ptr<float>(), opacities.data_ptr<float>(), colors.data_ptr<float>(),
        background.numel() ? background.data_ptr<float>() : nullptr, tile_offsets.data_ptr<int32_t>(),
        flatten_ids.data_ptr<int32_t>(), out_colors.data_ptr<float>(), out_alphas.data_ptr<float>(), last_ids.data_ptr<int32_t>(),
        n_contrib.data_ptr<int32_t>(),
        max_weight.numel() ? max_weight.data_ptr<float>() : nullptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
}

std::vector<at::Tensor> composite_fwd(int64_t footprint, const at::Tensor& records, const at::Tensor& opacities,
                                      const at::Tensor& colors, const at::Tensor& background, const at::Tensor& tile_offsets,
                                      const at::Tensor& flatten_ids, int64_t width, int64_t height, int64_t tile,
                                      double pixel_offset, double alpha_min, double alpha_max, double t_min, bool want_max_weight) {
    RECON_CHECK_INPUT(records); RECON_CHECK_INPUT(opacities); RECON_CHECK_INPUT(colors);
    RECON_CHECK_INPUT(tile_offsets); RECON_CHECK_INPUT(flatten_ids);
    if (background.numel()) { RECON_CHECK_INPUT(background); }
    const c10::cuda::OptionalCUDAGuard guard(records.device());
    CompositeParams p = make_params(records, flatten_ids, width, height, tile, pixel_offset, alpha_min, alpha_max, t_min);
    const int64_t C = colors.size(-1);
    auto f = records.options();
    at::Tensor out_colors = at::empty({p.I, height, width, C}, f);
    at::Tensor out_alphas = at::empty({p.I, height, width, 1}, f);
    at::Tensor last_ids = at::empty({p.I, height, width}, f.dtype(at::kInt));
    at::Tensor n_contrib = at::empty({p.I, height, width}, f.dtype(at::kInt));
    at::Tensor max_weight = want_max_weight ? at::zeros({p.I, p.N}, f) : at::empty({0}, f);
    bool ok = false;
#define RECON_FWD_CASE(P, ID, CH)                                                                                        \
    if (!ok && footprint == ID && C == CH) {                                                                            \
        launch_fwd<P, CH>(p, records, opacities, colors, background, tile_offsets, flatten_ids, out_colors, out_alphas, \
                          last_ids, n_contrib, max_weight);                                                                        \
        ok = true;                                                                                                      \
    }
#define RECON_FWD_FOOTPRINT(P, ID) RECON_FOR_EACH_CHANNELS(RECON_FWD_CASE, P, ID)
    RECON_FOR_EACH_FOOTPRINT(RECON_FWD_FOOTPRINT)
#undef RECON_FWD_FOOTPRINT
#undef RECON_FWD_CASE
    TORCH_CHECK(ok, "composite_fwd: no instantiation for footprint ", footprint, " with ", C, " channels");
    return {out_colors, out_alphas, last_ids, n_contrib, max_weight};
}

}  // namespace recon
