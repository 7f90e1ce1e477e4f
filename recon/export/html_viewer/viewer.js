// recon single-file scene viewer (WebGL2). Written for recon; no third-party code.
//
// Inputs, both inline in the page: <script id="recon-meta" type="application/json"> (what is in the
// file, see recon/export/html.py) and <script id="recon-data"> holding one base64 binary blob whose
// sections the metadata locates. Nothing is fetched: the page works from file:// with no network.
//
// Gaussians: one instanced screen-space quad per splat. The vertex shader projects the 3D covariance
// with the EWA Jacobian (clamped lateral coordinates), adds the 0.3 px^2 low-pass, bounds the quad by
// the opacity-aware 3.33-sigma extent and evaluates the SH colour (degree 0..3); the fragment shader
// evaluates exp(-E) with the conic and discards alpha < 1/255, clamps at 0.99. Splats are sorted back
// to front on the CPU (a 16-bit counting sort of camera depths, in a Worker) whenever the view changes
// and blended with premultiplied "over", which equals recon's front-to-back compositing.
// Meshes: recon's GLB files, parsed here, drawn as unlit triangles (base colour x COLOR_0 x texture,
// the glTF colour pipeline: textures decoded from sRGB, the result encoded to sRGB).
// Camera: OpenCV pinhole (c2w 4x4, fx, fy, cx, cy, width, height) exactly as recon renders it; the
// image is fitted into the window (same centre, uniform scale). Start view: `#cam=<json>` in the URL,
// else the camera the exporter chose (the scene's first held-out view).
// Test hook: window.reconViewer = {ready, frames, settled, error, timings, ...}; `ready` turns true one
// frame after the first complete draw (all data decoded, sorted for that view, textures uploaded);
// `settled` says whether the last frame's splats were sorted for its own view.
(function () {
  'use strict';

  const state = (window.reconViewer = { ready: false, frames: 0, error: null, splats: 0, meshes: 0, sorts: 0, timings: {} });
  const ALPHA_MIN = 1.0 / 255.0;

  function fail(message) {
    state.error = String(message);
    console.error('recon viewer: ' + state.error);
    const box = document.getElementById('recon-error');
    if (box) {
      box.textContent = 'Cannot show this scene: ' + state.error;
      box.style.display = 'block';
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Decoding
  const HALF_TO_FLOAT = (function () {
    const table = new Float32Array(65536);
    for (let h = 0; h < 65536; h++) {
      const sign = h & 0x8000 ? -1 : 1;
      const e = (h >> 10) & 0x1f;
      const m = h & 0x3ff;
      let v;
      if (e === 0) v = m * Math.pow(2, -24);
      else if (e === 31) v = m ? NaN : Infinity;
      else v = (1 + m / 1024) * Math.pow(2, e - 15);
      table[h] = sign * v;
    }
    return table;
  })();

  function decodeBase64(text) {
    text = text.replace(/\s+/g, '');
    if (typeof Uint8Array.fromBase64 === 'function') return Uint8Array.fromBase64(text);
    const bin = atob(text);
    const out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  }

  const TYPED = { float32: Float32Array, float16: Uint16Array, uint8: Uint8Array, int8: Int8Array, uint32: Uint32Array };

  function section(blob, meta, name) {
    const s = meta.sections[name];
    if (!s) throw new Error('missing data section ' + name);
    const T = TYPED[s.dtype];
    if (!T) throw new Error('unknown dtype ' + s.dtype + ' of section ' + name);
    return new T(blob.buffer, blob.byteOffset + s.offset, s.length / T.BYTES_PER_ELEMENT);
  }

  // ---------------------------------------------------------------------------------------------
  // Small linear algebra (row-major 3x3 as arrays of 9, vectors as arrays of 3)
  const dot = (a, b) => a[0] * b[0] + a[1] * b[1] + a[2] * b[2];
  const add = (a, b) => [a[0] + b[0], a[1] + b[1], a[2] + b[2]];
  const sub = (a, b) => [a[0] - b[0], a[1] - b[1], a[2] - b[2]];
  const scale = (a, s) => [a[0] * s, a[1] * s, a[2] * s];
  const cross = (a, b) => [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]];
  const norm = (a) => Math.sqrt(dot(a, a));
  const normalize = (a) => scale(a, 1 / Math.max(norm(a), 1e-12));
  function rotation(axis, angle) {
    // Rodrigues: rotation by `angle` about unit `axis`, row-major 3x3.
    const [x, y, z] = normalize(axis);
    const c = Math.cos(angle), s = Math.sin(angle), t = 1 - c;
    return [t * x * x + c, t * x * y - s * z, t * x * z + s * y,
            t * x * y + s * z, t * y * y + c, t * y * z - s * x,
            t * x * z - s * y, t * y * z + s * x, t * z * z + c];
  }
  const apply = (m, v) => [m[0] * v[0] + m[1] * v[1] + m[2] * v[2], m[3] * v[0] + m[4] * v[1] + m[5] * v[2], m[6] * v[0] + m[7] * v[1] + m[8] * v[2]];

  // Camera: axes (world directions of the camera's x right, y down, z forward), position, intrinsics.
  function cameraFromJson(c) {
    const m = Array.isArray(c.c2w[0]) ? [].concat(...c.c2w) : c.c2w; // 4x4 row-major
    if (m.length !== 16) throw new Error('cam.c2w must be 4x4');
    const cam = {
      right: [m[0], m[4], m[8]], down: [m[1], m[5], m[9]], forward: [m[2], m[6], m[10]],
      pos: [m[3], m[7], m[11]],
      fx: +c.fx, fy: +c.fy, cx: +c.cx, cy: +c.cy, width: +c.width, height: +c.height,
    };
    for (const k of ['fx', 'fy', 'cx', 'cy', 'width', 'height']) {
      if (!isFinite(cam[k]) || (k !== 'cx' && k !== 'cy' && cam[k] <= 0)) throw new Error('bad camera ' + k);
    }
    return cam;
  }

  // ---------------------------------------------------------------------------------------------
  // Shaders
  const SPLAT_VS = `#version 300 es
precision highp float; precision highp int; precision highp sampler2D;
uniform sampler2D u_splats;   // 4 RGBA32F texels per splat: (mean, opacity) (c00 c01 c02 c11) (c12 c22 dc.r dc.g) (dc.b)
uniform sampler2D u_sh;       // u_shTexels RGBA32F texels per splat: SH bands 1.. as [coef][rgb]
uniform int u_perRow, u_shTexels, u_shCoeffs;
uniform mat4 u_view;          // world -> camera (OpenCV axes)
uniform vec4 u_intr;          // fx fy cx cy in canvas pixels
uniform vec2 u_size;          // canvas width, height in pixels
uniform vec3 u_camPos;
uniform vec2 u_clip;          // near, far
uniform float u_eps2d;
in uint a_index;
out vec3 v_color; out float v_opacity; out vec3 v_conic; out vec2 v_d;

vec3 shRest[15];
void loadSh(int i) {  // the splat's higher SH coefficients, [coef] = rgb
  float f[48];
  int w = textureSize(u_sh, 0).x;
  int base = i * u_shTexels;
  for (int t = 0; t < 12; t++) {
    if (t >= u_shTexels) break;
    int l = base + t;
    vec4 v = texelFetch(u_sh, ivec2(l % w, l / w), 0);
    f[4 * t] = v.x; f[4 * t + 1] = v.y; f[4 * t + 2] = v.z; f[4 * t + 3] = v.w;
  }
  for (int k = 0; k < 15; k++) {
    if (k >= u_shCoeffs) break;
    shRest[k] = vec3(f[3 * k], f[3 * k + 1], f[3 * k + 2]);
  }
}

void main() {
  gl_Position = vec4(0.0, 0.0, 2.0, 1.0);  // outside the clip volume unless set below
  int i = int(a_index);
  ivec2 b = ivec2((i % u_perRow) * 4, i / u_perRow);
  vec4 t0 = texelFetch(u_splats, b, 0);
  vec4 t1 = texelFetch(u_splats, b + ivec2(1, 0), 0);
  vec4 t2 = texelFetch(u_splats, b + ivec2(2, 0), 0);
  vec4 t3 = texelFetch(u_splats, b + ivec2(3, 0), 0);
  vec4 pc = u_view * vec4(t0.xyz, 1.0);
  float z = pc.z;
  float o = t0.w;
  if (z <= u_clip.x || z >= u_clip.y || o < ${ALPHA_MIN}) return;
  mat3 cov = mat3(t1.x, t1.y, t1.z, t1.y, t1.w, t2.x, t1.z, t2.x, t2.y);
  mat3 W = mat3(u_view);
  mat3 covc = W * cov * transpose(W);
  float fx = u_intr.x, fy = u_intr.y, cx = u_intr.z, cy = u_intr.w;
  float rz = 1.0 / z;
  // Clamped lateral coordinates for the Jacobian (limits: image edge plus 0.3 of the half-width).
  float limxp = (u_size.x - cx) / fx + 0.3 * (0.5 * u_size.x / fx);
  float limxn = cx / fx + 0.3 * (0.5 * u_size.x / fx);
  float limyp = (u_size.y - cy) / fy + 0.3 * (0.5 * u_size.y / fy);
  float limyn = cy / fy + 0.3 * (0.5 * u_size.y / fy);
  float txc = z * clamp(pc.x * rz, -limxn, limxp);
  float tyc = z * clamp(pc.y * rz, -limyn, limyp);
  vec3 j0 = vec3(fx * rz, 0.0, -fx * txc * rz * rz);
  vec3 j1 = vec3(0.0, fy * rz, -fy * tyc * rz * rz);
  vec3 cj0 = covc * j0, cj1 = covc * j1;
  float a = dot(j0, cj0) + u_eps2d, bb = dot(j0, cj1), c = dot(j1, cj1) + u_eps2d;
  float det = a * c - bb * bb;
  if (!(det > 0.0)) return;
  float ext = min(3.33, sqrt(max(2.0 * log(o / ${ALPHA_MIN}), 0.0)));
  vec2 r = ext * sqrt(vec2(a, c));
  vec2 mean2d = vec2(fx * pc.x * rz + cx, fy * pc.y * rz + cy);
  if (mean2d.x + r.x <= 0.0 || mean2d.x - r.x >= u_size.x || mean2d.y + r.y <= 0.0 || mean2d.y - r.y >= u_size.y) return;
  vec2 corner = vec2(float(gl_VertexID & 1), float(gl_VertexID >> 1)) * 2.0 - 1.0;
  vec2 d = corner * r;
  vec2 px = mean2d + d;
  float n = u_clip.x, f = u_clip.y;
  float zndc = (f + n) / (f - n) - 2.0 * f * n / ((f - n) * z);
  gl_Position = vec4(px.x / u_size.x * 2.0 - 1.0, 1.0 - px.y / u_size.y * 2.0, zndc, 1.0);
  v_d = d;
  v_conic = vec3(c, -bb, a) / det;
  v_opacity = o;
  vec3 rgb = vec3(t2.z, t2.w, t3.x);
  if (u_shCoeffs > 0) {
    vec3 dir = normalize(t0.xyz - u_camPos);
    float x = dir.x, y = dir.y, zz = dir.z;
    float basis[15];
    basis[0] = -0.4886025119029199 * y; basis[1] = 0.4886025119029199 * zz; basis[2] = -0.4886025119029199 * x;
    if (u_shCoeffs > 3) {
      float xx = x * x, yy = y * y, z2 = zz * zz;
      basis[3] = 1.0925484305920792 * x * y; basis[4] = -1.0925484305920792 * y * zz;
      basis[5] = 0.31539156525252005 * (2.0 * z2 - xx - yy); basis[6] = -1.0925484305920792 * x * zz;
      basis[7] = 0.5462742152960396 * (xx - yy);
      if (u_shCoeffs > 8) {
        basis[8] = -0.5900435899266435 * y * (3.0 * xx - yy); basis[9] = 2.890611442640554 * x * y * zz;
        basis[10] = -0.4570457994644658 * y * (4.0 * z2 - xx - yy);
        basis[11] = 0.3731763325901154 * zz * (2.0 * z2 - 3.0 * xx - 3.0 * yy);
        basis[12] = -0.4570457994644658 * x * (4.0 * z2 - xx - yy); basis[13] = 1.445305721320277 * zz * (xx - yy);
        basis[14] = -0.5900435899266435 * x * (xx - 3.0 * yy);
      }
    }
    loadSh(i);
    for (int k = 0; k < 15; k++) {
      if (k >= u_shCoeffs) break;
      rgb += basis[k] * shRest[k];
    }
  }
  v_color = max(rgb + 0.5, vec3(0.0));
}`;

  const SPLAT_FS = `#version 300 es
precision highp float;
in vec3 v_color; in float v_opacity; in vec3 v_conic; in vec2 v_d;
out vec4 fragColor;
void main() {
  float e = 0.5 * (v_conic.x * v_d.x * v_d.x + v_conic.z * v_d.y * v_d.y) + v_conic.y * v_d.x * v_d.y;
  if (e < 0.0) discard;
  float alpha = min(0.99, v_opacity * exp(-e));
  if (alpha < ${ALPHA_MIN}) discard;
  fragColor = vec4(v_color * alpha, alpha);
}`;

  const MESH_VS = `#version 300 es
precision highp float;
uniform mat4 u_proj, u_view, u_model;
in vec3 a_pos; in vec4 a_color; in vec2 a_uv;
out vec4 v_color; out vec2 v_uv;
void main() {
  gl_Position = u_proj * u_view * u_model * vec4(a_pos, 1.0);
  v_color = a_color; v_uv = a_uv;
}`;

  const MESH_FS = `#version 300 es
precision highp float;
uniform sampler2D u_tex; uniform vec4 u_base; uniform bool u_hasTex;
in vec4 v_color; in vec2 v_uv;
out vec4 fragColor;
vec3 toSrgb(vec3 c) {
  c = clamp(c, 0.0, 1.0);
  return mix(c * 12.92, 1.055 * pow(c, vec3(1.0 / 2.4)) - 0.055, step(vec3(0.0031308), c));
}
void main() {
  vec4 c = u_base * v_color;
  if (u_hasTex) c *= texture(u_tex, v_uv);
  fragColor = vec4(toSrgb(c.rgb), 1.0);
}`;

  function compile(gl, vsSource, fsSource) {
    const prog = gl.createProgram();
    for (const [type, src] of [[gl.VERTEX_SHADER, vsSource], [gl.FRAGMENT_SHADER, fsSource]]) {
      const sh = gl.createShader(type);
      gl.shaderSource(sh, src);
      gl.compileShader(sh);
      if (!gl.getShaderParameter(sh, gl.COMPILE_STATUS)) throw new Error('shader: ' + gl.getShaderInfoLog(sh));
      gl.attachShader(prog, sh);
    }
    gl.linkProgram(prog);
    if (!gl.getProgramParameter(prog, gl.LINK_STATUS)) throw new Error('program: ' + gl.getProgramInfoLog(prog));
    const uniforms = {};
    const n = gl.getProgramParameter(prog, gl.ACTIVE_UNIFORMS);
    for (let k = 0; k < n; k++) {
      const info = gl.getActiveUniform(prog, k);
      uniforms[info.name.replace(/\[0\]$/, '')] = gl.getUniformLocation(prog, info.name);
    }
    return { prog, uniforms, attrib: (name) => gl.getAttribLocation(prog, name) };
  }

  // ---------------------------------------------------------------------------------------------
  // Gaussians
  function uploadSplats(gl, blob, meta) {
    const g = meta.gaussians;
    const n = g.count;
    const means = section(blob, meta, 'means');
    const logScales = section(blob, meta, 'log_scales');
    const quats = section(blob, meta, 'quats');
    const opac = section(blob, meta, 'opacities');
    const dc = section(blob, meta, 'dc');
    const maxTex = gl.getParameter(gl.MAX_TEXTURE_SIZE);
    const width = Math.min(4096, maxTex);
    const perRow = width >> 2;
    const rows = Math.max(1, Math.ceil(n / perRow));
    if (rows > maxTex) throw new Error(n + ' splats exceed this GPU\'s texture limit; export with a smaller --max-splats');
    const tex = new Float32Array(width * rows * 4);
    for (let i = 0; i < n; i++) {
      const o = ((i % perRow) * 4 + Math.floor(i / perRow) * width) * 4;
      const w = HALF_TO_FLOAT[quats[4 * i]], x = HALF_TO_FLOAT[quats[4 * i + 1]];
      const y = HALF_TO_FLOAT[quats[4 * i + 2]], z = HALF_TO_FLOAT[quats[4 * i + 3]];
      const qn = 1 / Math.max(Math.sqrt(w * w + x * x + y * y + z * z), 1e-12);
      const qw = w * qn, qx = x * qn, qy = y * qn, qz = z * qn;
      const R = [1 - 2 * (qy * qy + qz * qz), 2 * (qx * qy - qw * qz), 2 * (qx * qz + qw * qy),
                 2 * (qx * qy + qw * qz), 1 - 2 * (qx * qx + qz * qz), 2 * (qy * qz - qw * qx),
                 2 * (qx * qz - qw * qy), 2 * (qy * qz + qw * qx), 1 - 2 * (qx * qx + qy * qy)];
      const s0 = Math.exp(HALF_TO_FLOAT[logScales[3 * i]]), s1 = Math.exp(HALF_TO_FLOAT[logScales[3 * i + 1]]);
      const s2 = Math.exp(HALF_TO_FLOAT[logScales[3 * i + 2]]);
      const v0 = s0 * s0, v1 = s1 * s1, v2 = s2 * s2;
      const cov = (r, c) => R[3 * r] * R[3 * c] * v0 + R[3 * r + 1] * R[3 * c + 1] * v1 + R[3 * r + 2] * R[3 * c + 2] * v2;
      tex[o] = means[3 * i]; tex[o + 1] = means[3 * i + 1]; tex[o + 2] = means[3 * i + 2];
      tex[o + 3] = HALF_TO_FLOAT[opac[i]];
      tex[o + 4] = cov(0, 0); tex[o + 5] = cov(0, 1); tex[o + 6] = cov(0, 2); tex[o + 7] = cov(1, 1);
      tex[o + 8] = cov(1, 2); tex[o + 9] = cov(2, 2);
      tex[o + 10] = HALF_TO_FLOAT[dc[3 * i]]; tex[o + 11] = HALF_TO_FLOAT[dc[3 * i + 1]];
      tex[o + 12] = HALF_TO_FLOAT[dc[3 * i + 2]];
    }
    const splatTex = makeFloatTexture(gl, width, rows, tex);

    // Higher SH bands: int8 * sh_rest_scale / 127, [coef][rgb] per splat, packed 4 floats per texel.
    const coeffs = g.sh_degree > 0 ? (g.sh_degree + 1) * (g.sh_degree + 1) - 1 : 0;
    let shTex, shTexels = 1;
    if (coeffs > 0) {
      const rest = section(blob, meta, 'sh_rest');
      const per = coeffs * 3;
      shTexels = Math.ceil(per / 4);
      const total = n * shTexels;
      const shWidth = Math.min(total, width);
      const shRows = Math.ceil(total / shWidth);
      if (shRows > maxTex) throw new Error('too many SH coefficients for this GPU; export with --sh-degree 0 or fewer splats');
      const data = new Float32Array(shWidth * shRows * 4);
      const q = g.sh_rest_scale / 127;
      for (let i = 0; i < n; i++) {
        const dst = i * shTexels * 4;
        for (let k = 0; k < per; k++) data[dst + k] = rest[i * per + k] * q;
      }
      shTex = makeFloatTexture(gl, shWidth, shRows, data);
    } else {
      shTex = makeFloatTexture(gl, 1, 1, new Float32Array(4));
    }
    return { n, means, splatTex, shTex, perRow, shTexels, coeffs };
  }

  function makeFloatTexture(gl, w, h, data) {
    const t = gl.createTexture();
    gl.bindTexture(gl.TEXTURE_2D, t);
    gl.texImage2D(gl.TEXTURE_2D, 0, gl.RGBA32F, w, h, 0, gl.RGBA, gl.FLOAT, data);
    gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_MIN_FILTER, gl.NEAREST);
    gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_MAG_FILTER, gl.NEAREST);
    gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_WRAP_S, gl.CLAMP_TO_EDGE);
    gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_WRAP_T, gl.CLAMP_TO_EDGE);
    return t;
  }

  // Back-to-front order: 16-bit counting sort of camera depths. Self-contained (no closures) because
  // its source text also runs in the sort worker.
  function depthOrder(m, forward, pos, scratch) {
    const n = m.length / 3;
    const depth = scratch.depth, keys = scratch.keys, counts = scratch.counts;
    const order = new Uint32Array(n);
    const f0 = forward[0], f1 = forward[1], f2 = forward[2];
    const off = -(f0 * pos[0] + f1 * pos[1] + f2 * pos[2]);
    let lo = Infinity, hi = -Infinity;
    for (let i = 0; i < n; i++) {
      const z = f0 * m[3 * i] + f1 * m[3 * i + 1] + f2 * m[3 * i + 2] + off;
      depth[i] = z;
      if (z < lo) lo = z;
      if (z > hi) hi = z;
    }
    const s = hi > lo ? 65535 / (hi - lo) : 0;
    counts.fill(0);
    for (let i = 0; i < n; i++) {
      const k = ((hi - depth[i]) * s) | 0; // farthest first
      keys[i] = k;
      counts[k]++;
    }
    let run = 0;
    for (let k = 0; k < 65536; k++) {
      const c = counts[k];
      counts[k] = run;
      run += c;
    }
    for (let i = 0; i < n; i++) order[counts[keys[i]]++] = i;
    return order;
  }

  function sortScratch(n) {
    return { depth: new Float32Array(n), keys: new Uint16Array(n), counts: new Uint32Array(65536) };
  }

  // Sorting runs in a Worker (made from this page's own source text through a blob: URL, so it works
  // offline and from file://) so orbiting stays fluid on large scenes; frames keep the previous order
  // until the new one arrives. Without Worker support it sorts on the main thread.
  function makeSorter(splats, onSorted) {
    let worker = null, busy = false, queued = null;
    const scratch = { value: null };
    const sortHere = (req) => {
      scratch.value = scratch.value || sortScratch(splats.n);
      onSorted(depthOrder(splats.means, req.forward, req.pos, scratch.value), req.key);
    };
    try {
      const source = depthOrder.toString() + '\n' + sortScratch.toString() + `
        let means = null, scratch = null;
        onmessage = (e) => {
          const r = e.data;
          if (r.means) { means = r.means; scratch = sortScratch(means.length / 3); return; }
          const order = depthOrder(means, r.forward, r.pos, scratch);
          postMessage({ order, key: r.key }, [order.buffer]);
        };`;
      worker = new Worker(URL.createObjectURL(new Blob([source], { type: 'text/javascript' })));
      worker.postMessage({ means: splats.means.slice() });
      worker.onmessage = (e) => {
        busy = false;
        onSorted(e.data.order, e.data.key);
        if (queued) { const r = queued; queued = null; request(r); }
      };
      worker.onerror = (e) => {
        console.warn('recon viewer: sort worker failed (' + (e.message || e) + '); sorting on the main thread');
        e.preventDefault();
        worker = null;
        busy = false;
        if (queued) { const r = queued; queued = null; sortHere(r); }
      };
    } catch (e) {
      worker = null;
    }
    function request(req) {
      state.sortWorker = worker !== null;
      if (!worker) { sortHere(req); return; }
      if (busy) { queued = req; return; }
      busy = true;
      worker.postMessage({ forward: req.forward, pos: req.pos, key: req.key });
    }
    return request;
  }

  // ---------------------------------------------------------------------------------------------
  // glTF binary (GLB) meshes
  const COMPONENTS = { SCALAR: 1, VEC2: 2, VEC3: 3, VEC4: 4, MAT4: 16 };
  const COMPONENT_TYPES = {
    5120: [Int8Array, 127], 5121: [Uint8Array, 255], 5122: [Int16Array, 32767],
    5123: [Uint16Array, 65535], 5125: [Uint32Array, 0], 5126: [Float32Array, 0],
  };

  function parseGlb(bytes) {
    const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    if (bytes.byteLength < 20 || dv.getUint32(0, true) !== 0x46546c67) throw new Error('mesh is not a GLB file');
    if (dv.getUint32(4, true) !== 2) throw new Error('GLB version ' + dv.getUint32(4, true) + ' (need 2)');
    let offset = 12, json = null, bin = null;
    while (offset + 8 <= bytes.byteLength) {
      const len = dv.getUint32(offset, true), type = dv.getUint32(offset + 4, true);
      const chunk = bytes.subarray(offset + 8, offset + 8 + len);
      if (type === 0x4e4f534a) json = JSON.parse(new TextDecoder().decode(chunk));
      else if (type === 0x004e4942) bin = chunk;
      offset += 8 + len;
    }
    if (!json) throw new Error('GLB has no JSON chunk');
    return { json, bin };
  }

  function readAccessor(glb, index, asFloat) {
    const acc = glb.json.accessors[index];
    if (acc.sparse) throw new Error('sparse glTF accessors are not supported');
    const ncomp = COMPONENTS[acc.type];
    const [T, maxVal] = COMPONENT_TYPES[acc.componentType];
    const count = acc.count;
    const out = asFloat ? new Float32Array(count * ncomp) : new Uint32Array(count * ncomp);
    if (acc.bufferView === undefined) return { data: out, ncomp, count };
    const view = glb.json.bufferViews[acc.bufferView];
    if ((view.buffer || 0) !== 0 || !glb.bin) throw new Error('GLB accessor outside the binary chunk');
    const start = glb.bin.byteOffset + (view.byteOffset || 0) + (acc.byteOffset || 0);
    const elem = T.BYTES_PER_ELEMENT;
    const stride = view.byteStride || ncomp * elem;
    const dv = new DataView(glb.bin.buffer);
    const getters = { 5120: 'getInt8', 5121: 'getUint8', 5122: 'getInt16', 5123: 'getUint16', 5125: 'getUint32', 5126: 'getFloat32' };
    const get = getters[acc.componentType];
    const norm = asFloat && acc.normalized && maxVal > 0;
    for (let i = 0; i < count; i++) {
      for (let c = 0; c < ncomp; c++) {
        let v = dv[get](start + i * stride + c * elem, true);
        if (norm) v = Math.max(v / maxVal, -1);
        out[i * ncomp + c] = v;
      }
    }
    return { data: out, ncomp, count };
  }

  function mat4Mul(a, b) { // column-major 4x4
    const o = new Array(16).fill(0);
    for (let c = 0; c < 4; c++) for (let r = 0; r < 4; r++) {
      let s = 0;
      for (let k = 0; k < 4; k++) s += a[k * 4 + r] * b[c * 4 + k];
      o[c * 4 + r] = s;
    }
    return o;
  }

  function nodeMatrix(node) {
    if (node.matrix) return node.matrix.slice();
    const [tx, ty, tz] = node.translation || [0, 0, 0];
    const [x, y, z, w] = node.rotation || [0, 0, 0, 1];
    const [sx, sy, sz] = node.scale || [1, 1, 1];
    return [
      (1 - 2 * (y * y + z * z)) * sx, 2 * (x * y + w * z) * sx, 2 * (x * z - w * y) * sx, 0,
      2 * (x * y - w * z) * sy, (1 - 2 * (x * x + z * z)) * sy, 2 * (y * z + w * x) * sy, 0,
      2 * (x * z + w * y) * sz, 2 * (y * z - w * x) * sz, (1 - 2 * (x * x + y * y)) * sz, 0,
      tx, ty, tz, 1,
    ];
  }

  async function uploadMesh(gl, prog, blob, meta, entry) {
    const glb = parseGlb(section(blob, meta, entry.section));
    const j = glb.json;
    const textures = {};
    async function texture(index) {
      if (index in textures) return textures[index];
      const tdef = j.textures[index];
      const img = j.images[tdef.source];
      if (img.bufferView === undefined) throw new Error('GLB image must be embedded (no external files)');
      const view = j.bufferViews[img.bufferView];
      const bytes = glb.bin.subarray(view.byteOffset || 0, (view.byteOffset || 0) + view.byteLength);
      const bitmap = await createImageBitmap(new Blob([bytes], { type: img.mimeType || 'image/png' }),
        { colorSpaceConversion: 'none', premultiplyAlpha: 'none' });
      const t = gl.createTexture();
      gl.bindTexture(gl.TEXTURE_2D, t);
      gl.texImage2D(gl.TEXTURE_2D, 0, gl.SRGB8_ALPHA8, gl.RGBA, gl.UNSIGNED_BYTE, bitmap);
      gl.generateMipmap(gl.TEXTURE_2D);
      const sampler = tdef.sampler !== undefined ? j.samplers[tdef.sampler] : {};
      gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_MIN_FILTER, gl.LINEAR_MIPMAP_LINEAR);
      gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_MAG_FILTER, gl.LINEAR);
      gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_WRAP_S, sampler.wrapS || gl.REPEAT);
      gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_WRAP_T, sampler.wrapT || gl.REPEAT);
      textures[index] = t;
      return t;
    }
    const draws = [];
    const model = entry.model; // world <- glTF, column-major
    async function visit(nodeIndex, parent) {
      const node = j.nodes[nodeIndex];
      const world = mat4Mul(parent, nodeMatrix(node));
      if (node.mesh !== undefined) {
        for (const prim of j.meshes[node.mesh].primitives) {
          const mode = prim.mode === undefined ? 4 : prim.mode;
          if (mode !== 4) { console.warn('recon viewer: skipping a glTF primitive of mode ' + mode); continue; }
          const pos = readAccessor(glb, prim.attributes.POSITION, true);
          const vao = gl.createVertexArray();
          gl.bindVertexArray(vao);
          const attr = (name, acc, size) => {
            const loc = prog.attrib(name);
            const buf = gl.createBuffer();
            gl.bindBuffer(gl.ARRAY_BUFFER, buf);
            gl.bufferData(gl.ARRAY_BUFFER, acc.data, gl.STATIC_DRAW);
            gl.enableVertexAttribArray(loc);
            gl.vertexAttribPointer(loc, size, gl.FLOAT, false, 0, 0);
          };
          attr('a_pos', pos, 3);
          if (prim.attributes.COLOR_0 !== undefined) {
            const col = readAccessor(glb, prim.attributes.COLOR_0, true);
            attr('a_color', col, col.ncomp);
          } else {
            gl.disableVertexAttribArray(prog.attrib('a_color'));
            gl.vertexAttrib4f(prog.attrib('a_color'), 1, 1, 1, 1);
          }
          const mat = prim.material !== undefined ? j.materials[prim.material] : {};
          const pbr = mat.pbrMetallicRoughness || {};
          let tex = null;
          if (pbr.baseColorTexture && prim.attributes.TEXCOORD_0 !== undefined) {
            attr('a_uv', readAccessor(glb, prim.attributes.TEXCOORD_0, true), 2);
            tex = await texture(pbr.baseColorTexture.index);
          } else {
            gl.disableVertexAttribArray(prog.attrib('a_uv'));
          }
          let count = pos.count, indexed = false;
          if (prim.indices !== undefined) {
            const idx = readAccessor(glb, prim.indices, false);
            const ibuf = gl.createBuffer();
            gl.bindBuffer(gl.ELEMENT_ARRAY_BUFFER, ibuf);
            gl.bufferData(gl.ELEMENT_ARRAY_BUFFER, idx.data, gl.STATIC_DRAW);
            count = idx.count;
            indexed = true;
          }
          gl.bindVertexArray(null);
          draws.push({ vao, count, indexed, tex, base: pbr.baseColorFactor || [1, 1, 1, 1], model: mat4Mul(model, world) });
        }
      }
      for (const child of node.children || []) await visit(child, world);
    }
    const scene = j.scenes ? j.scenes[j.scene || 0] : { nodes: j.nodes.map((_, k) => k) };
    const identity = [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1];
    for (const root of scene.nodes || []) await visit(root, identity);
    return draws;
  }

  // ---------------------------------------------------------------------------------------------
  // Viewer
  async function main() {
    const t0 = performance.now();
    const meta = JSON.parse(document.getElementById('recon-meta').textContent);
    const blob = decodeBase64(document.getElementById('recon-data').textContent);
    state.timings.decode_ms = performance.now() - t0;
    const canvas = document.getElementById('recon-canvas');
    const gl = canvas.getContext('webgl2', { alpha: false, antialias: false, depth: true, preserveDrawingBuffer: true });
    if (!gl) throw new Error('this browser has no WebGL2');
    const bg = meta.background;
    const hashArgs = parseHash();
    const help = document.getElementById('recon-help');
    if (hashArgs.ui === '0') help.style.display = 'none';

    const splatProg = compile(gl, SPLAT_VS, SPLAT_FS);
    const meshProg = compile(gl, MESH_VS, MESH_FS);
    let splats = null, sorter = null, splatVao = null, orderBuf = null, orderKey = null, requestedKey = null, sortStart = 0;
    if (meta.gaussians && meta.gaussians.count > 0) {
      splats = uploadSplats(gl, blob, meta);
      sorter = makeSorter(splats, (order, key) => {
        gl.bindBuffer(gl.ARRAY_BUFFER, orderBuf);
        gl.bufferSubData(gl.ARRAY_BUFFER, 0, order);
        orderKey = key;
        state.sorts++;
        state.timings.last_sort_ms = performance.now() - sortStart;
        requestDraw();
      });
      splatVao = gl.createVertexArray();
      gl.bindVertexArray(splatVao);
      orderBuf = gl.createBuffer();
      gl.bindBuffer(gl.ARRAY_BUFFER, orderBuf);
      gl.bufferData(gl.ARRAY_BUFFER, splats.n * 4, gl.DYNAMIC_DRAW);
      const loc = splatProg.attrib('a_index');
      gl.enableVertexAttribArray(loc);
      gl.vertexAttribIPointer(loc, 1, gl.UNSIGNED_INT, 0, 0);
      gl.vertexAttribDivisor(loc, 1);
      gl.bindVertexArray(null);
      state.splats = splats.n;
    }
    state.timings.splat_upload_ms = performance.now() - t0 - state.timings.decode_ms;
    const meshDraws = [];
    for (const entry of meta.meshes || []) meshDraws.push(...(await uploadMesh(gl, meshProg, blob, meta, entry)));
    // Untextured meshes still bind a (white) texture: sampling an unbound unit is an error in WebGL.
    const white = gl.createTexture();
    gl.bindTexture(gl.TEXTURE_2D, white);
    gl.texImage2D(gl.TEXTURE_2D, 0, gl.RGBA8, 1, 1, 0, gl.RGBA, gl.UNSIGNED_BYTE, new Uint8Array([255, 255, 255, 255]));
    state.meshes = (meta.meshes || []).length;

    // Camera state. `view` holds the camera the picture is defined by; `orbit` the point it turns about.
    const cameras = (meta.cameras || []).map(cameraFromJson);
    const sceneCenter = meta.bounds.center, sceneRadius = meta.bounds.radius;
    const up = normalize(meta.up);
    let view = null, target = null, camIndex = meta.initial_camera || 0, pending = false;

    function setCamera(cam) {
      view = { ...cam, right: cam.right.slice(), down: cam.down.slice(), forward: cam.forward.slice(), pos: cam.pos.slice() };
      let d = dot(sub(sceneCenter, view.pos), view.forward);
      if (!(d > 1e-3 * sceneRadius)) d = sceneRadius;
      target = add(view.pos, scale(view.forward, d));
      requestDraw();
    }
    function applyHash() {
      const args = parseHash();
      if (args.cam) setCamera(cameraFromJson(JSON.parse(args.cam)));
    }
    if (hashArgs.cam) applyHash();
    else if (cameras.length) setCamera(cameras[Math.min(camIndex, cameras.length - 1)]);
    else throw new Error('the file has no camera');
    window.addEventListener('hashchange', () => { try { applyHash(); } catch (e) { fail(e.message); } });

    function rotateView(R) {
      view.pos = add(target, apply(R, sub(view.pos, target)));
      view.right = apply(R, view.right); view.down = apply(R, view.down); view.forward = apply(R, view.forward);
      requestDraw();
    }
    let drag = null;
    canvas.addEventListener('contextmenu', (e) => e.preventDefault());
    canvas.addEventListener('pointerdown', (e) => {
      drag = { x: e.clientX, y: e.clientY, pan: e.button !== 0 || e.shiftKey || e.ctrlKey };
      canvas.setPointerCapture(e.pointerId);
    });
    canvas.addEventListener('pointerup', () => { drag = null; });
    canvas.addEventListener('pointermove', (e) => {
      if (!drag) return;
      const dx = e.clientX - drag.x, dy = e.clientY - drag.y;
      drag.x = e.clientX; drag.y = e.clientY;
      if (drag.pan) {
        const k = norm(sub(target, view.pos)) / (view.fx * fitScale());
        const move = add(scale(view.right, -dx * k * devicePixelRatio), scale(view.down, -dy * k * devicePixelRatio));
        view.pos = add(view.pos, move); target = add(target, move);
        requestDraw();
      } else {
        rotateView(rotation(up, -dx * 0.005));
        rotateView(rotation(view.right, -dy * 0.005));
      }
    });
    canvas.addEventListener('wheel', (e) => {
      e.preventDefault();
      const offset = sub(view.pos, target);
      view.pos = add(target, scale(offset, Math.exp(Math.max(-1, Math.min(1, e.deltaY * 0.001)))));
      requestDraw();
    }, { passive: false });
    window.addEventListener('keydown', (e) => {
      if (e.key === 'r' || e.key === 'R') setCamera(cameras.length ? cameras[camIndex] : view);
      else if ((e.key === 'n' || e.key === 'p') && cameras.length) {
        camIndex = (camIndex + (e.key === 'n' ? 1 : cameras.length - 1)) % cameras.length;
        setCamera(cameras[camIndex]);
      } else if (e.key === 'h') help.classList.toggle('open');
    });
    window.addEventListener('resize', requestDraw);

    // Fit the camera's image into the canvas: uniform scale, centred.
    function fitScale() { return Math.min(canvas.width / view.width, canvas.height / view.height); }

    function requestDraw() {
      if (pending) return;
      pending = true;
      requestAnimationFrame(draw);
    }

    function draw() {
      pending = false;
      let settled = true;
      const W = Math.max(1, Math.round(canvas.clientWidth * devicePixelRatio));
      const H = Math.max(1, Math.round(canvas.clientHeight * devicePixelRatio));
      if (canvas.width !== W || canvas.height !== H) { canvas.width = W; canvas.height = H; }
      const s = fitScale();
      const fx = view.fx * s, fy = view.fy * s;
      const cx = view.cx * s + (W - view.width * s) / 2, cy = view.cy * s + (H - view.height * s) / 2;
      const near = Math.max(0.01, 1e-4 * sceneRadius), far = Math.max(1e4, 1e3 * sceneRadius);
      const r = view.right, d = view.down, f = view.forward, p = view.pos;
      // world -> camera, column-major for GL
      const viewMat = [r[0], d[0], f[0], 0, r[1], d[1], f[1], 0, r[2], d[2], f[2], 0, -dot(r, p), -dot(d, p), -dot(f, p), 1];
      gl.viewport(0, 0, W, H);
      gl.clearColor(bg[0], bg[1], bg[2], 1);
      gl.clearDepth(1);
      gl.clear(gl.COLOR_BUFFER_BIT | gl.DEPTH_BUFFER_BIT);
      gl.disable(gl.CULL_FACE);

      if (meshDraws.length) {
        const proj = [2 * fx / W, 0, 0, 0, 0, -2 * fy / H, 0, 0, 2 * cx / W - 1, 1 - 2 * cy / H, (far + near) / (far - near), 1,
                      0, 0, -2 * far * near / (far - near), 0];
        gl.useProgram(meshProg.prog);
        gl.enable(gl.DEPTH_TEST); gl.depthMask(true); gl.disable(gl.BLEND);
        gl.uniformMatrix4fv(meshProg.uniforms.u_proj, false, proj);
        gl.uniformMatrix4fv(meshProg.uniforms.u_view, false, viewMat);
        for (const m of meshDraws) {
          gl.uniformMatrix4fv(meshProg.uniforms.u_model, false, m.model);
          gl.uniform4fv(meshProg.uniforms.u_base, m.base);
          gl.uniform1i(meshProg.uniforms.u_hasTex, m.tex ? 1 : 0);
          gl.activeTexture(gl.TEXTURE0);
          gl.bindTexture(gl.TEXTURE_2D, m.tex || white);
          gl.uniform1i(meshProg.uniforms.u_tex, 0);
          gl.bindVertexArray(m.vao);
          if (m.indexed) gl.drawElements(gl.TRIANGLES, m.count, gl.UNSIGNED_INT, 0);
          else gl.drawArrays(gl.TRIANGLES, 0, m.count);
        }
        gl.bindVertexArray(null);
      }

      if (splats) {
        const key = p.join(',') + '|' + f.join(',');
        if (requestedKey !== key) {
          requestedKey = key;
          sortStart = performance.now();
          sorter({ forward: f.slice(), pos: p.slice(), key });
        }
        settled = orderKey === key;
      }
      if (splats && orderKey !== null) {
        gl.useProgram(splatProg.prog);
        gl.enable(gl.DEPTH_TEST); gl.depthMask(false);
        gl.enable(gl.BLEND);
        gl.blendFunc(gl.ONE, gl.ONE_MINUS_SRC_ALPHA);
        const u = splatProg.uniforms;
        gl.activeTexture(gl.TEXTURE0); gl.bindTexture(gl.TEXTURE_2D, splats.splatTex); gl.uniform1i(u.u_splats, 0);
        gl.activeTexture(gl.TEXTURE1); gl.bindTexture(gl.TEXTURE_2D, splats.shTex); gl.uniform1i(u.u_sh, 1);
        gl.uniform1i(u.u_perRow, splats.perRow);
        gl.uniform1i(u.u_shTexels, splats.shTexels);
        gl.uniform1i(u.u_shCoeffs, splats.coeffs);
        gl.uniformMatrix4fv(u.u_view, false, viewMat);
        gl.uniform4f(u.u_intr, fx, fy, cx, cy);
        gl.uniform2f(u.u_size, W, H);
        gl.uniform3f(u.u_camPos, p[0], p[1], p[2]);
        gl.uniform2f(u.u_clip, near, far);
        gl.uniform1f(u.u_eps2d, meta.eps2d);
        gl.bindVertexArray(splatVao);
        gl.drawArraysInstanced(gl.TRIANGLE_STRIP, 0, 4, splats.n);
        gl.bindVertexArray(null);
        gl.depthMask(true);
      }
      state.frames++;
      state.settled = settled;  // this frame's splats were sorted for this frame's view
      if (settled && !state.ready) {
        state.timings.first_frame_ms = performance.now() - t0;
        requestAnimationFrame(() => { state.ready = true; });
      }
    }
    requestDraw();
  }

  function parseHash() {
    const out = {};
    for (const part of location.hash.replace(/^#/, '').split('&')) {
      if (!part) continue;
      const eq = part.indexOf('=');
      const k = eq < 0 ? part : part.slice(0, eq);
      out[k] = eq < 0 ? '' : decodeURIComponent(part.slice(eq + 1));
    }
    return out;
  }

  main().catch((e) => fail(e && e.message ? e.message : e));
})();
