#!/usr/bin/env bash
# Installs the third-party programs the test suite checks recon's outputs with: a real browser
# (Debian chromium), the Khronos glTF validator and splat viewers (npm, into tests/js/node_modules),
# and the system libraries open3d needs. Idempotent: what is already present is skipped.
# Python-side clients (bpy, ...) come from the `dev` extra of pyproject.toml.
# Run as root (CI) or with passwordless sudo; otherwise it says what is missing and the tests that
# need it skip (CI sets RECON_REQUIRE_TEST_CLIENTS=1, which turns those skips into failures).
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages: the command that shows each is installed, and the package providing it.
APT_PACKAGES=(chromium libusb-1.0-0)
apt_missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || apt_missing+=("$pkg")
done
if [ ${#apt_missing[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null && SUDO="sudo -n"
  if [ "$(id -u)" -eq 0 ] || [ -n "$SUDO" ]; then
    echo "installing Debian packages: ${apt_missing[*]}"
    $SUDO apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${apt_missing[@]}" >/dev/null
  else
    echo "warning: not root; missing Debian packages: ${apt_missing[*]} (tests that need them will skip)" >&2
  fi
fi

# npm packages pinned in tests/js/package-lock.json.
if command -v npm >/dev/null; then
  if [ ! -d tests/js/node_modules ] || [ tests/js/package-lock.json -nt tests/js/node_modules ]; then
    echo "installing npm test clients (tests/js)"
    (cd tests/js && npm ci --no-audit --no-fund --loglevel=error)
    touch tests/js/node_modules
  fi
else
  echo "warning: npm not found; the glTF validator and browser splat viewer tests will skip" >&2
fi

# Blender as a Python module, for the GLB import tests. bpy pins numpy<2 (recon uses numpy 2), so it
# goes into its own folder and tests import it only in a child interpreter (tests/clients.py).
PYTHON_BIN="${PYTHON_BIN:-.venv/bin/python}"
BPY_DIR="${RECON_BPY_PATH:-.venv/clients/bpy}"
if [ -x "$PYTHON_BIN" ] && [ ! -d "$BPY_DIR/bpy" ]; then
  echo "installing bpy==4.5.4 into $BPY_DIR"
  "$PYTHON_BIN" -m pip install -q --target "$BPY_DIR" "bpy==4.5.4"
fi
