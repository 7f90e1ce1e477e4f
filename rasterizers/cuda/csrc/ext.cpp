// recon CUDA core: Python bindings (torch extension). The Python side is recon/rasterizers/cuda/ops.py.
#include <torch/extension.h>
#include "ops.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.doc() = "recon differentiable tile rasterization core (CUDA)";
    m.def("project_gaussians_fwd", &recon::project_gaussians_fwd);
    m.def("project_gaussians_bwd", &recon::project_gaussians_bwd);
    m.def("sh_fwd", &recon::sh_fwd);
    m.def("sh_bwd", &recon::sh_bwd);
    m.def("intersect_tiles", &recon::intersect_tiles);
    m.def("composite_fwd", &recon::composite_fwd);
    m.def("composite_bwd", &recon::composite_bwd);
}
