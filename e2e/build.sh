#!/usr/bin/env bash
# Builds the e2e test bed's binaries (etcd, Kubernetes control plane, kubectl,
# kwok, helm) and our lua-health from the Go modules pinned under e2e/tools/
# into a cache keyed by version, so a warm machine skips the build entirely:
#   ${GPUFLEET_CACHE:-$HOME/.cache/gpufleet}/bin/<tool>-<version>/<tool>
# Usage: e2e/build.sh [tool...]   (default: all tools)
# Prints one timing line per tool and prints the bin directories of all tools
# as `export` lines when called with --print-env.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
tools_dir="$here/tools"
cache="${GPUFLEET_CACHE:-$HOME/.cache/gpufleet}/bin"
export PATH="$PATH:/usr/local/go/bin"
# A 2-core machine: more parallel compiles only thrash memory and caches.
export GOMAXPROCS="${GOMAXPROCS:-2}"
# Static binaries: no libc coupling between the build machine and the runner.
export CGO_ENABLED=0
# No VCS stamping: the main modules are our pin files, and stamping fails in
# some checkouts (worktrees, other owners).
export GOFLAGS="${GOFLAGS:-} -mod=readonly -buildvcs=false"

# tool name -> "<go module dir under tools/> <main package> <pinned module>"
declare -A spec=(
  [etcd]="etcd go.etcd.io/etcd/server/v3 go.etcd.io/etcd/server/v3"
  [kube-apiserver]="kubernetes k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes"
  [kube-controller-manager]="kubernetes k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes"
  [kube-scheduler]="kubernetes k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes"
  [kubectl]="kubernetes k8s.io/kubernetes/cmd/kubectl k8s.io/kubernetes"
  [kwok]="kwok sigs.k8s.io/kwok/cmd/kwok sigs.k8s.io/kwok"
  [helm]="helm helm.sh/helm/v3/cmd/helm helm.sh/helm/v3"
  [kubeconform]="kubeconform github.com/yannh/kubeconform/cmd/kubeconform github.com/yannh/kubeconform"
  # Our own program (main package "."): runs Argo CD health checks on gopher-lua.
  [lua-health]="lua-health . github.com/yuin/gopher-lua"
)
order=(etcd kwok kube-apiserver kube-controller-manager kube-scheduler kubectl helm lua-health)

# The pinned version comes from go.mod, so bumping a pin rebuilds on next run.
module_version() { # <module dir> <module path>
  awk -v m="$2" '$1 == m && $2 ~ /^v/ {print $2; exit} $1 == "require" && $2 == m {print $3; exit}' \
    "$tools_dir/$1/go.mod"
}

# A pinned module's version; for our own program (package "."), the engine's version plus
# a hash of its Go files, so an edit rebuilds.
tool_version() { # <tool>
  local dir pkg mod; read -r dir pkg mod <<<"${spec[$1]}"
  local version; version="$(module_version "$dir" "$mod")"
  if [[ "$pkg" == . ]]; then
    version="$version-$(cat "$tools_dir/$dir"/*.go | sha256sum | cut -c1-12)"
  fi
  echo "$version"
}

ldflags_for() { # <tool> <version>
  local tool=$1 v=$2
  case "$tool" in
    kube-*|kubectl)
      # Without these the server reports v0.0.0 (see shared PITFALLS).
      local minor; minor="$(echo "$v" | cut -d. -f2)"
      local pkg
      for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        printf -- ' -X %s.gitVersion=%s -X %s.gitMajor=1 -X %s.gitMinor=%s -X %s.gitTreeState=clean' \
          "$pkg" "$v" "$pkg" "$pkg" "$minor" "$pkg"
      done ;;
    kwok) printf -- ' -X sigs.k8s.io/kwok/pkg/consts.Version=%s' "$v" ;;
    helm) printf -- ' -X helm.sh/helm/v3/internal/version.version=%s' "$v" ;;
  esac
}

bin_dir() { # <tool> -> cache directory of its pinned version
  echo "$cache/$1-$(tool_version "$1")"
}

build_one() {
  local tool=$1; read -r dir pkg _ <<<"${spec[$tool]}"
  local version; version="$(tool_version "$tool")"
  local out="$cache/$tool-$version"
  if [[ -x "$out/$tool" ]]; then
    printf 'build %-24s %-10s cached        %s\n' "$tool" "$version" "$out/$tool"
    return
  fi
  local start=$SECONDS tmp
  mkdir -p "$cache"
  tmp="$(mktemp -d "$cache/.$tool.XXXXXX")"
  (cd "$tools_dir/$dir" &&
    go build -p "$GOMAXPROCS" -trimpath -ldflags "-s -w$(ldflags_for "$tool" "$version")" \
      -o "$tmp/$tool" "$pkg")
  # Rename last so an interrupted build never looks cached.
  rm -rf "$out" && mv "$tmp" "$out"
  printf 'build %-24s %-10s %5ds built  %s\n' "$tool" "$version" $((SECONDS - start)) "$out/$tool"
}

if [[ "${1:-}" == "--print-env" ]]; then
  for tool in "${order[@]}"; do
    var="GPUFLEET_$(echo "$tool" | tr 'a-z-' 'A-Z_')_BIN"
    echo "export $var=$(bin_dir "$tool")/$tool"
  done
  exit 0
fi

total=$SECONDS
tools=("$@"); [[ ${#tools[@]} -gt 0 ]] || tools=("${order[@]}")
for tool in "${tools[@]}"; do
  [[ -n "${spec[$tool]:-}" ]] || { echo "unknown tool: $tool" >&2; exit 2; }
  build_one "$tool"
done
printf 'build total %ds\n' $((SECONDS - total))
