// recon CUDA core: the footprint policies the compositor is instantiated for.
// RECON_FOR_EACH_FOOTPRINT(X) expands X(Policy, id) once per policy. It lives in a header generated at
// build time from the `// recon-footprint: <Struct> id=<n>` marker line of every footprint_*.cuh, so a new
// primitive's footprint header is picked up without editing this file.
#pragma once
#include "recon_footprint_list.h"

// Channel counts the compositor is compiled for; the Python side pads colours up to the next one.
#define RECON_FOR_EACH_CHANNELS(X, P, ID) X(P, ID, 1) X(P, ID, 2) X(P, ID, 3) X(P, ID, 4) X(P, ID, 8) X(P, ID, 16) X(P, ID, 32)
