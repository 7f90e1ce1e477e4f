// recon CUDA core: the list of footprint policies the compositor is instantiated for.
// X(Policy, id): `id` is the integer the Python side passes to pick the policy.
#pragma once
#include "footprint_gaussian.cuh"

#define RECON_FOR_EACH_FOOTPRINT(X) X(::recon::GaussianFootprint, 0)

// Channel counts the compositor is compiled for; the Python side pads colours up to the next one.
#define RECON_FOR_EACH_CHANNELS(X, P, ID) X(P, ID, 1) X(P, ID, 2) X(P, ID, 3) X(P, ID, 4) X(P, ID, 8) X(P, ID, 16) X(P, ID, 32)
