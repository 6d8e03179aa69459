#!/usr/bin/env bash
# Installs what veomni needs on Debian bookworm (root, apt). Idempotent: it asks
# apt only for packages that are missing, and runs `apt-get update` only then.
set -euo pipefail

packages=(
  build-essential cmake ninja-build ccache git
  libtorch-dev            # LibTorch 1.13.1 (CPU) with c10d Gloo and TCPStore
  libgloo-dev             # gloo headers: Debian's libtorch-dev includes ProcessGroupGloo.hpp but not gloo/
  libcli11-dev            # command-line parsing for tools/ (veomni-launch)
  libopenblas0-openmp     # without it LibTorch falls back to netlib's reference BLAS (~60x slower GEMM)
  python3-torch           # /usr/bin/torchrun, and PyTorch for the side-by-side benchmarks
  doctest-dev libbenchmark-dev
  libyaml-cpp-dev         # veomni-train: YAML configs
  nlohmann-json3-dev      # veomni-train: JSONL manifests, metrics, safetensors headers
  libstb-dev              # veomni-train: image decoding; veomni-dataset: PNG images
  libplplot-dev plplot-driver-cairo  # veomni-train: the loss curve (PLplot; PNG and SVG through its cairo and svg drivers)
  libsndfile1-dev         # veomni-train: WAV decoding; veomni-dataset: WAV clips
  clang libclang-rt-14-dev  # reliability.fuzz: libFuzzer targets (clang -fsanitize=fuzzer) over the config and manifest parsers
  zlib1g-dev              # veomni-train: CRC-32 of checkpoint files
  libpcre2-dev            # text/tokenizer.hpp: the pre-tokenizers' Unicode-property split regexes (PCRE2, JIT)
  libutf8proc-dev         # text/tokenizer.hpp: NFC normalisation, UTF-8 validation
  iproute2                # the two-host test: network namespaces joined by a veth pair (ip netns, ss)
)
# node and npm run the tokenizer tests' reference (Hugging Face's JavaScript
# tokenizers and Jinja); a node from elsewhere (nodesource) is kept.
command -v node >/dev/null || packages+=(nodejs)
command -v npm >/dev/null || packages+=(npm)

missing=()
for p in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  [[ "$status" == "install ok installed" ]] || missing+=("$p")
done

if ((${#missing[@]})); then
  echo "veomni setup: installing ${missing[*]}"
  sudo_cmd=()
  [[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "veomni setup: all packages present"
fi

"$(dirname "$0")/npm_fixtures.sh"
