"""Neural implicit surfaces (NeuS-style SDF fields): rays, occupancy grid, NeuS compositing, meshes.

- :mod:`recon.surfaces.rays` — camera rays in world space, ray/box intersection;
- :mod:`recon.surfaces.neus` — SDF -> opacity (NeuS, learnable inverse standard deviation ``s``) and
  front-to-back compositing of packed samples (PyTorch twin of nerfacc's ``render_weight_from_alpha``);
- :mod:`recon.surfaces.occupancy` — occupancy grid over the unit cube, updated from the SDF, and ray
  marching through it (pure PyTorch; nerfacc's CUDA traversal when it imports and the device is CUDA);
- :mod:`recon.surfaces.marching_cubes` — the zero level set of an SDF on a grid as a triangle mesh;
- :mod:`recon.surfaces.mesh_io` — binary PLY for meshes;
- :mod:`recon.surfaces.config` — the ``surface`` section of ``recon-train``.

The field itself (hash-grid encoding + MLPs) is :class:`recon.scenes.surface.SurfaceScene`; the
training recipe is :class:`recon.methods.surface.SurfaceMethod`.
"""
